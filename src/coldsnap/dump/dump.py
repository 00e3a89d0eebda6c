"""`coldsnap dump`: the final checkpoint of a process tree (the root and every descendant,
any number of threads each), in one freeze of the whole tree.

    ImageDir.create ──► freeze_tree ──► refuse what a tree restore cannot do (dump/tree.py)
    (a zombie child is kept: pstree entry and a core with TASK_DEAD and its exit status)
    ──► for each process, parents first (dump_process), the same path for every one: maps: refuse what cannot be saved (deleted or special
      mappings, a private memfd mapping, io_uring, aio, hugetlb)
      ──► task state (registers, signals, ...: injected calls) ──► coldsnap's parked write
      tracking: adopt it (the written set), remove it from the target
      ──► private pages: scan, drain (unreadable VMAs through /proc/PID/mem), PE_PARENT
      for what the parent chain holds and tracking says was not written since
      ──► fd table + mapped files
      ──► shared anonymous objects and memfds of the whole tree, once each (dump/shmem.py), and the tree's
      SysV segments and semaphore sets (dump/sysv.py)
      ──► pstree/ids and files images of the tree, commit ──► SIGKILL every process,
      children first (default), or resume them all (leave_running)

One FileRegistry spans the tree (an open file description shared by processes gets one id),
a shared anonymous object is saved once (every window any process maps), and a pre-dump
chain covers the root only (other processes save every present page).

Any failure before the commit removes the staging directory and resumes every process (only a
parked userfaultfd of coldsnap's own, if there was one, is gone by then).

Images (ids): core-TID.img each thread, pstree.img and ids-PID.img from the tree model
(seize/tree.py), files.img (fds, cwd, root, then one REG entry per mapped file and the exe,
ids above the fd files'), fdinfo-FILES_ID.img (the task's files_id), fs-PID.img, pipe
data, mm-PID.img (exe_file_id and each file VMA's shmid = REG id; shared anonymous VMAs: shmid = shmem inode), pagemap-PID.img +
pages-N.img, pagemap-shmem-SHMID.img + pages-M.img (vaddr = byte offset in the object),
inventory.img (no pre_dump_mode), stats-dump.
"""
from __future__ import annotations

import os
import signal
import stat as st_
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from ..connections.hold import TcpHold
from ..errors import CsError, TargetError, Unsupported
from ..files.images import write_images as write_files_images
from ..files.kinds import SECRETMEM, prepare as prepare_file_kinds
from ..files.ghost import DEFAULT_GHOST_LIMIT, GhostTable
from ..files.registry import FileRegistry
from ..images.directory import ImageDir
from ..images.pb import ghost_file_pb2, remap_file_path_pb2  # noqa: F401  (a ghost's images are written frozen)
from ..kernel import fdstate  # noqa: F401  (its fdinfo patterns compiled now, not in the frozen window)
from ..kernel import ptrace
from ..kernel.procfs import (MapsLine, map_file_link_mode, mount_devices, ns_inode, open_map_file,
                             open_path_link, read_maps, read_path_link, read_stat, read_vm_flags, read_status, stat_map_file)
from ..memory.frozen_copy import CopyStats, prepare_copy, save_frozen
from ..memory.plan import PagePlan, with_vdso
from ..memory.ranges import Ranges
from ..memory.scan import warm_up
from ..memory.sink import PageSink, PagemapKey, SinkCounts
from ..memory.tracking import PARK_FD_MIN, parked_uffd_fds
from ..memory.vma import PROT_WRITE, Kind, Vma, classify_all
from ..seize.freezer import FrozenTask, freeze_tree
from ..seize.tree import list_tree, with_zombies
from .metadata import kobj_ids, write_inventory, write_mm, write_stats, write_tree_images
from .plan import Planned, Planner, chain_parked_fds
from .sink import LOCAL, PageSession, PageTarget
from .shmem import memfd_mappings, save_memfds, save_shmem
from .sysv import save_sysv
from .stats import DumpStats, Times
from .task_state import SeccompFilters, collect_task_state, prepare_images, write_core_images, write_zombie_core
from .tree import refuse_tree



