"""Rebuild a dumped fd table, cwd, root and umask inside the blank restore child.

`rebuild_fds` runs as plain Python in the freshly forked child before it is reshaped into
the target; each file kind's operations (coldsnap.files) create its objects. Every object
is first created at a high "temporary" fd number, so that it cannot collide with a target
number, then dup2'ed down; then each object gets its status flags, owner and (epoll) its
registrations; finally everything else is closed.
"""
from __future__ import annotations

import fcntl
import os
import resource
from collections.abc import Collection
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..errors import ImageError
from ..files.kinds import OPS
from ..files.ops import FileOps, OpenCtx
from ..files.registry import TaskFiles

if TYPE_CHECKING:
    from ..files.model import FileObj

_FD_MAX = 0x7FFFFFFF        # close_range's "every fd from here up"


def _names(task: TaskFiles) -> dict[int, str]:
    return {fid: f"fd {fd}" for fid, fd in task.first_fds().items()}


def validate_files(task: TaskFiles, *, shell_job: bool = False) -> None:
    """Check what can be checked before creating a process; ImageError with one line."""
    names = _names(task)
    names[task.cwd_id], names[task.root_id] = "cwd", "root"
    for fid, f in task.files.items():
        OPS[f.kind].validate(f, names.get(fid, f"file {fid}"), shell_job=shell_job)
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    need = max([e.fd for e in task.fds] + [2]) + len(task.files) + 8
    if hard != resource.RLIM_INFINITY and need > hard:
        raise ImageError(f"fd table needs {need} descriptors, RLIMIT_NOFILE hard limit is {hard}")


def open_shared(task: TaskFiles, ids: Collection[int], base: int, *, shell_job: bool = False) -> dict[int, int]:
    """Create the files IDS of the registry (shared by several processes of a tree) once, at
    fds from `base` up, in this process (the root's blank process: every other one inherits
    them through its clone); file id -> fd. `task` is the root's view, for names."""
    reg = task.registry
    if not ids:
        return {}
    _enough_fds(base + len(ids) + 8)
    terminal = [fid for fid in ids if getattr(reg.files[fid], "terminal", False)]
    tty = _tty(base, shell_job, f"file {terminal[0]}") if terminal else None
    ctx = OpenCtx(base, tty, {fid: f"file {fid} (shared)" for fid in ids}, reg.pipe_data, task.pid)
    return {fid: OPS[reg.files[fid].kind].open(reg.files[fid], ctx) for fid in _in_open_order(reg.files, ids)}


@dataclass(eq=False)
class FdPlan:
    """A task's fd table, cwd, root and umask worked out ahead (plan_fds), to be made by
    apply_fds in a freshly forked blank process: there every object its Python touches costs
    a copy-on-write fault, so it gets the lists it walks ready-made."""
    pid: int
    table: list[tuple[int, int, bool]]         # (fd, file id, close-on-exec) of every dumped fd
    targets: frozenset[int]                    # the dumped fd numbers
    opens: list[tuple[int, FileObj, FileOps]]  # each file of the table, in open order
    posts: list[tuple[FileObj, int, FileOps]]  # (file, its lowest fd, ops) for post_open
    names: dict[int, str]                      # file id -> "fd N" (messages)
    terminal: str | None                       # an fd that was a terminal (not inherited) or None
    room: int                                  # fds needed above the base
    pipe_data: dict
    umask: int
    cwd: str
    root: str


def plan_fds(task: TaskFiles, inherited_ids: Collection[int] = ()) -> FdPlan:
    """TASK's plan; INHERITED_IDS: files its blank process will hold already (open_shared)."""
    files = task.files
    first = task.first_fds()
    ops = {fid: OPS[f.kind] for fid, f in files.items()}
    order = sorted(first, key=lambda fid: ops[fid].open_order(files[fid]))
    terminal = next((f"fd {e.fd}" for e in task.fds
                     if getattr(files[e.file_id], "terminal", False) and e.file_id not in inherited_ids), None)
    return FdPlan(task.pid, [(e.fd, e.file_id, e.cloexec) for e in task.fds], frozenset(e.fd for e in task.fds),
                  [(fid, files[fid], ops[fid]) for fid in order],
                  [(files[fid], fd, ops[fid]) for fid, fd in first.items()],
                  _names(task), terminal, len(files) + 8, task.pipe_data, task.umask, task.cwd, task.root)


