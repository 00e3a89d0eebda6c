"""Per-process and per-thread state of a frozen task, and the core/pstree/ids images.

    with freeze(pid) as task:
        state = collect_task_state(task)       # everything read while the task is held
        tree = task.tree                        # pids, sessions, shared-object ids
    write_task_images(state, tree, imgdir)      # core-<tid>.img, pstree.img, ids-<pid>.img

or simply `dump_task_state(pid, imgdir)`, which does both and keeps the frozen window short.

Where each value comes from
  ptrace (every thread)    general registers (fs_base/gs_base included), NT_PRFPREG (FXSAVE,
                           512 bytes) and NT_X86_XSTATE (kept whole), blocked mask, rseq
                           registration, private pending signals (PEEKSIGINFO), the 3 GDT
                           TLS slots (PTRACE_GET_THREAD_AREA, entries 12..14)
  /proc                    creds/NoNewPrivs/Seccomp/umask (status), comm/flags/pgid/sid/ppid
                           (stat), personality, auxv, thread names
  coldsnap itself          rlimits: prlimit64(pid, r, NULL, &old) and get_robust_list(tid)
                           need no injection (each injected call waits for the target to run)
  injected (leader)        rt_sigaction of each caught or ignored signal and of SIGCHLD,
                           getitimer x3, timer_gettime/timer_getoverrun of each POSIX timer
                           (listed in /proc/PID/timers), brk(0), PR_GET_DUMPABLE,
                           PR_GET_CHILD_SUBREAPER, PR_GET_SECUREBITS,
                           get_robust_list(tid) of every thread where coldsnap may not
                           ask itself (see below), the leader's sigaltstack and PR_GET_TID_ADDRESS
  injected (other threads) sigaltstack and PR_GET_TID_ADDRESS are about the *calling* thread
                           only, so every other thread runs these two calls in a short session
                           of its own; results go to the leader's scratch page (same mm), so
                           no extra mmap/munmap is needed.

One RemoteCalls session on the leader carries every process-wide injection, in one batch
(seize/remote.py: one round trip for them all, instead of ~20 for a Python process); it stays
open while the per-thread sessions run (they write into its scratch page and run their calls
as a batch by its code page) and closes last.

The blocked mask of a thread is the one its session learned at the first call (the real one,
even in ppoll/sigsuspend); without a session it is PTRACE_GETSIGMASK at the interrupt stop.

Not collected: loginuid, oom_score_adj, sched policy/nice, LSM
labels, seccomp filter flags (TSYNC/LOG...), cgroups, membarrier registrations, AVX-512/PKRU/CET
components in the protobuf (they remain in `ThreadState.xstate`). clear_tid_addr is 0 when
the kernel lacks PR_GET_TID_ADDRESS (CONFIG_CHECKPOINT_RESTORE).
"""
from __future__ import annotations

import ctypes
import errno
import struct
from dataclasses import dataclass, field
from typing import Iterable, NamedTuple, Sequence

from coldsnap.creds import Creds
from coldsnap.errors import TargetError, Unsupported
from coldsnap.images.task import TASK_ALIVE, TASK_DEAD, TASK_STOPPED
from coldsnap.images.xsave import fill_components
from coldsnap.kernel import ptrace
from coldsnap.kernel.cpuid import xstate_layout
from coldsnap.kernel.libc import SYS, syscall
from coldsnap.kernel.page import PAGE_SIZE
from coldsnap.kernel.procfs import (PosixTimerInfo, read_auxv, read_limits, read_personality, read_posix_timers,
                                    read_stat, read_status)
from coldsnap.seize.freezer import FrozenTask, freeze
from coldsnap.seize.remote import Call, RemoteCalls
from coldsnap.seize.tree import Tree

from .metadata import write_tree_images

