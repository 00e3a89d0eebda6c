"""The blank processes of a restore: one per dumped process, with its PID, parent, session,
process group and fd table, waiting in plain Python to be seized and transplanted.

    root = make_blank_tree(images, shell_job)     # in coldsnap; returns the root's PID

coldsnap clones the root (clone3 set_tid = its dumped PID). Each blank process then, in
order (restore/sessions.py says why this order):

 1. asks to die with its parent (PR_SET_PDEATHSIG: SIGKILL) until the transplant clears it,
    so that killing the root takes every blank process with it;
 2. sets its session and group: setsid() / setpgid() as sessions.plan_sessions decided;
 3. makes its children one by one (clone3 set_tid), waiting for each child's whole subtree
    to be in place before the next (a one-byte "done" on a pipe of their own);
 4. rebuilds its fd table, cwd, root and umask (restore/fdtable.py), resets its signal
    actions, tells coldsnap "ok" and waits for the seize (Idle: in a page of code of ours,
    having unmapped the rest of its memory).

A child that shares neither fd table nor fs with its parent says "done" between 3 and 4:
its table is its own, so parent and child rebuild theirs side by side.

A process that shared its parent's fd table (CLONE_FILES) or fs (CLONE_FS) without being a
thread of it is cloned with the same flags: the parent rebuilds the shared table after its
children are made, so such a child leaves the table alone (it only sets cwd, root and umask)
and closes none of its fds, its parent's as well.

A zombie's blank process (a zombie has no children: they were reparented) does step 2,
tells coldsnap "ok" and exits at once with the dumped status: its exit code, or killed by
the same signal (its action reset to default). Its parent waits for it to be a zombie
(waitid WNOWAIT) and leaves it unreaped for the restored program's own wait.

Open file descriptions shared by several processes (stdio inherited by a child, a pipe
between parent and child or between siblings, a file with one shared offset): the root's
blank process creates each of them ONCE, before step 2, at fds above every dumped number
(fdtable.open_shared). Every blank process inherits them through its clone and takes its
own fds from them (fdtable.apply_fds `inherited`), closing the ones it does not hold
after it has made its children; so every process ends holding the very same descriptions,
and a pipe's buffered data is written back once. Nothing crosses processes but inheritance:
no pidfd_getfd, no SCM_RIGHTS.

coldsnap reads one message per process on a status pipe that sits above every dumped fd
number (each closes its end after its message): "ok", or its error (pickled when it is
one of ours). A blank process whose child failed exits quietly (the child said why).
"""
from __future__ import annotations

import ctypes
import errno
import fcntl
import os
import pickle
import select
import signal
import struct
from typing import Callable, NamedTuple

from ..errors import AccessDenied, CsError, ImageError, TargetError
from ..kernel.clone import fork_with_pid, set_parent_death_signal
from ..kernel import vm
from ..kernel.libc import SYS, check, libc, own_rseq_area
from ..kernel.page import PAGE_SIZE as PAGE
from .fdtable import FdPlan, apply_fds, open_shared, plan_fds
from ..seize.tree import Task
from .images import TreeImages, gaps_between, own_vdso_areas
from .sessions import JOIN, OWN_GROUP, SETSID, SessionStep
from .transplant import DEFAULT_SIGACTION, SIGNALS

CLONE_FS, CLONE_FILES = 0x200, 0x400
PR_SET_DUMPABLE = 4
_LEN = struct.Struct("<I")
OK = b"ok"


