"""Thin typed ptrace(2) bindings for x86-64: no policy, errors as OSError.

ptrace ties a tracee to the *thread* that attached it: every call below must come
from the same OS thread that did PTRACE_SEIZE.
"""
from __future__ import annotations

import ctypes
import errno
import os
import signal
from typing import NamedTuple

from coldsnap.kernel.libc import check, libc

# requests
PTRACE_CONT = 7
PTRACE_SINGLESTEP = 9
PTRACE_GETREGS = 12
PTRACE_SETREGS = 13
PTRACE_DETACH = 17
PTRACE_SYSCALL = 24
PTRACE_SETOPTIONS = 0x4200
PTRACE_GETEVENTMSG = 0x4201
PTRACE_GETSIGINFO = 0x4202
PTRACE_GETREGSET = 0x4204
PTRACE_SETREGSET = 0x4205
PTRACE_SEIZE = 0x4206
PTRACE_INTERRUPT = 0x4207
PTRACE_LISTEN = 0x4208
PTRACE_PEEKSIGINFO = 0x4209
PTRACE_GETSIGMASK = 0x420A
PTRACE_SETSIGMASK = 0x420B
PTRACE_GET_RSEQ_CONFIGURATION = 0x420F

# options (PTRACE_SEIZE data / PTRACE_SETOPTIONS)
PTRACE_O_TRACESYSGOOD = 0x1
PTRACE_O_TRACEFORK = 0x2
PTRACE_O_TRACEVFORK = 0x4
PTRACE_O_TRACECLONE = 0x8
PTRACE_O_TRACEEXEC = 0x10
PTRACE_O_TRACEVFORKDONE = 0x20
PTRACE_O_TRACEEXIT = 0x40
PTRACE_O_TRACESECCOMP = 0x80
PTRACE_O_EXITKILL = 0x100000
PTRACE_O_SUSPEND_SECCOMP = 0x200000

# events (status >> 16)
PTRACE_EVENT_FORK = 1
PTRACE_EVENT_VFORK = 2
PTRACE_EVENT_CLONE = 3
PTRACE_EVENT_EXEC = 4
PTRACE_EVENT_VFORK_DONE = 5
PTRACE_EVENT_EXIT = 6
PTRACE_EVENT_SECCOMP = 7
PTRACE_EVENT_STOP = 128

# regset notes
NT_PRSTATUS = 1
NT_PRFPREG = 2
NT_X86_XSTATE = 0x202

PTRACE_PEEKSIGINFO_SHARED = 1
__WALL = 0x40000000
SIGINFO_SIZE = 128
SIGSET_SIZE = 8

_ptrace = libc.ptrace
_ptrace.restype = ctypes.c_long
_ptrace.argtypes = [ctypes.c_long, ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p]

_REG_NAMES = ("r15 r14 r13 r12 rbp rbx r11 r10 r9 r8 rax rcx rdx rsi rdi orig_rax "
              "rip cs eflags rsp ss fs_base gs_base ds es fs gs").split()


class UserRegs(ctypes.Structure):
    """struct user_regs_struct, 27 u64 in kernel order."""
    _fields_ = [(name, ctypes.c_uint64) for name in _REG_NAMES]

    def copy(self) -> "UserRegs":
        return UserRegs.from_buffer_copy(self)

    def as_dict(self) -> dict[str, int]:
        return {name: getattr(self, name) for name in _REG_NAMES}

    def __eq__(self, other: object) -> bool:
        return isinstance(other, UserRegs) and bytes(self) == bytes(other)

    def __repr__(self) -> str:
        return "UserRegs(" + ", ".join(f"{k}={v:#x}" for k, v in self.as_dict().items()) + ")"


class RseqConfiguration(ctypes.Structure):
    """struct ptrace_rseq_configuration."""
    _fields_ = [("rseq_abi_pointer", ctypes.c_uint64), ("rseq_abi_size", ctypes.c_uint32),
                ("signature", ctypes.c_uint32), ("flags", ctypes.c_uint32), ("pad", ctypes.c_uint32)]


class _Iovec(ctypes.Structure):
    _fields_ = [("base", ctypes.c_void_p), ("len", ctypes.c_size_t)]


