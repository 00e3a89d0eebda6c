"""The drain: copy planned pages out of a (possibly running) task into a page sink.

Pages move with process_vm_readv, up to IOV_MAX ranges per call, into one bounded buffer that
is reused for every call. When the task changed its memory after the plan was made (munmap,
mprotect, mremap, shrink), a read comes back short: the page where it stopped is left out, and
if the very next page fails too, /proc/PID/maps tells which part of the range is still readable.
System calls therefore stay proportional to ranges plus faults, never to pages.
"""
from __future__ import annotations

import errno
import mmap
import time
from dataclasses import dataclass

import numpy as np

from .. import progress
from ..errors import AccessDenied, NoSuchProcess, TargetError
from ..kernel import vm
from ..kernel.page import PAGE_SHIFT, PAGE_SIZE
from ..kernel.procfs import read_maps
from .ranges import Ranges
from .sink import PageSink

DEFAULT_BUFFER = 4 << 20


@dataclass
class DrainStats:
    pages_read: int = 0
    pages_skipped: int = 0
    syscalls: int = 0
    faults: int = 0
    maps_reads: int = 0
    read_ns: int = 0     # time inside process_vm_readv
    sink_ns: int = 0     # time inside the sink


class Drain:
    """Copies ranges into `sink` (only its present and skipped are called, in address
    order); the data it hands over lives in one buffer reused by the next read."""

    def __init__(self, pid: int, sink: PageSink, buffer_size: int = DEFAULT_BUFFER):
        if buffer_size < PAGE_SIZE:
            raise ValueError("drain buffer must hold at least one page")
        self.pid, self.sink = pid, sink
        self.size = buffer_size - buffer_size % PAGE_SIZE
        self._buf = mmap.mmap(-1, self.size, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
        self._view = memoryview(self._buf)
        self._addr = np.frombuffer(self._buf, dtype=np.uint8).ctypes.data
        self._iov = vm.new_iov_array()
        self.stats = DrainStats()
        self._last_bad = -1    # where the last skip ended: a failure right there repeats

    def close(self) -> None:
        try:
            self._view.release()
            self._buf.close()
        except BufferError:
            pass  # a traceback still holds a slice of the buffer: it is freed with the last one

    def __enter__(self) -> "Drain":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def run(self, plan: Ranges) -> DrainStats:
        """Copy every page of the plan that can still be read."""
        cut = plan.chunked(self.size)
        starts, ends = cut.starts, cut.ends
        lens = ends - starts
        n, i, cur = len(starts), 0, int(starts[0]) if len(starts) else 0
        iov, size = self._iov, self.size
        while i < n:
            # Fill one batch: the rest of range i, then whole ranges while they fit.
            first_len = int(ends[i]) - cur
            room = size - first_len
            cum = np.cumsum(lens[i + 1:i + vm.IOV_MAX])
            k = int(np.searchsorted(cum, room, side="right"))
            iov[0, 0], iov[0, 1] = cur, first_len
            iov[1:k + 1, 0] = starts[i + 1:i + 1 + k]
            iov[1:k + 1, 1] = lens[i + 1:i + 1 + k]
            count = k + 1
            total = first_len + (int(cum[k - 1]) if k else 0)
            got = self._read(count, total)
            if got:
                self._emit(count, got)
            if progress.reporter:
                done = (self.stats.pages_read + self.stats.pages_skipped) << PAGE_SHIFT
                progress.reporter("reading pages", done, int(lens.sum()))
            if got == total:
                i += count
                cur = int(starts[i]) if i < n else 0
                continue
            # Short read: locate the page where the copy stopped.
            seg_ends = np.cumsum(iov[:count, 1])
            j = int(np.searchsorted(seg_ends, got, side="right"))
            bad = int(iov[j, 0]) + got - (int(seg_ends[j - 1]) if j else 0)
            i += j
            range_end = int(ends[i])
            resume = self._next_readable(bad, range_end, consecutive=(got == 0 and self._last_bad == bad))
            self._skip(bad, resume)
            self._last_bad = resume
            if resume >= range_end:
                i += 1
                cur = int(starts[i]) if i < n else 0
            else:
                cur = resume
        if progress.reporter:               # done, whatever the last batch skipped
            planned = int(lens.sum())
            progress.reporter("reading pages", planned, planned)
        return self.stats

    def _read(self, count: int, total: int) -> int:
        t = time.perf_counter_ns()
        self.stats.syscalls += 1
        try:
            got = vm.readv(self.pid, self._addr, total, self._iov, count)
        except OSError as e:
            if e.errno == errno.EFAULT:
                got = 0
            elif e.errno == errno.ESRCH:
                raise NoSuchProcess(self.pid, during="the pre-dump") from None
            elif isinstance(e, AccessDenied):
                raise
            else:
                raise TargetError(f"cannot read memory of {self.pid}: {e.strerror}") from None
        finally:
            self.stats.read_ns += time.perf_counter_ns() - t
        if got < total:
            self.stats.faults += 1
        return got

    def _emit(self, count: int, got: int) -> None:
        """Hand the first `got` bytes of the batch to the sink, as runs."""
        lengths = self._iov[:count, 1]
        seg_ends = np.cumsum(lengths)
        full = int(np.searchsorted(seg_ends, got, side="right"))
        vaddrs = self._iov[:count, 0][:full + 1].copy()
        lens = lengths[:full + 1].copy()
        if full < count:
            lens[full] = got - (int(seg_ends[full - 1]) if full else 0)
            if lens[full] == 0:
                vaddrs, lens = vaddrs[:full], lens[:full]
        t = time.perf_counter_ns()
        self.sink.present(vaddrs, lens, self._view[:got])
        self.stats.sink_ns += time.perf_counter_ns() - t
        self.stats.pages_read += got >> PAGE_SHIFT

    def _next_readable(self, bad: int, range_end: int, consecutive: bool) -> int:
        """Where to resume after a failed page: the next page, or — when failures repeat —
        the next address of this range that /proc/PID/maps still shows readable."""
        if not consecutive:
            return bad + PAGE_SIZE
        self.stats.maps_reads += 1
        try:
            maps = read_maps(self.pid)
        except ProcessLookupError:
            raise NoSuchProcess(self.pid, during="the pre-dump") from None
        for m in maps:
            if m.end > bad and m.start < range_end and m.readable:
                return m.start if m.start > bad else bad + PAGE_SIZE
        return range_end

    def _skip(self, start: int, end: int) -> None:
        if end > start:
            self.stats.pages_skipped += (end - start) >> PAGE_SHIFT
            self.sink.skipped(start, (end - start) >> PAGE_SHIFT)

