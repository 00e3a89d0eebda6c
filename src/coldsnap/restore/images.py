"""Load a dump's images and check everything that can be checked before a process exists.

`load_tree(path)` returns a `TreeImages` (a `DumpImages` per process, one file registry)
or raises ImageError/TargetError with one line: a bad or incomplete image set must never
get as far as a half-built process. `load(path)` is the same for a dump of one process.
"""
from __future__ import annotations

import functools
import os
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from ..errors import ImageError, NoSuchProcess, TargetError
from ..files.images import read_images as read_files_images
from ..files.model import FdType, RegFile
from ..files.registry import FileRegistry, TaskFiles
from ..images import framing
from ..images.directory import ImageDir
from ..images.pages import pagemap_name
from ..images.pb import core_pb2, fdinfo_pb2
from ..images.source import LocalPages
from ..images.task import TASK_DEAD
from ..images.vma import (VMA_ANON_SHARED, VMA_AREA_MEMFD, VMA_AREA_REGULAR, VMA_AREA_SYSVIPC, VMA_AREA_VDSO,
                          VMA_AREA_VSYSCALL, VMA_AREA_VVAR, VMA_FILE_PRIVATE, VMA_FILE_SHARED)
from ..kernel.page import PAGE_SIZE
from ..kernel.procfs import cpu_flags, read_maps, read_stat
from ..memory.source import PageOrigin, PageSource
from ..memory.vma import MAP_ANONYMOUS
from ..seize.tree import NS_KINDS, Task, Tree
from .fdtable import validate_files
from .sessions import plan_sessions
from .shmem import MemfdImage, ShmemImage

if TYPE_CHECKING:
    from .sysv import SysvImages

TASK_SIZE = 0x7FFFFFFFF000
MMAP_MIN_ADDR = 0x10000
SPECIAL = VMA_AREA_VDSO | VMA_AREA_VVAR | VMA_AREA_VSYSCALL   # areas the kernel provides
# XSAVE component bits -> the /proc/cpuinfo flag a CPU must have to accept them
XFEATURE_FLAGS = {2: "avx", 3: "mpx", 4: "mpx", 5: "avx512f", 6: "avx512f", 7: "avx512f", 9: "pku",
                  17: "amx_tile", 18: "amx_tile"}


@dataclass(eq=False, repr=False)
class MappedFile:
    """A file that a dumped VMA or the exe link maps."""
    path: str
    flags: int          # open flags the dump recorded (O_RDONLY or O_RDWR)
    size: int | None
    ghost: int = 0      # a deleted file: made again for the restore (restore/ghosts.py)


@dataclass(eq=False, repr=False)
class DumpImages:
    """A dump's images, loaded and checked for restore."""
    dir: ImageDir
    tree: Tree                       # pstree.img + ids-PID.img: the whole dump's tree
    pid: int
    tids: list[int]
    cores: dict[int, core_pb2.core_entry]
    mm: object                       # mm_entry
    files: TaskFiles                 # the task's fd table, cwd, root and umask
    mapped: dict[int, MappedFile]    # REG file_entry id -> file, for VMAs and the exe
    private: PageSource                           # the process pagemap, parents resolved
    seccomp: list[bytes] = field(default_factory=list)   # its threads' filters, oldest first

    @property
    def leader(self) -> core_pb2.core_entry:
        return self.cores[self.pid]

    def vmas(self) -> list:
        """The VMAs restore maps itself (the vDSO areas are moved, not mapped)."""
        return [v for v in self.mm.vmas if not v.status & SPECIAL]


@dataclass(eq=False, repr=False)
class TreeImages:
    """The images of a whole dump: the tree model, one file registry for every process, and
    each process's images (parents first, the root first)."""
    dir: ImageDir
    tree: Tree
    files: FileRegistry
    procs: dict[int, DumpImages]     # the living processes (a zombie has none: tree.task(pid).exit_code)
    sessions: dict[int, str]          # pid -> what its blank process does (restore/sessions.py)
    shmem: dict[int, ShmemImage] = field(default_factory=dict)   # shared anonymous objects by shmid
    sysv: SysvImages | None = None   # SysV segments and semaphore sets (None: the images hold none)
    memfds: dict[int, MemfdImage] = field(default_factory=dict)  # memfd inodes by inode id
    memfd_files: dict[int, int] = field(default_factory=dict)    # MEMFD file id -> inode id
    origin: PageOrigin = field(default_factory=LocalPages)       # where the pages are read

    @property
    def root(self) -> DumpImages:
        return self.procs[self.tree.root]


