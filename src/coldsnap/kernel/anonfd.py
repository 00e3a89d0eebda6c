"""Thin bindings for the anonymous-inode files coldsnap recreates: signalfd, timerfd,
inotify, and open_by_handle_at to find what an inotify watch is on. Each raises OSError."""
from __future__ import annotations

import ctypes
import struct

from .libc import syscall

NR_signalfd4 = 289
NR_timerfd_create = 283
NR_timerfd_settime = 286
NR_inotify_init1 = 294
NR_inotify_add_watch = 254
NR_inotify_rm_watch = 255
NR_open_by_handle_at = 304
TFD_IOC_SET_TICKS = 0x40085400        # _IOW('T', 0, u64)
_ITIMERSPEC = struct.Struct("<4q")    # it_interval sec, nsec; it_value sec, nsec


def signalfd(sigmask: int, flags: int) -> int:
    """A new signalfd reading the signals of the 64-bit mask (bit n-1: signal n)."""
    mask = ctypes.c_uint64(sigmask)
    return syscall(NR_signalfd4, (1 << 64) - 1, ctypes.addressof(mask), 8, flags, what="signalfd")


def timerfd_create(clockid: int, flags: int) -> int:
    return syscall(NR_timerfd_create, clockid, flags, what="timerfd_create")


def timerfd_settime(fd: int, flags: int, value: tuple[int, int], interval: tuple[int, int]) -> None:
    buf = ctypes.create_string_buffer(_ITIMERSPEC.pack(*interval, *value))
    syscall(NR_timerfd_settime, fd, flags, ctypes.addressof(buf), 0, what="timerfd_settime")


def timerfd_set_ticks(fd: int, ticks: int) -> None:
    """Expirations not read yet (CONFIG_CHECKPOINT_RESTORE's TFD_IOC_SET_TICKS)."""
    n = ctypes.c_uint64(ticks)
    syscall(16, fd, TFD_IOC_SET_TICKS, ctypes.addressof(n), what="TFD_IOC_SET_TICKS")


def inotify_init1(flags: int) -> int:
    return syscall(NR_inotify_init1, flags, what="inotify_init1")


def inotify_add_watch(fd: int, path: str, mask: int) -> int:
    raw = ctypes.create_string_buffer(path.encode())
    return syscall(NR_inotify_add_watch, fd, ctypes.addressof(raw), mask, what=f"inotify_add_watch {path}")


def inotify_rm_watch(fd: int, wd: int) -> None:
    syscall(NR_inotify_rm_watch, fd, wd, what="inotify_rm_watch")


def open_by_handle_at(mount_fd: int, handle_type: int, handle: bytes, flags: int) -> int:
    """An fd on the file a handle names, on the filesystem of mount_fd."""
    buf = ctypes.create_string_buffer(struct.pack("<Ii", len(handle), handle_type) + handle)
    return syscall(NR_open_by_handle_at, mount_fd, ctypes.addressof(buf), flags, what="open_by_handle_at")


