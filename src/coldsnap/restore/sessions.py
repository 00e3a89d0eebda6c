"""Sessions and process groups of a restored tree: what each blank process does, and in
which order the blank processes are made.

Blank processes are made depth first: a process sets its session and group, then makes its
children one after the other, each child's whole subtree being in place before the next
child is made (restore.py). A child inherits its parent's session and group; on top of
that it may

  - setsid(): it leads its own session (and so its own group: sid == pgid == pid)
  - setpgid(0, 0): it leads a group of its own in its parent's session
  - setpgid(0, PGID): it joins a group made earlier in that order, in the same session

The root starts in coldsnap's session and group; it calls setsid() or setpgid(0, 0) when it
led its session or group (not with --shell-job: the job stays in the terminal's session and
foreground group), and otherwise stays where coldsnap is, as a single process always did.
Anything else (a session that is neither the process's own nor its parent's, a group whose
leader is gone or made later) is refused in one line naming the process, before any process
exists.
"""
from __future__ import annotations

from typing import NamedTuple

from ..errors import ImageError
from ..seize.tree import Tree

SETSID = "setsid"
OWN_GROUP = "own-group"
JOIN = "join"
INHERIT = ""


class SessionStep(NamedTuple):
    """What one blank process does before it makes its children."""
    action: str = INHERIT      # SETSID, OWN_GROUP, JOIN or INHERIT
    pgid: int = 0              # the group to join (JOIN)


def creation_order(tree: Tree) -> list[int]:
    """Pids in the order their blank processes are made: depth first, children in tree order."""
    out, todo = [], [tree.root]
    while todo:
        pid = todo.pop()
        out.append(pid)
        todo.extend(reversed([t.pid for t in tree.children(pid)]))
    return out


def plan_sessions(tree: Tree, *, shell_job: bool = False) -> dict[int, SessionStep]:
    """pid -> its step (module docstring); ImageError naming the process when impossible."""
    root = tree.root_task
    steps: dict[int, SessionStep] = {}
    if root.sid == root.pid and not shell_job:
        if root.pgid != root.pid:
            raise ImageError(f"process {root.pid} leads session {root.sid} but is in group {root.pgid}")
        steps[root.pid] = SessionStep(SETSID)
    elif root.pgid == root.pid and not shell_job:
        steps[root.pid] = SessionStep(OWN_GROUP)
    else:
        steps[root.pid] = SessionStep()
    # group -> its session, as made so far (a group of coldsnap's, inherited, cannot be joined)
    groups = {root.pgid: root.sid} if steps[root.pid].action else {}
    for pid in creation_order(tree)[1:]:
        t, parent = tree.task(pid), tree.task(tree.task(pid).ppid)
        if t.sid == pid:
            if t.pgid != pid:
                raise ImageError(f"process {pid} leads session {pid} but is in group {t.pgid}; "
                                 "not supported")
            step = SessionStep(SETSID)
        elif t.sid != parent.sid:
            raise ImageError(f"process {pid}: its session {t.sid} is neither its own nor its parent's "
                             f"({parent.sid}); not supported")
        elif t.pgid == parent.pgid:
            step = SessionStep()
        elif t.pgid == pid:
            step = SessionStep(OWN_GROUP)
        elif groups.get(t.pgid) == t.sid:
            step = SessionStep(JOIN, t.pgid)
        else:
            raise ImageError(f"process {pid}: its process group {t.pgid} has no leader made before it "
                             "in the tree; not supported")
        groups.setdefault(t.pgid, t.sid)
        steps[pid] = step
    return steps
