"""What a dump of a process tree refuses, checked in the freeze before anything is read.

Restore recreates each process with its own mm, fd table, fs and signal handlers, its
threads sharing them; so everything shared otherwise is refused here, in one line naming
the process, rather than dumped into images no restore can bring back (a zombie is not
refused: it is saved as one, seize/tree.with_zombies):

  - a thread that unshared its fd table or fs (unshare(2) after the clone)
  - two processes sharing an mm (CLONE_VM, vfork) or signal handlers (CLONE_SIGHAND, which
    the kernel only allows with CLONE_VM)
  - two processes sharing an fd table (CLONE_FILES) or an fs (CLONE_FS) unless one is the
    other's parent in the tree: restore clones the child with the same flags (restore/blank.py)
  - a process in a namespace that is not coldsnap's (unshare, a container's processes seen
    from the host): restore makes every process in its own namespaces, so such a process
    came back silently in others (PID 1 of a new PID namespace as a plain pid, its mounts gone)
"""
from __future__ import annotations

from ..errors import Unsupported
from ..kernel import kcmp as K
from ..seize.freezer import FrozenTree
from ..seize.tree import NS_KINDS

_SHARED = (("vm_id", "memory (CLONE_VM)"), ("files_id", "fd table (CLONE_FILES)"),
           ("fs_id", "fs (CLONE_FS)"), ("sighand_id", "signal handlers (CLONE_SIGHAND)"))
_WITH_PARENT = ("files_id", "fs_id")     # restored shared when the sharer is the parent


def refuse_tree(held: FrozenTree) -> None:
    """Unsupported (one line) for what a tree dump cannot restore (module docstring)."""
    owner: dict[tuple[str, int], int] = {}
    own = held.tree.dumper.ns_ids if held.tree.dumper is not None else None
    for task in held.tree:
        if own is not None and task.ns_ids != own:
            kinds = [k for k in NS_KINDS if task.ns_ids.get(k) != own.get(k)]
            raise Unsupported(f"process {task.pid} is in {', '.join(kinds)} namespace"
                              f"{'s' if len(kinds) > 1 else ''} of its own, not coldsnap's; not supported")
        for tid in task.tids:
            if tid == task.pid:
                continue
            for kind, what in ((K.KCMP_FILES, "fd table"), (K.KCMP_FS, "fs")):
                if not K.same(task.pid, tid, kind):
                    raise Unsupported(f"thread {tid} of process {task.pid} has its own {what} "
                                      f"(unshare); not supported")
        parent = held.tree.tasks.get(task.ppid) if task.pid != held.tree.root else None
        for name, what in _SHARED:
            mine = getattr(task, name)
            if name in _WITH_PARENT and parent is not None and getattr(parent, name) == mine:
                continue
            first = owner.setdefault((name, mine), task.pid)
            if first != task.pid:
                how = (" (only a parent and its child can share it)" if name in _WITH_PARENT else "")
                raise Unsupported(f"process {task.pid} shares its {what} with process {first}{how}; "
                                  f"not supported")
