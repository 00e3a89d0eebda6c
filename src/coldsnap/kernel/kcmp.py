"""kcmp(2): do two tasks (or two fds of two tasks) share one kernel object?

    kcmp(pid1, pid2, KCMP_VM)                      # 0 equal, 1 less, 2 greater, 3 unordered
    same(pid1, pid2, KCMP_FILES)                   # True when they share one fd table
    same_file(pid1, fd1, pid2, fd2)                # one open file description
    same_epoll_target(pid, fd, epfd, tfd, toff)    # fd's file is what epfd watches as tfd

The kernel orders objects by an obfuscated pointer: the order is total and stable for the
life of the objects, so callers may sort or binary-search with it; it says nothing else.
Needs CONFIG_KCMP and PTRACE_MODE_READ on both tasks.
"""
from __future__ import annotations

import ctypes

from coldsnap.kernel.libc import syscall

SYS_KCMP = 312

KCMP_FILE = 0
KCMP_VM = 1
KCMP_FILES = 2
KCMP_FS = 3
KCMP_SIGHAND = 4
KCMP_IO = 5
KCMP_SYSVSEM = 6
KCMP_EPOLL_TFD = 7

EQUAL, LESS, GREATER, UNORDERED = 0, 1, 2, 3


def kcmp(pid1: int, pid2: int, kind: int, idx1: int = 0, idx2: int = 0) -> int:
    """Raw kcmp: EQUAL, LESS (pid1's object sorts first), GREATER or UNORDERED."""
    return syscall(SYS_KCMP, pid1, pid2, kind, idx1, idx2, what="kcmp")


def same(pid1: int, pid2: int, kind: int) -> bool:
    """True when both tasks hold the same object of KIND (KCMP_VM, KCMP_FILES, ...)."""
    return kcmp(pid1, pid2, kind) == EQUAL


def same_file(pid1: int, fd1: int, pid2: int, fd2: int) -> bool:
    """True when fd1 of pid1 and fd2 of pid2 are the same open file description."""
    return kcmp(pid1, pid2, KCMP_FILE, fd1, fd2) == EQUAL


class _EpollSlot(ctypes.Structure):
    _fields_ = [("efd", ctypes.c_uint32), ("tfd", ctypes.c_uint32), ("toff", ctypes.c_uint32)]


def same_epoll_target(pid: int, fd: int, epfd: int, tfd: int, toff: int = 0) -> bool:
    """True when fd of pid is the file that epoll instance epfd (of pid) watches as number
    tfd; toff picks among several registrations made as that number (in fdinfo order)."""
    slot = _EpollSlot(epfd, tfd, toff)
    return kcmp(pid, pid, KCMP_EPOLL_TFD, fd, ctypes.addressof(slot)) == EQUAL