def make_blank_tree(images: TreeImages, shell_job: bool, dontfork: list[tuple[int, int]] = ()) -> int:
    """Every blank process of the tree; returns the root's PID. On failure nothing is left
    (the root is killed, the others die with it) and the first error is raised. DONTFORK:
    areas of ours the root keeps (restore/prebuild.py) and its children must not inherit."""
    tables = [e.fd for t in images.procs.values() for e in t.files.fds]
    r, w0 = os.pipe()
    try:
        # the status pipe must sit above every fd number any process of the tree uses
        w = fcntl.fcntl(w0, fcntl.F_DUPFD_CLOEXEC, max(tables + [2]) + 1)
    finally:
        os.close(w0)
    root = images.tree.root
    # worked out here, not in the child: its Python runs over memory it shares with us (each
    # object it touches is a copy-on-write fault)
    shared_ids, root_files = images.files.shared_ids(), images.root.files
    idle = Idle.make(dontfork)
    plan = Plan({pid: plan_fds(proc.files, shared_ids) for pid, proc in images.procs.items()},
                {pid: images.tree.children(pid) for pid in images.procs}, _changed_signal_actions(),
                idle.enter if idle is not None else None)
    try:
        pid = _clone(root)
    except BaseException:
        os.close(r)
        os.close(w)
        if idle is not None:
            idle.drop()
        raise
    if pid == 0:
        os.close(r)
        shared = {}
        try:
            for start, end in dontfork:
                vm.madvise(start, end - start, vm.MADV_DONTFORK)
            shared = open_shared(root_files, shared_ids, w + 1, shell_job=shell_job)
        except BaseException as e:   # noqa: BLE001 - report anything to coldsnap
            _fail(w, e)
        _become(images, plan, root, w, shell_job, shared, done=None)
    if idle is not None:
        idle.drop()             # the blank processes have it: ours is of no use
    os.close(w)
    with os.fdopen(r, "rb") as f:
        data = f.read()
    msgs = _messages(data)
    if msgs.count(OK) == len(images.tree) and len(msgs) == len(images.tree):
        return pid
    kill_blank(pid)
    bad = next((m for m in msgs if m != OK), None)
    if bad is None:
        raise ImageError("a blank process of the restore died while preparing")
    raise _reported(bad)


class Plan(NamedTuple):
    """What every blank process does, worked out before the first fork."""
    fds: dict[int, FdPlan]          # pid -> its fd table
    children: dict[int, list[Task]]
    signals: list[int]              # the signals whose action is not the default (ours, inherited)
    idle: Callable[[], None] | None = None     # where a blank process ends (Idle), else a pause() loop


# The blank processes' last code (Idle): munmap each (start, length) of the table at 0x40
# until a length of 0, then pause() for ever. No stack, no memory but its own page.
_IDLE_CODE = bytes.fromhex(
    "488d1d39000000"    # 00       lea rbx, [rip+0x39]   the table, at 0x40
    "488b7308"          # 07 next: mov rsi, [rbx+8]      length
    "4885f6"            # 0b       test rsi, rsi
    "7410"              # 0e       jz wait
    "488b3b"            # 10       mov rdi, [rbx]        start
    "b80b000000"        # 13       mov eax, 11           munmap
    "0f05"              # 18       syscall
    "4883c310"          # 1a       add rbx, 16
    "ebe7"              # 1e       jmp next
    "b822000000"        # 20 wait: mov eax, 34           pause
    "0f05"              # 25       syscall
    "ebf7")             # 27       jmp wait
_IDLE_TABLE = 0x40
_IDLE_ROOM = (PAGE - _IDLE_TABLE) // 16 - 1


class Idle(NamedTuple):
    """Where a blank process waits for the seize once set up: a page of code of ours (made
    by coldsnap before the first fork, so every blank process has it) that first unmaps all
    the process's memory but the page itself, the vDSO block, the rseq area glibc registered
    (the kernel writes to it) and the areas it keeps (restore/prebuild.py), then waits in
    pause(). The unmapping of the inherited interpreter (~35 MB of a fork of the service)
    then happens in the blank process, beside coldsnap's own work (the seize, the
    transplant's start, the other processes' transplants), not in the transplant's first
    batch; and coldsnap's own pages are no longer shared with it (a write is no copy). A
    process seized before it got there (or half-way) is unmapped by the transplant, as
    before."""
    page: int
    enter: Callable[[], None]       # jumps there (never returns)

    @staticmethod
    def make(keep: list[tuple[int, int]]) -> "Idle | None":
        """None where it cannot be had (a libc that does not say where its rseq area is,
        no code page): the blank processes then wait in a pause() loop of Python's."""
        rseq = own_rseq_area()
        if rseq is None:
            return None
        spans = [*own_vdso_areas(), *keep]
        if rseq[1]:
            lo = rseq[0] & ~(PAGE - 1)
            spans.append((lo, (rseq[0] + rseq[1] + PAGE - 1) & ~(PAGE - 1)))
        try:
            page = vm.map_code(bytes(PAGE))        # its place first: the table leaves it out
        except OSError:
            return None
        try:
            gaps = gaps_between([*spans, (page, page + PAGE)])
            if len(gaps) > _IDLE_ROOM:
                raise OSError(errno.E2BIG, "too many areas to keep")
            table = b"".join(struct.pack("<QQ", lo, hi - lo) for lo, hi in gaps) + bytes(16)
            vm.write_code(page, _IDLE_CODE.ljust(_IDLE_TABLE, b"\xcc") + table)
        except OSError:
            vm.unmap(page, PAGE)
            return None
        return Idle(page, ctypes.CFUNCTYPE(None)(page))

    def drop(self) -> None:
        vm.unmap(self.page, PAGE)