def load(path: str | os.PathLike, *, shell_job: bool = False) -> DumpImages:
    """The images of a dump of one process (ImageError for a tree)."""
    images = load_tree(path, shell_job=shell_job)
    if len(images.tree) > 1:
        raise ImageError(f"{images.dir.root}: {len(images.tree)} processes in pstree.img; "
                         "only one expected here")
    return images.root


def load_tree(path: str | os.PathLike | ImageDir, *, shell_job: bool = False,
              pages: PageOrigin | None = None) -> TreeImages:
    """Every process of a dump, checked (module docstring). pages: where the pages are
    read (default: the directory's chain; transport/source.py RemotePages: a page server).
    path: the directory, or it opened already."""
    d = path if isinstance(path, ImageDir) else ImageDir.open(path)
    origin = pages or LocalPages()
    inv = d.inventory
    if inv.HasField("pre_dump_mode"):
        raise ImageError(f"{d.root}: a pre-dump, not a dump: restore needs the images of `coldsnap dump`")
    leader_cores: dict[int, core_pb2.core_entry] = {}
    tree = read_tree(d, leader_cores)
    sessions = plan_sessions(tree, shell_job=shell_job)
    living = tree.living
    file_entries = d.read("files.img")      # once: for the memfd checks and the registry
    anon_memfds = criu_anon_memfds(d, file_entries)
    mms = {t.pid: _mm(d, t.pid, anon_memfds) for t in living}
    shmem = _shmem_objects(d, mms, origin)
    sysv = _sysv(d, tree, mms, origin)
    memfds, memfd_files = _memfds(d, mms, origin, file_entries)
    registry = read_files_images(d.root, {t.pid: t.files_id for t in living},
                                 mapped_ids=set().union(*(_mapped_ids(mm) for mm in mms.values())),
                                 entries=file_entries)
    _check_shared_files(tree, registry)
    procs = {t.pid: _load_process(d, tree, t, mms[t.pid], registry, shell_job, origin, leader_cores)
             for t in living}
    _check_ids_free([tid for t in tree for tid in t.tids])
    return TreeImages(d, tree, registry, procs, sessions, shmem, sysv, memfds, memfd_files, origin)


def _mm(d: ImageDir, pid: int, anon_memfds: dict[int, int]):
    if not d.exists(f"mm-{pid}.img"):
        raise ImageError(f"{d.root}: mm-{pid}.img is missing")
    mm = d.read_single(f"mm-{pid}.img")
    _memfds_as_shared_anon(d, mm, anon_memfds)
    _check_vmas(d, mm)
    _check_vdso(mm)
    return mm


def criu_anon_memfds(d: ImageDir, file_entries: list) -> dict[int, int]:
    """files.img id -> shmid of every memfd that CRIU (4.2) made of shared anonymous memory:
    it dumps MAP_SHARED|MAP_ANONYMOUS areas as memfds named "/dev/zero" (memfd.img), their
    pages in pagemap-shmem-<shmid>.img as coldsnap saves them. file_entries: files.img's,
    read already."""
    if not d.exists("memfd.img"):
        return {}
    inodes = {e.inode_id: e for e in d.read("memfd.img")}
    out = {}
    for f in file_entries:
        ino = inodes.get(f.memfd.inode_id) if f.HasField("memfd") else None
        if ino is not None and ino.name == "/dev/zero":
            out[f.id] = ino.shmid
    return out


def _memfds_as_shared_anon(d: ImageDir, mm, anon_memfds: dict[int, int]) -> None:
    """Read CRIU's memfd areas of shared anonymous memory as coldsnap records them."""
    for v in mm.vmas:
        if not v.status & VMA_AREA_MEMFD:
            continue
        shmid = anon_memfds.get(v.shmid)
        if shmid is None:
            continue                # a real memfd (_memfds)
        v.status = VMA_AREA_REGULAR | VMA_ANON_SHARED
        v.flags |= MAP_ANONYMOUS
        v.shmid = shmid
        v.ClearField("fdflags")


