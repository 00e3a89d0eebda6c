"""Freeze every thread of a process tree with ptrace, and always let it go again.

    with freeze(pid) as task:       # all threads in a ptrace interrupt stop
        ...                         # task.tids, task.tree (the model), RemoteCalls(task), ...
        task.resume()               # optional early resume (idempotent)
    task.frozen_ns                  # how long the task was held

    with freeze_tree(pid) as held:  # the process and every descendant, all threads
        held.tree                   # the model (seize/tree.py): pids, sessions, shared objects
        held.task(pid)              # the FrozenTask of one process
        held.resume()               # every process (each FrozenTask may also resume alone)

    with freeze_known([root, child]) as held:   # exactly these (a restore's blank processes)

A FrozenTree holds the processes; a FrozenTask is one process of it. `freeze(pid)` is a
tree of one whose root task is handed out: one code path. The tree ends (signal handlers
back, frozen_ns set) when its last task is resumed.

Descendants: after the root's threads are all stopped, the children of every held process
are listed and seized, again and again until a pass finds nothing new: a stopped process
cannot fork, so the listing of a fully held tree is final. Zombie children are left out
(listed in `held.zombies`: the caller decides whether it can do without them).

Through the cgroup freezer (`freeze_tree(pid, cgroup=PATH)`, v1 or v2): freeze the cgroup,
list the tree under the root among its processes (a process below the root outside the
cgroup is refused: it would run on), seize and interrupt every thread while they are frozen,
thaw (the pending interrupt stops each thread before it runs a user instruction) and collect
the stops. The cgroup is thawed on every exit path; one that was frozen before coldsnap came
is frozen again before the threads are let go (the kernel counts traced threads as frozen, so
the freeze completes at once and each thread enters the freezer as it leaves its stop).

Users that leave state in the target (remote-call sessions: registers, scratch page) register
an undo with `task.at_resume(key, undo)`; resume runs the undos (last registered first) while
every thread is still held, then lets the threads go. The freezer knows nothing of its users.

Why SEIZE + INTERRUPT and no PTRACE_O_TRACECLONE: a thread can only be created by a running
thread of the group, and a clone completes (child linked into the group) before its parent
reaches the interrupt stop. So "list /proc/PID/task, seize and stop what is new, repeat until
a listing brings nothing new" ends with every thread stopped, and we never have to handle
auto-attached children or clone events.

SIGINT/SIGTERM sent to coldsnap become `Interrupted` while the freeze is held (main thread
only). State changes (seize, wait, detach, one remote call) run in short critical sections
where the signal is only recorded and raised at the end, so a ptrace transition is never
cut in half. If coldsnap is SIGKILLed, the kernel detaches every tracee and it runs on.
"""
from __future__ import annotations

import contextlib
import errno
import os
import signal
import threading
import time
from dataclasses import dataclass, field
from typing import Callable, Hashable

from coldsnap.errors import AccessDenied, CsError, Interrupted, NoSuchProcess, TargetError, Unsupported
from coldsnap.kernel import ptrace
from coldsnap.kernel.cgroup import CgroupFreezer
from coldsnap.kernel.libc import SYS, syscall
from coldsnap.kernel.procfs import alive, child_pids, find_mapping, list_tids, open_mem, read_stat, read_status
from coldsnap.seize.tree import Task, Tree, own_ns_inodes, read_tree

PF_KTHREAD = 0x00200000
SEIZE_OPTIONS = ptrace.PTRACE_O_TRACESYSGOOD   # never EXITKILL: our death must not kill the target


