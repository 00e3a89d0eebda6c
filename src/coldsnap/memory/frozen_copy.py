"""Copy the pages of a frozen task into a page sink, on worker threads.

With the task frozen nothing changes under us, so each page's place is known before
copying: the sink reserves an area for all of them (memory/sink.py), and the ranges, in
address order and cut into pieces of at most `chunk` bytes, go back to back into it. Workers
copy pieces in parallel — process_vm_readv into a buffer of their own, then a positional
write at the piece's offset (both release the GIL; for the images directory the area is the
pages file itself). Most of the cost is the image file's fresh pages, which two CPUs
allocate twice as fast as one. What
process_vm_readv cannot read (areas without PROT_READ) comes from /proc/PID/mem, which may
(FOLL_FORCE); a page neither can read fails the copy.

The live drain (memory/drain.py) cannot work this way: there a page may vanish mid-copy,
so offsets are only known once pages are read.
"""
from __future__ import annotations

import mmap
import os
import threading
from array import array
from bisect import bisect_left
from dataclasses import dataclass
from itertools import accumulate

from .. import progress
from ..errors import NoSuchProcess, TargetError
from ..kernel import vm
from ..kernel.page import PAGE_SHIFT, PAGE_SIZE
from ..kernel.procfs import alive
from .plan import PagePlan
from .ranges import Ranges
from .sink import PageArea, PageSink, PlanFeed, SinkCounts

# 1 MiB pieces: a worker's buffer (2 MiB at most) stays in the caches between its read and
# its write, and the buffers prepared before the freeze are small (4 MiB pieces: no faster)
CHUNK = 1 << 20
# Below this many bytes one thread copies: a second thread, its pool and its own buffer
# (fresh pages to fault in) cost more than the parallel page allocation saves (8 MiB: about
# 8.9 ms of CPU on two threads against 7.4 on one)
PARALLEL_FROM = 16 << 20
PREPARE_SLACK = 64 * PAGE_SIZE


@dataclass(eq=False, repr=False)
class CopyStats:
    """Counters of the frozen copy: bytes copied, those forced through /proc/PID/mem, syscalls."""
    bytes: int = 0
    forced_bytes: int = 0            # read through /proc/PID/mem
    syscalls: int = 0


def pieces(ranges: Ranges, chunk: int = CHUNK) -> tuple[array, array, list[int]]:
    """(addresses, lengths, file offsets) of RANGES cut into pieces of at most CHUNK bytes."""
    lens = ranges.lengths
    if lens and max(lens) > chunk:
        ranges = ranges.chunked(chunk)
        lens = ranges.lengths
    return ranges.starts, lens, list(accumulate(lens, initial=0))[:-1]


def batches(lens, chunk: int = CHUNK) -> list[tuple[int, int]]:
    """[i, j) index ranges of pieces that one call reads: at most IOV_MAX pieces whose file
    offsets start within one CHUNK-sized window (so at most 2 * CHUNK bytes). Found per
    window boundary (bisect over the offsets), not per piece: a fragmented plan has many."""
    n = len(lens)
    if not n:
        return []
    offs = list(accumulate(lens, initial=0))
    edges = set(range(0, n, vm.IOV_MAX))
    # the first piece starting at or past each window boundary begins a call
    edges.update(bisect_left(offs, b, 0, n) for b in range(chunk, offs[n - 1] + 1, chunk))
    edges.discard(n)
    edges = sorted(edges)
    edges.append(n)
    return list(zip(edges[:-1], edges[1:]))


class _Buffers:
    """One worker thread's read buffer and iovec array. The buffer is an anonymous mapping
    with its pages faulted in at once (MAP_POPULATE): a bytearray would be zeroed a second
    time by malloc's memset (8 MiB: 4-8 ms in a fresh process)."""

    def __init__(self, size: int):
        self.buf = mmap.mmap(-1, size, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS | mmap.MAP_POPULATE)
        self.addr = vm.address(self.buf)
        # no child of ours needs them (a restore's blank child would copy their page tables)
        vm.madvise(self.addr, size, vm.MADV_DONTFORK)
        self.iov = vm.new_iov_array()


_spare: list[_Buffers] = []     # the buffers prepare_copy made, for the next copy's workers


def prepare_copy(nbytes: int, chunk: int = CHUNK, parallel_from: int = PARALLEL_FROM,
                 threads: int = 2) -> None:
    """Before a freeze: the read buffers of a copy of about NBYTES (one, or one per thread
    from PARALLEL_FROM on), mapped and faulted in now rather than inside the frozen window."""
    n = 0 if nbytes <= 0 else 1 if nbytes < parallel_from or threads <= 1 else threads
    # NBYTES (RssAnon + VmSwap) leaves out pages the copy reads too ([vdso]'s): without the
    # slack a small process's buffer came one page short and was made again in the window
    size = min(nbytes + PREPARE_SLACK, 2 * chunk)
    ready = [b for b in _spare if len(b.buf) >= size][:n]      # made ahead (make_buffers_ahead)
    _spare[:] = ready + [_Buffers(size) for _ in range(n - len(ready))]


