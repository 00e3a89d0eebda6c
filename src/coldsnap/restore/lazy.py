"""Lazy restore, the transplant's side: which pages stay behind, and the userfaultfd that
will bring them.

    layout = lazy_layout(images)           # the private anonymous areas served lazily
    writer.write(EagerPart(src, layout))    # everything else is written as usual
    fd = arm(rc, pid, layout)               # userfaultfd made inside the target, taken, registered

Lazy areas are the private anonymous, readable and writable VMAs (heap, malloc arenas,
anonymous mmaps) holding at least LAZY_MIN bytes of saved data. The stack, file pages,
shared memory and small areas are written eagerly: they are few pages, touched at once;
areas advised DONTFORK or WIPEONFORK too (FORK_ADVICE).
The pages under each thread's rseq area are eager too: the kernel writes there on every
return to user space, even between two injected calls, and a page it filled with zeros
before registration would be a hole.

The userfaultfd is made by an injected `userfaultfd()` *without* UFFD_USER_MODE_ONLY (a
read(2) into a lazy buffer faults in the kernel and must wait, not fail with EFAULT), so
it is injected while the blank process still has coldsnap's credentials; coldsnap takes it
with pidfd_getfd and closes the target's copy: the restored process holds no extra fd.
"""
from __future__ import annotations

import os
from bisect import bisect_left, bisect_right
from dataclasses import dataclass
from typing import TYPE_CHECKING, Iterator

from ..errors import CsError
from ..images.vma import VMA_ANON_PRIVATE, VMA_AREA_STACK
from ..kernel import uffd
from ..kernel.libc import SYS
from ..kernel.page import PAGE_SIZE as PAGE
from ..kernel.pidfd import take_fd
from ..kernel.vm import MADV_DONTFORK, MADV_WIPEONFORK
from ..memory.source import PageSource
from ..memory.vma import PROT_READ, PROT_WRITE

if TYPE_CHECKING:
    import numpy as np

LAZY_MIN = 256 << 10          # smaller areas are written eagerly: one fault would cost more
# vma_entry.madv bits of the areas written eagerly whatever their size: a fork's child has
# no DONTFORK area and zeros in a WIPEONFORK one, but the server cannot tell which of the
# child's areas those are (the fork event says nothing of them), and would fill them
FORK_ADVICE = 1 << MADV_DONTFORK | 1 << MADV_WIPEONFORK
O_NONBLOCK = 0o4000
O_CLOEXEC = 0o2000000
FEATURES = (uffd.UFFD_FEATURE_EVENT_FORK | uffd.UFFD_FEATURE_EVENT_REMAP | uffd.UFFD_FEATURE_EVENT_REMOVE
            | uffd.UFFD_FEATURE_EVENT_UNMAP | uffd.UFFD_FEATURE_THREAD_ID)


@dataclass(frozen=True)
class LazyLayout:
    """Where a process's pages come from in a lazy restore."""
    areas: list[tuple[int, int]]          # registered MISSING, served by the server
    eager: list[tuple[int, int]]          # pages inside those areas written now anyway (rseq)
    runs: list[tuple[int, int]]           # saved runs left to the server: (vaddr, nbytes)

    @property
    def pages(self) -> int:
        return sum(n for _, n in self.runs) // PAGE


def lazy_layout(images) -> LazyLayout:
    """The lazy areas of one process (restore/images.py DumpImages)."""
    runs = images.private.runs()
    starts = [v for v, _ in runs]
    ends = [v + n for v, n in runs]
    areas = []
    for v in images.vmas():
        if not v.status & VMA_ANON_PRIVATE or v.status & VMA_AREA_STACK:
            continue
        if v.prot & (PROT_READ | PROT_WRITE) != PROT_READ | PROT_WRITE:
            continue
        if (v.madv if v.HasField("madv") else 0) & FORK_ADVICE:
            continue    # a fork before its pages are in would give the child what it must not see
        lo, hi = bisect_right(ends, v.start), bisect_left(starts, v.end)
        held = sum(min(ends[i], v.end) - max(starts[i], v.start) for i in range(lo, hi))
        if held >= LAZY_MIN:
            areas.append((v.start, v.end))
    eager = _merge([(a & ~(PAGE - 1), (a + 32 + PAGE - 1) & ~(PAGE - 1))
                    for a in _rseq_areas(images) if any(s <= a < e for s, e in areas)])
    left = _subtract(_intersect(runs, areas), eager)
    return LazyLayout(areas, eager, left)


def _rseq_areas(images) -> list[int]:
    out = []
    for core in images.cores.values():
        th = core.thread_core
        if th.HasField("rseq_entry") and th.rseq_entry.rseq_abi_pointer:
            out.append(th.rseq_entry.rseq_abi_pointer)
    return out


