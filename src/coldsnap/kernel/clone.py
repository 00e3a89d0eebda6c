"""clone3(2) with set_tid: create a process (or, injected, a thread) with a chosen PID/TID;
and the signal a child asks for when its parent dies."""
from __future__ import annotations

import ctypes
import signal
import struct
import threading

from ..errors import CsError
from .libc import SYS, check, libc, syscall

PR_SET_PDEATHSIG = 1
CLONE_VM = 0x100
CLONE_FS = 0x200
CLONE_FILES = 0x400
CLONE_SIGHAND = 0x800
CLONE_PTRACE = 0x2000       # the child is traced by our tracer too, born in a stop (seized: an event stop)
CLONE_THREAD = 0x10000
CLONE_SYSVSEM = 0x40000
# what pthread_create asks for, minus the tid/tls bookkeeping we restore by hand
THREAD_FLAGS = CLONE_VM | CLONE_FS | CLONE_FILES | CLONE_SIGHAND | CLONE_THREAD | CLONE_SYSVSEM

# struct clone_args (CLONE_ARGS_SIZE_VER2): flags, pidfd, child_tid, parent_tid, exit_signal,
# stack, stack_size, tls, set_tid, set_tid_size, cgroup
CLONE_ARGS = struct.Struct("<11Q")


def clone_args(flags: int, *, exit_signal: int = 0, set_tid_ptr: int = 0, set_tid_size: int = 0) -> bytes:
    return CLONE_ARGS.pack(flags, 0, 0, 0, exit_signal, 0, 0, 0, set_tid_ptr, set_tid_size, 0)


def fork_with_pid(pid: int | None, flags: int = 0) -> int:
    """fork(2) via clone3, the child getting PID `pid` (None: any). Returns 0 in the child.
    FLAGS: CLONE_FILES and/or CLONE_FS to share the fd table or fs with the child.

    Like os.fork() but without Python's at-fork handlers: only safe in a process with a
    single Python thread (the child would otherwise inherit a lock held by a thread that
    does not exist in it).
    """
    if threading.active_count() > 1:
        # another Python thread could hold the GIL at the clone: the child would wait for it forever
        raise CsError("restore must run in a process with a single Python thread")
    tid = (ctypes.c_int * 1)(pid or 0)
    args = ctypes.create_string_buffer(clone_args(flags, exit_signal=signal.SIGCHLD,
                                                  set_tid_ptr=ctypes.addressof(tid) if pid else 0,
                                                  set_tid_size=1 if pid else 0))
    return syscall(SYS.clone3, ctypes.addressof(args), CLONE_ARGS.size, what="clone3")


def set_parent_death_signal(sig: int) -> None:
    """prctl(PR_SET_PDEATHSIG): SIG when the thread that created us ends (0: none). Not
    inherited across fork; a caller whose parent may have died already checks getppid()."""
    check(libc.prctl(PR_SET_PDEATHSIG, sig, 0, 0, 0), "PR_SET_PDEATHSIG")
