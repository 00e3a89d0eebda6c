"""Thin bindings of the pipe system calls coldsnap needs beyond os: tee, splice and
vmsplice. Each raises OSError on failure; EAGAIN is the caller's business."""
from __future__ import annotations

import ctypes
import mmap

from .libc import check, libc

F_SETPIPE_SZ, F_GETPIPE_SZ = 1031, 1032
SPLICE_F_NONBLOCK = 2
PAGE = mmap.PAGESIZE


class _Iovec(ctypes.Structure):
    _fields_ = [("base", ctypes.c_void_p), ("len", ctypes.c_size_t)]


_tee = libc.tee
_tee.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_size_t, ctypes.c_uint]
_tee.restype = ctypes.c_ssize_t
_splice = libc.splice
_splice.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_int, ctypes.c_void_p, ctypes.c_size_t, ctypes.c_uint]
_splice.restype = ctypes.c_ssize_t
_vmsplice = libc.vmsplice
_vmsplice.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_size_t, ctypes.c_uint]
_vmsplice.restype = ctypes.c_ssize_t


def tee(rd: int, wr: int, n: int, flags: int = 0) -> int:
    """Duplicate up to n bytes of pipe rd into pipe wr, consuming nothing."""
    return check(_tee(rd, wr, n, flags), "tee")


def splice_pipes(rd: int, wr: int, n: int, flags: int = 0) -> int:
    """Move up to n bytes from pipe rd to pipe wr (whole buffers while they fit)."""
    return check(_splice(rd, None, wr, None, n, flags), "splice")


def vmsplice_pages(wr: int, chunks: list[bytes]) -> None:
    """Hand pipe wr one buffer per chunk (each at most a page): the chunks are copied into
    fresh pages of an anonymous mapping of our own, given to the pipe by reference, and the
    mapping is unmapped at once, so that nothing can write to those pages any more. A
    spliced buffer does not take later writes into its room, unlike a written one."""
    if not chunks:
        return
    area = mmap.mmap(-1, len(chunks) * PAGE)
    try:
        for i, c in enumerate(chunks):
            area[i * PAGE:i * PAGE + len(c)] = c
        holder = ctypes.c_char.from_buffer(area)
        base = ctypes.addressof(holder)
        try:
            iov = (_Iovec * len(chunks))(*((base + i * PAGE, len(c)) for i, c in enumerate(chunks)))
            first, at = 0, 0          # the iovec and byte within it where the pipe stopped
            while first < len(chunks):
                iov[first].base, iov[first].len = base + first * PAGE + at, len(chunks[first]) - at
                n = check(_vmsplice(wr, ctypes.addressof(iov) + first * ctypes.sizeof(_Iovec),
                                    min(len(chunks) - first, 1024), 0), "vmsplice")
                while first < len(chunks) and n >= iov[first].len:
                    n -= iov[first].len
                    first, at = first + 1, 0
                at += n
        finally:
            del holder
    finally:
        area.close()