NR_getitimer = 36
NR_timer_gettime = 224
NR_timer_getoverrun = 225
NR_prlimit64 = 302
PR_GET_DUMPABLE = 3
PR_GET_SECUREBITS = 27
PR_GET_CHILD_SUBREAPER = 37
PR_GET_PDEATHSIG = 2
PR_GET_TID_ADDRESS = 40
PTRACE_GET_THREAD_AREA = 25
GDT_TLS_ENTRIES = (12, 13, 14)
RLIM_NLIMITS = 16
SIGKILL, SIGSTOP, SIGCHLD, SIGTRAP = 9, 19, 17, 5
SIGACTION_SIGNALS = tuple(s for s in range(1, 65) if s not in (SIGKILL, SIGSTOP))
KSIGACTION = struct.Struct("<QQQQ")  # handler, flags, restorer, mask (kernel struct sigaction)
XSTATE_BV_OFF = 512
XFEATURE_AVX = 1 << 2
AVX_OFF, AVX_SIZE = 576, 256
ERESTARTSYS, ERESTARTNOINTR, ERESTARTNOHAND, ERESTART_RESTARTBLOCK = 512, 513, 514, 516
RESTART_AGAIN = (-ERESTARTSYS, -ERESTARTNOINTR, -ERESTARTNOHAND)
SYSCALL_INSN_SIZE = 2                  # `syscall` is 0f 05
U64 = (1 << 64) - 1
SIGEV_THREAD_ID = 4
ITIMERS = ("real", "virt", "prof")     # ITIMER_REAL 0, ITIMER_VIRTUAL 1, ITIMER_PROF 2

# scratch page layout (leader's page, shared by every session of this dump)
_OFF_SA = 0                                   # 62 x 32 bytes
_OFF_ITIMER = 2048                            # 3 x 32 bytes
_OFF_MISC = 2176                              # subreaper int
_OFF_THREAD = 2304                            # per thread: 24 sas + 8 tid addr + 16 robust + 8 pdeathsig
_SLOT = 56
PR_GET_TIMERSLACK = 30


class FpRegs(NamedTuple):
    """The FXSAVE part of a thread's FPU state."""
    cwd: int
    swd: int
    twd: int
    fop: int
    rip: int
    rdp: int
    mxcsr: int
    mxcsr_mask: int
    st_space: list[int]
    xmm_space: list[int]

    @classmethod
    def from_fxsave(cls, raw: bytes) -> "FpRegs":
        if len(raw) < 512:
            raise TargetError(f"NT_PRFPREG returned {len(raw)} bytes, expected 512")
        cwd, swd, twd, fop, rip, rdp, mxcsr, mask = struct.unpack_from("<HHHHQQII", raw, 0)
        return cls(cwd, swd, twd, fop, rip, rdp, mxcsr, mask,
                   list(struct.unpack_from("<32I", raw, 32)), list(struct.unpack_from("<64I", raw, 160)))


class TlsSlot(NamedTuple):
    """One GDT TLS entry of a thread (PTRACE_GET_THREAD_AREA)."""
    entry_number: int
    base_addr: int
    limit: int
    seg_32bit: bool
    contents: int
    read_exec_only: bool
    limit_in_pages: bool
    seg_not_present: bool
    usable: bool


@dataclass(eq=False, repr=False)
class ThreadState:
    """Registers, masks and per-thread settings of one thread."""
    tid: int
    regs: dict[str, int]
    fpregs: FpRegs
    xstate: bytes                    # raw NT_X86_XSTATE (b"" when unavailable)
    xstate_bv: int
    ymmh_space: list[int]
    sigmask: int
    rseq: ptrace.RseqConfiguration | None
    clear_tid_addr: int
    robust_list: tuple[int, int]     # (head, len)
    sigaltstack: tuple[int, int, int]  # (ss_sp, ss_size, ss_flags)
    pending: list[bytes]             # raw 128-byte siginfos
    comm: str
    creds: Creds
    seccomp_mode: int
    tls: list[TlsSlot]
    seccomp: list[bytes] = field(default_factory=list)   # filters, oldest first (mode 2)
    pdeath_sig: int = 0
    timer_slack: int = 0             # ns; 0 when unknown


class SigAction(NamedTuple):
    """The kernel's action for one signal."""
    signo: int
    handler: int
    flags: int
    restorer: int
    mask: int


class PosixTimer(NamedTuple):
    """A timer_create timer: what /proc says, its overrun count, time left and interval."""
    info: PosixTimerInfo
    overrun: int
    value: tuple[int, int]        # (sec, nsec) left
    interval: tuple[int, int]