def _become(images: TreeImages, plan: Plan, pid: int, w: int, shell_job: bool, shared: dict[int, int],
            done: int | None, table: bool = True, alone: bool = False) -> None:
    """The life of the blank process PID (we are it): never returns. table False: the fd
    table is our parent's (CLONE_FILES): rebuilt by it, no fd of it closed here. alone: we
    share neither fd table nor fs with our parent, so it may go on as soon as our subtree
    exists ("done" then, before our fd table: the two are rebuilt side by side)."""
    try:
        _session(pid, images.sessions[pid])
        for kid in plan.children[pid]:
            if kid.zombie:
                if _clone(kid.pid) == 0:
                    _exit_as_zombie(images, kid, w)
                # a zombie of ours until the transplanted parent reaps it: wait, do not reap
                os.waitid(os.P_PID, kid.pid, os.WEXITED | os.WNOWAIT)
                continue
            sr, sw = (_high(fd, w + 1) for fd in os.pipe2(os.O_CLOEXEC))   # off every dumped number
            flags = _shared_with_parent(images.tree.task(pid), kid)
            kpid = _clone(kid.pid, flags)
            if kpid == 0:
                if not flags & CLONE_FILES:
                    os.close(sr)
                _become(images, plan, kid.pid, w, shell_job, shared, done=sw, table=not flags & CLONE_FILES,
                        alone=not flags)
            if flags & CLONE_FILES:
                ok = _done_or_dead(sr, kpid)     # sw is ours too: no EOF when it dies
                os.close(sw)
            else:
                os.close(sw)
                ok = os.read(sr, 1)
            os.close(sr)
            if ok != b"1":
                os._exit(1)          # the child told coldsnap why
        if alone and done is not None:
            os.write(done, b"1")
            os.close(done)
            done = None
        keep = (w,) if done is None else (w, done)
        apply_fds(plan.fds[pid], shell_job=shell_job, keep_fds=keep, inherited=shared, table=table)
        _default_signal_actions(plan.signals)
        _send(w, OK)
    except BaseException as e:   # noqa: BLE001 - report anything to coldsnap
        _fail(w, e)
    if table:
        os.close(w)
    if done is not None:
        os.write(done, b"1")
        if table:
            os.close(done)
    try:
        if plan.idle is not None:
            plan.idle()          # never returns (Idle)
        while True:
            signal.pause()       # until coldsnap seizes and reshapes this process
    finally:
        os._exit(1)              # never unwind into coldsnap's own code (e.g. on SIGINT)


def _changed_signal_actions() -> list[int]:
    """The signals whose action in this process is not DEFAULT_SIGACTION: the blank processes
    inherit our actions, so only these need a reset (the transplant injects the dumped
    actions that differ from the default)."""
    old = ctypes.create_string_buffer(len(DEFAULT_SIGACTION))
    raw, nr, none, out, size = libc.syscall, ctypes.c_long(SYS.rt_sigaction), ctypes.c_ulong(0), \
        ctypes.c_ulong(ctypes.addressof(old)), ctypes.c_ulong(8)
    changed = []
    for sig in SIGNALS:
        if raw(nr, ctypes.c_ulong(sig), none, out, size) != 0:
            check(-1, f"rt_sigaction({sig})")
        if old.raw != DEFAULT_SIGACTION:
            changed.append(sig)
    return changed


def _default_signal_actions(signals: list[int]) -> None:
    """SIGNALS' actions set to DEFAULT_SIGACTION (transplant.default_signal_actions, for a
    few): one bare ctypes call each, as objects cost copy-on-write faults here."""
    zero = ctypes.create_string_buffer(DEFAULT_SIGACTION)
    raw, nr, act, size, none = libc.syscall, ctypes.c_long(SYS.rt_sigaction), ctypes.c_ulong(ctypes.addressof(zero)), \
        ctypes.c_ulong(8), ctypes.c_ulong(0)
    for sig in signals:
        if raw(nr, ctypes.c_ulong(sig), act, none, size) != 0:
            check(-1, f"rt_sigaction({sig})")


