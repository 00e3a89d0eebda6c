"""pidfd system calls: stable handles on a process, and fds taken from it."""
from __future__ import annotations

import ctypes
import errno
import os

from coldsnap.kernel.libc import SYS, syscall

PIDFD_NONBLOCK = 0o4000   # O_NONBLOCK
PIDFD_THREAD = 0o200      # O_EXCL: a pidfd for a thread (6.9+)


def pidfd_open(pid: int, flags: int = 0) -> int:
    return syscall(SYS.pidfd_open, pid, flags, what=f"pidfd_open({pid})", pid=pid)


SOL_SOCKET, SO_PEERPIDFD = 1, 77


def peer_pidfd(sock) -> int | None:
    """A pidfd (O_CLOEXEC) of the process that connected the unix socket SOCK at its other
    end, even one that has ended since (then signalling it fails: ESRCH); None on kernels
    without SO_PEERPIDFD (before 6.5)."""
    try:
        return sock.getsockopt(SOL_SOCKET, SO_PEERPIDFD)
    except OSError as e:
        if e.errno == errno.ENOPROTOOPT:
            return None
        raise


def pidfd_getfd(pidfd: int, target_fd: int, flags: int = 0) -> int:
    """Duplicate the target's fd TARGET_FD into us (needs ptrace access; result is O_CLOEXEC)."""
    return syscall(SYS.pidfd_getfd, pidfd, target_fd, flags, what=f"pidfd_getfd(fd {target_fd})")


def pidfd_send_signal(pidfd: int, sig: int, info: bytes | None = None, flags: int = 0) -> None:
    """Send SIG; INFO, if given, is a raw 128-byte siginfo."""
    addr = 0
    if info is not None:
        buf = ctypes.create_string_buffer(bytes(info), 128)
        addr = ctypes.addressof(buf)
    syscall(SYS.pidfd_send_signal, pidfd, sig, addr, flags, what="pidfd_send_signal")


def take_fd(pid: int, target_fd: int) -> int:
    """A copy of process PID's fd TARGET_FD (pidfd_open + pidfd_getfd; O_CLOEXEC)."""
    pidfd = pidfd_open(pid)
    try:
        return pidfd_getfd(pidfd, target_fd)
    finally:
        os.close(pidfd)
