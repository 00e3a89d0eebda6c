"""What this kernel offers coldsnap, probed on coldsnap's own process (cheap, no target needed)."""
from __future__ import annotations

import ctypes
import errno
import mmap
import os
from typing import NamedTuple

from . import pagemap, uffd
from .libc import SYS, _syscall
from .page import PAGE_SIZE

CLONE_ARGS_SIZE_VER1 = 80


class Features(NamedTuple):
    """Which optional kernel features this machine offers."""
    pagemap_scan: bool
    uffd_wp_async: bool
    soft_dirty: bool
    pidfd_getfd: bool
    clone3_set_tid: bool

    def as_dict(self) -> dict[str, bool]:
        return self._asdict()


def _raw(nr: int, *args: int) -> tuple[int, int]:
    res = _syscall(ctypes.c_long(nr), *(ctypes.c_long(a) for a in args))
    return res, (ctypes.get_errno() if res == -1 else 0)


def probe_uffd_wp_async() -> bool:
    fd, _ = _raw(SYS.userfaultfd, os.O_CLOEXEC | os.O_NONBLOCK | uffd.UFFD_USER_MODE_ONLY)
    if fd < 0:
        return False
    try:
        uffd.api(fd, uffd.UFFD_FEATURE_WP_ASYNC)
        return True
    except OSError:
        return False
    finally:
        os.close(fd)


def probe_soft_dirty() -> bool:
    """Soft-dirty exists when a freshly written page of ours carries pagemap bit 55."""
    buf = mmap.mmap(-1, PAGE_SIZE, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    try:
        buf[0] = 1
        cbuf = (ctypes.c_char * PAGE_SIZE).from_buffer(buf)
        addr = ctypes.addressof(cbuf)
        fd = pagemap.open_pagemap(os.getpid())
        try:
            entry = pagemap.read_entry(fd, addr)
        finally:
            os.close(fd)
        del cbuf
        return bool(entry & pagemap.PM_SOFT_DIRTY) and os.path.exists("/proc/self/clear_refs")
    finally:
        buf.close()


def probe_pidfd_getfd() -> bool:
    pidfd, _ = _raw(SYS.pidfd_open, os.getpid(), 0)
    if pidfd < 0:
        return False
    try:
        fd, _ = _raw(SYS.pidfd_getfd, pidfd, 0, 0)
        if fd >= 0:
            os.close(fd)
        return fd >= 0
    finally:
        os.close(pidfd)


def probe_clone3_set_tid() -> bool:
    """clone3 knows set_tid when a too-deep set_tid_size is refused with EINVAL; a kernel
    without it refuses the 80-byte clone_args itself (E2BIG). Nothing is ever forked."""
    args = (ctypes.c_uint64 * 10)()
    args[8] = 0          # set_tid pointer
    args[9] = 33         # set_tid_size above the maximum pid-namespace depth (32)
    res, err = _raw(SYS.clone3, ctypes.addressof(args), CLONE_ARGS_SIZE_VER1)
    if res == 0:         # cannot happen with the size above; never let a stray child run on
        os._exit(0)
    return res == -1 and err == errno.EINVAL


def probe() -> Features:
    return Features(
        pagemap_scan=pagemap.has_pagemap_scan(),
        uffd_wp_async=probe_uffd_wp_async(),
        soft_dirty=probe_soft_dirty(),
        pidfd_getfd=probe_pidfd_getfd(),
        clone3_set_tid=probe_clone3_set_tid(),
    )


FALLBACKS = {
    "pagemap_scan": "read /proc/PID/pagemap in batches, decoded with numpy",
    "uffd_wp_async": "soft-dirty tracking if present, else every pre-dump saves every page",
    "soft_dirty": "userfaultfd write-protect tracking (uffd)",
    "pidfd_getfd": "no uffd tracking (the tracer cannot take the target's userfaultfd)",
    "clone3_set_tid": "restore cannot choose PIDs: refuse unless the PID is free via ns_last_pid",
}
