"""The tree model: the processes a checkpoint holds, how they relate, what they share.

    tree = freeze_tree(pid).tree   (or task.tree in `with freeze(pid) as task`)
    for task in tree:              # parents before children; tree.root is the dumped root
        task.pid, task.ppid, task.pgid, task.sid, task.tids
        task.vm_id, task.files_id, task.fs_id, task.sighand_id, task.ns_ids
    tree.image_ppid(task)          # 0 for the root, as pstree.img writes it

Kernel-object ids name what tasks share: two tasks with the same files_id share one fd
table (and so on for mm, fs, signal handlers), found with kcmp(2). They are small integers
numbered per kind from 1 in tree order, as CRIU numbers them (the root always gets 1).
Namespaces are told apart by their /proc/PID/ns inode and numbered from 1 by one counter
for every kind, as CRIU does. Dump builds a Tree from the live (frozen) kernel with
`read_tree`; restore builds the same model from pstree.img and ids-PID.img.

Ids are per process (its leader): threads share mm and signal handlers by definition, and a
thread that unshared its fd table or fs is not told apart (not supported).
"""
from __future__ import annotations

import functools
import os
import time
from dataclasses import dataclass, field
from typing import Iterator

from coldsnap.kernel import kcmp as K
from coldsnap.errors import NoSuchProcess, TargetError
from coldsnap.kernel.procfs import alive, child_pids, ns_inode, read_stat

KCMP_KINDS = (("vm_id", K.KCMP_VM), ("files_id", K.KCMP_FILES), ("fs_id", K.KCMP_FS),
              ("sighand_id", K.KCMP_SIGHAND))
NS_KINDS = ("pid", "net", "ipc", "uts", "mnt", "user", "cgroup", "time")


@dataclass(eq=False, repr=False)
class Task:
    """One process of the tree (its threads included)."""
    pid: int
    ppid: int                 # the real parent's pid (outside the tree for the root)
    pgid: int
    sid: int
    tids: list[int]           # every thread, leader included, sorted
    vm_id: int = 0
    files_id: int = 0
    fs_id: int = 0
    sighand_id: int = 0
    ns_ids: dict[str, int] = field(default_factory=dict)   # "pid", "net", ... -> id
    exit_code: int | None = None   # a zombie: its wait status (stat field 52); None: alive

    @property
    def zombie(self) -> bool:
        return self.exit_code is not None


@dataclass(eq=False, repr=False)
class Tree:
    """Processes keyed by pid, parents before children; `root` is the pid of the root.
    `dumper`: the same ids of the process that read the tree (inventory.root_ids: CRIU's
    restore tells from them which namespaces the dump holds, and that the root shares no
    fd table or mm with its restorer); None when the tree comes from images."""
    root: int
    tasks: dict[int, Task]
    dumper: Task | None = None

    def __iter__(self) -> Iterator[Task]:
        return iter(self.tasks.values())

    def __len__(self) -> int:
        return len(self.tasks)

    def task(self, pid: int) -> Task:
        return self.tasks[pid]

    @property
    def root_task(self) -> Task:
        return self.tasks[self.root]

    @property
    def living(self) -> list[Task]:
        """The processes that run (zombies left out), parents first."""
        return [t for t in self if not t.zombie]

    def children(self, pid: int) -> list[Task]:
        return [t for t in self if t.ppid == pid and t.pid != self.root]

    def image_ppid(self, task: Task) -> int:
        """The ppid pstree.img records: 0 for the root of the dump."""
        return 0 if task.pid == self.root else task.ppid


class ObjectIds:
    """Small ids for one kind of kernel object, one per distinct object (kcmp equality).

    Representatives are kept in the kernel's kcmp order, so a new task costs a binary
    search: log2(n) kcmp calls, none for the first task. They must stay alive (frozen)."""

    def __init__(self, kind: int):
        self.kind = kind
        self._reps: list[tuple[int, int]] = []     # (pid, id), sorted by kcmp order
        self._next = 1

    def id_of(self, pid: int) -> int:
        lo, hi = 0, len(self._reps)
        while lo < hi:
            mid = (lo + hi) // 2
            rep, rid = self._reps[mid]
            order = K.kcmp(pid, rep, self.kind)
            if order == K.EQUAL:
                return rid
            if order == K.UNORDERED:        # no order offered: compare with every one
                return self._linear(pid)
            if order == K.LESS:
                hi = mid
            else:
                lo = mid + 1
        return self._add(lo, pid)

    def _linear(self, pid: int) -> int:
        for rep, rid in self._reps:
            if K.same(pid, rep, self.kind):
                return rid
        return self._add(len(self._reps), pid)

    def _add(self, at: int, pid: int) -> int:
        new = self._next
        self._next += 1
        self._reps.insert(at, (pid, new))
        return new