def rebuild_fds(task: TaskFiles, *, shell_job: bool = False, keep_fds: Collection[int] = (),
                inherited: dict[int, int] | None = None, table: bool = True) -> None:
    """Make this process's fd table, cwd, root and umask those of the task (table False:
    only cwd, root and umask, the table being its parent's, which rebuilds it).

    Ends with exactly the dumped fd numbers open, plus `keep_fds` (the caller's own
    channels, which must not collide with dumped numbers). With `shell_job`, fds that were
    a terminal become duplicates of the terminal this process inherited on fd 0/1/2.
    `inherited`: file id -> an fd this process already holds for it (open_shared), used
    instead of opening the file again; the ones it does not use are closed.
    """
    apply_fds(plan_fds(task, inherited or ()), shell_job=shell_job, keep_fds=keep_fds, inherited=inherited,
              table=table)


def apply_fds(plan: FdPlan, *, shell_job: bool = False, keep_fds: Collection[int] = (),
              inherited: dict[int, int] | None = None, table: bool = True) -> None:
    """rebuild_fds from a plan made ahead (plan_fds, with the same inherited files)."""
    if table:
        _make_table(plan, shell_job, keep_fds, inherited or {})
    os.umask(plan.umask)
    os.chdir(plan.cwd)      # the cwd path is as seen from our root, so before chroot
    if plan.root != "/":
        os.chroot(plan.root)


def _make_table(plan: FdPlan, shell_job: bool, keep_fds: Collection[int], inherited: dict[int, int]) -> None:
    keep = set(keep_fds)
    if keep & plan.targets:
        raise ImageError(f"fd {min(keep & plan.targets)}: needed by the restored task and by coldsnap")
    base = max(max(plan.targets, default=2), max(keep, default=2), max(inherited.values(), default=2), 2) + 1
    _enough_fds(base + plan.room)
    tty = _tty(base, shell_job, plan.terminal) if plan.terminal else None
    ctx = OpenCtx(base, tty, plan.names, plan.pipe_data, plan.pid)
    temps = {fid: inherited[fid] if fid in inherited else ops.open(f, ctx) for fid, f, ops in plan.opens}
    for fd, fid, cloexec in plan.table:
        os.dup2(temps[fid], fd, inheritable=not cloexec)
    for f, fd, ops in plan.posts:    # at the final numbers: epoll registrations name them
        ops.post_open(f, fd, ctx)
    close_all_but(plan.targets | keep)


def close_all_but(keep: Collection[int]) -> None:
    """Close every fd of ours but KEEP: close_range over the gaps (no listing of /proc/self/fd)."""
    lo = 0
    for fd in sorted(keep):
        if fd > lo:
            os.closerange(lo, fd)
        lo = fd + 1
    os.closerange(lo, _FD_MAX)


def _in_open_order(files, ids) -> list[int]:
    """IDS, each kind's late files (connections, after the listeners of their ports) last."""
    return sorted(ids, key=lambda fid: OPS[files[fid].kind].open_order(files[fid]))


def _tty(base: int, shell_job: bool, what: str) -> int:
    """A duplicate (at or above base) of the terminal we inherited, for files that were one."""
    if not shell_job:
        raise ImageError(f"{what}: was a terminal; restore needs --shell-job")
    src = next((fd for fd in (0, 1, 2) if _isatty(fd)), None)
    if src is None:
        raise ImageError("--shell-job: coldsnap has no terminal on fd 0, 1 or 2 to give")
    return fcntl.fcntl(src, fcntl.F_DUPFD_CLOEXEC, base)


def _enough_fds(need: int) -> None:
    """Raise our soft RLIMIT_NOFILE if the table needs it (the task's own limits come later)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < need:
        if hard != resource.RLIM_INFINITY and hard < need:
            raise ImageError(f"fd table needs {need} descriptors, RLIMIT_NOFILE hard limit is {hard}")
        resource.setrlimit(resource.RLIMIT_NOFILE, (need, hard))


def _isatty(fd: int) -> bool:
    try:
        return os.isatty(fd)
    except OSError:
        return False