@dataclass(eq=False, repr=False)
class TaskState:
    """Everything but memory and files that a dump records of a process."""
    pid: int
    ppid: int
    pgid: int
    sid: int
    comm: str
    flags: int
    personality: int
    umask: int
    threads: list[ThreadState]
    sigactions: list[SigAction]
    shared_pending: list[bytes]
    rlimits: list[tuple[int, int]]
    itimers: dict[str, tuple[int, int, int, int]]   # name -> (isec, iusec, vsec, vusec)
    brk: int
    auxv: list[int]
    dumpable: int
    child_subreaper: bool
    secbits: int
    pdeath_sig: int = 0              # the leader's PR_SET_PDEATHSIG (0: none)
    stop_signal: int = 0             # the group-stop signal of a stopped process, else 0
    posix_timers: list[PosixTimer] = field(default_factory=list)
    thp_disabled: bool = False
    remote_calls: int = 0
    remote_trips: int = 0           # the tracer round trips that ran them
    notes: list[str] = field(default_factory=list)

    @property
    def tids(self) -> list[int]:
        return [t.tid for t in self.threads]

    def thread(self, tid: int) -> ThreadState:
        return next(t for t in self.threads if t.tid == tid)


# -- collecting ---------------------------------------------------------------------------

def _peek_all(tid: int, shared: bool) -> list[bytes]:
    out: list[bytes] = []
    while True:
        chunk = ptrace.peek_siginfo(tid, off=len(out), nr=32, shared=shared)
        out.extend(chunk)
        if len(chunk) < 32:
            return out


class _UserDesc(ctypes.Structure):
    _fields_ = [("entry_number", ctypes.c_uint32), ("base_addr", ctypes.c_uint32),
                ("limit", ctypes.c_uint32), ("flags", ctypes.c_uint32)]


def _tls(tid: int) -> list[TlsSlot]:
    out = []
    for idx in GDT_TLS_ENTRIES:
        d = _UserDesc()
        ptrace.ptrace(PTRACE_GET_THREAD_AREA, tid, idx, ctypes.addressof(d), "PTRACE_GET_THREAD_AREA")
        f = d.flags
        out.append(TlsSlot(d.entry_number, d.base_addr, d.limit, bool(f & 1), (f >> 1) & 3,
                           bool(f & 8), bool(f & 16), bool(f & 32), bool(f & 64)))
    return out


def _xstate(tid: int) -> tuple[bytes, int, list[int]]:
    try:
        raw = ptrace.get_regset(tid, ptrace.NT_X86_XSTATE, 16384)
    except OSError:
        return b"", 0, []
    if len(raw) < XSTATE_BV_OFF + 8:
        return raw, 0, []
    bv = struct.unpack_from("<Q", raw, XSTATE_BV_OFF)[0]
    ymmh: list[int] = []
    if bv & XFEATURE_AVX and len(raw) >= AVX_OFF + AVX_SIZE:
        ymmh = list(struct.unpack_from("<64I", raw, AVX_OFF))
    return raw, bv, ymmh


def _rseq(tid: int) -> ptrace.RseqConfiguration | None:
    try:
        conf = ptrace.get_rseq_configuration(tid)
    except OSError:
        return None
    return conf if conf.rseq_abi_pointer else None


def _read_ptrace_side(pid: int, tid: int, status: dict[str, str] | None = None) -> dict:
    """Everything of one thread that needs no injection."""
    status = status if status is not None else read_status(pid, tid)
    xstate, bv, ymmh = _xstate(tid)
    mode = int(status.get("Seccomp", "0"))
    if mode == 1:
        raise Unsupported(f"thread {tid} of {pid}: strict seccomp mode is not supported")
    return dict(seccomp=ptrace.seccomp_filters(tid) if mode == 2 else [],
                tid=tid, regs=ptrace.get_regs(tid).as_dict(),
                fpregs=FpRegs.from_fxsave(ptrace.get_regset(tid, ptrace.NT_PRFPREG, 512)),
                xstate=xstate, xstate_bv=bv, ymmh_space=ymmh, sigmask=ptrace.get_sigmask(tid),
                rseq=_rseq(tid), pending=_peek_all(tid, shared=False),
                comm=read_stat(pid, tid).comm, creds=Creds.of_status(status, secbits=0),
                seccomp_mode=int(status.get("Seccomp", "0")), tls=_tls(tid))