# -- refusals --------------------------------------------------------------------------------

# mount namespace inode -> its hugetlbfs devices, for one dump (cleared when a dump starts):
# the processes of a tree nearly always share one, whose mountinfo is read once, not per process
_HUGETLBFS: dict[int | None, set[str]] = {}


def _hugetlbfs_devs(pid: int) -> set[str]:
    """maps-style "maj:min" (hex) of the hugetlbfs mounts the target sees."""
    ns = ns_inode(pid, "mnt")
    if ns is not None and ns in _HUGETLBFS:
        return _HUGETLBFS[ns]
    try:
        devs = mount_devices(pid, "hugetlbfs")
    except OSError:
        return set()
    if ns is not None:
        _HUGETLBFS[ns] = devs
    return devs


def refuse_mappings(pid: int, lines: list[MapsLine], vmas: list[Vma] | None = None) -> None:
    """Unsupported (one line, naming the process and the area) for a mapping the dump cannot
    save. vmas: the lines classified already (classify_all), not classified again."""
    huge = None
    for m, v in zip(lines, vmas if vmas is not None else classify_all(lines)):
        where = f"process {pid}: mapping {m.start:#x}-{m.end:#x}"
        path = m.path
        if path.startswith("anon_inode:"):
            what = "io_uring ring" if "io_uring" in path else path
            raise Unsupported(f"{where}: {what} is not supported")
        if path.startswith("/[aio]"):
            raise Unsupported(f"{where}: AIO ring is not supported")
        if path == f"{SECRETMEM} (deleted)":      # unreadable to anyone but its process
            raise Unsupported(f"{where}: memfd_secret() memory is not supported")
        if path.startswith("/memfd:") and not v.kind is Kind.ANON_SHARED:
            raise Unsupported(f"{where}: a private mapping of memfd {path.removesuffix(' (deleted)')} "
                              "is not supported")
        if path.startswith("/anon_hugepage"):
            raise Unsupported(f"{where}: hugetlb memory is not supported")
        if v.kind in (Kind.FILE_PRIVATE, Kind.FILE_SHARED, Kind.ANON_SHARED) and path:
            if huge is None:
                huge = _hugetlbfs_devs(pid)
            if m.dev in huge:
                raise Unsupported(f"{where}: hugetlb file {path} is not supported")
        if path.endswith(" (deleted)") and v.kind is Kind.ANON_SHARED and not path.startswith(("/dev/zero", "/SYSV", "/memfd:")):
            raise Unsupported(f"{where}: mapped object {path[:-10]} was deleted; not supported")
        # a deleted file mapping is saved as a ghost file (mapped_files); not a regular one is
        # refused there


# -- mapped files ----------------------------------------------------------------------------