class _PeekSiginfoArgs(ctypes.Structure):
    _fields_ = [("off", ctypes.c_uint64), ("flags", ctypes.c_uint32), ("nr", ctypes.c_int32)]


def ptrace(request: int, tid: int, addr: int | None = 0, data: int | None = 0, what: str = "") -> int:
    """Raw ptrace(2) (not for PEEK* requests, whose result glibc returns in-band)."""
    return check(_ptrace(request, tid, addr, data), what or f"ptrace({request:#x}, {tid})", pid=tid)


def seize(tid: int, options: int = 0) -> None:
    ptrace(PTRACE_SEIZE, tid, 0, options, "PTRACE_SEIZE")


def interrupt(tid: int) -> None:
    ptrace(PTRACE_INTERRUPT, tid, 0, 0, "PTRACE_INTERRUPT")


def cont(tid: int, sig: int = 0) -> None:
    ptrace(PTRACE_CONT, tid, 0, sig, "PTRACE_CONT")


def detach(tid: int, sig: int = 0) -> None:
    ptrace(PTRACE_DETACH, tid, 0, sig, "PTRACE_DETACH")


def singlestep(tid: int, sig: int = 0) -> None:
    ptrace(PTRACE_SINGLESTEP, tid, 0, sig, "PTRACE_SINGLESTEP")


def syscall_step(tid: int, sig: int = 0) -> None:
    """PTRACE_SYSCALL: resume until the next syscall entry or exit stop."""
    ptrace(PTRACE_SYSCALL, tid, 0, sig, "PTRACE_SYSCALL")


def listen(tid: int) -> None:
    ptrace(PTRACE_LISTEN, tid, 0, 0, "PTRACE_LISTEN")


def set_options(tid: int, options: int) -> None:
    ptrace(PTRACE_SETOPTIONS, tid, 0, options, "PTRACE_SETOPTIONS")


def get_regs(tid: int) -> UserRegs:
    regs = UserRegs()
    ptrace(PTRACE_GETREGS, tid, 0, ctypes.addressof(regs), "PTRACE_GETREGS")
    return regs


def set_regs(tid: int, regs: UserRegs) -> None:
    ptrace(PTRACE_SETREGS, tid, 0, ctypes.addressof(regs), "PTRACE_SETREGS")


def get_regset(tid: int, note: int, size: int = 4096) -> bytes:
    """PTRACE_GETREGSET: the kernel shrinks the iovec to what it filled."""
    buf = ctypes.create_string_buffer(size)
    iov = _Iovec(ctypes.addressof(buf), size)
    ptrace(PTRACE_GETREGSET, tid, note, ctypes.addressof(iov), "PTRACE_GETREGSET")
    return buf.raw[:iov.len]


def set_regset(tid: int, note: int, data: bytes) -> None:
    buf = ctypes.create_string_buffer(bytes(data), len(data))
    iov = _Iovec(ctypes.addressof(buf), len(data))
    ptrace(PTRACE_SETREGSET, tid, note, ctypes.addressof(iov), "PTRACE_SETREGSET")


def get_siginfo(tid: int) -> bytes:
    """The siginfo of the current stop, as the raw 128 bytes."""
    buf = ctypes.create_string_buffer(SIGINFO_SIZE)
    ptrace(PTRACE_GETSIGINFO, tid, 0, ctypes.addressof(buf), "PTRACE_GETSIGINFO")
    return buf.raw


def peek_siginfo(tid: int, off: int = 0, nr: int = 32, shared: bool = False) -> list[bytes]:
    """Pending signals of the thread (or of the process when shared), without dequeuing."""
    buf = ctypes.create_string_buffer(SIGINFO_SIZE * nr)
    args = _PeekSiginfoArgs(off, PTRACE_PEEKSIGINFO_SHARED if shared else 0, nr)
    n = ptrace(PTRACE_PEEKSIGINFO, tid, ctypes.addressof(args), ctypes.addressof(buf), "PTRACE_PEEKSIGINFO")
    return [buf.raw[i * SIGINFO_SIZE:(i + 1) * SIGINFO_SIZE] for i in range(n)]


def get_event_msg(tid: int) -> int:
    msg = ctypes.c_ulong()
    ptrace(PTRACE_GETEVENTMSG, tid, 0, ctypes.addressof(msg), "PTRACE_GETEVENTMSG")
    return msg.value