def _rlimits(pid: int) -> list[tuple[int, int]]:
    """prlimit64(pid, r, NULL, &old); reading another user's limits needs CAP_SYS_RESOURCE,
    which root may lack (not in this machine's bounding set): /proc/PID/limits then."""
    old = (ctypes.c_uint64 * 2)()
    out = []
    try:
        for r in range(RLIM_NLIMITS):
            syscall(NR_prlimit64, pid, r, 0, ctypes.addressof(old), what=f"prlimit64({pid}, {r})")
            out.append((old[0], old[1]))
    except PermissionError:
        return read_limits(pid)[:RLIM_NLIMITS]
    return out


def _robust_list(tid: int) -> tuple[int, int] | None:
    """get_robust_list(tid) from coldsnap itself (no injection); None when not permitted
    (another user's thread while root lacks CAP_SYS_PTRACE): then it is injected."""
    head, size = ctypes.c_uint64(), ctypes.c_uint64()
    try:
        syscall(SYS.get_robust_list, tid, ctypes.addressof(head), ctypes.addressof(size),
                what=f"get_robust_list({tid})")
    except PermissionError:
        return None
    return head.value, size.value


def _thread_calls(base: int, off: int) -> list[Call]:
    """sigaltstack(NULL, base+off), PR_GET_TID_ADDRESS into base+off+24, PR_GET_PDEATHSIG
    into base+off+48 and PR_GET_TIMERSLACK (its result: the last of the batch), for one
    thread."""
    return [Call(SYS.sigaltstack, (0, base + off), "sigaltstack"),
            # fails without CONFIG_CHECKPOINT_RESTORE: the slot then stays 0 (noted in TaskState.notes)
            Call(SYS.prctl, (PR_GET_TID_ADDRESS, base + off + 24, 0, 0, 0), may_fail=True),
            Call(SYS.prctl, (PR_GET_PDEATHSIG, base + off + 48, 0, 0, 0), "PR_GET_PDEATHSIG"),
            Call(SYS.prctl, (PR_GET_TIMERSLACK, 0, 0, 0, 0), may_fail=True)]


# x86-64 system calls that wait under a temporary signal mask, the thread's own kept aside
# until they return (rt_sigsuspend, pselect6, ppoll, epoll_pwait, io_pgetevents, io_uring_enter,
# epoll_pwait2; rt_sigtimedwait puts its own back before it returns, listed all the same)
_TEMP_MASK_SYSCALLS = frozenset({128, 130, 270, 271, 281, 333, 426, 441})
_USER64_CS = 0x33


def _own_mask_at_stop(regs: dict[str, int]) -> bool:
    """Whether a thread's blocked mask at its interrupt stop is its own: it was stopped in
    none of _TEMP_MASK_SYSCALLS (orig_rax holds the interrupted call's number, -1 outside
    one), a 64-bit thread. Its remote-call session then reads the mask at once and single-
    steps its first call too (plain_stop), one stop less than learning it at a syscall stop.
    (Since Linux 5.2 PTRACE_GETSIGMASK reports the mask kept aside in those calls too; the
    syscall stop stays for them, right on any kernel.)"""
    return regs["cs"] == _USER64_CS and regs["orig_rax"] not in _TEMP_MASK_SYSCALLS


def signals_to_ask(status: dict[str, str]) -> set[int]:
    """The signals whose action is worth an injected rt_sigaction: caught or ignored ones
    (status SigCgt/SigIgn), and SIGCHLD, whose SA_NOCLDSTOP/SA_NOCLDWAIT matter even at
    SIG_DFL. Any other action is SIG_DFL, whose flags, mask and restorer never take effect:
    it is recorded as all zeros, which is what restore starts every process from."""
    bits = int(status.get("SigCgt", "0"), 16) | int(status.get("SigIgn", "0"), 16)
    return {s for s in SIGACTION_SIGNALS if bits >> (s - 1) & 1} | {SIGCHLD}