def mapped_files(pid: int, vmas: list[Vma], ghosts: GhostTable
                 ) -> tuple[str, dict[str, tuple[int, os.stat_result]], dict[tuple[int, int], str],
                            dict[tuple[int, int], int], dict[str, int]]:
    """(exe path, path -> (open flags, stat), file VMA -> path, file VMA -> open flags,
    path -> ghost id of each deleted file among them, its contents saved into `ghosts`).

    A shared mapping is O_RDWR when it is writable or its file was opened for writing (the
    map_files link's mode shows the file's f_mode); everything else O_RDONLY.
    """
    exe = read_path_link(pid, "exe")
    ghost_ids: dict[str, int] = {}
    if exe.path.endswith(" (deleted)"):
        fd = open_path_link(pid, "exe", os.O_RDONLY)
        try:
            ghost_ids[exe.path] = ghosts.add(fd, exe.stat, "exe", exe.path[:-10])
        finally:
            os.close(fd)
    files: dict[str, tuple[int, os.stat_result]] = {exe.path: (os.O_RDONLY, exe.stat)}
    paths: dict[tuple[int, int], str] = {}
    flags: dict[tuple[int, int], int] = {}
    # the VMAs of one file (a library has four or five) show the same device and inode in
    # the maps: one stat of its map_files link serves them all (in the frozen window)
    stats: dict[tuple[str, int, str], os.stat_result] = {}
    for v in vmas:
        if v.kind not in (Kind.FILE_PRIVATE, Kind.FILE_SHARED):
            continue
        try:
            key = (v.dev, v.inode, v.path)
            st = stats.get(key) if v.inode else None
            if st is None:
                st = stats[key] = stat_map_file(pid, v.start, v.end)
            writable = (v.kind is Kind.FILE_SHARED
                        and bool(map_file_link_mode(pid, v.start, v.end) & st_.S_IWUSR))
        except OSError as e:
            raise TargetError(f"mapping {v.start:#x}-{v.end:#x}: cannot open {v.path}: {e.strerror}") from None
        if not st_.S_ISREG(st.st_mode) and not (st_.S_ISCHR(st.st_mode) and v.path == "/dev/zero"):
            raise Unsupported(f"mapping {v.start:#x}-{v.end:#x}: {v.path} is not a regular file; "
                              f"not supported")
        if v.path.endswith(" (deleted)") and v.path not in ghost_ids:
            fd = open_map_file(pid, v.start, v.end, os.O_RDONLY)
            try:
                ghost_ids[v.path] = ghosts.add(fd, st, f"mapping {v.start:#x}-{v.end:#x}", v.path[:-10])
            finally:
                os.close(fd)
        mode = os.O_RDWR if v.kind is Kind.FILE_SHARED and (writable or v.prot & PROT_WRITE) else os.O_RDONLY
        old = files.get(v.path)
        if old is None or mode == os.O_RDWR:
            files[v.path] = (mode if old is None else max(mode, old[0]), st)
        paths[(v.start, v.end)] = v.path
        flags[(v.start, v.end)] = mode
    return exe.path, files, paths, flags, ghost_ids


# -- pages -----------------------------------------------------------------------------------

@dataclass(eq=False, repr=False)
class _Parent:
    """What the parent chain offers, read before the freeze (the images do not change)."""
    uffd_fd: int | None             # the userfaultfd its pre-dump parked in the target
    covered: Ranges                 # pages the chain holds


def _parents(prev: Path | None, pages: PageSession) -> dict[int, _Parent]:
    """pid -> what the parent chain offers it, for every process its stats name a parked
    userfaultfd of (the others save every present page)."""
    if prev is None:
        return {}
    parked = chain_parked_fds(ImageDir.open(prev, follow_parent=False))
    return {pid: _Parent(fd, pages.covered(pid)) for pid, fd in parked.items()}


def plan_pages(task: FrozenTask, vmas: list[Vma], parent: _Parent,
               times: Times) -> tuple[Planner, Planned, list[int]]:
    """The page plan of a frozen task, and the parked coldsnap userfaultfds to close in it.

    With a parent whose stats name a parked userfaultfd, adopt it: saved = present ∩
    (written ∪ not covered by the chain), the rest PE_PARENT; otherwise save everything
    present. The caller closes every parked fd returned in the target (collect_task_state's
    injected calls, not a session of their own). The planner holds our copy of an adopted
    userfaultfd: releasing it clears the write protection of every tracked page (about
    25 ms per GiB), so the caller closes it after the freeze, not in it.
    """
    pid = task.pid
    parked = [fd for fd in parked_uffd_fds(pid) if fd >= PARK_FD_MIN]
    planner = Planner(pid, "none", drop_parked_markers=bool(parked), final=True)
    try:
        if parent.uffd_fd is not None and parent.uffd_fd in parked:
            planner.adopt(parent.uffd_fd, vmas)
        planned = planner.plan(parent.covered, task=task, vmas=vmas, times=times, skip_unreadable=False)
        return planner, planned, parked
    except BaseException:
        planner.close()
        raise