class _SignalGuard:
    """Turns SIGINT/SIGTERM/SIGHUP into Interrupted, deferred while inside critical sections.
    A signal the caller ignores (nohup's SIGHUP) stays ignored."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)

    def __init__(self) -> None:
        self.depth = 0
        self.pending: int | None = None
        self._old: dict[int, object] = {}

    def install(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return  # Python only runs handlers in the main thread
        for sig in self.SIGNALS:
            if signal.getsignal(sig) is not signal.SIG_IGN:
                self._old[sig] = signal.signal(sig, self._handler)

    def restore(self) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)  # type: ignore[arg-type]
        self._old.clear()

    def _handler(self, signum: int, frame: object) -> None:
        if self.depth:
            self.pending = signum
        else:
            raise Interrupted(signum)

    def __enter__(self) -> None:
        self.depth += 1

    def __exit__(self, *exc: object) -> None:
        self.depth -= 1
        if self.depth == 0 and self.pending is not None:
            sig, self.pending = self.pending, None
            raise Interrupted(sig)


@dataclass(eq=False, repr=False)
class _Thread:
    """A thread of the frozen task and how we hold it."""
    tid: int
    stopped: bool = False
    stop_sig: int = 0        # SIGTRAP for our interrupt, a stop signal if it was group-stopped


class FrozenTree:
    """Processes (the root, and with `descendants` all below it) held by the calling OS thread."""

    def __init__(self, root: int, timeout: float = 10.0, descendants: bool = False,
                 cgroup: str | os.PathLike | None = None, known: list[int] | None = None):
        self.root = root
        self.known = known                # freeze_known's processes: exactly these
        self.cgroup = cgroup
        self.timeout = timeout
        self.descendants = descendants
        self.tasks: dict[int, FrozenTask] = {root: FrozenTask(root, self)}   # in seize order
        self.frozen_ns: int | None = None
        self.seize_ns = 0                 # how long seizing took (part of frozen_ns)
        self.resumed = False
        self.zombies: list[int] = []      # children left out: zombies, or exiting at the seize
        self._guard = _SignalGuard()
        self._owner = 0
        self._t0 = 0
        self._model: Tree | None = None
        self._refreeze: CgroupFreezer | None = None    # a cgroup frozen before we came

    def __enter__(self) -> "FrozenTree":
        if self.known is None:
            _refuse(self.root)
            if self.descendants:
                own_ns_inodes(os.getpid())      # the tree model needs them: read before freezing
        self._owner = threading.get_ident()
        self._guard.install()
        self._t0 = time.monotonic_ns()
        try:
            if self.cgroup is not None:
                self._seize_through_cgroup(CgroupFreezer.open(self.cgroup))
            self.tasks[self.root]._seize_all()
            for pid in list(self.tasks)[1:]:
                self._settle(pid)           # seized in the frozen cgroup: collect their stops
            if self.known is not None:
                for pid in self.known[1:]:
                    self.tasks[pid] = FrozenTask(pid, self)
                    self.tasks[pid]._seize_all()
            elif self.descendants:
                self._seize_descendants()
            self.seize_ns = time.monotonic_ns() - self._t0
        except BaseException:
            self.resume()
            raise
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        try:
            self.resume()
        except Exception:
            if exc_type is None:
                raise
            # an error is already on its way out (the task may be dead by now): it says more
            # than a failed cleanup would

    def _seize_through_cgroup(self, cgroup: CgroupFreezer) -> None:
        """Every thread of the tree seized and interrupted while the cgroup is frozen; the
        stops are collected after the thaw (by _seize_all)."""
        with self._guard:
            if cgroup.frozen():
                self._refreeze = cgroup
            cgroup.freeze(self.timeout)
        try:
            members = set(cgroup.pids())
            if self.root not in members:
                raise TargetError(f"cannot seize {self.root}: it is not in cgroup {cgroup.path}")
            level = [self.root]
            while level:
                for pid in level:
                    task = self.tasks.setdefault(pid, FrozenTask(pid, self))
                    try:
                        tids = list_tids(pid)
                    except ProcessLookupError:
                        if pid == self.root:
                            raise NoSuchProcess(pid, during="the seize") from None
                        tids = []       # exited meanwhile: _settle finds it gone
                    for tid in tids:
                        task._seize_one(tid)
                if not self.descendants:
                    return
                kids = [c for found in child_pids(level).values() for c in sorted(found)]
                level = []
                for c in kids:
                    if not alive(c):
                        self.zombies.append(c)
                    elif c not in members:
                        raise TargetError(f"cannot seize {c} (child of {read_stat(c).ppid}): it is not in "
                                          f"cgroup {cgroup.path} and would run during the dump")
                    else:
                        _refuse(c)
                        level.append(c)
        finally:
            with self._guard:
                cgroup.thaw()

    def _seize_descendants(self) -> None:
        while True:
            held = [pid for pid, t in self.tasks.items() if not t.resumed]
            new = [c for kids in child_pids(held).values() for c in kids
                   if c not in self.tasks and c not in self.zombies]
            if not new:
                return          # every listed process is held: none can fork another one
            for pid in new:
                if not alive(pid):
                    self.zombies.append(pid)
                    continue    # a zombie (or exiting): nothing to seize
                try:
                    _refuse(pid)
                except TargetError as e:
                    if isinstance(e, NoSuchProcess) or alive(pid):
                        raise
                    self.zombies.append(pid)    # it exited since alive() (not held yet: it runs)
                    continue
                self.tasks[pid] = FrozenTask(pid, self)
                self._settle(pid)

    def _settle(self, pid: int) -> None:
        """Seize every thread of PID below the root and collect their stops; one that exited
        meanwhile is dropped and listed with the zombies."""
        try:
            self.tasks[pid]._seize_all()
        except NoSuchProcess:
            self._drop(pid)

    def _drop(self, pid: int) -> None:
        """A process below the root exited while held: let it go, list it with the zombies
        (its parent is held: nobody reaps it; with_zombies waits for its exit status)."""
        self.tasks.pop(pid).resume()
        self.zombies.append(pid)

    @property
    def tree(self) -> Tree:
        """The model of the held processes, read from the kernel at first use (while held)."""
        if self._model is None:
            if self.resumed:
                raise CsError(f"the tree of {self.root} was already resumed")
            while True:
                try:
                    self._model = read_tree(self.root, {pid: t.tids for pid, t in self.tasks.items()})
                    break
                except NoSuchProcess as e:
                    # an exiting process's /proc links answer EACCES/ENOENT: it exited
                    if e.pid == self.root or e.pid not in self.tasks:
                        raise
                    self._drop(e.pid)
        return self._model

    def task(self, pid: int) -> "FrozenTask":
        return self.tasks[pid]

    def resume(self) -> None:
        """Resume every process (children first). Idempotent; safe on any exit path."""
        errors: list[BaseException] = []
        for task in reversed(list(self.tasks.values())):
            try:
                task.resume()
            except Exception as e:      # keep resuming the others
                errors.append(e)
        self._released()
        if errors:
            raise errors[0]

    def _before_release(self) -> None:
        """A task is about to let its threads go: a cgroup that was frozen before we came is
        frozen again first, so that no thread runs on leaving its stop. Not while a task still
        has undos to run (they may run injected calls, which a freezing task would never
        finish): normally none has by then; else the last one's resume does it."""
        if self._refreeze is None or any(t._undo for t in self.tasks.values()):
            return
        cgroup, self._refreeze = self._refreeze, None
        cgroup.freeze(self.timeout)

    def _released(self) -> None:
        """A task was resumed: when none is held any more, the tree ends."""
        if self.resumed or not all(t.resumed for t in self.tasks.values()):
            return
        self.resumed = True
        self.frozen_ns = time.monotonic_ns() - self._t0
        self._guard.restore()