def get_sigmask(tid: int) -> int:
    """The thread's blocked set as a 64-bit mask (bit n-1 = signal n)."""
    mask = ctypes.c_uint64()
    ptrace(PTRACE_GETSIGMASK, tid, SIGSET_SIZE, ctypes.addressof(mask), "PTRACE_GETSIGMASK")
    return mask.value


def set_sigmask(tid: int, mask: int) -> None:
    """Note: the kernel also clears TIF_RESTORE_SIGMASK (ppoll/pselect/sigsuspend's saved mask)."""
    m = ctypes.c_uint64(mask)
    ptrace(PTRACE_SETSIGMASK, tid, SIGSET_SIZE, ctypes.addressof(m), "PTRACE_SETSIGMASK")


def get_rseq_configuration(tid: int) -> RseqConfiguration:
    conf = RseqConfiguration()
    ptrace(PTRACE_GET_RSEQ_CONFIGURATION, tid, ctypes.sizeof(conf), ctypes.addressof(conf),
           "PTRACE_GET_RSEQ_CONFIGURATION")
    return conf


class Stop(NamedTuple):
    """A decoded waitpid status of one tracee."""
    tid: int
    status: int

    @property
    def stopped(self) -> bool:
        return os.WIFSTOPPED(self.status)

    @property
    def exited(self) -> bool:
        """The thread is gone (exit or killed by a signal)."""
        return os.WIFEXITED(self.status) or os.WIFSIGNALED(self.status)

    @property
    def exit_code(self) -> int | None:
        return os.WEXITSTATUS(self.status) if os.WIFEXITED(self.status) else None

    @property
    def term_signal(self) -> int | None:
        return os.WTERMSIG(self.status) if os.WIFSIGNALED(self.status) else None

    @property
    def sig(self) -> int:
        """Stop signal (0x80 bit kept for TRACESYSGOOD syscall stops)."""
        return os.WSTOPSIG(self.status) if self.stopped else 0

    @property
    def event(self) -> int:
        return (self.status >> 16) & 0xFF if self.stopped else 0

    @property
    def is_syscall_stop(self) -> bool:
        return self.stopped and self.event == 0 and self.sig == (signal.SIGTRAP | 0x80)

    @property
    def is_event_stop(self) -> bool:
        """PTRACE_EVENT_STOP: interrupt trap (SIGTRAP) or group-stop (a stop signal)."""
        return self.stopped and self.event == PTRACE_EVENT_STOP

    @property
    def is_signal_stop(self) -> bool:
        """Signal-delivery-stop: sig is the signal about to be delivered."""
        return self.stopped and self.event == 0 and not self.is_syscall_stop

    def __repr__(self) -> str:
        if self.exited:
            how = f"exit {self.exit_code}" if self.exit_code is not None else f"killed by {self.term_signal}"
        else:
            how = f"stop sig={self.sig} event={self.event}"
        return f"Stop(tid={self.tid}, {how})"


def wait_stop(tid: int, nohang: bool = False) -> Stop | None:
    """waitpid(tid, __WALL) decoded; None when nohang and nothing is pending."""
    pid, status = os.waitpid(tid, __WALL | (os.WNOHANG if nohang else 0))
    if pid == 0:
        return None
    return Stop(tid, status)


PTRACE_SECCOMP_GET_FILTER = 0x420C
_SOCK_FILTER = 8              # one BPF instruction: u16 code, u8 jt, u8 jf, u32 k


def seccomp_filters(tid: int) -> list[bytes]:
    """The seccomp filters of a stopped tracee, oldest first, each its raw BPF program
    (struct sock_filter[]): PTRACE_SECCOMP_GET_FILTER counts from the newest (index 0)."""
    out: list[bytes] = []
    while True:
        try:
            n = ptrace(PTRACE_SECCOMP_GET_FILTER, tid, len(out), 0, "PTRACE_SECCOMP_GET_FILTER")
        except OSError as e:
            if e.errno == errno.ENOENT:
                return out[::-1]
            raise
        buf = ctypes.create_string_buffer(n * _SOCK_FILTER)
        ptrace(PTRACE_SECCOMP_GET_FILTER, tid, len(out), ctypes.addressof(buf), "PTRACE_SECCOMP_GET_FILTER")
        out.append(buf.raw)