def collect_task_state(task: FrozenTask, close_fds: Sequence[int] = ()) -> TaskState:
    """Read the whole non-memory state of a frozen task (see the module docstring).
    close_fds: fds of coldsnap's own to close in the target in the same injected session
    (a final dump's parked userfaultfds: no session of their own)."""
    pid = task.pid
    tids = list(task.tids)
    if pid not in tids:
        raise TargetError(f"thread group leader {pid} is not held")
    model = task.model
    stat = read_stat(pid)
    status = read_status(pid)
    asked = signals_to_ask(status)
    personality = read_personality(pid)
    auxv = read_auxv(pid)
    # before any injection; the leader's status is the one just read (same task)
    per_thread = {tid: _read_ptrace_side(pid, tid, status if tid == pid else None) for tid in tids}
    shared_pending = _peek_all(pid, shared=True)
    rlimits = _rlimits(pid)
    timers = read_posix_timers(pid)
    notes: list[str] = []
    masks: dict[int, int] = {}
    off_timers = _OFF_THREAD + _SLOT * len(tids)
    zero = bytes(off_timers + 32 * len(timers))
    if len(zero) > PAGE_SIZE:
        raise Unsupported(f"too many threads ({len(tids)}) and POSIX timers ({len(timers)}) "
                          "for one scratch page")

    robust = {tid: _robust_list(tid) for tid in tids}
    # SigIgn is process-wide: no status read per session (RemoteCalls would read it)
    mode = "syscall" if int(status.get("SigIgn", "0"), 16) >> (SIGTRAP - 1) & 1 else "step"

    # every injected call of a thread in one batch (seize/remote.py): a round trip each
    # instead of one per call; the table after the results' page
    with RemoteCalls(task, tid=pid, mode=mode, plain_stop=_own_mask_at_stop(per_thread[pid]["regs"]),
                     scratch_size=2 * PAGE_SIZE) as rc:
        base = rc.write_scratch(zero)             # zeroed: a failing call leaves 0 behind
        batch = [Call(SYS.rt_sigaction, (sig, 0, base + _OFF_SA + 32 * i, 8), f"rt_sigaction({sig})")
                 for i, sig in enumerate(SIGACTION_SIGNALS) if sig in asked]
        batch += [Call(NR_getitimer, (which, base + _OFF_ITIMER + 32 * which), "getitimer") for which in range(3)]
        head = len(batch)
        batch += [Call(SYS.brk, (0,), "brk"), Call(SYS.prctl, (PR_GET_DUMPABLE, 0, 0, 0, 0), "PR_GET_DUMPABLE"),
                  Call(SYS.prctl, (PR_GET_CHILD_SUBREAPER, base + _OFF_MISC, 0, 0, 0), "PR_GET_CHILD_SUBREAPER"),
                  Call(SYS.prctl, (PR_GET_SECUREBITS, 0, 0, 0, 0), may_fail=True)]
        for i, tid in enumerate(tids):
            if robust[tid] is None:
                off = _OFF_THREAD + _SLOT * i
                batch.append(Call(SYS.get_robust_list, (tid, base + off + 32, base + off + 40), "get_robust_list"))
        first_timer = len(batch)
        for i, t in enumerate(timers):
            batch += [Call(NR_timer_gettime, (t.id, base + off_timers + 32 * i), f"timer_gettime({t.id})"),
                      Call(NR_timer_getoverrun, (t.id,), f"timer_getoverrun({t.id})")]
        batch += [Call(SYS.close, (fd,), f"close({fd}) of coldsnap's parked userfaultfd") for fd in close_fds]
        batch += _thread_calls(base, _OFF_THREAD + _SLOT * tids.index(pid))
        got = rc.batch_checked(batch, PAGE_SIZE)
        brk, dumpable, secbits = got[head], got[head + 1], got[head + 3]
        if secbits < 0:
            notes.append(f"PR_GET_SECUREBITS failed ({-secbits}): secbits 0")
            secbits = 0
        overruns = got[first_timer + 1:first_timer + 2 * len(timers):2]
        slack = {pid: max(got[-1], 0)}
        calls, trips = rc.stats.calls, rc.stats.trips
        for i, tid in enumerate(tids):
            if tid == pid:
                continue
            with RemoteCalls(task, tid=tid, mode=mode, plain_stop=_own_mask_at_stop(per_thread[tid]["regs"])) as trc:
                trc.borrow_area(rc)     # the same mm: the leader's scratch area and code page
                slack[tid] = max(trc.batch_checked(_thread_calls(base, _OFF_THREAD + _SLOT * i), PAGE_SIZE)[-1], 0)
                calls += trc.stats.calls
                trips += trc.stats.trips
                if trc.real_mask is not None:
                    masks[tid] = trc.real_mask
        if rc.real_mask is not None:
            masks[pid] = rc.real_mask
        blob = rc.read_scratch(len(zero))

    sigactions = [SigAction(sig, *KSIGACTION.unpack_from(blob, _OFF_SA + 32 * i))
                  for i, sig in enumerate(SIGACTION_SIGNALS)]
    itimers = {}
    for which, name in enumerate(ITIMERS):
        isec, iusec, vsec, vusec = struct.unpack_from("<4Q", blob, _OFF_ITIMER + 32 * which)
        itimers[name] = (isec, iusec, vsec, vusec)
    subreaper, = struct.unpack_from("<i", blob, _OFF_MISC)
    # the leader's parent-death signal: its own thread slot (_thread_injected), not a second call
    pdeath_sig, = struct.unpack_from("<i", blob, _OFF_THREAD + _SLOT * tids.index(pid) + 48)
    posix = []
    for i, t in enumerate(timers):
        isec, insec, vsec, vnsec = struct.unpack_from("<4q", blob, off_timers + 32 * i)
        posix.append(PosixTimer(t, overruns[i], (vsec, vnsec), (isec, insec)))

    threads = []
    has_tid_addr = False
    for i, tid in enumerate(tids):
        off = _OFF_THREAD + _SLOT * i
        # stack_t {ss_sp u64, ss_flags i32, pad, ss_size u64}, tid address, robust head, len
        ss_sp, ss_flags, ss_size, tid_addr, rl_head, rl_len, pdeath = struct.unpack_from("<Qi4xQQQQi", blob, off)
        rl_head, rl_len = robust[tid] or (rl_head, rl_len)
        d = per_thread[tid]
        d["sigmask"] = masks.get(tid, d["sigmask"])
        d["creds"] = d["creds"]._replace(secbits=secbits)
        has_tid_addr |= tid_addr != 0
        threads.append(ThreadState(clear_tid_addr=tid_addr, robust_list=(rl_head, rl_len),
                                   sigaltstack=(ss_sp, ss_size, ss_flags), pdeath_sig=pdeath,
                                   timer_slack=slack[tid], **d))
    if not has_tid_addr:
        notes.append("clear_tid_addr unknown (PR_GET_TID_ADDRESS unavailable): written as 0")

    return TaskState(pid=pid, ppid=model.ppid, pgid=model.pgid, sid=model.sid, comm=stat.comm,
                     flags=stat.flags, personality=personality, umask=int(status.get("Umask", "0022"), 8),
                     threads=threads, sigactions=sigactions, shared_pending=shared_pending,
                     rlimits=rlimits, itimers=itimers, brk=brk, auxv=auxv, dumpable=dumpable,
                     child_subreaper=bool(subreaper), pdeath_sig=pdeath_sig, secbits=secbits, stop_signal=task.group_stopped(),
                     posix_timers=posix, thp_disabled=status.get("THP_enabled", "1") == "0",
                     remote_calls=calls, remote_trips=trips + 1, notes=notes)   # + the scratch's munmap