def _merge(spans: list[tuple[int, int]]) -> list[tuple[int, int]]:
    out: list[tuple[int, int]] = []
    for s, e in sorted(spans):
        if out and s <= out[-1][1]:
            out[-1] = (out[-1][0], max(out[-1][1], e))
        else:
            out.append((s, e))
    return out


def _intersect(runs: list[tuple[int, int]], spans: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """(vaddr, nbytes) pieces of runs inside spans (both sorted)."""
    out, j = [], 0
    for v, n in runs:
        e = v + n
        while j < len(spans) and spans[j][1] <= v:
            j += 1
        k = j
        while k < len(spans) and spans[k][0] < e:
            lo, hi = max(v, spans[k][0]), min(e, spans[k][1])
            if lo < hi:
                out.append((lo, hi - lo))
            k += 1
    return out


def _subtract(runs: list[tuple[int, int]], spans: list[tuple[int, int]]) -> list[tuple[int, int]]:
    out = []
    for v, n in runs:
        pieces = [(v, v + n)]
        for s, e in spans:
            pieces = [p for a, b in pieces for p in ((a, min(b, s)), (max(a, e), b)) if p[0] < p[1]]
        out.extend((a, b - a) for a, b in pieces)
    return out


class EagerPart:
    """The part of a page source written before the process runs: every run outside the lazy
    areas, and the eager pages inside them (a PageSource for PageWriter). Only those pieces
    are read from the source (a page server sends nothing else)."""

    def __init__(self, src: PageSource, layout: LazyLayout):
        self.src = src
        self.cut = layout.areas         # sorted, apart
        self.keep = layout.eager
        self._cut_ends = [e for _, e in self.cut]
        self._located: list[tuple[int, int, int, int]] | None = None
        self._held: list[np.ndarray] = []       # the buffers given out, until close()

    def located(self) -> list[tuple[int, int, int, int]]:
        if self._located is None:
            self._located = [(level, a, b - a, offset + a - vaddr) for level, vaddr, nbytes, offset in self.src.located()
                             for a, b in self._spans(vaddr, vaddr + nbytes)]
        return self._located

    def runs(self) -> list[tuple[int, int]]:
        return [(v, n) for _, v, n, _ in self.located()]

    def mapped(self) -> Iterator[tuple[int, int, np.ndarray, int]]:
        for level, vaddr, nbytes, offset in self.located():
            buf = self.src.saved(level, offset, nbytes)
            self._held.append(buf)
            yield vaddr, nbytes, buf, 0

    def saved(self, level: int, offset: int, nbytes: int) -> np.ndarray:
        return self.src.saved(level, offset, nbytes)

    def _spans(self, vaddr: int, end: int) -> list[tuple[int, int]]:
        spans = []
        at = vaddr
        i = bisect_right(self._cut_ends, vaddr)     # the first lazy area ending after vaddr
        while i < len(self.cut) and self.cut[i][0] < end:
            s, e = self.cut[i]
            if at < s:
                spans.append((at, s))
            at = max(at, e)
            i += 1
        if at < end:
            spans.append((at, end))
        if not self.keep:
            return spans
        for s, e in self.keep:
            lo, hi = max(vaddr, s), min(end, e)
            if lo < hi:
                spans.append((lo, hi))
        return sorted(spans)

    def read_into(self, vaddr: int, buf: memoryview) -> None:
        self.src.read_into(vaddr, buf)

    def close(self) -> None:
        self._held.clear()
        self.src.close()


def arm(rc, pid: int, layout: LazyLayout, tfd: int = -1) -> int:
    """Take the userfaultfd TFD the target made (the transplant's batch of mmaps made it;
    its copy is closed by the next batch) or, if it could not (-errno), make one inside the
    target (rc: its remote calls), take it and close the target's copy; register the lazy
    areas in MISSING mode; returns coldsnap's fd."""
    made_here = tfd < 0
    if made_here:
        tfd = rc.checked(SYS.userfaultfd, O_CLOEXEC | O_NONBLOCK, what="userfaultfd for the lazy pages")
    try:
        ours = take_fd(pid, tfd)
    finally:
        if made_here:
            rc.call(SYS.close, tfd)
    try:
        uffd.api(ours, FEATURES)
        for start, end in layout.areas:
            uffd.register(ours, start, end - start, uffd.UFFDIO_REGISTER_MODE_MISSING)
    except OSError as e:
        os.close(ours)
        raise CsError(f"cannot set up the lazy pages of {pid}: {e.strerror or e}") from None
    return ours
