"""The one place that loads libc and turns failed system calls into OSError."""
from __future__ import annotations

import ctypes
import os

libc = ctypes.CDLL(None, use_errno=True)

_syscall = libc.syscall
_syscall.restype = ctypes.c_long


def check(result: int, what: str = "") -> int:
    """Raise OSError(errno) when a libc call returned -1."""
    if result == -1:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}" if what else os.strerror(err))
    return result


def syscall(nr: int, *args: int, what: str = "") -> int:
    """Raw syscall(2) with integer arguments; raises OSError on failure."""
    return check(_syscall(ctypes.c_long(nr), *(ctypes.c_ulong(a & 0xFFFFFFFFFFFFFFFF) for a in args)),
                 what or f"syscall {nr}")


class SYS:
    """x86-64 system call numbers we use from the tracer side (or inject)."""
    read = 0
    write = 1
    open = 2
    close = 3
    mmap = 9
    mprotect = 10
    munmap = 11
    brk = 12
    rt_sigaction = 13
    rt_sigprocmask = 14
    ioctl = 16
    mremap = 25
    madvise = 28
    dup2 = 33
    setitimer = 38
    getpid = 39
    clone = 56
    fork = 57
    exit = 60
    wait4 = 61
    kill = 62
    setgroups = 116
    setresuid = 117
    setresgid = 119
    capget = 125
    capset = 126
    rt_sigqueueinfo = 129
    personality = 135
    fcntl = 72
    prctl = 157
    arch_prctl = 158
    gettid = 186
    tkill = 200
    futex = 202
    set_tid_address = 218
    exit_group = 231
    tgkill = 234
    rt_tgsigqueueinfo = 297
    openat = 257
    set_robust_list = 273
    get_robust_list = 274
    sigaltstack = 131
    process_vm_readv = 310
    process_vm_writev = 311
    userfaultfd = 323
    rseq = 334
    pidfd_send_signal = 424
    pidfd_open = 434
    clone3 = 435
    pidfd_getfd = 438
