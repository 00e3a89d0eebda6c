"""`coldsnap restore`: validate the images, make a blank process per dumped process with its
PID, transplant each, let them all run.

    restore(images_dir, detach=True) -> RestoreResult

The blank processes (restore/blank.py) are clones with set_tid = the dumped PIDs, each
the child of its dumped parent, in its session and group, its fd table, cwd, root and
umask rebuilt in plain Python (open file descriptions shared across processes created
once); each asks to die with its parent until the restore is over (PR_SET_PDEATHSIG,
cleared by the transplant) and waits. coldsnap sets their rlimits from outside, seizes the
whole tree, reshapes each process (restore/transplant.py) and lets them all go at once.
Any failure after the root exists kills every process made: a restore either yields the
tree or nothing.

TCP connections (restore/connections.py): under the network lock the dump left (or a new
one), each stream is rebuilt in repair mode by its blank process; repair goes off while the
tree is held, after the transplant; the lock is lifted once everything runs, or on failure.
"""
from __future__ import annotations

import os
import resource
import signal
import threading
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from ..errors import CsError
from ..files.ghost import GhostFiles
from ..images.directory import ImageDir
from ..images.task import TASK_STOPPED
from ..memory.source import PageOrigin
from ..seize.freezer import freeze_known
from ..files.images import drop_streams, tcp_connections
from .blank import kill_blank, make_blank_tree
from .connections import RestoreNetwork
from .ghosts import make_ghosts
from .images import DumpImages, TreeImages, load_tree
from .shmem import SharedMemory
from .transplant import TransplantStats, transplant

if TYPE_CHECKING:
    from .prebuild import Prebuilt    # a migration's (restore/receive_worker.py), not a plain restore's


@dataclass(eq=False, repr=False)
class RestoreResult:
    """The restored process and how long its restore took."""
    pid: int
    threads: int
    stats: TransplantStats
    blank_ns: int           # clone + fd table in the child
    total_ns: int
    exit_status: int | None = None   # set when not detached: the waitpid status
    processes: int = 1               # of the tree (threads, stats: summed over every process)
    lazy_server: int | None = None   # --lazy-pages: the server bringing the pages in, and its guardian
    lazy_guardian: int | None = None
    prebuilt: list = field(default_factory=list)   # (start, end) of the root's areas built ahead and kept

    @property
    def prebuilt_bytes(self) -> int:
        return sum(e - s for s, e in self.prebuilt)


def restore(images_dir: str | os.PathLike, *, detach: bool = True, shell_job: bool = False,
            lazy_pages: bool = False, lazy_log: str | None = None, lazy_hold: bool = False,
            tcp_close: bool = False, network_lock: bool = True, pages: PageOrigin | None = None,
            prebuilt: Prebuilt | None = None) -> RestoreResult:
    """lazy_pages: private anonymous memory comes after the process runs, from a detached
    server (restore/lazy_server.py); lazy_log: where that server writes (else /dev/null);
    lazy_hold: with detach, the server's background push waits for the end of this process
    (a command that exits once the processes run: lazy_start.py LazyServer.go), faults are
    answered at once all the same.
    pages: where the pages are read (default: the images directory; transport/source.py
    RemotePages: a page server's session, closed here when the restore is done).
    tcp_close: saved TCP connections come back closed (the dump's lock is lifted all the same).
    network_lock=False: no lock of the restore's own while the connections are rebuilt.
    prebuilt: the root's memory built ahead in this process (restore/prebuild.py, a migration's
    restore worker): those areas are inherited by the root and kept as they are."""
    t0 = time.perf_counter_ns()
    try:
        result = _load_and_restore(images_dir, t0, shell_job, lazy_pages, lazy_log, tcp_close, network_lock, pages,
                                   prebuilt, lazy_hold=lazy_hold and detach)
    finally:
        if pages is not None:
            pages.close()
    if not detach:
        result.exit_status = _wait(result.pid)
    return result


def _load_and_restore(images_dir, t0: int, shell_job: bool, lazy_pages: bool, lazy_log: str | None,
                      tcp_close: bool, network_lock: bool, pages: PageOrigin | None,
                      prebuilt: Prebuilt | None = None, lazy_hold: bool = False) -> RestoreResult:
    d = ImageDir.open(images_dir)       # once, for the network lock and the images
    with RestoreNetwork.of(d) as net:
        images = load_tree(d, shell_job=shell_job, pages=pages)
        if tcp_close:
            drop_streams(images.files)
        net.lock(tcp_connections(images.files), take=network_lock)
        with SharedMemory.make(images.shmem, images.sysv, images.memfds) as shm, make_ghosts(images) as ghosts:
            shm.give_sources(images.files, images.memfd_files)
            return _restore(images, shm, net, ghosts, t0, shell_job=shell_job, lazy_pages=lazy_pages,
                            lazy_log=lazy_log, lazy_hold=lazy_hold, prebuilt=prebuilt)


