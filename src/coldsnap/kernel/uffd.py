"""userfaultfd constants and ioctls, usable on an fd taken from another process.

The ioctls act on the mm that created the uffd, so a tracer can drive a uffd it took
with pidfd_getfd. UFFDIO_API may be called once per uffd.
"""
from __future__ import annotations

import ctypes
import struct

from coldsnap.kernel.libc import check, libc

UFFD_API = 0xAA
UFFD_USER_MODE_ONLY = 1          # userfaultfd() flag; needed by unprivileged callers

# features (uffdio_api.features)
UFFD_FEATURE_PAGEFAULT_FLAG_WP = 1 << 0
UFFD_FEATURE_EVENT_FORK = 1 << 1
UFFD_FEATURE_EVENT_REMAP = 1 << 2
UFFD_FEATURE_EVENT_REMOVE = 1 << 3
UFFD_FEATURE_MISSING_HUGETLBFS = 1 << 4
UFFD_FEATURE_MISSING_SHMEM = 1 << 5
UFFD_FEATURE_EVENT_UNMAP = 1 << 6
UFFD_FEATURE_SIGBUS = 1 << 7
UFFD_FEATURE_THREAD_ID = 1 << 8
UFFD_FEATURE_MINOR_HUGETLBFS = 1 << 9
UFFD_FEATURE_MINOR_SHMEM = 1 << 10
UFFD_FEATURE_EXACT_ADDRESS = 1 << 11
UFFD_FEATURE_WP_HUGETLBFS_SHMEM = 1 << 12
UFFD_FEATURE_WP_UNPOPULATED = 1 << 13
UFFD_FEATURE_POISON = 1 << 14
UFFD_FEATURE_WP_ASYNC = 1 << 15
UFFD_FEATURE_MOVE = 1 << 16

# register modes
UFFDIO_REGISTER_MODE_MISSING = 1
UFFDIO_REGISTER_MODE_WP = 2
UFFDIO_REGISTER_MODE_MINOR = 4

# writeprotect modes
UFFDIO_WRITEPROTECT_MODE_WP = 1
UFFDIO_WRITEPROTECT_MODE_DONTWAKE = 2

# ioctl numbers: _IOWR/_IOR(0xAA, nr, struct)
UFFDIO_API = 0xC018AA3F
UFFDIO_REGISTER = 0xC020AA00
UFFDIO_UNREGISTER = 0x8010AA01
UFFDIO_WRITEPROTECT = 0xC018AA06


class UffdioApi(ctypes.Structure):
    _fields_ = [("api", ctypes.c_uint64), ("features", ctypes.c_uint64), ("ioctls", ctypes.c_uint64)]


class UffdioRange(ctypes.Structure):
    _fields_ = [("start", ctypes.c_uint64), ("len", ctypes.c_uint64)]


class UffdioRegister(ctypes.Structure):
    _fields_ = [("range", UffdioRange), ("mode", ctypes.c_uint64), ("ioctls", ctypes.c_uint64)]


class UffdioWriteprotect(ctypes.Structure):
    _fields_ = [("range", UffdioRange), ("mode", ctypes.c_uint64)]


_ioctl = libc.ioctl
_ioctl.restype = ctypes.c_int
_ioctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_void_p]


def _do(fd: int, request: int, arg: ctypes.Structure, what: str) -> None:
    check(_ioctl(fd, request, ctypes.addressof(arg)), what)


class _Record:
    """A few named ints, equal by value. Plain classes, not dataclasses: this module is
    imported by every restore (its pages go in by UFFDIO_COPY), and a frozen slotted
    dataclass costs 0.5-1.5 ms to build at import."""
    __slots__ = ()

    def __eq__(self, other: object) -> bool:
        return type(other) is type(self) and all(getattr(self, f) == getattr(other, f) for f in self.__slots__)

    def __hash__(self) -> int:
        return hash(tuple(getattr(self, f) for f in self.__slots__))

    def __repr__(self) -> str:
        return f"{type(self).__name__}({', '.join(f'{f}={getattr(self, f)!r}' for f in self.__slots__)})"


class ApiResult(_Record):
    """UFFDIO_API outcome: success means every requested feature is enabled. granted: the
    features we asked for (all enabled, or the call failed); available: every feature this
    kernel offers; ioctls: bitmask of ioctls usable on the uffd."""
    __slots__ = ("granted", "available", "ioctls")

    def __init__(self, granted: int, available: int, ioctls: int):
        self.granted, self.available, self.ioctls = granted, available, ioctls


def api(fd: int, features: int) -> ApiResult:
    """Handshake; EINVAL when a requested feature is unknown or unavailable."""
    arg = UffdioApi(UFFD_API, features, 0)
    _do(fd, UFFDIO_API, arg, "UFFDIO_API")
    return ApiResult(granted=features, available=arg.features, ioctls=arg.ioctls)


