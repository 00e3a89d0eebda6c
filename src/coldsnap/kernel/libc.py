"""The one place that loads libc and turns failed system calls into OSError.

A call made on a process (`pid=`) raises the API's NoSuchProcess for ESRCH and AccessDenied
for EPERM/EACCES (both still OSErrors with that errno), through `process_error`."""
from __future__ import annotations

import ctypes
import errno
import functools
import os

from ..errors import AccessDenied, NoSuchProcess

libc = ctypes.CDLL(None, use_errno=True)

_syscall = libc.syscall
_syscall.restype = ctypes.c_long


def process_error(err: int, pid: int, what: str = "") -> OSError:
    """The exception for errno `err` of a call on process `pid`: NoSuchProcess for ESRCH,
    AccessDenied for EPERM/EACCES, a plain OSError for anything else."""
    if err == errno.ESRCH:
        return NoSuchProcess(pid, what=what)
    if err in (errno.EPERM, errno.EACCES):
        return AccessDenied(pid, what=what, reason=os.strerror(err).lower(), err=err)
    return OSError(err, f"{what}: {os.strerror(err)}" if what else os.strerror(err))


def on_process(fn):
    """Decorator for a reader of /proc/PID/... whose first argument is the pid: a missing
    /proc entry (ENOENT, ESRCH) becomes NoSuchProcess, EPERM/EACCES AccessDenied."""
    @functools.wraps(fn)
    def wrapper(pid: int, *args, **kwargs):
        try:
            return fn(pid, *args, **kwargs)
        except (NoSuchProcess, AccessDenied):
            raise
        except OSError as e:
            if e.errno not in (errno.ENOENT, errno.ESRCH, errno.EPERM, errno.EACCES):
                raise
            raise process_error(errno.ESRCH if e.errno == errno.ENOENT else e.errno, pid) from None
    return wrapper


def check(result: int, what: str = "", pid: int | None = None) -> int:
    """Raise OSError(errno) when a libc call returned -1; with `pid`, see process_error."""
    if result == -1:
        err = ctypes.get_errno()
        if pid is not None:
            raise process_error(err, pid, what)
        raise OSError(err, f"{what}: {os.strerror(err)}" if what else os.strerror(err))
    return result


def syscall(nr: int, *args: int, what: str = "", pid: int | None = None) -> int:
    """Raw syscall(2) with integer arguments; raises OSError on failure (see check)."""
    return check(_syscall(ctypes.c_long(nr), *(ctypes.c_ulong(a & 0xFFFFFFFFFFFFFFFF) for a in args)),
                 what or f"syscall {nr}", pid)


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
    mincore = 27
    madvise = 28
    mlock = 149
    shmget = 29
    shmat = 30
    shmctl = 31
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
    shmdt = 67
    prctl = 157
    arch_prctl = 158
    gettid = 186
    tkill = 200
    futex = 202
    set_tid_address = 218
    exit_group = 231
    tgkill = 234
    preadv = 295
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


ARCH_GET_FS = 0x1003


def own_rseq_area() -> tuple[int, int] | None:
    """(address, size) of the rseq area glibc registered for the calling thread, (0, 0) when
    it registered none; None when this libc does not say (before glibc 2.35)."""
    try:
        offset = ctypes.c_ssize_t.in_dll(libc, "__rseq_offset").value
        size = ctypes.c_uint.in_dll(libc, "__rseq_size").value
    except ValueError:
        return None
    if not size:
        return 0, 0
    fs = ctypes.c_ulong()
    check(_syscall(ctypes.c_long(SYS.arch_prctl), ctypes.c_ulong(ARCH_GET_FS), ctypes.byref(fs)), "arch_prctl")
    return fs.value + offset, size