def make_buffers_ahead(threads: int = 2, chunk: int = CHUNK) -> None:
    """The read buffers of the largest copy prepare_copy prepares, made now: a resident
    service's worker waiting for its request (a dump then finds them ready, 0.7-2 ms less
    before its freeze, and another command leaves them alone)."""
    _spare[:] = [_Buffers(2 * chunk) for _ in range(threads)]


def _take_spare(size: int) -> _Buffers | None:
    try:
        b = _spare.pop()            # atomic: workers may take them at once
    except IndexError:
        return None
    return b if len(b.buf) >= size else None


def save_frozen(pid: int, mem_fd: int, plan: PagePlan, sink: PageSink, *, threads: int = 2,
                chunk: int = CHUNK, parallel_from: int = PARALLEL_FROM) -> tuple[CopyStats, SinkCounts]:
    """The pages of a frozen task's plan into the sink's current pagemap: the bytes of
    plan.to_read into one reserved area, then every run (placed, parent) in address order."""
    feed = PlanFeed(sink, parent=plan.in_parent, skipped=plan.unreadable)
    copied = CopyStats()
    if len(plan.to_read):
        area = sink.reserve(plan.to_read.nr_pages << PAGE_SHIFT)
        copied = copy_frozen(pid, mem_fd, plan.to_read, area, threads=threads, chunk=chunk,
                             parallel_from=parallel_from)
        runs = plan.to_read
        feed.placed(runs.starts, runs.lengths)
    return copied, feed.finish()


def copy_frozen(pid: int, mem_fd: int, ranges: Ranges, area: PageArea, *, threads: int = 2,
                chunk: int = CHUNK, parallel_from: int = PARALLEL_FROM) -> CopyStats:
    """Write the bytes of RANGES (a frozen task's pages) into AREA from offset 0, back to back.

    Small ranges are read together (up to IOV_MAX per process_vm_readv), large ones in
    pieces of CHUNK, so the calls stay few however fragmented the memory is. THREADS copy
    from PARALLEL_FROM bytes on, one below."""
    addrs, lens, offs = pieces(ranges, chunk)
    jobs = batches(lens, chunk)
    ends = list(accumulate(lens))
    size = max((ends[j - 1] - ends[i] + lens[i] for i, j in jobs), default=0)
    tls = threading.local()            # each worker's buffers, prepared or as big as a batch needs
    one_thread = threads <= 1 or len(jobs) < 2 or (ends[-1] if ends else 0) < parallel_from

    def copy(i: int, j: int) -> tuple[int, int]:
        w = getattr(tls, "w", None) or _take_spare(size) or _Buffers(size)
        tls.w = w
        n = j - i
        w.iov[0:2 * n:2], w.iov[1:2 * n:2] = addrs[i:j], lens[i:j]
        total = ends[j - 1] - ends[i] + lens[i]
        try:
            got = vm.readv(pid, w.addr, total, w.iov, n)
        except OSError:
            got = 0                     # the first page is unreadable this way
        calls, view, forced = 1, memoryview(w.buf), total - got
        if got < total:                 # no PROT_READ (or a failure): through /proc/PID/mem
            calls += _read_rest(pid, mem_fd, view, addrs[i:j], lens[i:j], got)
        done = 0
        while done < total:
            done += area.pwrite(view[done:total], offs[i] + done)
            calls += 1
        if progress.reporter:
            progress.reporter("copying pages", ends[j - 1], ends[-1])
        return forced, calls

    stats = CopyStats(bytes=ends[-1] if ends else 0)
    if one_thread:
        results = [copy(i, j) for i, j in jobs]
    else:
        from concurrent.futures import ThreadPoolExecutor   # only here: ~1 ms of every import
        with ThreadPoolExecutor(threads, thread_name_prefix="coldsnap-copy") as pool:
            results = list(pool.map(lambda job: copy(*job), jobs))
    for forced, calls in results:
        stats.forced_bytes += forced
        stats.syscalls += calls
    return stats


def _read_rest(pid: int, mem_fd: int, view: memoryview, addrs: list[int], lens: list[int], got: int) -> int:
    """Fill VIEW past its first GOT bytes from /proc/PID/mem; returns the calls made."""
    calls, pos = 0, 0
    for addr, n in zip(addrs, lens):
        skip = max(0, got - pos)        # bytes of this piece process_vm_readv did read
        while skip < n:
            try:
                k = os.preadv(mem_fd, [view[pos + skip:pos + n]], addr + skip)
            except OSError as e:
                raise _unreadable(pid, addr + skip, e.strerror) from None
            calls += 1
            if k <= 0:
                raise _unreadable(pid, addr + skip, "")
            skip += k
        pos += n
    return calls


def _unreadable(pid: int, addr: int, why: str) -> TargetError:
    if not alive(pid):                  # e.g. SIGKILLed by someone else while held
        return NoSuchProcess(pid, during="the dump")
    page = addr // PAGE_SIZE * PAGE_SIZE
    return TargetError(f"cannot read page {page:#x} of {pid}" + (f": {why}" if why else ""))
