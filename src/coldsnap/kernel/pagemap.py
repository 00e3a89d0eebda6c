"""Page-table queries on /proc/PID/pagemap: the PAGEMAP_SCAN ioctl and the plain u64 read.

Scan results are flat array('Q') of (start, end, categories) regions, or numpy arrays for
callers that ask (numpy imported by those calls only: a dump's default path never loads it).
"""
from __future__ import annotations

import ctypes
import functools
import mmap
import os
from array import array
from typing import TYPE_CHECKING, NamedTuple

from .libc import check, libc, on_process

if TYPE_CHECKING:
    import numpy as np

from .page import PAGE_SHIFT, PAGE_SIZE  # noqa: F401  (pm.PAGE_SIZE for callers of this module)

PAGEMAP_SCAN = 0xC0606610
# Page categories reported and matched by PAGEMAP_SCAN.
PAGE_IS_WPALLOWED = 1 << 0
PAGE_IS_WRITTEN = 1 << 1
PAGE_IS_FILE = 1 << 2
PAGE_IS_PRESENT = 1 << 3
PAGE_IS_SWAPPED = 1 << 4
PAGE_IS_PFNZERO = 1 << 5
PAGE_IS_HUGE = 1 << 6
PAGE_IS_SOFT_DIRTY = 1 << 7
PAGE_IS_GUARD = 1 << 8          # a guard region page (MADV_GUARD_INSTALL), Linux 6.14+
PM_SCAN_WP_MATCHING = 1 << 0
PM_SCAN_CHECK_WPASYNC = 1 << 1

# Highest user address the ioctl accepts here (1 << 47 gives EFAULT).
USER_END = 0x7FFFFFFFF000

# Bits of a /proc/PID/pagemap entry.
PM_PRESENT = 1 << 63
PM_SWAPPED = 1 << 62
PM_FILE_OR_SHARED = 1 << 61
PM_GUARD_REGION = 1 << 58
PM_EXCLUSIVE = 1 << 56
PM_SOFT_DIRTY = 1 << 55
PM_PFN_MASK = (1 << 55) - 1

# A PAGEMAP_SCAN result region (struct page_region), as a numpy dtype spec: any dtype= takes it.
REGION_DTYPE = [("start", "<u8"), ("end", "<u8"), ("categories", "<u8")]


class PmScanArg(ctypes.Structure):
    _fields_ = [(name, ctypes.c_uint64) for name in (
        "size", "flags", "start", "end", "walk_end", "vec", "vec_len", "max_pages",
        "category_inverted", "category_mask", "category_anyof_mask", "return_mask")]


_ioctl = libc.ioctl
_ioctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_void_p]
_ioctl.restype = ctypes.c_int


class ScanQuery(NamedTuple):
    """Which pages PAGEMAP_SCAN should report (see the kernel's pagemap documentation)."""
    category_mask: int = 0
    category_inverted: int = 0
    category_anyof_mask: int = 0
    return_mask: int = PAGE_IS_PRESENT
    flags: int = 0
    max_pages: int = 0


# regions the result vector holds at first (6 KiB): most scans return fewer. One that fills
# it goes on with a vector four times as large, up to the scanner's vec_len: a vector of
# 32768 regions made at once (768 KiB, zeroed and copied: ~400 page faults) took 0.4-0.8 ms,
# inside a dump's frozen window
FIRST_VEC_LEN = 256


class PagemapScanner:
    """PAGEMAP_SCAN over one process's pagemap, with a reused result vector (of at most
    vec_len regions)."""

    def __init__(self, pagemap_fd: int, vec_len: int = 1 << 15):
        self.fd = pagemap_fd
        self._max_len = vec_len
        self._vec_len = min(vec_len, FIRST_VEC_LEN)
        self._vec = array("Q", bytes(24 * self._vec_len))     # struct page_region[_vec_len]
        self._arg = PmScanArg(size=ctypes.sizeof(PmScanArg))
        self.calls = 0

    def _grow(self) -> None:
        if self._vec_len < self._max_len:
            self._vec_len = min(self._max_len, 4 * self._vec_len)
            self._vec = array("Q", bytes(24 * self._vec_len))

    def scan_flat(self, start: int, end: int, q: ScanQuery) -> array:
        """Regions of [start, end) matching q, flat: start, end, categories of each in turn
        (an array('Q'), copied out; no numpy)."""
        arg = self._arg
        arg.flags, arg.max_pages = q.flags, q.max_pages
        arg.category_inverted, arg.category_mask = q.category_inverted, q.category_mask
        arg.category_anyof_mask, arg.return_mask = q.category_anyof_mask, q.return_mask
        out = array("Q")
        while start < end:
            vec = self._vec
            arg.vec, arg.vec_len = vec.buffer_info()[0], self._vec_len
            arg.start, arg.end, arg.walk_end = start, end, 0
            self.calls += 1
            n = check(_ioctl(self.fd, PAGEMAP_SCAN, ctypes.byref(arg)), "PAGEMAP_SCAN")
            if n:
                out.extend(vec[:3 * n] if n < self._vec_len else vec)
            if n < self._vec_len or q.max_pages:
                break                   # the walk ended: it stops early only on a full vector
            # full: go on past the last region. Not from walk_end alone: 6.18 may report it
            # megabytes short of regions it returned (a walk of 8192 regions over 64 MiB,
            # done, said 4 MiB before its end), and those would come twice
            nxt = max(arg.walk_end, out[-2])
            if nxt <= start:           # defensive: the kernel always makes progress
                break
            start = nxt
            self._grow()
        return out

    def scan(self, start: int, end: int, q: ScanQuery) -> np.ndarray:
        """Regions of [start, end) matching q, as an (n,) REGION_DTYPE array (imports numpy)."""
        import numpy as np
        return np.frombuffer(self.scan_flat(start, end, q), dtype=REGION_DTYPE)

    def reset_written(self, start: int, end: int) -> None:
        """Write-protect again every written page of [start, end) (vec_len 0 = pure reset)."""
        arg = self._arg
        arg.flags, arg.max_pages = PM_SCAN_WP_MATCHING | PM_SCAN_CHECK_WPASYNC, 0
        arg.category_inverted = arg.category_anyof_mask = 0
        arg.category_mask = arg.return_mask = PAGE_IS_WRITTEN
        arg.vec, arg.vec_len = 0, 0
        arg.start, arg.end, arg.walk_end = start, end, 0
        self.calls += 1
        check(_ioctl(self.fd, PAGEMAP_SCAN, ctypes.byref(arg)), "PAGEMAP_SCAN reset")


