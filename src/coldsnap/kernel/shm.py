"""Shared memory objects made by coldsnap itself: thin bindings, no policy."""
from __future__ import annotations

import os

import numpy as np

from .libc import SYS, syscall
from .page import PAGE_SIZE
from .procfs import open_map_file

PROT_READ, PROT_WRITE = 1, 2
MAP_SHARED, MAP_ANONYMOUS = 0x01, 0x20


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


def resident_pages(addr: int, size: int) -> np.ndarray:
    """mincore(2) of our own mapping [addr, addr+size): one bool per page, True when the page
    is in memory (a page of a shared object in swap reads False)."""
    n = (size + PAGE_SIZE - 1) // PAGE_SIZE
    vec = np.zeros(n, np.uint8)
    syscall(SYS.mincore, addr, size, vec.ctypes.data, what="mincore")
    return (vec & 1).astype(bool)
