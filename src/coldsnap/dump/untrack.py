"""`coldsnap untrack PID`: close the write tracking coldsnap parked in a process tree.

A tree's pre-dump parks one userfaultfd in every process (`cs_tree_uffd_fds` in its stats);
untrack walks the tree as it is now, so a process that was born since (it inherited nothing
of ours: a fork does not copy a userfaultfd's registrations, but it does copy the fd) or that
the images never knew is cleaned as well. Each process is frozen on its own, briefly, only
when it holds one of coldsnap's userfaultfds."""
from __future__ import annotations

from ..errors import NoSuchProcess, TargetError
from ..memory.tracking import parked_uffd_fds
from ..memory.tracking import untrack as _untrack
from ..seize.remote import frozen_calls
from ..seize.tree import list_tree


def untrack(pid: int) -> dict[int, list[int]]:
    """Close every userfaultfd coldsnap parked in PID and in every process below it;
    pid -> the fd numbers closed there (processes without any left out)."""
    if pid == 1:    # its tree is every process: other users' and other chains' tracking too
        raise TargetError("cannot untrack 1: it is init (PID 1); name the process whose tracking to close")
    closed: dict[int, list[int]] = {}
    for p in list_tree(pid):
        try:
            if p != pid and not parked_uffd_fds(p):
                continue
            fds = _untrack(p, lambda p=p: frozen_calls(p))
        except NoSuchProcess:
            if p == pid:
                raise
            continue            # a process below the root exited meanwhile: nothing left of ours
        if fds:
            closed[p] = fds
    return closed