def save_private(task: FrozenTask, sink: PageSink, plan: PagePlan, threads: int = 2) -> tuple[CopyStats, SinkCounts]:
    """pagemap-PID: the frozen copy of the plan's pages, PE_PARENT for the rest.

    A final dump skips nothing: pages process_vm_readv cannot read (no PROT_READ) come
    through /proc/PID/mem, and a page that still fails ends the dump."""
    sink.begin(PagemapKey(task.pid))
    copied, counts = save_frozen(task.pid, task.mem_fd(), plan, sink, threads=threads)
    sink.end()
    return copied, counts


# The root's pages file is allocated before the freeze up to this size (ImageSink.prepare):
# the frozen copy then writes into allocated pages. Larger dumps do without: the allocation
# zeroes every page first, which would lengthen the command more than it shortens the freeze.
PREPARE_MAX = 64 << 20


def resident_private_bytes(pid: int) -> int:
    """RssAnon + VmSwap of /proc/PID/status in bytes (about what the root's pages will take;
    0 when unknown)."""
    try:
        status = read_status(pid)
        return sum(int(status.get(k, "0 kB").split()[0]) for k in ("RssAnon", "VmSwap")) << 10
    except (OSError, ValueError, IndexError):
        return 0


class _Background:
    """A call on a thread of its own, joined when the block ends (before the freeze): the pages
    file's allocation (the kernel zeroing its pages, ~15 ms at 64 MiB) overlaps the rest of
    the work before the freeze (the copy's buffers, smaps). What it raised is raised at the
    join, unless the block itself raised."""

    def __init__(self):
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None

    def start(self, fn: Callable[..., None], *args) -> None:
        def run():
            try:
                fn(*args)
            except BaseException as e:
                self._error = e
        self._thread = threading.Thread(target=run, name="coldsnap-prepare", daemon=True)
        self._thread.start()

    def __enter__(self) -> "_Background":
        return self

    def __exit__(self, kind, *_) -> None:
        if self._thread is not None:
            self._thread.join()
        if self._error is not None and kind is None:
            raise self._error


# -- the end of the task ---------------------------------------------------------------------

def kill_held(task: FrozenTask) -> None:
    """SIGKILL a held task and release it; the real parent reaps the process.

    Threads are reaped here (as their tracer); the leader only when we are not its parent,
    where our wait just ends the ptrace link and the parent is notified as usual.
    """
    pid = task.pid
    parent = read_stat(pid).ppid == os.getpid()
    os.kill(pid, signal.SIGKILL)
    for tid in sorted(task.tids, key=lambda t: t == pid):   # leader last
        if tid == pid and parent:
            task.forget_thread(tid)
            continue
        while True:
            try:
                st = ptrace.wait_stop(tid)
            except ChildProcessError:
                break
            if st is None or st.exited:
                break
        task.forget_thread(tid)
    task.resume()


# -- the dump --------------------------------------------------------------------------------

@dataclass(eq=False, repr=False)
class _Saved:
    """What dumping one process of the tree left for the stats and for after the freeze."""
    planner: Planner
    planned: Planned
    pages: SinkCounts
    syscalls: int
    vmas: list[Vma]


def vm_flags_before_freeze(root: int) -> dict[int, dict]:
    """pid -> its VMAs' VmFlags (smaps), read before the freeze: smaps walks the page tables
    (milliseconds), too slow for the frozen window. A process gone meanwhile has none."""
    out = {}
    try:
        pids = list_tree(root)
    except CsError:
        return out
    for p in pids:
        try:
            out[p] = read_vm_flags(p)
        except (CsError, OSError):
            pass
    return out


def frozen_vm_flags(pid: int, vmas: list[Vma], before: dict | None) -> dict:
    """The VmFlags of VMAS: those read before the freeze when every VMA is still there with
    the same bounds, else (one changed meanwhile, or a new process) smaps read again now."""
    if before is not None and all((v.start, v.end) in before for v in vmas):
        return before
    return read_vm_flags(pid)


