"""System calls run inside a seized thread: one at a time at the target's own `syscall`
instruction (no code of ours in it), or many at once by a loop of ours (batch, below).

    with freeze(pid) as task, RemoteCalls(task) as rc:
        rc.call(SYS.getpid)                        # raw result, -errno on failure
        addr = rc.checked(SYS.mmap, 0, 4096, 3, 0x22, -1, 0)   # OSError on failure
        rc.write_scratch(b"...")                   # a private page mapped on demand
        rc.batch_checked([sys_call(SYS.getpid), sys_call(SYS.close, 5, may_fail=True)])
                                                   # one round trip; OSError at the first error

    with frozen_calls(pid) as rc:                  # the same, resumed as the block ends
        ...

How one call runs: point rip at a `syscall` instruction of the target's [vdso], orig_rax =
-1 (so the kernel applies no syscall restart when the thread leaves its stop), arguments in
rax/rdi/rsi/rdx/r10/r8/r9, PTRACE_SINGLESTEP, then wait for the single-step SIGTRAP at
gadget+2 and read rax.

Why single-step and not PTRACE_SYSCALL entry/exit stops: one stop per call instead of two;
in interleaved runs on this VM the median getpid() took 19 µs versus 28 µs (59 vs 107 µs in
a slow run): single-step is 1.5-1.9x cheaper (`python3 tests/seize/measure_remote.py`).
The entry/exit-stop mode is kept as a fallback ("syscall") for targets that ignore SIGTRAP.
The price is that between calls the thread sits in a SIGTRAP signal-delivery-stop, where a
dying tracer would let the SIGTRAP kill it. So close() ends every session (but where
`repark` is off: a restore's, whose half-built process had better die) by re-parking the
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

Batches: `batch(calls)` runs a list of independent system calls in ONE round trip. A code
page of our own (mmap PROT_READ|PROT_EXEC, the loop written through /proc/PID/mem, which
ignores protection: never writable and executable at once, as MDWE and systemd's
MemoryDenyWriteExecute filters demand) holds a 63-byte loop (_LOOP below) that walks a
table of 64-byte entries in the scratch area (number, six arguments, result), runs each
`syscall`, stores each result and ends with an int3: its SIGTRAP stop at the loop's end is
ours (any other stop is handled as call() handles it: foreign signals kept, group-stop
re-traps resumed). The thread runs to that trap with PTRACE_CONT; one read of the table
then gives every result. The loop stops at the first -errno (-4095..-1) unless the entry
allows it to fail. Only in step mode (SIGTRAP unblocked, so the int3 is delivered as it
is, not forced); a syscall-mode session runs a batch one call at a time.
"""
from __future__ import annotations

import ctypes
import errno
import os
import signal
import struct
import time
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable, Iterator, Sequence

from coldsnap.errors import NoSuchProcess, TargetError
from coldsnap.kernel import ptrace
from coldsnap.kernel.libc import SYS
from coldsnap.kernel.page import PAGE_SIZE as PAGE
from coldsnap.kernel.procfs import read_status
from coldsnap.seize.freezer import FrozenTask, freeze

U64 = (1 << 64) - 1
PROT_READ, PROT_WRITE, PROT_EXEC = 1, 2, 4
MAP_PRIVATE, MAP_FIXED, MAP_ANONYMOUS, MAP_FIXED_NOREPLACE = 0x02, 0x10, 0x20, 0x100000
BLOCK_ALL_BUT_TRAP = U64 & ~(1 << (signal.SIGTRAP - 1))
REGS_SIZE = ctypes.sizeof(ptrace.UserRegs)
_ARG_REGS = ("rdi", "rsi", "rdx", "r10", "r8", "r9")


def to_signed(value: int) -> int:
    return value - (1 << 64) if value & (1 << 63) else value


def is_error(result: int) -> bool:
    """A raw system call result that is -errno."""
    return -4095 <= result < 0


