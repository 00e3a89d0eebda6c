"""The drain: copy planned pages out of a (possibly running) task into a page sink.

Pages move with process_vm_readv, up to IOV_MAX ranges per call, into one bounded buffer that
is reused for every call. When the task changed its memory after the plan was made (munmap,
mprotect, mremap, shrink), a read comes back short: the page where it stopped is left out, and
if the very next page fails too, /proc/PID/maps tells which part of the range is still readable.
System calls therefore stay proportional to ranges plus faults, never to pages.

A plan larger than the buffer is drained in its two halves in turn, with the sink on a thread
of its own: the sink writes one half while the next read fills the other (both calls release
the GIL), so reading and writing overlap in the same memory as one buffer. Every sink call
(present, skipped) goes through that thread, in order.
"""
from __future__ import annotations

import ctypes
import errno
import mmap
import queue
import threading
import time
from dataclasses import dataclass
from typing import Callable

from .. import progress
from ..errors import AccessDenied, NoSuchProcess, TargetError
from ..kernel import vm
from ..kernel.page import PAGE_SHIFT, PAGE_SIZE
from ..kernel.procfs import read_maps
from .ranges import Ranges
from .sink import PageSink

DEFAULT_BUFFER = 4 << 20


@dataclass(eq=False, repr=False)
class DrainStats:
    """Counters of a live drain: pages read and skipped, syscalls, faults, time in each part."""
    pages_read: int = 0
    pages_skipped: int = 0
    syscalls: int = 0
    faults: int = 0
    maps_reads: int = 0
    read_ns: int = 0     # time inside process_vm_readv
    sink_ns: int = 0     # time inside the sink, or waiting for it when it has a thread