@on_process
def open_pagemap(pid: int) -> int:
    return os.open(f"/proc/{pid}/pagemap", os.O_RDONLY | os.O_CLOEXEC)


def read_entries(pagemap_fd: int, start: int, end: int) -> np.ndarray:
    """The raw u64 pagemap entries of [start, end), one pread per call."""
    import numpy as np
    n = (end - start) >> PAGE_SHIFT
    buf = np.empty(n, dtype="<u8")
    got = os.preadv(pagemap_fd, [memoryview(buf).cast("B")], (start >> PAGE_SHIFT) * 8)
    return buf[: got // 8]


def read_entries_plain(pagemap_fd: int, start: int, end: int) -> array:
    """read_entries as an array('Q') (no numpy), for a few pages."""
    buf = array("Q", bytes(((end - start) >> PAGE_SHIFT) * 8))
    got = os.preadv(pagemap_fd, [memoryview(buf).cast("B")], (start >> PAGE_SHIFT) * 8)
    del buf[got // 8:]
    return buf


def read_entry(pagemap_fd: int, addr: int) -> int:
    """The raw u64 pagemap entry of the page at addr, as an int."""
    data = os.pread(pagemap_fd, 8, (addr >> PAGE_SHIFT) * 8)
    if len(data) != 8:
        raise OSError(f"short read of the pagemap entry of {addr:#x}")
    return int.from_bytes(data, "little")


def _scan_accepts(start: int, end: int, return_mask: int) -> bool:
    """One PAGEMAP_SCAN of our own [start, end) asking for RETURN_MASK: True unless the
    kernel refuses it (no such ioctl, or a category it does not know)."""
    fd = open_pagemap(os.getpid())
    try:
        vec = (ctypes.c_uint64 * (3 * 4))()       # 4 page_region entries
        arg = PmScanArg(size=ctypes.sizeof(PmScanArg), start=start, end=end,
                        vec=ctypes.addressof(vec), vec_len=4, return_mask=return_mask)
        try:
            check(_ioctl(fd, PAGEMAP_SCAN, ctypes.byref(arg)), "PAGEMAP_SCAN")
            return True
        except OSError:
            return False
    finally:
        os.close(fd)


@functools.cache
def has_pagemap_scan() -> bool:
    """True when this kernel offers PAGEMAP_SCAN (probed on a page of our own; no numpy)."""
    probe = mmap.mmap(-1, PAGE_SIZE, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    cbuf = ctypes.c_char.from_buffer(probe)
    try:
        addr = ctypes.addressof(cbuf)
        return _scan_accepts(addr, addr + PAGE_SIZE, PAGE_IS_PRESENT)
    finally:
        del cbuf
        probe.close()


@functools.cache
def has_guard_category() -> bool:
    """True when PAGEMAP_SCAN knows PAGE_IS_GUARD (an older kernel refuses the bit)."""
    return has_pagemap_scan() and _scan_accepts(0x10000, 0x11000, PAGE_IS_GUARD)


_zero_pfn: int | None = None


def zero_pfn() -> int:
    """PFN of the shared zero page, learned from a page of our own that maps it."""
    global _zero_pfn
    if _zero_pfn is None:
        probe = mmap.mmap(-1, PAGE_SIZE, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
        try:
            probe[0]  # a read fault on private anonymous memory maps the zero page
            buf = (ctypes.c_char * PAGE_SIZE).from_buffer(probe)
            addr = ctypes.addressof(buf)
            fd = open_pagemap(os.getpid())
            try:
                entry = read_entry(fd, addr)
            finally:
                os.close(fd)
            del buf
        finally:
            probe.close()
        _zero_pfn = entry & PM_PFN_MASK if entry & PM_PRESENT else -1
    return _zero_pfn