# -- images -------------------------------------------------------------------------------

@dataclass(eq=False, repr=False)
class SeccompFilters:
    """seccomp.img of a dump: every filter once, each chained to the one installed before
    it (`prev`), so that threads with the same filters share entries."""
    filters: list[tuple[bytes, int | None]] = field(default_factory=list)   # (program, prev)
    _index: dict[tuple[bytes, int | None], int] = field(default_factory=dict)

    def chain(self, programs: list[bytes]) -> int | None:
        """The index of the newest filter of a chain given oldest first (None: no filter)."""
        prev: int | None = None
        for prog in programs:
            key = (prog, prev)
            if key not in self._index:
                self._index[key] = len(self.filters)
                self.filters.append(key)
            prev = self._index[key]
        return prev

    def write(self, imgdir) -> None:
        if not self.filters:
            return
        from coldsnap.images.pb import seccomp_pb2
        e = seccomp_pb2.seccomp_entry()
        for prog, prev in self.filters:
            f = e.seccomp_filters.add(filter=prog)
            if prev is not None:
                f.prev = prev
        imgdir.write("seccomp.img", [e])


def _signal_queue(sigs: Iterable[bytes]):
    from coldsnap.images.pb import siginfo_pb2
    q = siginfo_pb2.signal_queue_entry()
    for s in sigs:
        q.signals.add(siginfo=s)
    return q


