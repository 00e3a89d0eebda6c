"""process_vm_readv/writev with iovec arrays held in array('Q') (no per-iovec Python objects).

An iovec array is flat: base, length of iovec 0, then of iovec 1... (numpy (n, 2) uint64
arrays work too, for callers that have them)."""
from __future__ import annotations

import ctypes
import errno
import functools
import os
from array import array

from .libc import SYS, libc, process_error

IOV_MAX = 1024

_syscall = libc.syscall
_syscall.restype = ctypes.c_long


class Iovec(ctypes.Structure):
    _fields_ = [("base", ctypes.c_void_p), ("len", ctypes.c_size_t)]


def new_iov_array(n: int = IOV_MAX) -> array:
    """Room for n iovecs laid out like struct iovec[n]: iov[2k] base, iov[2k + 1] length."""
    return array("Q", bytes(16 * n))


class _PyBuffer(ctypes.Structure):
    _fields_ = [("buf", ctypes.c_void_p), ("obj", ctypes.c_void_p), ("len", ctypes.c_ssize_t),
                ("itemsize", ctypes.c_ssize_t), ("readonly", ctypes.c_int), ("ndim", ctypes.c_int),
                ("format", ctypes.c_char_p), ("shape", ctypes.c_void_p), ("strides", ctypes.c_void_p),
                ("suboffsets", ctypes.c_void_p), ("internal", ctypes.c_void_p)]


_get_buffer = ctypes.pythonapi.PyObject_GetBuffer
_get_buffer.argtypes = [ctypes.py_object, ctypes.POINTER(_PyBuffer), ctypes.c_int]
_release_buffer = ctypes.pythonapi.PyBuffer_Release
_release_buffer.argtypes = [ctypes.POINTER(_PyBuffer)]


def address(buf) -> int:
    """Address of the first byte of any contiguous buffer (array, bytearray, memoryview,
    mmap, numpy array), read-only ones too. Valid while BUF lives (and is not resized):
    the caller keeps it."""
    if isinstance(buf, array):
        return buf.buffer_info()[0]
    view = _PyBuffer()
    _get_buffer(buf, ctypes.byref(view), 0)     # PyBUF_SIMPLE: contiguous bytes
    try:
        return view.buf or 0
    finally:
        _release_buffer(ctypes.byref(view))


def _rw(nr: int, pid: int, local_addr: int, local_len: int, remote, count: int) -> int:
    local = Iovec(local_addr, local_len)
    res = _syscall(ctypes.c_long(nr), ctypes.c_long(pid), ctypes.byref(local), ctypes.c_ulong(1),
                   ctypes.c_void_p(address(remote)), ctypes.c_ulong(count), ctypes.c_ulong(0))
    if res == -1:
        raise process_error(ctypes.get_errno(), pid)
    return res


def readv(pid: int, local_addr: int, local_len: int, remote, count: int) -> int:
    """Copy the first count remote iovecs of pid into local memory; returns bytes read (may be short)."""
    return _rw(SYS.process_vm_readv, pid, local_addr, local_len, remote, count)


def writev(pid: int, local_addr: int, local_len: int, remote, count: int) -> int:
    """Copy local memory into the first count remote iovecs of pid; returns bytes written (may be short)."""
    return _rw(SYS.process_vm_writev, pid, local_addr, local_len, remote, count)


def writev_pairs(pid: int, local, remote, count: int) -> int:
    """process_vm_writev with count local and count remote iovecs."""
    res = _syscall(ctypes.c_long(SYS.process_vm_writev), ctypes.c_long(pid),
                   ctypes.c_void_p(address(local)), ctypes.c_ulong(count),
                   ctypes.c_void_p(address(remote)), ctypes.c_ulong(count), ctypes.c_ulong(0))
    if res == -1:
        raise process_error(ctypes.get_errno(), pid)
    return res


# -- this process's own memory (the migration's restore worker builds areas in itself) ------

MAP_FIXED_NOREPLACE = 0x100000
MADV_DONTNEED, MADV_DONTFORK, MADV_DOFORK, MADV_WIPEONFORK = 4, 10, 11, 18
MADV_POPULATE_READ = 22        # Linux 5.14: fill the page tables of a range, reading
MADV_POPULATE_WRITE = 23       # Linux 5.14: the same, writing (a private page shared since fork is copied)


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


def preadv_pairs(fd: int, iov, count: int, offset: int) -> int:
    """preadv(2) of the first count iovecs of IOV (our addresses, lengths) at OFFSET."""
    res = _syscall(ctypes.c_long(SYS.preadv), ctypes.c_long(fd), ctypes.c_void_p(address(iov)),
                   ctypes.c_ulong(count), ctypes.c_ulong(offset), ctypes.c_ulong(0))
    if res == -1:
        err = ctypes.get_errno()
        raise OSError(err, f"preadv: {os.strerror(err)}")
    return res


@functools.cache
def thp_always() -> bool:
    """Transparent huge pages for every anonymous area (THP `enabled` is `always`): a write
    fault of an aligned 2 MiB range then brings a huge page."""
    try:
        with open("/sys/kernel/mm/transparent_hugepage/enabled") as f:
            return "[always]" in f.read()
    except OSError:
        return False


PROT_READ, PROT_EXEC = 1, 4
MAP_PRIVATE_ANONYMOUS = 0x22


def map_code(code: bytes) -> int:
    """A private page (or more) of ours holding CODE, readable and executable and never
    writable (written through /proc/self/mem, which goes past the protection: no W+X, as
    MDWE and MemoryDenyWriteExecute filters demand); its address. unmap() it when done."""
    size = (len(code) + 4095) & ~4095
    addr = _syscall(ctypes.c_long(SYS.mmap), ctypes.c_ulong(0), ctypes.c_ulong(size),
                    ctypes.c_ulong(PROT_READ | PROT_EXEC), ctypes.c_ulong(MAP_PRIVATE_ANONYMOUS), ctypes.c_long(-1),
                    ctypes.c_ulong(0))
    if addr == -1:
        err = ctypes.get_errno()
        raise OSError(err, f"mmap of a code page: {os.strerror(err)}")
    try:
        write_code(addr, code)
    except BaseException:
        unmap(addr, size)
        raise
    return addr


def write_code(addr: int, code: bytes) -> None:
    """Write CODE at ADDR in our own memory (a page of map_code's) through /proc/self/mem."""
    from .procfs import open_mem
    fd = open_mem(os.getpid(), os.O_RDWR)
    try:
        if os.pwrite(fd, code, addr) != len(code):
            raise OSError(errno.EIO, "short write of a code page")
    finally:
        os.close(fd)