def dump_process(task: FrozenTask, imgdir: ImageDir, sink: PageSink, files: FileRegistry,
                 parent: _Parent, times: Times, *, shell_job: bool,
                 seccomp: SeccompFilters | None = None, vm_flags: dict | None = None) -> _Saved:
    """One frozen process of the tree into the images: its maps, task state and cores, page
    plan and private pages, fd table (through the one registry) and mm-PID.img. Shared
    memory is saved once for the tree afterwards (save_shmem, from the VMAs returned).
    The caller closes the planner after the freeze. vm_flags: its VmFlags read before the
    freeze (vm_flags_before_freeze)."""
    pid = task.pid
    maps = read_maps(pid)
    vmas = classify_all(maps)
    refuse_mappings(pid, maps, vmas)
    vm_flags = frozen_vm_flags(pid, vmas, vm_flags)
    planner, planned, parked = plan_pages(task, vmas, parent, times)
    try:
        # its scratch page is gone again after it: maps hold; the parked fds closed there too
        state = collect_task_state(task, close_fds=parked)
        files.collect(pid, task.model.files_id, shell_job=shell_job)
        if files.tcp is not None:
            files.tcp.save()     # lock, repair and read this process's connections at once
        exe, mapped, vma_paths, vma_flags, ghost_ids = mapped_files(pid, vmas, files.ghosts)
        memfds = memfd_mappings(pid, vmas, files)
        vma_flags.update({k: files.files[fid].flags for k, fid in memfds.items()})
        ids = files.add_mapped(mapped, ghost_ids)
        t_mem = time.perf_counter_ns()
        copied, pages = save_private(task, sink, with_vdso(planned.plan))
        times.copy += time.perf_counter_ns() - t_mem
        write_core_images(state, imgdir, seccomp)
        write_mm(imgdir, pid, vmas, planned.stat, brk=state.brk, auxv=state.auxv, exe_file_id=ids[exe],
                 file_ids={k: ids[p] for k, p in vma_paths.items()} | memfds, fdflags=vma_flags,
                 dumpable=state.dumpable, thp_disabled=state.thp_disabled,
                 guards=planner.guards.pairs(), vm_flags=vm_flags)
    except BaseException:
        planner.close()
        raise
    return _Saved(planner, planned, pages, copied.syscalls, vmas)