def register(fd: int, start: int, length: int, mode: int = UFFDIO_REGISTER_MODE_WP) -> int:
    """Register [start, start+length) (page aligned); returns the range's ioctl mask."""
    arg = UffdioRegister(UffdioRange(start, length), mode, 0)
    _do(fd, UFFDIO_REGISTER, arg, f"UFFDIO_REGISTER {start:#x}+{length:#x}")
    return arg.ioctls


def unregister(fd: int, start: int, length: int) -> None:
    _do(fd, UFFDIO_UNREGISTER, UffdioRange(start, length), f"UFFDIO_UNREGISTER {start:#x}+{length:#x}")


def writeprotect(fd: int, start: int, length: int, protect: bool = True, wake: bool = True) -> None:
    mode = (UFFDIO_WRITEPROTECT_MODE_WP if protect else 0) | (0 if wake else UFFDIO_WRITEPROTECT_MODE_DONTWAKE)
    _do(fd, UFFDIO_WRITEPROTECT, UffdioWriteprotect(UffdioRange(start, length), mode),
        f"UFFDIO_WRITEPROTECT {start:#x}+{length:#x}")


# -- filling missing pages (lazy restore) -----------------------------------------------------

UFFDIO_WAKE = 0x8010AA02
UFFDIO_COPY = 0xC028AA03
UFFDIO_ZEROPAGE = 0xC020AA04

# uffd_msg.event
UFFD_EVENT_PAGEFAULT = 0x12
UFFD_EVENT_FORK = 0x13
UFFD_EVENT_REMAP = 0x14
UFFD_EVENT_REMOVE = 0x15
UFFD_EVENT_UNMAP = 0x16
UFFD_PAGEFAULT_FLAG_WRITE = 1
MSG_SIZE = 32                    # sizeof(struct uffd_msg)


class UffdioCopy(ctypes.Structure):
    _fields_ = [("dst", ctypes.c_uint64), ("src", ctypes.c_uint64), ("len", ctypes.c_uint64),
                ("mode", ctypes.c_uint64), ("copy", ctypes.c_int64)]


class UffdioZeropage(ctypes.Structure):
    _fields_ = [("range", UffdioRange), ("mode", ctypes.c_uint64), ("zeropage", ctypes.c_int64)]


def _raw(fd: int, request: int, arg: ctypes.Structure) -> int:
    """0, or -errno (the filling ioctls fail in ways their caller handles: EEXIST, EAGAIN...)."""
    if _ioctl(fd, request, ctypes.addressof(arg)) == 0:
        return 0
    return -ctypes.get_errno()


def copy(fd: int, dst: int, src: int, length: int) -> tuple[int, int]:
    """UFFDIO_COPY [src, src+length) of our memory to dst of the uffd's mm, waking its
    waiters: (0 or -errno, bytes copied; on a partial copy the first is -EAGAIN or -EEXIST)."""
    arg = UffdioCopy(dst, src, length, 0, 0)
    err = _raw(fd, UFFDIO_COPY, arg)
    return err, max(0, arg.copy)


def zeropage(fd: int, start: int, length: int) -> int:
    """UFFDIO_ZEROPAGE: map the zero page at missing pages of [start, start+length); 0 or -errno."""
    return _raw(fd, UFFDIO_ZEROPAGE, UffdioZeropage(UffdioRange(start, length), 0, 0))


def wake(fd: int, start: int, length: int) -> int:
    """UFFDIO_WAKE: let threads waiting on [start, start+length) retry their fault."""
    return _raw(fd, UFFDIO_WAKE, UffdioRange(start, length))


class Msg(_Record):
    """One struct uffd_msg: a page fault (a = address, b = flags, c = thread id), a fork
    (a = the child's new uffd, installed in the reader), a remap (a = from, b = to, c = len),
    a remove or an unmap (a = start, b = end)."""
    __slots__ = ("event", "a", "b", "c")

    def __init__(self, event: int, a: int, b: int, c: int):
        self.event, self.a, self.b, self.c = event, a, b, c


def parse_msgs(data: bytes) -> list[Msg]:
    out = []
    for off in range(0, len(data) - MSG_SIZE + 1, MSG_SIZE):
        event = data[off]
        x, y, z = struct.unpack_from("<QQQ", data, off + 8)
        if event == UFFD_EVENT_PAGEFAULT:
            out.append(Msg(event, y, x, z & 0xFFFFFFFF))
        elif event == UFFD_EVENT_FORK:
            out.append(Msg(event, x & 0xFFFFFFFF, 0, 0))
        else:
            out.append(Msg(event, x, y, z))
    return out