# The batch loop. On entry rbx = first table entry, r12 = end of the table; an entry is
# 8 qwords: number (bit 63 set: a -errno does not end the batch), 6 arguments, result.
# At the int3's stop rbx points past the last entry that ran. rcx and r11 are clobbered
# by `syscall`; registers are restored at close anyway.
_LOOP = bytes.fromhex(
    "4c39e3"            # 00 top:  cmp rbx, r12          past the last entry?
    "7339"              # 03       jae done
    "488b03"            # 05       mov rax, [rbx]        number
    "480fbaf03f"        # 08       btr rax, 63           without the may-fail flag
    "488b7b08"          # 0d       mov rdi, [rbx+8]      arguments 1..6
    "488b7310"          # 11       mov rsi, [rbx+16]
    "488b5318"          # 15       mov rdx, [rbx+24]
    "4c8b5320"          # 19       mov r10, [rbx+32]
    "4c8b4328"          # 1d       mov r8,  [rbx+40]
    "4c8b4b30"          # 21       mov r9,  [rbx+48]
    "0f05"              # 25       syscall               (a restart re-runs it: rax = number again)
    "48894338"          # 27       mov [rbx+56], rax     result
    "4883c340"          # 2b       add rbx, 64           next entry
    "483d01f0ffff"      # 2f       cmp rax, -4095        unsigned: below is success
    "72c9"              # 35       jb top
    "48837bc000"        # 37       cmp qword [rbx-64], 0 may fail (bit 63: negative)?
    "7cc2"              # 3c       jl top
    "cc")               # 3e done: int3                  SIGTRAP stop with rip = 0x3f
_ENTRY = struct.Struct("<8Q")
MAY_FAIL = 1 << 63
CODE_SIZE = PAGE


@dataclass(frozen=True)
class Call:
    """One system call of a batch: NR(*ARGS). WHAT names it in errors; MAY_FAIL: its
    -errno is a result like any other and the batch goes on."""
    nr: int
    args: tuple[int, ...] = ()
    what: str = ""
    may_fail: bool = False


def sys_call(nr: int, *args: int, what: str = "", may_fail: bool = False) -> Call:
    return Call(nr, args, what, may_fail)