def _exit_as_zombie(images: TreeImages, task: Task, w: int) -> None:
    """The blank process of a zombie (we are it): its session and group, then its end with
    the dumped status, exit code or the same signal (never a core file). Never returns."""
    status = task.exit_code or 0
    try:
        _session(task.pid, images.sessions[task.pid])
        libc.prctl(PR_SET_DUMPABLE, 0, 0, 0, 0)
        _send(w, OK)
    except BaseException as e:   # noqa: BLE001 - report anything to coldsnap
        _fail(w, e)
    if os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
        if sig not in (signal.SIGKILL, signal.SIGSTOP):
            signal.signal(sig, signal.SIG_DFL)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {sig})
        os.kill(os.getpid(), sig)
    os._exit(os.WEXITSTATUS(status) if os.WIFEXITED(status) else 1)


def _high(fd: int, base: int) -> int:
    new = fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, base)
    os.close(fd)
    return new


def _done_or_dead(sr: int, pid: int) -> bytes:
    """The child's one-byte "done" on SR, or b"" once the child PID died without it."""
    pidfd = os.pidfd_open(pid)
    try:
        poller = select.poll()
        poller.register(sr, select.POLLIN)
        poller.register(pidfd, select.POLLIN)
        while True:
            ready = dict(poller.poll())
            if ready.get(sr):
                return os.read(sr, 1)
            if ready.get(pidfd):
                return b""
    finally:
        os.close(pidfd)


def _shared_with_parent(parent: Task, kid: Task) -> int:
    """The clone flags that give KID what it shared with PARENT (dump/tree.py allows a
    process to share its fd table and fs with its parent only)."""
    return ((CLONE_FILES if kid.files_id == parent.files_id else 0)
            | (CLONE_FS if kid.fs_id == parent.fs_id else 0))


def _clone(pid: int, flags: int = 0) -> int:
    """A child with PID (0 in the child, which dies with its parent from now on); FLAGS:
    CLONE_FILES / CLONE_FS shared with it."""
    parent = os.getpid()
    try:
        got = fork_with_pid(pid, flags)
    except OSError as e:
        if e.errno == errno.EEXIST:
            raise TargetError(f"PID {pid} is in use: cannot restore with the same IDs") from None
        what = f"cannot create a process with PID {pid}"
        if e.errno in (errno.EPERM, errno.EACCES):
            raise AccessDenied(pid, what, e.strerror.lower(), e.errno) from None
        raise TargetError(f"{what}: {e.strerror}") from None
    if got == 0:
        set_parent_death_signal(signal.SIGKILL)
        if os.getppid() != parent:
            os._exit(1)              # the parent died before we asked
    return got


def _session(pid: int, step: SessionStep) -> None:
    try:
        if step.action == SETSID:
            os.setsid()
        elif step.action == OWN_GROUP:
            os.setpgid(0, 0)
        elif step.action == JOIN:
            os.setpgid(0, step.pgid)
    except OSError as e:
        raise TargetError(f"process {pid}: {step.action} {step.pgid or ''}: {e.strerror}".replace("  ", " ")) from None


def _fail(w: int, e: BaseException) -> None:
    try:
        _send(w, _report(e))
    finally:
        os._exit(1)


def _send(w: int, msg: bytes) -> None:
    os.write(w, _LEN.pack(len(msg)) + msg)      # one write: messages of processes never mix


def _messages(data: bytes) -> list[bytes]:
    out, at = [], 0
    while at + _LEN.size <= len(data):
        n = _LEN.unpack_from(data, at)[0]
        out.append(data[at + _LEN.size:at + _LEN.size + n])
        at += _LEN.size + n
    return out


def _report(e: BaseException) -> bytes:
    """What a blank process tells coldsnap about its failure: the error itself (pickled, so
    that it keeps its class and exit code) or, for anything not ours, its words."""
    if isinstance(e, CsError):
        try:
            return b"E" + pickle.dumps(e)
        except Exception:  # noqa: BLE001 - an error that does not pickle still has words
            pass
    return b"T" + (str(e) or type(e).__name__).encode()[:4000]


def _reported(msg: bytes) -> CsError:
    if msg[:1] == b"E":
        try:
            e = pickle.loads(msg[1:])
            if isinstance(e, CsError):
                return e
        except Exception:  # noqa: BLE001 - a torn message: fall back to its bytes
            pass
    return ImageError(msg[1:].decode(errors="replace") or "the restore child died while preparing")


def kill_blank(pid: int) -> None:
    """SIGKILL the root's process and reap it; blank descendants die with it (PDEATHSIG), the
    caller kills transplanted ones itself."""
    try:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
    except (ProcessLookupError, ChildProcessError):
        pass