def _shmem_objects(d: ImageDir, mms: dict, origin: PageOrigin) -> dict[int, ShmemImage]:
    """Every shared anonymous object the processes map (restore/shmem.py makes each once):
    its size is the largest window mapped; its saved pages must lie inside it."""
    sizes: dict[int, int] = {}
    for mm in mms.values():
        for v in mm.vmas:
            if v.status & VMA_ANON_SHARED and not v.status & VMA_AREA_SYSVIPC:
                sizes[v.shmid] = max(sizes.get(v.shmid, 0), v.pgoff + v.end - v.start)
    objects = {}
    for shmid, size in sorted(sizes.items()):
        pages = origin.source(d, shmid, shmem=True)
        for offset, nbytes in pages.runs() if pages else ():
            if offset + nbytes > size:
                raise ImageError(f"{d.root}: {pagemap_name(shmid, shmem=True)}: pages at {offset:#x} "
                                 f"beyond the {size} bytes the processes map")
        objects[shmid] = ShmemImage(shmid, size, pages)
    return objects


def _memfds(d: ImageDir, mms: dict, origin: PageOrigin, file_entries: list) -> tuple[dict[int, MemfdImage], dict[int, int]]:
    """memfd.img (each inode with its pages) and the MEMFD file -> inode map of files.img;
    every memfd VMA must name one of those files, and each file an inode of memfd.img."""
    inodes, anon = {}, set()
    for e in d.read("memfd.img", missing_ok=True):
        if e.name == "/dev/zero":
            anon.add(e.inode_id)    # CRIU's shared anonymous memory (criu_anon_memfds)
            continue
        pages = origin.source(d, e.shmid, shmem=True)
        for offset, nbytes in pages.runs() if pages else ():
            if offset + nbytes > ((e.size + PAGE_SIZE - 1) & ~(PAGE_SIZE - 1)):
                raise ImageError(f"{d.root}: {pagemap_name(e.shmid, shmem=True)}: pages at {offset:#x} "
                                 f"beyond memfd {e.name}'s {e.size} bytes")
        inodes[e.inode_id] = MemfdImage(e, pages)
    files = {e.id: e.memfd.inode_id for e in file_entries
             if e.type == fdinfo_pb2.MEMFD and e.memfd.inode_id not in anon}
    for fid, inode in files.items():
        if inode not in inodes:
            raise ImageError(f"{d.root}/files.img: memfd file {fid}: inode {inode} is not in memfd.img")
    for pid, mm in mms.items():
        for v in mm.vmas:
            if v.status & VMA_AREA_MEMFD and v.shmid not in files:
                raise ImageError(f"{d.root}: process {pid} maps memfd file {v.shmid} at {v.start:#x}, "
                                 "which files.img does not hold")
    return inodes, files


def _sysv(d: ImageDir, tree: Tree, mms: dict, origin: PageOrigin) -> SysvImages | None:
    """The dump's SysV objects (None: it has none, and restore/sysv.py is not imported);
    every attached segment must be one of them."""
    def pages(shmid: int):
        return origin.source(d, shmid, shmem=True)
    ns = tree.root_task.ns_ids.get("ipc", 0)
    sysv = None
    if d.exists(f"ipcns-shm-{ns}.img") or d.exists(f"ipcns-sem-{ns}.img"):
        from .sysv import read_sysv
        sysv = read_sysv(d, ns, pages)
    ids = {s.desc.id for s in sysv.segments} if sysv is not None else set()
    for pid, mm in mms.items():
        for v in mm.vmas:
            if v.status & VMA_AREA_SYSVIPC and v.shmid not in ids:
                raise ImageError(f"{d.root}: process {pid} attaches SysV shared memory {v.shmid} at "
                                 f"{v.start:#x}, which no ipcns-shm image holds")
    return sysv


def _check_shared_files(tree: Tree, registry: FileRegistry) -> None:
    """Files several processes hold are created once and inherited (restore/blank.py): an
    epoll instance cannot be, its registrations name fds of one table."""
    for fid in registry.shared_ids():
        f = registry.files[fid]
        if f.kind is FdType.EVENTPOLL:
            pid, fd = next((t.pid, e.fd) for t in tree for e in registry.task(t.pid).fds if e.file_id == fid)
            raise ImageError(f"process {pid} fd {fd}: an epoll instance shared with another process; "
                             "not supported yet")


