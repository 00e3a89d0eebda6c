"""Write saved pages into the restored process, from a page source (memory/source.py).

The source's buffers are handed to process_vm_writev as the local side: for the images
chain they are the pages files mapped read-only, so page data goes from the page cache into
the target with one copy and no buffer of ours.
process_vm_writev honours protections, so pages of areas the target cannot write (relro
data, read-only copies) go through /proc/PID/mem instead, which may write them.

Calls run on `threads` worker threads (the GIL is released in the syscall): most of a
restore is the target's page faults on fresh memory, and two CPUs fault twice as fast.
"""
from __future__ import annotations

import bisect
import os
from array import array
from collections import deque
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from .. import progress
from ..errors import CsError
from ..kernel import vm
from ..memory.source import PageSource
from ..memory.vma import PROT_WRITE

if TYPE_CHECKING:
    from concurrent.futures import ThreadPoolExecutor

# process_vm_writev moves at most MAX_RW_COUNT (2 GiB - 4 KiB) per call; smaller calls also
# spread a few large runs over the worker threads
MAX_CALL = 64 << 20


@dataclass
class WriteStats:
    """Bytes written into the restored process, and how."""
    bytes_vm: int = 0                # through process_vm_writev
    bytes_mem: int = 0               # through /proc/PID/mem
    syscalls: int = 0


@dataclass
class PageWriter:
    """Writes pages into the restored process: process_vm_writev, /proc/PID/mem where read-only."""
    pid: int
    mem_fd: int
    stats: WriteStats = field(default_factory=WriteStats)
    threads: int = min(2, os.cpu_count() or 1)
    _pool: ThreadPoolExecutor | None = None
    _pending: deque = field(default_factory=deque)

    def write(self, src: PageSource, areas: list[tuple[int, int, int]],
              translate=None) -> None:
        """Write every run of src (whose buffers must outlive this call). areas: the
        target's (start, end, prot), sorted; translate maps a run's key (e.g. a shmem
        offset) to [(vaddr, key_offset, nbytes)] pieces."""
        starts = [a[0] for a in areas]
        local = vm.new_iov_array()
        remote = vm.new_iov_array()
        n = batch = 0
        view, base = None, 0
        for key, nbytes, buf, offset in src.mapped():
            if buf is not view:
                view, base = buf, vm.address(buf)
            pieces = translate(key, nbytes) if translate else [(key, 0, nbytes)]
            for vaddr, skip, size in pieces:
                for start, end, writable in _split(areas, starts, vaddr, vaddr + size):
                    off = offset + skip + start - vaddr
                    if writable:
                        while start < end:   # a call moves at most MAX_CALL bytes
                            chunk = min(end - start, MAX_CALL - batch)
                            local[2 * n], local[2 * n + 1] = base + off, chunk
                            remote[2 * n], remote[2 * n + 1] = start, chunk
                            n, batch, start, off = n + 1, batch + chunk, start + chunk, off + chunk
                            if n == vm.IOV_MAX or batch == MAX_CALL:
                                self._flush(local, remote, n)
                                n = batch = 0
                    else:
                        self._pwrite(view[off:off + end - start], start)
        if n and self._pool is None:    # one batch in all (a small process): no worker thread
            self._count(self._writev(local[:2 * n], remote[:2 * n]))
        elif n:
            self._flush(local, remote, n)
        while self._pending:
            self._collect()

    def _flush(self, local: array, remote: array, n: int) -> None:
        """Hand a batch to a worker (copies of the iovecs: the arrays are reused)."""
        if self._pool is None:
            from concurrent.futures import ThreadPoolExecutor
            self._pool = ThreadPoolExecutor(self.threads, thread_name_prefix="coldsnap-writev")
        self._pending.append(self._pool.submit(self._writev, local[:2 * n], remote[:2 * n]))
        if len(self._pending) > 2 * self.threads:
            self._collect()

    def _writev(self, local: array, remote: array) -> int:
        """One process_vm_writev of the iovecs (flat arrays, see kernel/vm.py)."""
        want = sum(local[1::2])
        done = vm.writev_pairs(self.pid, local, remote, len(local) // 2)
        if done != want:
            raise CsError(f"process_vm_writev into {self.pid} wrote {done} of {want} bytes")
        return done

    def _collect(self) -> None:
        self._count(self._pending.popleft().result())

    def _count(self, done: int) -> None:
        self.stats.bytes_vm += done
        self.stats.syscalls += 1
        if progress.reporter:
            progress.reporter("writing pages", self.stats.bytes_vm, 0)

    def _pwrite(self, data, addr: int) -> None:
        view = memoryview(data)
        done = 0
        while done < len(view):
            try:
                k = os.pwrite(self.mem_fd, view[done:], addr + done)
            except OSError as e:
                raise CsError(f"cannot write page {addr + done:#x} of {self.pid}: {e.strerror}") from None
            self.stats.syscalls += 1
            if k <= 0:
                raise CsError(f"cannot write page {addr + done:#x} of {self.pid}: short write")
            done += k
        self.stats.bytes_mem += done

    def close(self) -> None:
        if progress.reporter:
            progress.reporter("writing pages", self.stats.bytes_vm, self.stats.bytes_vm)
        for fut in self._pending:
            fut.cancel()
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None
        self._pending.clear()


def _split(areas: list[tuple[int, int, int]], starts: list[int], lo: int, hi: int):
    """Cut [lo, hi) at area boundaries: (start, end, writable) pieces; outside areas is an error."""
    i = bisect.bisect_right(starts, lo) - 1
    pos = lo
    while pos < hi:
        if i < 0 or i >= len(areas) or not areas[i][0] <= pos < areas[i][1]:
            raise CsError(f"saved page {pos:#x} is outside every restored area")
        end = min(hi, areas[i][1])
        yield pos, end, bool(areas[i][2] & PROT_WRITE)
        pos, i = end, i + 1