def restart_form(regs: dict[str, int]) -> dict[str, int]:
    """The registers of a thread stopped inside a system call, as the images hold them (and
    as CRIU writes them): a call the kernel would restart (-ERESTARTSYS, -ERESTARTNOINTR,
    -ERESTARTNOHAND) is set up to run again (ax = its number, ip back on the `syscall`
    instruction); one that would restart through its restart block (-ERESTART_RESTARTBLOCK:
    nanosleep, poll with a timeout...) returns EINTR, since the block does not survive.
    Whoever restores the thread then only sets the registers, whatever its last stop was."""
    if _signed(regs["orig_rax"]) < 0:
        return regs
    err = _signed(regs["rax"])
    if err in RESTART_AGAIN:
        return {**regs, "rax": regs["orig_rax"], "rip": regs["rip"] - SYSCALL_INSN_SIZE}
    if err == -ERESTART_RESTARTBLOCK:
        return {**regs, "rax": -errno.EINTR & U64}
    return regs


def _signed(v: int) -> int:
    return v - (1 << 64) if v >> 63 else v


def _core_entry(state: TaskState, th: ThreadState, seccomp: SeccompFilters | None = None):
    from coldsnap.images.pb import core_pb2, core_x86_pb2
    core = core_pb2.core_entry(mtype=core_pb2.X86_64)
    ti = core.thread_info
    ti.clear_tid_addr = th.clear_tid_addr
    r = restart_form(th.regs)
    ti.gpregs.CopyFrom(core_x86_pb2.user_x86_regs_entry(
        r15=r["r15"], r14=r["r14"], r13=r["r13"], r12=r["r12"], bp=r["rbp"], bx=r["rbx"],
        r11=r["r11"], r10=r["r10"], r9=r["r9"], r8=r["r8"], ax=r["rax"], cx=r["rcx"], dx=r["rdx"],
        si=r["rsi"], di=r["rdi"], orig_ax=r["orig_rax"], ip=r["rip"], cs=r["cs"], flags=r["eflags"],
        sp=r["rsp"], ss=r["ss"], fs_base=r["fs_base"], gs_base=r["gs_base"], ds=r["ds"], es=r["es"],
        fs=r["fs"], gs=r["gs"], mode=core_x86_pb2.NATIVE))
    fp = th.fpregs
    fpe = ti.fpregs
    fpe.cwd, fpe.swd, fpe.twd, fpe.fop = fp.cwd, fp.swd, fp.twd, fp.fop
    fpe.rip, fpe.rdp, fpe.mxcsr, fpe.mxcsr_mask = fp.rip, fp.rdp, fp.mxcsr, fp.mxcsr_mask
    fpe.st_space.extend(fp.st_space)
    fpe.xmm_space.extend(fp.xmm_space)
    if th.xstate:
        fill_components(fpe.xsave, th.xstate, xstate_layout())   # what CRIU reads
        fpe.xsave.cs_xsave_raw = th.xstate                       # what coldsnap restores
    for slot in th.tls:
        ti.tls.add(entry_number=slot.entry_number, base_addr=slot.base_addr, limit=slot.limit,
                   seg_32bit=slot.seg_32bit, contents_h=bool(slot.contents & 2),
                   contents_l=bool(slot.contents & 1), read_exec_only=slot.read_exec_only,
                   limit_in_pages=slot.limit_in_pages, seg_not_present=slot.seg_not_present,
                   usable=slot.usable)

    tc = core.thread_core
    tc.futex_rla, tc.futex_rla_len = th.robust_list
    tc.blk_sigset = th.sigmask
    tc.sas.ss_sp, tc.sas.ss_size, tc.sas.ss_flags = th.sigaltstack[0], th.sigaltstack[1], th.sigaltstack[2] & 0xFFFFFFFF
    if th.pending:
        tc.signals_p.CopyFrom(_signal_queue(th.pending))
    th.creds.to_entry(tc.creds)
    tc.seccomp_mode = th.seccomp_mode
    if th.seccomp and seccomp is not None:
        tc.seccomp_filter = seccomp.chain(th.seccomp)
    if th.pdeath_sig:
        tc.pdeath_sig = th.pdeath_sig
    if th.timer_slack:
        tc.cs_timer_slack_ns = th.timer_slack
    tc.comm = th.comm
    if th.rseq is not None:
        tc.rseq_entry.rseq_abi_pointer = th.rseq.rseq_abi_pointer
        tc.rseq_entry.rseq_abi_size = th.rseq.rseq_abi_size
        tc.rseq_entry.signature = th.rseq.signature

    if th.tid == state.pid:
        t = core.tc
        t.task_state = TASK_STOPPED if state.stop_signal else TASK_ALIVE
        if state.stop_signal:
            t.stop_signo = state.stop_signal
        t.exit_code = 0
        t.personality = state.personality
        t.flags = state.flags
        t.blk_sigset = th.sigmask
        t.comm = state.comm
        for name in ITIMERS:
            isec, iusec, vsec, vusec = state.itimers[name]
            it = getattr(t.timers, name)
            it.isec, it.iusec, it.vsec, it.vusec = isec, iusec, vsec, vusec
        for pt in state.posix_timers:
            i = pt.info
            e = t.timers.posix.add(it_id=i.id, clock_id=i.clockid, si_signo=i.signo, it_sigev_notify=i.notify,
                                   sival_ptr=i.sival, overrun=pt.overrun, isec=pt.interval[0],
                                   insec=pt.interval[1], vsec=pt.value[0], vnsec=pt.value[1])
            if i.notify & SIGEV_THREAD_ID:
                e.notify_thread_id = i.notify_id
        for cur, mx in state.rlimits:
            t.rlimits.rlimits.add(cur=cur, max=mx)
        if state.shared_pending:
            t.signals_s.CopyFrom(_signal_queue(state.shared_pending))
        for sa in state.sigactions:
            t.sigactions.add(sigaction=sa.handler, flags=sa.flags, restorer=sa.restorer,
                             mask=sa.mask, compat_sigaction=False)
        t.child_subreaper = state.child_subreaper
        if state.pdeath_sig:
            core.thread_core.pdeath_sig = state.pdeath_sig
    return core


