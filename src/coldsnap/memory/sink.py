"""The page sink: the one way every page a dump or a pre-dump saves leaves coldsnap.

    sink.begin(PagemapKey(pid))                 # or PagemapKey(shmid, shmem=True)
    sink.present(vaddrs, lengths, data)         # runs whose bytes follow each other in data
    sink.parent(vaddr, nr_pages)                # the parent images hold these (PE_PARENT)
    sink.skipped(vaddr, nr_pages)               # planned, could not be read (saved next time)
    area = sink.reserve(nbytes); ...; sink.placed(vaddrs, lengths)    # see below
    sink.end()                                  # this pagemap is complete

Runs of one pagemap come in strictly ascending address order, whatever their kind (a shared
memory object's "addresses" are byte offsets in it). One pagemap at a time: begin, runs, end.

Buffer lifetime: `data` given to present() is valid only during the call (the drain reuses
its buffer at once); a sink that keeps bytes must copy them before returning.

Reserve and fill: a caller that knows the size of the next present pages before it has
their bytes (a frozen task: nothing changes) asks reserve(nbytes) for an area and fills it
at offsets it chooses, from several threads at once (PageArea.pwrite), or straight from a
file (PageArea.sendfile: in the kernel, no buffer of ours). Then it calls placed() with the
runs in address order; their bytes are the area's, back to back from its start. Bytes of
an area that are not placed when the next reserve(), present() or end() comes are dropped.
An image file implements the area with pwrite at the pages file's offsets; a stream sink
(a page server socket) buffers the area and sends the runs as they are placed.

Implementations: the images directory (dump/sink.py ImageSink); the tests drive the drain
and the frozen copy with an in-memory one.
"""
from __future__ import annotations

from bisect import bisect_left
from dataclasses import dataclass
from typing import NamedTuple, Protocol, Sequence

from ..kernel.page import PAGE_SHIFT
from .ranges import Ranges


class PagemapKey(NamedTuple):
    """Which pagemap pages belong to: a process (by pid) or a shared memory object (by shmid)."""
    id: int                 # a process's pid, or a shared memory object's id (shmid)
    shmem: bool = False


class PageArea(Protocol):
    """Room reserved in a sink for present pages whose bytes arrive at known offsets."""

    def pwrite(self, data: memoryview, offset: int) -> int:
        """Write data at `offset` from the area's start; returns the bytes written (possibly
        fewer, as os.pwrite). Safe from several threads at once on disjoint bytes."""

    def sendfile(self, fd: int, fd_offset: int, offset: int, nbytes: int) -> int:
        """Copy nbytes of file `fd` from fd_offset to `offset` in the area; returns the bytes
        copied (fewer only where the file ends)."""


class PageSink(Protocol):
    def begin(self, pagemap: PagemapKey) -> None:
        """The runs that follow belong to this pagemap."""

    def present(self, vaddrs: Sequence[int], lengths: Sequence[int], data: memoryview) -> None:
        """Pages really copied: runs (vaddrs[i], lengths[i] bytes) whose bytes follow each
        other in data. data is valid only during the call."""

    def parent(self, vaddr: int, nr_pages: int) -> None:
        """Pages the parent images hold, not written since."""

    def skipped(self, vaddr: int, nr_pages: int) -> None:
        """Planned pages that could not be read; the next iteration must save them again."""

    def reserve(self, nbytes: int) -> PageArea:
        """An area for the bytes of the next present pages, to be filled and then placed."""

    def placed(self, vaddrs: Sequence[int], lengths: Sequence[int]) -> None:
        """Present runs (vaddrs[i], lengths[i] bytes) whose bytes are the next ones of the
        reserved area, back to back."""

    def end(self) -> None:
        """The current pagemap is complete."""


@dataclass(eq=False, repr=False)
class SinkCounts:
    """Pages handed to a sink, by kind."""
    present: int = 0
    parent: int = 0
    skipped: int = 0

    def add(self, other: "SinkCounts") -> None:
        self.present += other.present
        self.parent += other.parent
        self.skipped += other.skipped


class PlanFeed:
    """One pagemap's pages into a sink in address order: what arrives in order (present and
    skipped runs of the drain, placed runs of the frozen copy) interleaved with the runs
    known up front (the plan's in-parent and unreadable pages); counts pages by kind.

    It has the drain's side of PageSink (present, skipped); begin and end stay the caller's.
    """

    def __init__(self, sink: PageSink, parent: Ranges | None = None, skipped: Ranges | None = None):
        self.sink = sink
        self.counts = SinkCounts()
        known = [(s, e, True) for s, e in (parent or Ranges.empty()).pairs()]
        known += [(s, e, False) for s, e in (skipped or Ranges.empty()).pairs()]
        known.sort()
        self._known = known
        self._next = 0

    def _flush_known_before(self, vaddr: int) -> None:
        runs, i = self._known, self._next
        while i < len(runs) and runs[i][0] < vaddr:
            s, e, in_parent = runs[i]
            nr = (e - s) >> PAGE_SHIFT
            if in_parent:
                self.sink.parent(s, nr)
                self.counts.parent += nr
            else:
                self.sink.skipped(s, nr)
                self.counts.skipped += nr
            i += 1
        self._next = i

    def _between_known(self, vaddrs: Sequence[int]):
        """Slices [i, j) of a batch of runs with no known run inside; the known runs before
        each slice are handed over first."""
        i, n = 0, len(vaddrs)
        while i < n:
            if self._next >= len(self._known):
                yield i, n
                return
            j = bisect_left(vaddrs, self._known[self._next][0], i)
            if j == i:
                self._flush_known_before(int(vaddrs[i]))
                continue
            yield i, j
            i = j

    def present(self, vaddrs: Sequence[int], lengths: Sequence[int], data: memoryview) -> None:
        self.counts.present += data.nbytes >> PAGE_SHIFT
        if self._next >= len(self._known):
            self.sink.present(vaddrs, lengths, data)
            return
        off = 0
        for i, j in self._between_known(vaddrs):
            size = int(sum(lengths[i:j]))
            self.sink.present(vaddrs[i:j], lengths[i:j], data[off:off + size])
            off += size

    def skipped(self, vaddr: int, nr_pages: int) -> None:
        if self._next < len(self._known):
            self._flush_known_before(vaddr)
        self.counts.skipped += nr_pages
        self.sink.skipped(vaddr, nr_pages)

    def reserve(self, nbytes: int) -> PageArea:
        return self.sink.reserve(nbytes)

    def placed(self, vaddrs: Sequence[int], lengths: Sequence[int]) -> None:
        self.counts.present += int(sum(lengths)) >> PAGE_SHIFT
        for i, j in self._between_known(vaddrs):
            self.sink.placed(vaddrs[i:j], lengths[i:j])

    def finish(self) -> SinkCounts:
        """Hand over the known runs above the last page; returns the counts."""
        self._flush_known_before(1 << 64)
        return self.counts