class _SinkThread:
    """Runs sink calls in order on a thread of its own; lends out the drain's buffer halves
    (slots), each back once the call that reads it returned. The first error is kept and
    raised to the drain; the calls after it are dropped."""

    def __init__(self, slots: int):
        self._free: queue.SimpleQueue = queue.SimpleQueue()
        for slot in range(slots):
            self._free.put(slot)
        self._jobs: queue.SimpleQueue = queue.SimpleQueue()
        self.error: BaseException | None = None
        self.wait_ns = 0            # how long the drain waited for the sink
        self._thread = threading.Thread(target=self._loop, name="coldsnap-drain-sink", daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while True:
            job = self._jobs.get()
            if job is None:
                return
            call, slot = job
            if self.error is None:
                try:
                    call()
                except BaseException as e:      # handed to the drain's thread
                    self.error = e
            if slot is not None:
                self._free.put(slot)

    def take(self) -> int:
        """A free slot (waits for the sink to give one back)."""
        t = time.perf_counter_ns()
        slot = self._free.get()
        self.wait_ns += time.perf_counter_ns() - t
        self.check()
        return slot

    def give_back(self, slot: int) -> None:
        self._free.put(slot)

    def submit(self, call: Callable[[], None], slot: int | None = None) -> None:
        self.check()
        self._jobs.put((call, slot))

    def check(self) -> None:
        if self.error is not None:
            raise self.error

    def finish(self) -> None:
        """Wait until every call ran; raise the sink's error, if any."""
        t = time.perf_counter_ns()
        self.stop()
        self.wait_ns += time.perf_counter_ns() - t
        self.check()

    def stop(self) -> None:
        self._jobs.put(None)
        self._thread.join()


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
        self._addr = ctypes.addressof(ctypes.c_char.from_buffer(self._buf))
        self._iov = vm.new_iov_array()
        self.stats = DrainStats()
        self._last_bad = -1    # where the last skip ended: a failure right there repeats
        self._sink_thread: _SinkThread | None = None
        self.batch = self.size     # bytes per read: the buffer, or half of it with a sink thread
        self._slot = 0              # the half being read into

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
        half = self.size // 2 // PAGE_SIZE * PAGE_SIZE
        threaded = half > 0 and plan.nr_pages << PAGE_SHIFT > self.size
        self.batch = half if threaded else self.size
        if threaded:
            self._sink_thread = _SinkThread(2)
        try:
            self._run(plan)
            if self._sink_thread is not None:
                self._sink_thread.finish()
        finally:
            if self._sink_thread is not None:
                self._sink_thread.stop()
                self.stats.sink_ns += self._sink_thread.wait_ns
                self._sink_thread = None
        return self.stats

    def _run(self, plan: Ranges) -> None:
        cut = plan.chunked(self.batch)
        starts, ends, lens = cut.starts, cut.ends, cut.lengths
        planned = sum(lens)
        n, i, cur = len(starts), 0, starts[0] if len(starts) else 0
        iov, size = self._iov, self.batch
        while i < n:
            # Fill one batch: the rest of range i, then whole ranges while they fit.
            first_len = ends[i] - cur
            iov[0], iov[1] = cur, first_len
            total, k = first_len, 0
            for ln in lens[i + 1:i + vm.IOV_MAX]:
                if total + ln > size:
                    break
                total += ln
                k += 1
            iov[2:2 * k + 2:2] = starts[i + 1:i + 1 + k]
            iov[3:2 * k + 3:2] = lens[i + 1:i + 1 + k]
            count = k + 1
            got = self._read(count, total)
            if got:
                self._emit(count, got)
            if progress.reporter:
                done = (self.stats.pages_read + self.stats.pages_skipped) << PAGE_SHIFT
                progress.reporter("reading pages", done, planned)
            if got == total:
                i += count
                cur = starts[i] if i < n else 0
                continue
            # Short read: locate the page where the copy stopped.
            j, before = 0, 0
            while before + iov[2 * j + 1] <= got:
                before += iov[2 * j + 1]
                j += 1
            bad = iov[2 * j] + got - before
            i += j
            range_end = ends[i]
            resume = self._next_readable(bad, range_end, consecutive=(got == 0 and self._last_bad == bad))
            self._skip(bad, resume)
            self._last_bad = resume
            if resume >= range_end:
                i += 1
                cur = starts[i] if i < n else 0
            else:
                cur = resume
        if progress.reporter:               # done, whatever the last batch skipped
            progress.reporter("reading pages", planned, planned)

    def _read(self, count: int, total: int) -> int:
        if self._sink_thread is not None:
            self._slot = self._sink_thread.take()
        t = time.perf_counter_ns()
        self.stats.syscalls += 1
        try:
            got = vm.readv(self.pid, self._addr + self._slot * self.batch, total, self._iov, count)
        except OSError as e:
            if e.errno == errno.EFAULT:
                got = 0
            elif e.errno == errno.ESRCH:
                raise NoSuchProcess(self.pid, during="the pre-dump") from None
            elif isinstance(e, AccessDenied):
                raise
            else:
                raise TargetError(f"cannot read memory of {self.pid}: {e.strerror}") from None
        except BaseException:
            if self._sink_thread is not None:
                self._sink_thread.give_back(self._slot)
            raise
        finally:
            self.stats.read_ns += time.perf_counter_ns() - t
        if got < total:
            self.stats.faults += 1
        if not got and self._sink_thread is not None:
            self._sink_thread.give_back(self._slot)
        return got

    def _to_sink(self, call: Callable[[], None], slot: int | None = None) -> None:
        """Run a sink call here, or queue it on the sink's thread (with the slot it reads)."""
        if self._sink_thread is not None:
            self._sink_thread.submit(call, slot)
            return
        t = time.perf_counter_ns()
        call()
        self.stats.sink_ns += time.perf_counter_ns() - t

    def _emit(self, count: int, got: int) -> None:
        """Hand the first `got` bytes of the batch to the sink, as runs."""
        vaddrs, lens = self._iov[0:2 * count:2], self._iov[1:2 * count:2]   # copies
        full, done = 0, 0
        while full < count and done + lens[full] <= got:
            done += lens[full]
            full += 1
        if full < count:                    # a short read: the last run is cut
            if got > done:
                lens[full] = got - done
                full += 1
            del vaddrs[full:], lens[full:]
        data = self._view[self._slot * self.batch:][:got]
        self._to_sink(lambda: self.sink.present(vaddrs, lens, data), self._slot)
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
            nr = (end - start) >> PAGE_SHIFT
            self.stats.pages_skipped += nr
            self._to_sink(lambda: self.sink.skipped(start, nr))