def prepare_images() -> None:
    """What writing the core and tree images works out on its first use, done before a
    dump's freeze: their messages' modules imported (late, for the commands that never
    write them) and the CPU's XSAVE layout (CPUID through a page of our own). A command's
    first dump otherwise spent ~2 ms of its frozen window on them."""
    from coldsnap.images.pb import core_pb2, ids_pb2, pstree_pb2, siginfo_pb2  # noqa: F401
    xstate_layout()


def write_core_images(state: TaskState, imgdir, seccomp: SeccompFilters | None = None) -> list[str]:
    """Write core-<tid>.img for every thread of one process (their seccomp filters into
    `seccomp`, written by the caller as seccomp.img); returns the names."""
    names = []
    for th in state.threads:
        name = f"core-{th.tid}.img"
        imgdir.write(name, [_core_entry(state, th, seccomp)])
        names.append(name)
    return names


def write_zombie_core(pid: int, exit_code: int, comm: str, imgdir) -> str:
    """core-PID.img of a zombie, as CRIU writes one: no thread state, only its task_state
    (TASK_DEAD) and exit status (the raw wait status); returns the name."""
    from coldsnap.images.pb import core_pb2
    core = core_pb2.core_entry(mtype=core_pb2.X86_64)
    core.tc.task_state, core.tc.exit_code = TASK_DEAD, exit_code
    core.tc.personality, core.tc.flags, core.tc.blk_sigset, core.tc.comm = 0, 0, 0, comm
    name = f"core-{pid}.img"
    imgdir.write(name, [core])
    return name


def write_task_images(state: TaskState, tree: Tree, imgdir) -> list[str]:
    """Write core-<tid>.img for every thread, then the tree's pstree.img and ids-<pid>.img;
    returns the names."""
    return write_core_images(state, imgdir) + write_tree_images(tree, imgdir)


def dump_task_state(pid: int, imgdir) -> TaskState:
    """Freeze PID once, collect its state, let it go, then write the images."""
    with freeze(pid) as task:
        state = collect_task_state(task)
        tree = task.tree
        task.resume()
    write_task_images(state, tree, imgdir)
    return state
