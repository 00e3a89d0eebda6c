"""process_vm_readv/writev with iovec arrays held in numpy (no per-iovec Python objects)."""
from __future__ import annotations

import ctypes

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
