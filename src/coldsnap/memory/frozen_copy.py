"""Copy the pages of a frozen task into a pages file, on worker threads.

With the task frozen nothing changes under us, so each page's place in the file is known
before copying: the ranges, in address order and cut into pieces of at most `chunk` bytes,
go back to back. Workers copy pieces in parallel — process_vm_readv into a buffer of their
own, then pwrite at the piece's offset (both release the GIL). Most of the cost is the
image file's fresh pages, which two CPUs allocate twice as fast as one. What
process_vm_readv cannot read (areas without PROT_READ) comes from /proc/PID/mem, which may
(FOLL_FORCE); a page neither can read fails the copy.

The live drain (memory/drain.py) cannot work this way: there a page may vanish mid-copy,
so offsets are only known once pages are read.
"""
from __future__ import annotations

import ctypes
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from ..errors import TargetError
from ..kernel import vm
from ..kernel.pagemap import PAGE_SIZE
from .ranges import Ranges

CHUNK = 4 << 20


@dataclass
class CopyStats:
    bytes: int = 0
    forced_bytes: int = 0            # read through /proc/PID/mem
    syscalls: int = 0


def pieces(ranges: Ranges, chunk: int = CHUNK) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(addresses, lengths, file offsets) of RANGES cut into pieces of at most CHUNK bytes."""
    s, e = ranges.starts.astype(np.uint64), ranges.ends.astype(np.uint64)
    counts = ((e - s + np.uint64(chunk - 1)) // np.uint64(chunk)).astype(np.int64)
    first = np.repeat(s, counts)
    k = np.arange(counts.sum()) - np.repeat(np.cumsum(counts) - counts, counts)
    addrs = first + k.astype(np.uint64) * np.uint64(chunk)
    lens = np.minimum(np.repeat(e, counts) - addrs, np.uint64(chunk))
    offs = np.cumsum(lens) - lens
    return addrs, lens, offs


class _Worker(threading.local):
    def __init__(self, chunk: int):
        self.buf = bytearray(chunk)
        self.addr = ctypes.addressof((ctypes.c_char * chunk).from_buffer(self.buf))
        self.iov = vm.new_iov_array(1)


def copy_frozen(pid: int, mem_fd: int, ranges: Ranges, out_fd: int, *, threads: int = 2,
                chunk: int = CHUNK) -> CopyStats:
    """Write the bytes of RANGES (a frozen task's pages) to OUT_FD from offset 0, back to back."""
    addrs, lens, offs = pieces(ranges, chunk)
    local = _Worker(chunk)

    def copy(addr: int, n: int, off: int) -> tuple[int, int]:
        w = local
        w.iov[0] = (addr, n)
        try:
            got = vm.readv(pid, w.addr, n, w.iov, 1)
        except OSError:
            got = 0                     # the first page is unreadable this way
        calls, view = 1, memoryview(w.buf)
        forced = n - got
        while got < n:                  # no PROT_READ (or a failure): through /proc/PID/mem
            try:
                k = os.preadv(mem_fd, [view[got:n]], addr + got)
            except OSError as e:
                raise TargetError(f"cannot read page {addr + got:#x} of {pid}: {e.strerror}") from None
            calls += 1
            if k <= 0:
                raise TargetError(f"cannot read page {(addr + got) // PAGE_SIZE * PAGE_SIZE:#x} of {pid}")
            got += k
        done = 0
        while done < n:
            done += os.pwrite(out_fd, view[done:n], off + done)
            calls += 1
        return forced, calls

    stats = CopyStats(bytes=int(lens.sum()))
    jobs = zip(addrs.tolist(), lens.tolist(), offs.tolist())
    if threads <= 1 or len(addrs) < 2:
        results = [copy(*job) for job in jobs]
    else:
        with ThreadPoolExecutor(threads, thread_name_prefix="coldsnap-copy") as pool:
            results = list(pool.map(lambda job: copy(*job), jobs))
    for forced, calls in results:
        stats.forced_bytes += forced
        stats.syscalls += calls
    return stats