@dataclass(eq=False, repr=False)
class FrozenTask:
    """One process of a FrozenTree: its threads are all held in ptrace stops."""
    pid: int
    _tree: FrozenTree
    tids: list[int] = field(default_factory=list)
    frozen_ns: int | None = None
    resumed: bool = False
    _threads: dict[int, _Thread] = field(default_factory=dict)
    _undo: dict[Hashable, Callable[[], None]] = field(default_factory=dict)
    _resend: list[tuple[int, int]] = field(default_factory=list)   # (tid, sig) swallowed meanwhile
    _gadget: int | None = None
    _mem_fd: int | None = None

    # -- entering (a tree of one: `with freeze(pid) as task`) -----------------------------

    def __enter__(self) -> "FrozenTask":
        self._tree.__enter__()
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self._tree.__exit__(exc_type, exc, tb)

    @property
    def _guard(self) -> _SignalGuard:
        return self._tree._guard

    @property
    def tree(self) -> Tree:
        """The model of the held tree (see seize/tree.py)."""
        return self._tree.tree

    @property
    def model(self) -> Task:
        """This process in the model: ppid, pgid, sid, shared-object ids."""
        return self._tree.tree.task(self.pid)

    def _seize_all(self) -> None:
        deadline = time.monotonic() + self._tree.timeout
        while True:
            try:
                listed = list_tids(self.pid)
            except ProcessLookupError:
                raise NoSuchProcess(self.pid, during="the seize") from None
            new = [t for t in listed if t not in self._threads]
            for tid in new:
                self._seize_one(tid)
            self._collect_stops(deadline)      # also those seized earlier (a frozen cgroup)
            if not self._threads:
                raise NoSuchProcess(self.pid, during="the seize")
            if not new:
                self.tids = sorted(self._threads)
                return  # every listed thread is stopped: nothing can create another one

    def _seize_one(self, tid: int) -> None:
        with self._guard:
            try:
                ptrace.seize(tid, SEIZE_OPTIONS)
            except OSError as e:
                if e.errno == errno.ESRCH:
                    return  # exited between listing and seize
                if e.errno == errno.EPERM and not alive(self.pid, tid):
                    if tid != self.pid:
                        return      # a thread on its way out
                    # the kernel refuses to attach to an exiting process: it exited meanwhile
                    raise NoSuchProcess(self.pid, during="the seize") from None
                if e.errno == errno.EPERM:
                    tracer = _tracer(self.pid, tid)
                    if tracer:
                        raise AccessDenied(self.pid, f"cannot seize {self.pid}",
                                           f"thread {tid} already traced by {tracer}") from None
                    raise AccessDenied(self.pid, f"cannot seize {self.pid}") from None
                raise
            self._threads[tid] = _Thread(tid)
            try:
                ptrace.interrupt(tid)
            except ProcessLookupError:
                pass  # it is exiting; the wait below collects its exit

    def _collect_stops(self, deadline: float) -> None:
        pending = [t for t in self._threads.values() if not t.stopped]
        naps = 0
        while pending:
            for th in list(pending):
                with self._guard:
                    if self._poll_one(th):
                        pending.remove(th)
            if not pending:
                return
            if time.monotonic() > deadline:
                th = pending[0]
                state = _state(self.pid, th.tid)
                raise TargetError(f"cannot seize {self.pid}: thread {th.tid} did not stop "
                                  f"within {self._tree.timeout:g}s (state {state or '?'})")
            naps += 1
            # stops normally arrive within tens of microseconds: spin briefly, then nap; short
            # naps: a restore's blank process stops only once its munmap of the interpreter
            # is done (restore/blank.py Idle), a millisecond or two, and the seize waits for it
            time.sleep(0 if naps < 50 else 0.0001)

    def _poll_one(self, th: _Thread) -> bool:
        """One non-blocking wait; True when the thread is settled (stopped or gone)."""
        try:
            st = ptrace.wait_stop(th.tid, nohang=True)
        except ChildProcessError:
            del self._threads[th.tid]
            return True
        if st is None:
            return False
        if st.exited:
            del self._threads[th.tid]
            return True
        if st.is_event_stop:
            th.stopped, th.stop_sig = True, st.sig
            return True
        # a signal-delivery-stop that beat our interrupt: deliver it as it would have been;
        # the interrupt trap stays pending and comes next
        ptrace.cont(th.tid, st.sig if st.is_signal_stop else 0)
        return False

    # -- leaving --------------------------------------------------------------------------

    def resume(self) -> None:
        """Undo injected state and detach every thread. Idempotent; safe on any exit path."""
        if self.resumed:
            return
        if self._tree._owner and threading.get_ident() != self._tree._owner:
            raise CsError("resume() must run on the thread that froze the task")
        errors: list[BaseException] = []
        with self._guard:
            while self._undo:
                _, undo = self._undo.popitem()    # last registered first
                try:
                    undo()
                except Exception as e:  # keep undoing and detaching the others
                    errors.append(e)
            try:
                self._tree._before_release()
            except CsError as e:
                errors.append(e)
            for th in list(self._threads.values()):
                self._release(th)
            self._threads.clear()
            if self._mem_fd is not None:
                os.close(self._mem_fd)
                self._mem_fd = None
            for tid, sig in self._resend:
                try:
                    _tgkill(self.pid, tid, sig)
                except ProcessLookupError:
                    pass
            self.resumed = True
            self.frozen_ns = time.monotonic_ns() - self._tree._t0
            self._tree._released()
        if errors:
            raise errors[0]

    def _release(self, th: _Thread) -> None:
        if not th.stopped:
            # seized but its stop not collected yet (we were interrupted): wait for it briefly
            deadline = time.monotonic() + 1.0
            while not th.stopped and th.tid in self._threads and time.monotonic() < deadline:
                if not self._poll_one(th):
                    time.sleep(0.0005)
            if th.tid not in self._threads:
                return
        try:
            ptrace.detach(th.tid, 0)
        except ProcessLookupError:
            self._reap_killed(th.tid)

    def _reap_killed(self, tid: int) -> None:
        """A thread killed while held leaves its stop but is still ours: reap its exit, or a
        wait for its leader (the caller's, say) would wait for ever. It may take a moment to
        die: wait for it, briefly."""
        deadline = time.monotonic() + 2.0
        while True:
            try:
                st = ptrace.wait_stop(tid, nohang=True)
            except ChildProcessError:
                return              # reaped, or never ours
            if st is not None:
                if not st.exited:   # a stop after all: let it go
                    with contextlib.suppress(ProcessLookupError):
                        ptrace.detach(tid, 0)
                return
            if time.monotonic() > deadline:
                return
            time.sleep(0.0005)

    # -- services for the users of a freeze (remote calls, ...) --------------------------

    def at_resume(self, key: Hashable, undo: Callable[[], None]) -> None:
        """Run UNDO at resume, before the threads are let go (last registered first).
        One undo per key: a second registration of a live key is a ValueError."""
        if key in self._undo:
            raise ValueError(f"{key!r} already registered")
        self._undo[key] = undo

    def cancel_at_resume(self, key: Hashable) -> None:
        """The undo of KEY was done (or is moot): resume must not run it."""
        self._undo.pop(key, None)

    def resend_at_resume(self, tid: int, sig: int) -> None:
        """A signal a user had to swallow from thread TID: tgkill it again after the detach."""
        self._resend.append((tid, sig))

    @property
    def seize_ns(self) -> int:
        """How long seizing the tree took: the start of frozen_ns, before anything was held."""
        return self._tree.seize_ns

    @property
    def held_ns(self) -> int | None:
        """How long this task was held once seized (frozen_ns less the seizing), or None
        while it still is: the frozen time a (pre-)dump reports."""
        return None if self.frozen_ns is None else max(0, self.frozen_ns - self.seize_ns)

    def critical(self) -> _SignalGuard:
        """`with task.critical():` defers SIGINT/SIGTERM until the block ends."""
        return self._guard

    def check_usable(self, tid: int) -> None:
        if self.resumed:
            raise CsError(f"task {self.pid} was already resumed")
        if threading.get_ident() != self._tree._owner:
            raise CsError("ptrace requests must come from the thread that froze the task")
        th = self._threads.get(tid)
        if th is None or not th.stopped:
            raise TargetError(f"thread {tid} of {self.pid} is not held")

    def mem_fd(self) -> int:
        """An O_RDWR fd on /proc/PID/mem, shared by users of this freeze."""
        if self._mem_fd is None:
            self._mem_fd = open_mem(self.pid, os.O_RDWR)
        return self._mem_fd

    def vdso_gadget(self, vdso: tuple[int, int] | None = None) -> int:
        """Address of a `syscall` instruction (0f 05) inside the target's [vdso]. vdso:
        its (start, end) when the caller knows it (restore's blank child, a fork of
        coldsnap, has coldsnap's): no read of its maps."""
        if self._gadget is None:
            if vdso is None:
                m = find_mapping(self.pid, "[vdso]")
                if m is None:
                    raise Unsupported(f"process {self.pid} has no [vdso]")
                vdso = (m.start, m.end)
            text = os.pread(self.mem_fd(), vdso[1] - vdso[0], vdso[0])
            at = text.find(b"\x0f\x05")
            if at < 0:
                raise Unsupported(f"no syscall instruction in the [vdso] of {self.pid}")
            self._gadget = vdso[0] + at
        return self._gadget

    def group_stopped(self) -> int:
        """The stop signal if the process was in a group-stop (SIGSTOP, SIGTSTP...) when
        seized, else 0. The stop stays in force after resume."""
        th = self._threads.get(self.pid)
        return th.stop_sig if th is not None and th.stop_sig not in (0, signal.SIGTRAP) else 0

    def vdso_moved(self, delta: int) -> None:
        """The target's [vdso] was moved by delta bytes (an injected mremap of all of it)."""
        if self._gadget is not None:
            self._gadget += delta

    def adopt_thread(self, tid: int) -> None:
        """Hold a thread that an injected clone created traced (CLONE_PTRACE, or under
        PTRACE_O_TRACECLONE).

        The kernel attached it to us; its first stop is a PTRACE_EVENT_STOP."""
        with self._guard:
            st = ptrace.wait_stop(tid)
            if st is None or not st.is_event_stop:
                raise TargetError(f"new thread {tid} of {self.pid} did not stop as expected ({st!r})")
            self._threads[tid] = _Thread(tid, stopped=True, stop_sig=st.sig)
            self.tids.append(tid)

    def forget_thread(self, tid: int) -> None:
        """A held thread died (e.g. SIGKILL during injection)."""
        self._threads.pop(tid, None)
        if tid in self.tids:
            self.tids.remove(tid)


