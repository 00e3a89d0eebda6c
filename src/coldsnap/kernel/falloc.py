"""fallocate(2), which the os module lacks (it has posix_fallocate only): punching holes."""
from __future__ import annotations

import ctypes

from .libc import check, libc

FALLOC_FL_KEEP_SIZE = 0x01
FALLOC_FL_PUNCH_HOLE = 0x02


def punch_hole(fd: int, offset: int, length: int) -> None:
    """Free the bytes [offset, offset+length) of file FD, its size kept (they read as zeros).
    OSError as fallocate(2) fails: EOPNOTSUPP where the file system cannot."""
    # typed at the call: the shared libc handle's attributes are not ours to configure
    check(libc.fallocate(ctypes.c_int(fd), ctypes.c_int(FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE),
                         ctypes.c_long(offset), ctypes.c_long(length)), "fallocate")