def dump(pid: int, images_dir: str | Path, *, prev_images_dir: str | Path | None = None,
         leave_running: bool = False, shell_job: bool = False, freeze_cgroup: str | None = None,
         ext_unix_sk: bool = False, pages: PageTarget = LOCAL,
         after_commit: Callable[[], None] | None = None, tcp_close: bool = False, durable: bool = True,
         network_lock: bool = True,
         ghost_limit: int = DEFAULT_GHOST_LIMIT) -> DumpStats:
    """Checkpoint the tree under process `pid` (it and every descendant, one freeze) into a
    new images directory, then kill every process (or resume them with leave_running).
    freeze_cgroup: freeze the tree through that cgroup's freezer (v1 or v2) before seizing it.
    ext_unix_sk: let a datagram unix socket connected to a named socket outside the tree go
    (it connects to that name again at restore), as CRIU's --ext-unix-sk.
    A deleted file held open or mapped is saved whole up to `ghost_limit` bytes.
    Returns the stats; frozen_time there spans the whole freeze (the image's stats-dump ends
    when it is written, before the commit). pages: where the pages go (default: the images
    directory; a page server: transport/sink.py ServerPages). after_commit (without
    leave_running): runs after the commit with the tree still frozen (a migration's switchover);
    if it raises, the tree is resumed instead of killed. durable=False: the local images are
    committed without fsync (a migration's: the destination holds what matters).

    Established TCP connections are saved with TCP_REPAIR under a network lock (connections/):
    when the tree is killed their sockets die in repair mode (the peer sees nothing) and the
    lock stays, named in inventory.img, until `restore` (or `network-unlock`) lifts it; with
    leave_running, or on any failure, repair is turned off and the lock lifted before the
    tree runs again. tcp_close: connections are not saved (they come back closed).
    network_lock=False: no lock at all (CRIU's --network-lock skip)."""
    stats = DumpStats(mode="dump")
    _HUGETLBFS.clear()
    times = Times()
    prev = Path(prev_images_dir) if prev_images_dir is not None else None
    saved: list[_Saved] = []
    try:
        with pages.session(images_dir, prev) as session, \
                ImageDir.create(images_dir, parent=prev_images_dir) as imgdir, session.sink(imgdir) as sink:
            parents = _parents(prev, session)
            prepare = getattr(sink, "prepare", None)
            with _Background() as allocating:
                if pid not in parents:      # the allocation first: it is the long pole
                    resident = resident_private_bytes(pid)
                    if prepare is not None and resident:
                        allocating.start(prepare, PagemapKey(pid), min(resident, PREPARE_MAX))
                    prepare_copy(resident)
                warm_up()
                prepare_images()
                vm_flags = vm_flags_before_freeze(pid)
                prepare_file_kinds(vm_flags.keys())     # the same processes: no import while frozen
            t0 = stats.frozen_at_ns = time.perf_counter_ns()
            with freeze_tree(pid, cgroup=freeze_cgroup) as held, TcpHold(close=tcp_close, lock=network_lock) as tcp:
                t_frozen = time.perf_counter_ns()
                times.freezing = t_frozen - t0
                refuse_tree(held)
                files = FileRegistry(tcp=tcp, ghosts=GhostTable(ghost_limit))
                seccomp = SeccompFilters()
                for model in held.tree:                  # parents first
                    parent = parents.get(model.pid) or _Parent(None, Ranges.empty())
                    saved.append(dump_process(held.task(model.pid), imgdir, sink, files, parent, times,
                                              shell_job=shell_job, seccomp=seccomp,
                                              vm_flags=vm_flags.get(model.pid)))
                seccomp.write(imgdir)
                for fid, stream in tcp.streams.items():
                    f = files.files[fid]
                    f.stream, f.state = stream, stream.state    # type: ignore[union-attr]  # as locked
                t_shm = time.perf_counter_ns()
                views = [(m.pid, s.vmas) for m, s in zip(held.tree, saved)]
                shm_pages, shm_mapped = save_shmem(sink, views)
                shm_pages.add(save_memfds(imgdir, sink, files, views))
                ipc_ns = held.tree.tasks[held.tree.root].ns_ids.get("ipc", 0)
                shm_pages.add(save_sysv(imgdir, sink, views, ipc_ns).counts)
                times.copy += time.perf_counter_ns() - t_shm
                tree = with_zombies(held.tree, held.zombies)    # nothing to seize or read
                for z in tree:
                    if z.zombie:
                        write_zombie_core(z.pid, z.exit_code, read_stat(z.pid).comm, imgdir)
                write_tree_images(tree, imgdir)
                write_files_images(files, imgdir, ext_unix_sk=ext_unix_sk)
                write_inventory(imgdir, pre_dump=False, root_ids=kobj_ids(tree.dumper) if tree.dumper else None,
                                tcp_close=tcp_close, network_lock=None if leave_running else tcp.lock_id)
                times.frozen = time.perf_counter_ns() - t_frozen
                pages = shm_pages
                for s in saved:
                    pages.add(s.pages)
                stats.record([s.planned.plan for s in saved], pages, times,
                             syscalls=sum(s.syscalls for s in saved),
                             extra_scanned=shm_mapped)
                write_stats(imgdir, stats)
                if leave_running:
                    tcp.resume_sockets()            # repair off before the tasks touch a socket
                    held.resume()                   # the fsyncs of the commit need no freeze
                    times.frozen = time.perf_counter_ns() - t_frozen
                    tcp.lift()                      # slow (RCU): after the freeze
                    session.finish()
                    imgdir.commit()
                else:
                    session.finish()                # the pages durable where they went,
                    imgdir.commit(durable=durable)  # all durable before the tree is gone
                    if after_commit is not None:
                        after_commit()              # raising: the tree is resumed, not killed
                    tcp.keep()                      # as the images say: sockets die repaired, lock stays
                    for model in reversed(list(held.tree)):     # children first
                        kill_held(held.task(model.pid))
                    times.frozen = time.perf_counter_ns() - t_frozen
                stats.set_times(times)
    finally:
        for s in saved:
            s.planner.close()
    return stats