def _load_process(d: ImageDir, tree: Tree, task: Task, mm, registry: FileRegistry,
                  shell_job: bool, origin: PageOrigin, leader_cores: dict) -> DumpImages:
    pid, tids = task.pid, task.tids
    cores = {tid: _core(d, tid, leader_cores.get(tid)) for tid in tids}
    _check_xstate(cores)
    files = registry.task(pid)
    validate_files(files, shell_job=shell_job)
    mapped = _mapped_files(d, mm, registry.files)
    private = origin.source(d, pid)
    if private is None:
        where = d.root if isinstance(origin, LocalPages) else origin
        raise ImageError(f"{where}: {pagemap_name(pid)} is missing")
    # the vDSO's pages (CRIU saves them, and so does coldsnap for CRIU): the running vDSO
    # is moved there instead
    private.drop([(v.start, v.end) for v in mm.vmas if v.status & SPECIAL])
    _check_inside(d, pid, private.runs(), [v for v in mm.vmas if not v.status & SPECIAL])
    return DumpImages(d, tree, pid, tids, cores, mm, files, mapped, private, _seccomp_chain(d, pid, cores))


def _seccomp_chain(d: ImageDir, pid: int, cores: dict) -> list[bytes]:
    """The seccomp filters of process pid, oldest first, from seccomp.img: every thread
    must have the same (restore installs them once for all, with TSYNC)."""
    heads = {core.thread_core.seccomp_filter if core.thread_core.HasField("seccomp_filter") else None
             for core in cores.values()}
    if len(heads) > 1:
        raise ImageError(f"process {pid}: threads with different seccomp filters; not supported")
    head = heads.pop()
    if head is None:
        return []
    filters = list(d.read_single("seccomp.img").seccomp_filters) if d.exists("seccomp.img") else []
    chain: list[bytes] = []
    at: int | None = head
    while at is not None:
        if at >= len(filters) or len(chain) > len(filters):
            raise ImageError(f"{d.root}/seccomp.img: no filter {at} (needed by process {pid}), or a loop")
        f = filters[at]
        if not f.filter or len(f.filter) % 8:
            raise ImageError(f"{d.root}/seccomp.img: filter {at} is not a BPF program")
        chain.append(f.filter)
        at = f.prev if f.HasField("prev") else None
    return chain[::-1]


def read_tree(d: ImageDir, cores: dict | None = None) -> Tree:
    """The tree model of a dump: pstree.img (parents first, root first) and every living
    process's ids-PID.img. The root's ppid is 0, as the image records it. A zombie needs no
    ids, and its thread list is not read (CRIU 4.2 writes garbage there). CORES: filled with
    each leader's core image, parsed here for its task state (load_tree reuses them)."""
    entries = d.read("pstree.img", missing_ok=True)
    if not entries:
        raise ImageError(f"{d.root}: no pstree.img: not a dump directory")
    tasks: dict[int, Task] = {}
    for e in entries:
        exit_code = _zombie_status(d, e.pid, cores)
        tids = (list(e.threads) or [e.pid]) if exit_code is None else [e.pid]
        if e.pid not in tids:
            raise ImageError(f"{d.root}/pstree.img: leader {e.pid} missing from its thread list")
        if e.pid in tasks:
            raise ImageError(f"{d.root}/pstree.img: process {e.pid} listed twice")
        name = f"ids-{e.pid}.img"
        if exit_code is not None and not d.exists(name):
            tasks[e.pid] = Task(e.pid, e.ppid, e.pgid, e.sid, tids, exit_code=exit_code)
            continue
        if not d.exists(name):
            raise ImageError(f"{d.root}: {name} is missing")
        ids = d.read_single(name)
        tasks[e.pid] = Task(e.pid, e.ppid, e.pgid, e.sid, tids, vm_id=ids.vm_id, files_id=ids.files_id,
                            fs_id=ids.fs_id, sighand_id=ids.sighand_id,
                            ns_ids={k: getattr(ids, f"{k}_ns_id") for k in NS_KINDS
                                    if ids.HasField(f"{k}_ns_id")},
                            exit_code=exit_code)
    if tasks[entries[0].pid].zombie:
        raise ImageError(f"{d.root}: the root {entries[0].pid} is a zombie")
    return Tree(entries[0].pid, tasks)


