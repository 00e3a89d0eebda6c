"""What a dump of a process tree refuses, checked in the freeze before anything is read.

Restore recreates each process with its own mm, fd table, fs and signal handlers, its
threads sharing them; so everything shared otherwise is refused here, in one line naming
the process, rather than dumped into images no restore can bring back (a zombie is not
refused: it is saved as one, seize/tree.with_zombies):

  - a thread that unshared its fd table or fs (unshare(2) after the clone)
  - two processes sharing an mm (CLONE_VM, vfork), an fd table (CLONE_FILES), an fs
    (CLONE_FS) or signal handlers (CLONE_SIGHAND)
"""
from __future__ import annotations

from ..errors import Unsupported
from ..kernel import kcmp as K
from ..seize.freezer import FrozenTree

_SHARED = (("vm_id", "memory (CLONE_VM)"), ("files_id", "fd table (CLONE_FILES)"),
           ("fs_id", "fs (CLONE_FS)"), ("sighand_id", "signal handlers (CLONE_SIGHAND)"))


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
        for name, what in _SHARED:
            first = owner.setdefault((name, getattr(task, name)), task.pid)
            if first != task.pid:
                raise Unsupported(f"process {task.pid} shares its {what} with process {first}; "
                                  f"not supported")
