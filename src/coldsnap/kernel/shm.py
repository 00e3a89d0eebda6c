"""Shared memory objects made by coldsnap itself: thin bindings, no policy."""
from __future__ import annotations

import ctypes
import os

from .libc import SYS, syscall
from .page import PAGE_SIZE
from .procfs import open_map_file

PROT_READ, PROT_WRITE = 1, 2
MAP_SHARED, MAP_ANONYMOUS = 0x01, 0x20
_LOW_BIT = bytes(b & 1 for b in range(256))    # mincore's other bits are reserved


def anon_shmem(size: int) -> int:
    """An O_RDWR fd on a new shared anonymous object of SIZE bytes (page-aligned): the very
    kind MAP_SHARED|MAP_ANONYMOUS makes ("/dev/zero (deleted)" in maps), made by mapping it
    here, opening the mapping's /proc/self/map_files link and unmapping it again."""
    addr = syscall(SYS.mmap, 0, size, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS,
                   -1 & 0xFFFFFFFFFFFFFFFF, 0, what="mmap shared anonymous")
    try:
        return open_map_file(os.getpid(), addr, addr + size, os.O_RDWR)
    finally:
        syscall(SYS.munmap, addr, size, what="munmap")


def resident_pages(addr: int, size: int) -> bytes:
    """mincore(2) of our own mapping [addr, addr+size): one byte per page, 1 when the page
    is in memory, 0 otherwise (a page of a shared object in swap reads 0)."""
    n = (size + PAGE_SIZE - 1) // PAGE_SIZE
    vec = (ctypes.c_uint8 * n)()
    syscall(SYS.mincore, addr, size, ctypes.addressof(vec), what="mincore")
    return bytes(vec).translate(_LOW_BIT)