def freeze(pid: int, timeout: float = 10.0) -> FrozenTask:
    """Context manager that stops all threads of PID (a tree of one); see the module docstring."""
    return FrozenTree(pid, timeout).tasks[pid]


def freeze_tree(pid: int, timeout: float = 10.0, cgroup: str | os.PathLike | None = None) -> FrozenTree:
    """Context manager that stops PID and every process below it, every thread of each;
    with CGROUP, through that cgroup's freezer first (module docstring)."""
    return FrozenTree(pid, timeout, descendants=True, cgroup=cgroup)


def freeze_known(pids: list[int], timeout: float = 10.0) -> FrozenTree:
    """Context manager that stops exactly PIDS (the root first, parents before children),
    every thread of each: processes the caller made itself and knows to sit idle (a restore's
    blank processes), so neither checked as a target nor searched for descendants (a status,
    a stat and a walk of /proc less: half a millisecond of a restore)."""
    return FrozenTree(pids[0], timeout, descendants=True, known=list(pids))


# -- checks -------------------------------------------------------------------------------

def _refuse(pid: int) -> None:
    """Raise TargetError (one line) when PID must not or cannot be seized."""
    what = f"cannot seize {pid}"
    if pid <= 0:
        raise NoSuchProcess(pid, what=what)
    if pid == 1:
        raise TargetError(f"{what}: it is init (PID 1)")
    try:
        status = read_status(pid)
        flags = read_stat(pid).flags
    except ProcessLookupError:
        raise NoSuchProcess(pid, what=what) from None
    tgid = int(status.get("Tgid", pid))
    if tgid == os.getpid():
        raise TargetError(f"{what}: it is coldsnap itself (a tree holding coldsnap cannot be dumped by it)")
    if status.get("Kthread") == "1" or flags & PF_KTHREAD:
        raise TargetError(f"{what}: it is a kernel thread")
    if tgid != pid:
        raise TargetError(f"{what}: it is a thread of process {tgid}")
    if status.get("State", "")[:1] in ("Z", "X"):
        if int(status.get("Threads", "1")) > 1:
            raise Unsupported(f"{what}: its main thread has ended (pthread_exit) while "
                              f"{int(status['Threads']) - 1} other thread(s) run on; not supported yet")
        raise TargetError(f"{what}: it is a zombie")
    tracer = int(status.get("TracerPid", "0"))
    if tracer:
        raise AccessDenied(pid, what, f"already traced by {tracer}")


def _state(pid: int, tid: int) -> str:
    try:
        return read_status(pid, tid).get("State", "")[:1]
    except (FileNotFoundError, ProcessLookupError):
        return ""


def _tracer(pid: int, tid: int) -> int:
    try:
        return int(read_status(pid, tid).get("TracerPid", "0"))
    except (FileNotFoundError, ProcessLookupError):
        return 0


def _tgkill(tgid: int, tid: int, sig: int) -> None:
    syscall(SYS.tgkill, tgid, tid, sig, what="tgkill")
