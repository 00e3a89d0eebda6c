"""System calls run inside a seized thread, without writing code into the target.

    with freeze(pid) as task, RemoteCalls(task) as rc:
        rc.call(SYS.getpid)                        # raw result, -errno on failure
        addr = rc.checked(SYS.mmap, 0, 4096, 3, 0x22, -1, 0)   # OSError on failure
        rc.write_scratch(b"...")                   # a private page mapped on demand

    with frozen_calls(pid) as rc:                  # the same, resumed as the block ends
        ...

How one call runs: point rip at a `syscall` instruction of the target's [vdso] (never
write code into the target), orig_rax = -1 (so the kernel applies no syscall restart when
the thread leaves its stop), arguments in rax/rdi/rsi/rdx/r10/r8/r9, PTRACE_SINGLESTEP,
then wait for the single-step SIGTRAP at gadget+2 and read rax.

Why single-step and not PTRACE_SYSCALL entry/exit stops: one stop per call instead of two;
in interleaved runs on this VM the median getpid() took 19 µs versus 28 µs (59 vs 107 µs in
a slow run): single-step is 1.5-1.9x cheaper (`python3 tests/seize/measure_remote.py`).
The entry/exit-stop mode is kept as a fallback ("syscall") for targets that ignore SIGTRAP.
The price is that between calls the thread sits in a SIGTRAP signal-delivery-stop, where a
dying tracer would let the SIGTRAP kill it. So close() ends every session by re-parking the
thread in a plain interrupt stop (PTRACE_INTERRUPT + PTRACE_CONT discarding the SIGTRAP),
where a tracer's death is harmless, and restores registers there: the kernel then applies
the normal restart of an interrupted syscall (-512/-513/-514/-516) when the task resumes.

Signal mask: the interrupt stop may hold a temporary mask (ppoll/pselect/epoll_pwait/
sigsuspend keep the real one aside, and PTRACE_SETSIGMASK would drop it); leaving that stop
makes the kernel put the real mask back. So the first call of every session runs through
PTRACE_SYSCALL stops: at its entry stop we read the real mask and block everything (but
SIGTRAP in step mode). Not single-stepping that first call matters: the step trap is a
*forced* SIGTRAP, and forcing a blocked or ignored SIGTRAP makes the kernel unblock it and
reset the target's SIGTRAP handler to SIG_DFL (seen with threads that block all signals,
as glibc does around pthread_create). A target that ignores SIGTRAP gets syscall mode. A signal that
arrives before the block is requeued by the kernel with its siginfo when we resume with it
while it is blocked; SIGSTOP cannot be blocked and is re-sent at resume instead.

Injected calls must not block: SIGINT/SIGTERM of coldsnap are deferred for each call.
"""
from __future__ import annotations

import ctypes
import os
import signal
import time
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable, Iterator

from coldsnap.errors import NoSuchProcess, TargetError
from coldsnap.kernel import ptrace
from coldsnap.kernel.libc import SYS
from coldsnap.kernel.page import PAGE_SIZE as PAGE
from coldsnap.kernel.procfs import read_status
from coldsnap.seize.freezer import FrozenTask, freeze

U64 = (1 << 64) - 1
PROT_READ, PROT_WRITE = 1, 2
MAP_PRIVATE, MAP_ANONYMOUS, MAP_FIXED_NOREPLACE = 0x02, 0x20, 0x100000
BLOCK_ALL_BUT_TRAP = U64 & ~(1 << (signal.SIGTRAP - 1))
REGS_SIZE = ctypes.sizeof(ptrace.UserRegs)
_ARG_REGS = ("rdi", "rsi", "rdx", "r10", "r8", "r9")


def to_signed(value: int) -> int:
    return value - (1 << 64) if value & (1 << 63) else value


@dataclass(eq=False, repr=False)
class CallStats:
    """How many calls a remote-call session injected, and their time."""
    calls: int = 0
    ns: int = 0          # wall time spent inside call(), tracer side