@dataclass(eq=False, repr=False)
class CallStats:
    """How many calls a remote-call session injected, in how many round trips, and their time."""
    calls: int = 0       # system calls run in the thread
    trips: int = 0       # tracer round trips that ran them (a batch: one for many calls)
    ns: int = 0          # wall time spent inside call() and batch(), tracer side


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
        self.scratch_replace = False                # map it there with MAP_FIXED (else NOREPLACE)
        self._code: int | None = None               # the batch loop's page (0: unavailable)
        self._borrowed = False                      # scratch and code page are another session's
        self._gadget = 0
        self._block = BLOCK_ALL_BUT_TRAP
        self._group_traps = 0                       # group-stop re-traps seen in this call
        self.repark = True                          # close() re-parks the thread (close's doc)

    # -- session --------------------------------------------------------------------------

    def __enter__(self) -> "RemoteCalls":
        self.open()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def _key(self) -> tuple[str, int]:
        return ("remote-calls", self.tid)

    def open(self, regs: ptrace.UserRegs | None = None, mask: int | None = None) -> None:
        """Begin the session. REGS and MASK: the thread's registers and blocked mask when the
        caller knows them (a thread just made by an injected clone of this tracer's: its
        creator's mask, BLOCK_ALL_BUT_TRAP), so neither is read nor set again."""
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
            if regs is None:
                regs = ptrace.get_regs(self.tid)
            try:
                task.at_resume(self._key, self.close)   # a session left open is closed by resume
            except ValueError:
                raise TargetError(f"thread {self.tid} already has a remote-call session") from None
            self.saved, self._work = regs.copy(), regs.copy()
            if mask is not None and self.mode == "step" and mask == self._block:
                self._saved_mask = mask
            elif self.plain_stop and self.mode == "step":
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
        """munmap the scratch page, re-park the thread, restore registers and mask. With
        `repark` False the thread stays in our SIGTRAP stop (a restore's new thread, held
        until the whole tree is let go: the detach discards that SIGTRAP; should coldsnap die
        first, the SIGTRAP ends the half-built process instead of letting it run)."""
        if self.saved is None:
            return
        task = self.task
        with task.critical():
            try:
                for addr, end in () if self._borrowed else self._own_spans():
                    self.checked(SYS.munmap, addr, end - addr, what="munmap scratch")
                self._scratch = self._code = None
            finally:
                try:
                    if self._in_trap and self.repark:
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
                rax = self._wait_trap(self._gadget + 2, ptrace.singlestep).rax
            else:  # syscall mode, and the first call of a step session (see module doc)
                ptrace.syscall_step(self.tid, 0)
                self._wait_syscall_stop()                  # entry
                ptrace.syscall_step(self.tid, 0)
                rax = self._wait_syscall_stop().rax        # exit
        self.stats.calls += 1
        self.stats.trips += 1
        self.stats.ns += time.perf_counter_ns() - t0
        return to_signed(rax)

    def checked(self, nr: int, *args: int, what: str = "") -> int:
        """call() that raises OSError for a -errno result."""
        result = self.call(nr, *args)
        if is_error(result):
            raise self._error(nr, result, what)
        return result

    def _error(self, nr: int, result: int, what: str) -> OSError:
        return OSError(-result, f"remote {what or f'syscall {nr}'} in {self.tid}: {os.strerror(-result)}")

    def batch(self, calls: Sequence[Call], table_off: int = 0) -> list[int]:
        """Run CALLS in order, in one round trip per table's worth (the table: the scratch
        area from TABLE_OFF on, 64 bytes a call). Returns the raw results of the calls that
        ran: all of them, or up to and including the first -errno of a call that may not
        fail (the later ones did not run)."""
        if self.saved is None:
            raise TargetError("remote-call session is not open")
        results: list[int] = []
        todo = list(calls)
        if todo and self.mode == "step" and self._saved_mask is None:
            first = todo.pop(0)     # the first call of a session learns the mask (module doc)
            results.append(self.call(first.nr, *first.args))
            if is_error(results[0]) and not first.may_fail:
                return results
        if len(todo) == 1 and self.mode == "step":      # a stepped call is the cheaper round trip
            return results + [self.call(todo[0].nr, *todo[0].args)]
        if not todo:
            return results
        if table_off % 8 or table_off < 0:
            raise ValueError("the batch table must be 8-byte aligned in the scratch area")
        room = (self.scratch_size - table_off) // _ENTRY.size
        if room < 1:
            raise ValueError("no room for a batch table in the scratch area")
        if self.mode != "step" or not self.code_page():
            for c in todo:
                results.append(self.call(c.nr, *c.args))
                if is_error(results[-1]) and not c.may_fail:
                    break
            return results
        for i in range(0, len(todo), room):
            chunk = todo[i:i + room]
            ran = self._run_table(chunk, table_off)
            results += ran
            if len(ran) < len(chunk) or is_error(ran[-1]) and not chunk[-1].may_fail:
                break
        return results

    def batch_checked(self, calls: Sequence[Call], table_off: int = 0) -> list[int]:
        """batch() that raises OSError naming the call that failed (the later ones did not run)."""
        calls = list(calls)
        results = self.batch(calls, table_off)
        self.raise_failure(calls, results)
        return results

    def raise_failure(self, calls: Sequence[Call], results: Sequence[int]) -> None:
        """The OSError of batch(CALLS)'s RESULTS if one call failed that may not."""
        if results and is_error(results[-1]) and not calls[len(results) - 1].may_fail:
            c = calls[len(results) - 1]
            raise self._error(c.nr, results[-1], c.what)

    def _run_table(self, chunk: list[Call], table_off: int) -> list[int]:
        t0 = time.perf_counter_ns()
        n = len(chunk)
        table = bytearray(n * _ENTRY.size)
        for k, c in enumerate(chunk):
            if len(c.args) > 6:
                raise ValueError("at most 6 syscall arguments")
            args = [a & U64 for a in c.args] + [0] * (6 - len(c.args))
            _ENTRY.pack_into(table, k * _ENTRY.size, c.nr | (MAY_FAIL if c.may_fail else 0), *args, 0)
        base = self.scratch() + table_off
        mem = self.task.mem_fd()
        if os.pwrite(mem, table, base) != len(table):
            raise TargetError(f"short write of a call table into {self.task.pid}")
        regs = self._work
        ctypes.memmove(ctypes.addressof(regs), ctypes.addressof(self.saved), REGS_SIZE)
        regs.orig_rax = U64
        regs.rip, regs.rbx, regs.r12 = self._code, base, base + len(table)
        self._group_traps = 0
        with self.task.critical():
            ptrace.set_regs(self.tid, regs)
            self._in_trap = True
            ptrace.cont(self.tid, 0)
            done, rest = divmod(self._wait_trap(self._code + len(_LOOP), ptrace.cont).rbx - base, _ENTRY.size)
        if rest or not 0 <= done <= n:
            raise TargetError(f"thread {self.tid}: the call table ended at a wrong place")
        slots = memoryview(os.pread(mem, done * _ENTRY.size, base)).cast("Q")[7::8]
        self.stats.calls += done
        self.stats.trips += 1
        self.stats.ns += time.perf_counter_ns() - t0
        return [to_signed(r) for r in slots]

    def code_page(self) -> int:
        """Address of the batch loop's page, mapped and written on first use (0: cannot be had)."""
        if self._code is None:
            scratch = self.scratch()
            # beside a fixed scratch area; else where the kernel likes: just below the
            # scratch area, top-down, mostly (then one munmap takes both)
            addr = -errno.EEXIST
            if self.scratch_at is not None:
                fixed = MAP_FIXED if self.scratch_replace else MAP_FIXED_NOREPLACE
                addr = self.call(SYS.mmap, scratch + self.scratch_size, CODE_SIZE, PROT_READ | PROT_EXEC,
                                 MAP_PRIVATE | MAP_ANONYMOUS | fixed, -1, 0)
            if addr == -errno.EEXIST:
                addr = self.call(SYS.mmap, 0, CODE_SIZE, PROT_READ | PROT_EXEC, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0)
            if is_error(addr):
                self._code = 0
                return 0
            self._code = addr
            try:            # /proc/PID/mem writes through the missing PROT_WRITE (FOLL_FORCE)
                written = os.pwrite(self.task.mem_fd(), _LOOP, addr)
            except OSError:
                written = 0
            if written != len(_LOOP):
                self._code = 0
                self.call(SYS.munmap, addr, CODE_SIZE)
        return self._code

    def borrow_area(self, other: "RemoteCalls") -> None:
        """Use OTHER's scratch area and code page (a session in another thread of the same
        process, open longer than this one): nothing mapped again, nothing unmapped at close."""
        self._scratch, self.scratch_size = other.scratch(), other.scratch_size
        self._code = other._code or 0       # none yet: this session batches call by call
        self._borrowed = True

    def _own_spans(self) -> list[tuple[int, int]]:
        """The scratch area and the code page, as one span where they touch."""
        spans = [(a, a + n) for a, n in ((self._scratch, self.scratch_size), (self._code, CODE_SIZE)) if a]
        if len(spans) == 2 and (spans[0][1] == spans[1][0] or spans[1][1] == spans[0][0]):
            spans = [(min(spans[0][0], spans[1][0]), max(spans[0][1], spans[1][1]))]
        return spans

    def _wait(self) -> ptrace.Stop:
        st = ptrace.wait_stop(self.tid)
        assert st is not None
        if st.exited:
            self.task.forget_thread(self.tid)
            self.saved = None
            self.task.cancel_at_resume(self._key)
            raise NoSuchProcess(self.task.pid, during=f"a remote call in thread {self.tid} ({st!r})")
        return st

    def _wait_trap(self, rip: int, resume) -> ptrace.UserRegs:  # type: ignore[no-untyped-def]
        """Wait for our SIGTRAP stop at RIP (after the stepped `syscall`, or the batch's
        int3), going on with RESUME after any other stop."""
        while True:
            st = self._wait()
            if st.is_signal_stop and st.sig == signal.SIGTRAP:
                regs = ptrace.get_regs(self.tid)
                if regs.rip == rip:
                    self._block_signals()
                    return regs
            if st.is_event_stop:
                self._group_stop(st, resume)
                continue
            self._other_signal(st, resume)

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
            fixed = 0 if self.scratch_at is None else MAP_FIXED if self.scratch_replace else MAP_FIXED_NOREPLACE
            self._scratch = self.checked(SYS.mmap, self.scratch_at or 0, self.scratch_size,
                                         PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | fixed,
                                         -1, 0, what="mmap scratch")
        return self._scratch

    @property
    def scratch_span(self) -> tuple[int, int] | None:
        """[start, end) of the scratch area once mapped."""
        return None if self._scratch is None else (self._scratch, self._scratch + self.scratch_size)

    @property
    def spans(self) -> list[tuple[int, int]]:
        """What the session mapped in the target: the scratch area and the batch's code page."""
        return self._own_spans()

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