def _zombie_status(d: ImageDir, pid: int, cores: dict | None = None) -> int | None:
    """The exit status of a zombie (its core's task_state is TASK_DEAD), None for a living
    process (or no core: _core says so when the process is loaded). CORES: the parsed core
    is kept there."""
    name = f"core-{pid}.img"
    if not d.exists(name):
        return None
    core = d.read_single(name)
    if cores is not None:
        cores[pid] = core
    return core.tc.exit_code if core.tc.task_state == TASK_DEAD else None


def _core(d: ImageDir, tid: int, parsed: core_pb2.core_entry | None = None) -> core_pb2.core_entry:
    """Thread TID's core image, checked (PARSED: read already by read_tree)."""
    name = f"core-{tid}.img"
    if parsed is not None:
        core = parsed
    elif not d.exists(name):
        raise ImageError(f"{d.root}: {name} is missing")
    else:
        core = d.read_single(name)
    if core.mtype != core_pb2.X86_64:
        arch = core.DESCRIPTOR.fields_by_name["mtype"].enum_type.values_by_number.get(core.mtype)
        raise ImageError(f"{d.path(name)}: images are for architecture "
                         f"{arch.name if arch else core.mtype}, this machine is X86_64")
    if not core.HasField("thread_info"):
        raise ImageError(f"{d.path(name)}: no x86-64 thread state")
    return core


def _check_vmas(d: ImageDir, mm) -> None:
    prev_end = 0
    for v in mm.vmas:
        bad = (v.start % PAGE_SIZE or v.end % PAGE_SIZE or v.end <= v.start or v.start < prev_end)
        if bad or (v.end > TASK_SIZE and not v.status & VMA_AREA_VSYSCALL):
            raise ImageError(f"{d.root}/mm: VMA {v.start:#x}-{v.end:#x} is not a valid, ordered area")
        prev_end = v.end


def vdso_layout(vmas) -> list[tuple[int, int]]:
    """[(start, end)] of the vvar/vvar_vclock/vdso areas, in address order."""
    return [(v.start, v.end) for v in vmas if v.status & (VMA_AREA_VDSO | VMA_AREA_VVAR)]


def warm_up() -> None:
    """What the first restore of a process works out that a fork of it inherits as it is (a
    resident service calls this before it forks its workers): the image readers' per-kind
    set-up, our vDSO's place, the CPU's flags. About 0.9 ms of an 8 MiB restore's loading."""
    framing.warm_up()
    _own_vdso_maps()
    cpu_flags()


@functools.cache
def own_vdso_areas() -> tuple[tuple[int, int], ...]:
    """((start, end)) of coldsnap's own vvar/vvar_vclock/vdso areas, in address order, read
    once: a process's vDSO stays where the kernel put it, and a child forked from it (the
    blank child) has its vDSO at the same addresses."""
    return tuple((m.start, m.end) for m in _own_vdso_maps())


