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
"""
from __future__ import annotations

from ..errors import Unsupported
from ..kernel import kcmp as K
from ..seize.freezer import FrozenTree

_SHARED = (("vm_id", "memory (CLONE_VM)"), ("files_id", "fd table (CLONE_FILES)"),
           ("fs_id", "fs (CLONE_FS)"), ("sighand_id", "signal handlers (CLONE_SIGHAND)"))
_WITH_PARENT = ("files_id", "fs_id")     # restored shared when the sharer is the parent


def refuse_tree(held: FrozenTree) -> None:
    """Unsupported (one line) for what a tree dump cannot restore (module docstring)."""
    owner: dict[tuple[str, int], int] = {}
    for task in held.tree:
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