def _restore(images: TreeImages, shm: SharedMemory, net: RestoreNetwork, ghosts: GhostFiles,
             t0: int, *, shell_job: bool,
             lazy_pages: bool = False, lazy_log: str | None = None, lazy_hold: bool = False,
             prebuilt: Prebuilt | None = None) -> RestoreResult:
    """The blank tree, each process transplanted, all let go (restore's docstring)."""
    root = images.tree.root
    kept = prebuilt.kept_for(images.dir.root.name, root, images.root.mm) if prebuilt is not None else []
    if kept:    # their pages are in already, but a post-copy's final delta (before the lazy server forks)
        images.procs[root].private.drop(kept, keep_lazy=True)
    if prebuilt is not None and not kept:
        prebuilt.release()
    try:
        pid = make_blank_tree(images, shell_job, dontfork=kept)
    except BaseException:
        if prebuilt is not None:
            prebuilt.release()
        raise
    t_blank = time.perf_counter_ns()
    server = None
    try:
        for proc in images.procs.values():
            _set_rlimits(proc.pid, proc)
        with freeze_known(list(images.procs)) as held:
            try:
                if lazy_pages:
                    # after the seize: the start of the server's processes (a seed's, or forked)
                    # takes a CPU, which the blank processes need to enter their stops
                    from .lazy_start import start_server
                    if kept:        # the lazy server (forked from us) must not share the root's memory
                        prebuilt.hide_from_forks()
                    server = start_server(images, pid, lazy_log)
                stats = {p: transplant(held.task(p), proc, shm, server, kept=kept if p == root else ())
                         for p, proc in images.procs.items()}
                ghosts.remove()         # every open is done: they hold deleted files again
                net.finish()        # repair off: the streams go on when the tree runs
                shm.finish()        # last seals, SHM_DEST: before any restored process runs
                if server is not None:
                    server.go(lazy_hold)    # before the detach: the first fault is answered at once
                for p, proc in images.procs.items():
                    tc = proc.leader.tc
                    if tc.task_state == TASK_STOPPED:
                        # queued while held: the group-stop begins before any instruction runs
                        os.kill(p, tc.stop_signo or signal.SIGSTOP)
            except BaseException:
                for p in held.tasks:     # before the detach: a half-built process must never run
                    os.kill(p, signal.SIGKILL)
                raise
    except BaseException:
        if server is not None:
            server.abort()
        kill_blank(pid)
        raise
    if server is not None:
        server.settle()
    if kept:
        # the root has its own copy now; ours goes once the tree runs, not waited for (before,
        # its munmap would hold our mmap lock against the transplant; a page the restored
        # process writes before ours is gone is copied, that is all)
        threading.Thread(target=prebuilt.release, name="coldsnap-release", daemon=True).start()
    threads = sum(len(proc.tids) for proc in images.procs.values())
    result = RestoreResult(pid, threads, _tree_stats(stats[pid], stats.values()), t_blank - t0,
                           time.perf_counter_ns() - t0, processes=len(images.procs),
                           prebuilt=kept)
    if server is not None:
        result.lazy_server, result.lazy_guardian = server.server, server.guardian
    return result


def _tree_stats(root: TransplantStats, every) -> TransplantStats:
    """The root's stats with the calls and times of every process summed in."""
    every = list(every)
    return TransplantStats(calls=sum(s.calls for s in every), trips=sum(s.trips for s in every), write=root.write,
                           memory_ns=sum(s.memory_ns for s in every), total_ns=sum(s.total_ns for s in every),
                           lazy_pages=sum(s.lazy_pages for s in every))


def _set_rlimits(pid: int, images: DumpImages) -> None:
    unlimited = (1 << 64) - 1
    for res, lim in enumerate(images.leader.tc.rlimits.rlimits):
        cur, top = (resource.RLIM_INFINITY if v == unlimited else v for v in (lim.cur, lim.max))
        try:
            resource.prlimit(pid, res, (cur, top))
        except (OSError, ValueError) as e:
            why = e.strerror if isinstance(e, OSError) else str(e)
            raise CsError(f"cannot set resource limit {res} to ({lim.cur}, {lim.max}): {why}") from None


def _wait(pid: int) -> int:
    return os.waitpid(pid, 0)[1]