def gaps_between(keep: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """(start, end) of every range of the user address space [0, TASK_SIZE) outside the
    (start, end) areas of KEEP (in any order, overlapping or not): what an "unmap everything
    but KEEP" unmaps."""
    gaps, at = [], 0
    for lo, hi in sorted(keep):
        if at < lo:
            gaps.append((at, lo))
        at = max(at, hi)
    if at < TASK_SIZE:
        gaps.append((at, TASK_SIZE))
    return gaps


def own_vdso() -> tuple[int, int]:
    """(start, end) of coldsnap's own [vdso] (a blank child has it there too)."""
    return next((m.start, m.end) for m in _own_vdso_maps() if m.path == "[vdso]")


@functools.cache
def _own_vdso_maps() -> tuple:
    names = ("[vdso]", "[vvar]", "[vvar_vclock]")
    return tuple(m for m in read_maps(os.getpid(), ending=names) if m.path in names)


def _shape(block: list[tuple[int, int]], vdso: list[tuple[int, int]]) -> tuple[int, list[tuple[int, int]]]:
    """(size of the whole block, the [vdso] areas relative to its start): what must match.
    How the vvar part is cut does not matter: since Linux 6.13 the kernel shows [vvar] and
    [vvar_vclock], CRIU records them as one VVAR area, and both move as one block."""
    if not block:
        return 0, []
    base = block[0][0]
    return block[-1][1] - base, [(s - base, e - base) for s, e in vdso]


def _check_vdso(mm) -> None:
    own = _own_vdso_maps()
    have = _shape([(m.start, m.end) for m in own], [(m.start, m.end) for m in own if m.path == "[vdso]"])
    want_areas = vdso_layout(mm.vmas)
    want = _shape(want_areas, [(v.start, v.end) for v in mm.vmas if v.status & VMA_AREA_VDSO])
    if have != want:
        raise ImageError("images come from a kernel with another vDSO layout "
                         f"({len(want_areas)} areas, {want[0] // PAGE_SIZE} pages; "
                         f"this kernel: {len(own)} areas, {have[0] // PAGE_SIZE} pages)")


def _check_xstate(cores: dict[int, core_pb2.core_entry]) -> None:
    flags = cpu_flags()
    for tid, core in cores.items():
        fp = core.thread_info.fpregs
        bv = fp.xsave.xstate_bv if fp.HasField("xsave") else 0
        for bit, flag in XFEATURE_FLAGS.items():
            if bv >> bit & 1 and flag not in flags:
                raise ImageError(f"core-{tid}.img: thread state uses the CPU feature {flag!r}, "
                                 "which this machine lacks")


def _mapped_ids(mm) -> set[int]:
    """REG file ids of the file VMAs (memfds are not files by path) and the exe."""
    want = {v.shmid for v in mm.vmas
            if v.status & (VMA_FILE_PRIVATE | VMA_FILE_SHARED) and not v.status & VMA_AREA_MEMFD}
    if mm.exe_file_id:
        want.add(mm.exe_file_id)
    return want


def _mapped_files(d: ImageDir, mm, files: dict) -> dict[int, MappedFile]:
    out = {}
    for fid in sorted(_mapped_ids(mm)):
        r = files.get(fid)
        if not isinstance(r, RegFile):
            raise ImageError(f"{d.root}/files.img: no file with id {fid} (needed by mm-*.img)")
        if r.ghost:
            out[fid] = MappedFile(r.path, r.flags, r.size, r.ghost)
            continue
        try:
            st = os.stat(r.path)
        except OSError as e:
            raise ImageError(f"mapped file {r.path}: {e.strerror}") from None
        if r.size is not None and st.st_size != r.size:
            raise ImageError(f"mapped file {r.path} changed size since the dump "
                             f"({r.size} -> {st.st_size} bytes)")
        out[fid] = MappedFile(r.path, r.flags, r.size)
    return out


def _check_inside(d: ImageDir, pid: int, sources, vmas) -> None:
    """Every saved page must land in a VMA the restore will create."""
    import bisect
    areas = [(v.start, v.end) for v in vmas]
    starts = [s for s, _ in areas]
    for vaddr, n in sources:
        i = bisect.bisect_right(starts, vaddr) - 1
        end = vaddr + n
        # a run may cross adjacent VMAs
        while i >= 0 and i < len(areas) and areas[i][0] <= vaddr < areas[i][1]:
            vaddr = areas[i][1]
            if vaddr >= end:
                break
            i += 1
        if vaddr < end:
            raise ImageError(f"{d.path(pagemap_name(pid))}: page {vaddr:#x} lies outside every VMA")


# A dumped process leaves a zombie until its parent reaps it; reparented to an init that
# reaps slowly (1-2 s on some machines), that zombie holds the PID a restore right after the
# dump needs: waited for this long before the PID counts as in use.
ZOMBIE_WAIT_S = 5.0


def _check_ids_free(tids: list[int]) -> None:
    import time
    deadline = None
    for tid in tids:
        while True:
            try:
                st = read_stat(tid)
            except NoSuchProcess:
                break
            except (OSError, ValueError):       # AccessDenied, or a stat cut short by an exit
                raise TargetError(f"PID {tid} is in use (by '?'): cannot restore with the same IDs") from None
            if st.state not in ("Z", "X") or st.num_threads > 1:     # a leader gone, its threads on
                raise TargetError(f"PID {tid} is in use (by {st.comm!r}): cannot restore with the same IDs")
            deadline = deadline or time.monotonic() + ZOMBIE_WAIT_S
            if time.monotonic() > deadline:
                raise TargetError(f"PID {tid} is held by {st.comm!r}, which exited but is not reaped yet "
                                  f"(a zombie: its parent {st.ppid} did not wait for it within "
                                  f"{ZOMBIE_WAIT_S:g} s): cannot restore with the same IDs")
            time.sleep(0.005)