class NamespaceIds:
    """Namespace inode -> small id, one counter for every kind."""

    def __init__(self) -> None:
        self._ids: dict[tuple[str, int], int] = {}

    def ids_of(self, pid: int) -> dict[str, int]:
        return self.ids_from(ns_inodes(pid))

    def ids_from(self, inodes: dict[str, int]) -> dict[str, int]:
        return {kind: self._ids.setdefault((kind, ino), len(self._ids) + 1) for kind, ino in inodes.items()}


def ns_inodes(pid: int) -> dict[str, int]:
    """kind -> namespace inode of PID (the kinds this kernel has)."""
    return {kind: ino for kind in NS_KINDS if (ino := ns_inode(pid, kind)) is not None}


@functools.cache
def own_ns_inodes(pid: int) -> dict[str, int]:
    """This process's namespace inodes (pid: os.getpid(), so that a fork reads its own),
    read once: a tree's model needs them, and nothing makes them change under a freeze, so
    FrozenTree reads them before it freezes anything."""
    return ns_inodes(pid)


def tree_order(root: int, parents: dict[int, int]) -> list[int]:
    """Pids in PARENTS (pid -> ppid) ordered root first, then parents before children."""
    kids: dict[int, list[int]] = {}
    for pid, ppid in parents.items():
        if pid != root:
            kids.setdefault(ppid, []).append(pid)
    out, todo = [], [root]
    while todo:
        pid = todo.pop(0)
        out.append(pid)
        todo.extend(sorted(kids.get(pid, [])))
    return out + sorted(set(parents) - set(out))     # not below the root: last


def list_tree(root: int) -> list[int]:
    """ROOT and every living process below it, parents first, read without holding any
    (zombies left out: nothing to save)."""
    out, level = [root], [root]
    while level:
        level = [c for kids in child_pids(level).values() for c in sorted(kids) if alive(c)]
        out += level
    return out


def read_tree(root: int, threads: dict[int, list[int]]) -> Tree:
    """The model of the held processes THREADS (pid -> tids) under ROOT, from the kernel.

    Call it while they are frozen: pgid, sid and the shared objects then cannot change."""
    stats = {pid: read_stat(pid) for pid in threads}
    order = tree_order(root, {pid: st.ppid for pid, st in stats.items()})
    allocators = {name: ObjectIds(kind) for name, kind in KCMP_KINDS}
    namespaces = NamespaceIds()
    tasks = {}
    for pid in order:
        st = stats[pid]
        tasks[pid] = Task(pid, st.ppid, st.pgrp, st.session, sorted(threads[pid]),
                          **{name: ids.id_of(pid) for name, ids in allocators.items()},
                          ns_ids=namespaces.ids_of(pid))
    me = os.getpid()
    dumper = Task(me, 0, 0, 0, [me], **{name: ids.id_of(me) for name, ids in allocators.items()},
                  ns_ids=namespaces.ids_from(own_ns_inodes(me)))
    return Tree(root, tasks, dumper)


def with_zombies(tree: Tree, pids: list[int], timeout: float = 2.0) -> Tree:
    """TREE with the zombie children PIDS of its (frozen) processes added: pid, ppid, pgid,
    sid and exit status from /proc/PID/stat, no threads to save, no shared objects (ids 0).

    A child still exiting when the tree was seized becomes a zombie at once (its parent is
    held, so nobody reaps it): wait for that; one already gone (SIGCHLD ignored) is left out."""
    zombies: dict[int, Task] = {}
    for pid in pids:
        deadline = time.monotonic() + timeout
        while True:
            try:
                st = read_stat(pid)
            except NoSuchProcess:
                break
            if st.state == "Z":
                zombies[pid] = Task(pid, st.ppid, st.pgrp, st.session, [pid], exit_code=st.exit_code)
                break
            if time.monotonic() > deadline:
                raise TargetError(f"process {pid} is exiting and does not become a zombie")
            time.sleep(0.001)
    if not zombies:
        return tree
    every = {**tree.tasks, **zombies}
    order = tree_order(tree.root, {pid: t.ppid for pid, t in every.items()})
    return Tree(tree.root, {pid: every[pid] for pid in order}, tree.dumper)
