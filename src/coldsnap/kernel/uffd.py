"""userfaultfd constants and ioctls, usable on an fd taken from another process.

The ioctls act on the mm that created the uffd, so a tracer can drive a uffd it took
with pidfd_getfd. UFFDIO_API may be called once per uffd.
"""
from __future__ import annotations

import ctypes
from dataclasses import dataclass

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


@dataclass(frozen=True, slots=True)
class ApiResult:
    """UFFDIO_API outcome: success means every requested feature is enabled."""
    granted: int      # the features we asked for (all enabled, or the call failed)
    available: int    # every feature this kernel offers
    ioctls: int       # bitmask of ioctls usable on the uffd


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
