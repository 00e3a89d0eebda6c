"""process_vm_readv/writev with iovec arrays held in numpy (no per-iovec Python objects)."""
from __future__ import annotations

import ctypes
import errno
import os

import numpy as np

from .libc import SYS, libc, process_error

IOV_MAX = 1024

_syscall = libc.syscall
_syscall.restype = ctypes.c_long


class Iovec(ctypes.Structure):
    _fields_ = [("base", ctypes.c_void_p), ("len", ctypes.c_size_t)]


def new_iov_array(n: int = IOV_MAX) -> np.ndarray:
    """An (n, 2) u64 array laid out like struct iovec[n]: column 0 base, column 1 length."""
    return np.zeros((n, 2), dtype=np.uint64)


def _rw(nr: int, pid: int, local_addr: int, local_len: int, remote: np.ndarray, count: int) -> int:
    local = Iovec(local_addr, local_len)
    res = _syscall(ctypes.c_long(nr), ctypes.c_long(pid), ctypes.byref(local), ctypes.c_ulong(1),
                   ctypes.c_void_p(remote.ctypes.data), ctypes.c_ulong(count), ctypes.c_ulong(0))
    if res == -1:
        raise process_error(ctypes.get_errno(), pid)
    return res


def readv(pid: int, local_addr: int, local_len: int, remote: np.ndarray, count: int) -> int:
    """Copy remote[:count] ranges of pid into local memory; returns bytes read (may be short)."""
    return _rw(SYS.process_vm_readv, pid, local_addr, local_len, remote, count)


def writev(pid: int, local_addr: int, local_len: int, remote: np.ndarray, count: int) -> int:
    """Copy local memory into remote[:count] ranges of pid; returns bytes written (may be short)."""
    return _rw(SYS.process_vm_writev, pid, local_addr, local_len, remote, count)


def writev_pairs(pid: int, local: np.ndarray, remote: np.ndarray, count: int) -> int:
    """process_vm_writev with count local and count remote iovecs ((n, 2) u64 arrays)."""
    res = _syscall(ctypes.c_long(SYS.process_vm_writev), ctypes.c_long(pid),
                   ctypes.c_void_p(local.ctypes.data), ctypes.c_ulong(count),
                   ctypes.c_void_p(remote.ctypes.data), ctypes.c_ulong(count), ctypes.c_ulong(0))
    if res == -1:
        raise process_error(ctypes.get_errno(), pid)
    return res


# -- this process's own memory (the migration's restore worker builds areas in itself) ------

MAP_FIXED_NOREPLACE = 0x100000
MADV_DONTNEED, MADV_DONTFORK, MADV_DOFORK = 4, 10, 11


def map_anon_at(addr: int, size: int, flags: int) -> bool:
    """mmap(addr, size, PROT_READ|PROT_WRITE, flags|MAP_FIXED_NOREPLACE) of anonymous memory
    in this process; False when something of ours is already there (EEXIST)."""
    res = _syscall(ctypes.c_long(SYS.mmap), ctypes.c_ulong(addr), ctypes.c_ulong(size), ctypes.c_ulong(3),
                   ctypes.c_ulong(flags | MAP_FIXED_NOREPLACE), ctypes.c_long(-1), ctypes.c_ulong(0))
    if res == -1:
        err = ctypes.get_errno()
        if err == errno.EEXIST:
            return False
        raise OSError(err, f"mmap {addr:#x}+{size:#x}: {os.strerror(err)}")
    if res != addr:                 # a kernel before 4.17 takes the flag as a mere hint
        _syscall(ctypes.c_long(SYS.munmap), ctypes.c_ulong(res), ctypes.c_ulong(size))
        return False
    return True


def unmap(addr: int, size: int) -> None:
    if _syscall(ctypes.c_long(SYS.munmap), ctypes.c_ulong(addr), ctypes.c_ulong(size)) == -1:
        err = ctypes.get_errno()
        raise OSError(err, f"munmap {addr:#x}+{size:#x}: {os.strerror(err)}")


def madvise(addr: int, size: int, advice: int) -> None:
    if _syscall(ctypes.c_long(SYS.madvise), ctypes.c_ulong(addr), ctypes.c_ulong(size), ctypes.c_ulong(advice)) == -1:
        err = ctypes.get_errno()
        raise OSError(err, f"madvise({advice}) {addr:#x}+{size:#x}: {os.strerror(err)}")


def preadv_pairs(fd: int, iov: np.ndarray, count: int, offset: int) -> int:
    """preadv(2) of iov[:count] (an (n, 2) u64 array: our addresses, lengths) at OFFSET."""
    res = _syscall(ctypes.c_long(SYS.preadv), ctypes.c_long(fd), ctypes.c_void_p(iov.ctypes.data),
                   ctypes.c_ulong(count), ctypes.c_ulong(offset), ctypes.c_ulong(0))
    if res == -1:
        err = ctypes.get_errno()
        raise OSError(err, f"preadv: {os.strerror(err)}")
    return res