class RemoteCalls:
    """A session of injected system calls in one held thread (the leader by default)."""

    def __init__(self, task: FrozenTask, tid: int | None = None, scratch_size: int = PAGE,
                 mode: str | None = None, plain_stop: bool = False):
        self.task = task
        self.mode = mode   # "step" (PTRACE_SINGLESTEP) or "syscall" (entry/exit stops); None: choose
        # the thread's mask at its stop is its own (it waits in pause(2), or was just created
        # by an injected clone3; not in ppoll, sigsuspend...): read and replaced at open, and
        # even the first call single-steps (a restore's blank process: 0.15 ms less)
        self.plain_stop = plain_stop
        self.tid = tid if tid is not None else (task.pid if task.pid in task.tids else task.tids[0])
        self.scratch_size = scratch_size
        self.stats = CallStats()
        self.saved: ptrace.UserRegs | None = None   # registers at the interrupt stop
        self._saved_mask: int | None = None         # the real mask, known after the first call
        self._work = ptrace.UserRegs()
        self._in_trap = False                       # thread sits in our SIGTRAP stop
        self._scratch: int | None = None
        self.scratch_at: int | None = None          # fixed address for the scratch page, if set
        self._gadget = 0
        self._block = BLOCK_ALL_BUT_TRAP
        self._group_traps = 0                       # group-stop re-traps seen in this call

    # -- session --------------------------------------------------------------------------

    def __enter__(self) -> "RemoteCalls":
        self.open()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def _key(self) -> tuple[str, int]:
        return ("remote-calls", self.tid)

    def open(self) -> None:
        task = self.task
        task.check_usable(self.tid)
        with task.critical():
            self._gadget = task.vdso_gadget()
            if self.mode is None:
                self.mode = "syscall" if _ignores_sigtrap(task.pid, self.tid) else "step"
            if self.mode not in ("step", "syscall"):
                raise ValueError(f"unknown remote-call mode {self.mode!r}")
            # the step trap is a forced SIGTRAP: were SIGTRAP blocked the kernel would reset its handler
            self._block = BLOCK_ALL_BUT_TRAP if self.mode == "step" else U64
            regs = ptrace.get_regs(self.tid)
            try:
                task.at_resume(self._key, self.close)   # a session left open is closed by resume
            except ValueError:
                raise TargetError(f"thread {self.tid} already has a remote-call session") from None
            self.saved, self._work = regs, regs.copy()
            if self.plain_stop and self.mode == "step":
                self._block_signals()

    @property
    def real_mask(self) -> int | None:
        """The thread's own blocked mask, learned at the first call (None before it)."""
        return self._saved_mask

    def leave_as(self, regs: ptrace.UserRegs, sigmask: int) -> None:
        """At close, give the thread these registers and blocked mask instead of the ones
        it had at open (restore: the thread then resumes as the dumped one)."""
        self.saved = regs.copy()
        self._saved_mask = sigmask

    def close(self) -> None:
        """munmap the scratch page, re-park the thread, restore registers and mask."""
        if self.saved is None:
            return
        task = self.task
        with task.critical():
            try:
                if self._scratch is not None:
                    addr, self._scratch = self._scratch, None
                    self.checked(SYS.munmap, addr, self.scratch_size)
            finally:
                try:
                    if self._in_trap:
                        self._repark()
                    ptrace.set_regs(self.tid, self.saved)
                    if self._saved_mask is not None:
                        ptrace.set_sigmask(self.tid, self._saved_mask)
                except ProcessLookupError:
                    task.forget_thread(self.tid)  # killed meanwhile: nothing to restore
                finally:
                    self.saved = None
                    task.cancel_at_resume(self._key)

    def _repark(self) -> None:
        # leave the SIGTRAP signal-delivery-stop (discarding it) straight into an interrupt trap
        ptrace.interrupt(self.tid)
        ptrace.cont(self.tid, 0)
        while True:
            st = self._wait()
            if st.is_event_stop:
                break
            self._other_signal(st, ptrace.cont)
        self._in_trap = False

    # -- calls ----------------------------------------------------------------------------

    def call(self, nr: int, *args: int) -> int:
        """Run syscall NR(*args) in the thread; returns rax as a signed int (-errno on error)."""
        if self.saved is None:
            raise TargetError("remote-call session is not open")
        if len(args) > 6:
            raise ValueError("at most 6 syscall arguments")
        t0 = time.perf_counter_ns()
        regs = self._work
        ctypes.memmove(ctypes.addressof(regs), ctypes.addressof(self.saved), REGS_SIZE)
        regs.rax = nr
        regs.orig_rax = U64  # -1: no restart processing when the thread leaves this stop
        regs.rip = self._gadget
        for name, value in zip(_ARG_REGS, args):
            setattr(regs, name, value & U64)
        self._group_traps = 0
        with self.task.critical():
            ptrace.set_regs(self.tid, regs)
            self._in_trap = True
            if self.mode == "step" and self._saved_mask is not None:
                ptrace.singlestep(self.tid, 0)
                rax = self._wait_trap().rax
            else:  # syscall mode, and the first call of a step session (see module doc)
                ptrace.syscall_step(self.tid, 0)
                self._wait_syscall_stop()                  # entry
                ptrace.syscall_step(self.tid, 0)
                rax = self._wait_syscall_stop().rax        # exit
        self.stats.calls += 1
        self.stats.ns += time.perf_counter_ns() - t0
        return to_signed(rax)

    def checked(self, nr: int, *args: int, what: str = "") -> int:
        """call() that raises OSError for a -errno result."""
        result = self.call(nr, *args)
        if -4095 <= result < 0:
            raise OSError(-result, f"remote {what or f'syscall {nr}'} in {self.tid}: {os.strerror(-result)}")
        return result

    def _wait(self) -> ptrace.Stop:
        st = ptrace.wait_stop(self.tid)
        assert st is not None
        if st.exited:
            self.task.forget_thread(self.tid)
            self.saved = None
            self.task.cancel_at_resume(self._key)
            raise NoSuchProcess(self.task.pid, during=f"a remote call in thread {self.tid} ({st!r})")
        return st

    def _wait_trap(self) -> ptrace.UserRegs:
        while True:
            st = self._wait()
            if st.is_signal_stop and st.sig == signal.SIGTRAP:
                regs = ptrace.get_regs(self.tid)
                if regs.rip == self._gadget + 2:
                    self._block_signals()
                    return regs
            if st.is_event_stop:
                self._group_stop(st, ptrace.singlestep)
                continue
            self._other_signal(st, ptrace.singlestep)

    def _wait_syscall_stop(self) -> ptrace.UserRegs:
        while True:
            st = self._wait()
            if st.is_syscall_stop:
                self._block_signals()
                return ptrace.get_regs(self.tid)
            if st.is_event_stop:
                self._group_stop(st, ptrace.syscall_step)
                continue
            self._other_signal(st, ptrace.syscall_step)

    def _group_stop(self, st: ptrace.Stop, resume) -> None:  # type: ignore[no-untyped-def]
        """A task stopped by SIGSTOP (group-stop) traps once more when first resumed, before
        running anything: resume it again. Its stop stays in force for after the detach."""
        self._group_traps += 1
        if self._group_traps > 3:
            raise TargetError(f"thread {self.tid}: keeps entering group-stop during a remote call ({st!r})")
        resume(self.tid, 0)

    def _block_signals(self) -> None:
        # first stop after leaving the interrupt stop: the mask read now is the real one
        if self._saved_mask is None:
            self._saved_mask = ptrace.get_sigmask(self.tid)
            ptrace.set_sigmask(self.tid, self._block)

    def _other_signal(self, st: ptrace.Stop, resume) -> None:  # type: ignore[no-untyped-def]
        """A foreign signal stopped the thread: keep it pending and go on with RESUME."""
        self._block_signals()
        sig = st.sig if st.is_signal_stop else 0
        if sig and (sig == signal.SIGSTOP or not (self._block >> (sig - 1)) & 1):
            self.task.resend_at_resume(self.tid, sig)  # cannot be blocked here
            sig = 0
        resume(self.tid, sig)  # a blocked signal passed back is requeued with its siginfo

    # -- scratch memory -------------------------------------------------------------------

    def scratch(self) -> int:
        """Address of a private RW page in the target, mapped on first use, unmapped at close."""
        if self._scratch is None:
            fixed = MAP_FIXED_NOREPLACE if self.scratch_at is not None else 0
            self._scratch = self.checked(SYS.mmap, self.scratch_at or 0, self.scratch_size,
                                         PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | fixed,
                                         -1, 0, what="mmap scratch")
        return self._scratch

    @property
    def scratch_span(self) -> tuple[int, int] | None:
        """[start, end) of the scratch area once mapped."""
        return None if self._scratch is None else (self._scratch, self._scratch + self.scratch_size)

    def vdso_moved(self, delta: int) -> None:
        """An injected mremap moved the whole [vdso] by delta bytes: so did the `syscall`
        gadget in it (no second look at the maps)."""
        self.task.vdso_moved(delta)
        self._gadget = self.task.vdso_gadget()

    def write_scratch(self, data: bytes, offset: int = 0) -> int:
        """Copy DATA into the scratch page at OFFSET; returns its target address."""
        if offset + len(data) > self.scratch_size:
            raise ValueError("data does not fit the scratch area")
        addr = self.scratch() + offset
        if os.pwrite(self.task.mem_fd(), data, addr) != len(data):
            raise TargetError(f"short write into the scratch page of {self.task.pid}")
        return addr

    def read_scratch(self, n: int, offset: int = 0) -> bytes:
        if offset + n > self.scratch_size:
            raise ValueError("read past the scratch area")
        return os.pread(self.task.mem_fd(), n, self.scratch() + offset)


def _ignores_sigtrap(pid: int, tid: int) -> bool:
    """A forced single-step SIGTRAP resets an ignored SIGTRAP to SIG_DFL: avoid step mode then."""
    ignored = int(read_status(pid, tid).get("SigIgn", "0"), 16)
    return bool(ignored >> (signal.SIGTRAP - 1) & 1)


@contextmanager
def frozen_calls(pid: int, timeout: float = 10.0,
                 released: Callable[[FrozenTask], None] | None = None) -> Iterator[RemoteCalls]:
    """Freeze PID for one session of remote calls in its leader; resumed when the block ends.
    `released(task)`, if given, gets the task once resumed (its seize_ns and held_ns)."""
    with freeze(pid, timeout) as task:
        with RemoteCalls(task) as rc:
            yield rc
        task.resume()
    if released is not None:
        released(task)
