"""Small images every (pre-)dump writes: inventory, mm (VMAs and mm fields), stats, pstree
and ids (a pre-dump needs nothing of task_state.py, which a dump uses for the cores)."""
from __future__ import annotations

from ..images.directory import INVENTORY, ImageDir, new_inventory
from ..images.vma import (VMA_ANON_PRIVATE, VMA_ANON_SHARED, VMA_AREA_HEAP, VMA_AREA_MEMFD, VMA_AREA_REGULAR,
                          VMA_AREA_STACK, VMA_AREA_SYSVIPC, VMA_AREA_VDSO, VMA_AREA_VSYSCALL, VMA_AREA_VVAR,
                          VMA_FILE_PRIVATE, VMA_FILE_SHARED)
from ..images.pb import mm_pb2, stats_pb2
from ..kernel.procfs import Stat, uptime_us
from ..memory.vma import MAP_GROWSDOWN, Kind, Vma
from ..seize.tree import NS_KINDS, Task, Tree
from .stats import DumpStats

PRE_DUMP_MODE_READ = 2   # inventory.pre_dump_mode: pages were read with process_vm_readv
U32 = 0xFFFFFFFF


def write_inventory(imgdir: ImageDir, *, pre_dump: bool, root_ids=None, network_lock: str | None = None,
                    tcp_close: bool = False) -> None:
    """inventory.img; root_ids: the dumping process's task_kobj_ids_entry (a dump's);
    network_lock: the run id of the nftables lock the dump leaves in place for the restore
    to lift (its table is connections.lock.NetworkLock(run_id).table)."""
    inv = new_inventory(pre_dump_mode=PRE_DUMP_MODE_READ if pre_dump else None, dump_uptime=uptime_us())
    if root_ids is not None:
        inv.root_ids.CopyFrom(root_ids)
    if network_lock is not None:
        from ..connections.lock import NFTABLES_METHOD     # loaded already: the lock was taken
        inv.network_lock_method = NFTABLES_METHOD
        inv.dump_criu_run_id = network_lock
    if tcp_close:
        inv.tcp_close = True
    imgdir.write(INVENTORY, [inv])


_STATUS = {
    Kind.ANON_PRIVATE: VMA_AREA_REGULAR | VMA_ANON_PRIVATE,
    Kind.FILE_PRIVATE: VMA_AREA_REGULAR | VMA_FILE_PRIVATE,
    Kind.ANON_SHARED: VMA_AREA_REGULAR | VMA_ANON_SHARED,
    Kind.FILE_SHARED: VMA_AREA_REGULAR | VMA_FILE_SHARED,
    # the kernel's own areas: anonymous private memory as far as the format goes (CRIU's bits)
    Kind.VDSO: VMA_AREA_REGULAR | VMA_AREA_VDSO | VMA_ANON_PRIVATE,
    Kind.VVAR: VMA_AREA_REGULAR | VMA_AREA_VVAR | VMA_ANON_PRIVATE,
    Kind.VSYSCALL: VMA_AREA_VSYSCALL | VMA_ANON_PRIVATE,
}
MADV_DONTDUMP = 16
MAP_LOCKED = 0x2000
MAP_NORESERVE = 0x4000
# VmFlags codes of /proc/PID/smaps -> the mmap flag (vma_entry.flags) or the madvise advice
# (a bit 1 << MADV_x of vma_entry.madv) that gives them back, as CRIU reads and restores them
VM_FLAG_MAP = {"gd": MAP_GROWSDOWN, "lo": MAP_LOCKED, "nr": MAP_NORESERVE}
VM_FLAG_MADV = {"sr": 2, "rr": 1, "dc": 10, "dd": MADV_DONTDUMP, "mg": 12, "hg": 14, "nh": 15, "wf": 18}
AT_VECTOR_SIZE = 44       # CRIU's x86-64 limit on mm_saved_auxv (words); it refuses more


def vma_status(v: Vma) -> int:
    """The image's vma_entry.status bits of an area."""
    status = _STATUS[v.kind]
    if v.is_sysv:
        status |= VMA_AREA_SYSVIPC
    elif v.is_memfd:        # as CRIU has it: a shared file mapping whose file is a MEMFD entry
        status = VMA_AREA_REGULAR | VMA_FILE_SHARED | VMA_AREA_MEMFD
    if v.name == "[stack]":
        status |= VMA_AREA_STACK
    elif v.name == "[heap]":
        status |= VMA_AREA_HEAP
    return status


def vma_entry(v: Vma, file_id: int = 0, fdflags: int | None = None,
              vm_flags: frozenset[str] = frozenset()) -> mm_pb2.vma_entry:
    """One VMA; shmid is the shmem inode for shared anonymous memory (the id for SysV),
    else `file_id` (the REG or MEMFD file_entry of a file or memfd mapping, 0 for none);
    fdflags the mapped file's open mode; vm_flags its VmFlags codes (smaps)."""
    shmid = v.inode if v.kind is Kind.ANON_SHARED and not v.is_memfd else file_id
    flags, madv = v.map_flags, 0
    for code in vm_flags:
        flags |= VM_FLAG_MAP.get(code, 0)
        if code in VM_FLAG_MADV:
            madv |= 1 << VM_FLAG_MADV[code]
    e = mm_pb2.vma_entry(start=v.start, end=v.end, pgoff=v.pgoff, shmid=shmid, prot=v.prot,
                         flags=flags, status=vma_status(v), fd=-1)
    if madv:
        e.madv = madv
    if fdflags is not None:
        e.fdflags = fdflags
    return e


def image_vmas(vmas: list[Vma], file_ids: dict, fdflags: dict,
               vm_flags: dict | None = None) -> list[mm_pb2.vma_entry]:
    """The vma_entry list of mm-PID.img. [vvar] and [vvar_vclock] (two areas since Linux
    6.13) become one VVAR area, as CRIU writes and reads them: one vvar block beside the
    vDSO, marked MADV_DONTDUMP as the kernel marks it."""
    out: list[mm_pb2.vma_entry] = []
    for v in vmas:
        span = (v.start, v.end)
        e = vma_entry(v, file_ids.get(span, 0), fdflags.get(span),
                      (vm_flags or {}).get(span, frozenset()) if v.saves_pages or v.kind in _ADVISED else frozenset())
        if v.kind is Kind.VVAR:
            e.madv = 1 << MADV_DONTDUMP
            if out and out[-1].status & VMA_AREA_VVAR and out[-1].end == v.start:
                out[-1].end = v.end
                continue
        out.append(e)
    return out


_ADVISED = (Kind.ANON_SHARED, Kind.FILE_SHARED)     # with saves_pages: the areas restore maps itself


def image_auxv(auxv: list[int]) -> list[int]:
    """The saved auxv as CRIU writes it: without the AT_NULL terminator (restore adds zeros
    anyway), and no longer than CRIU accepts; what does not fit is dropped, as CRIU does."""
    words = list(auxv)
    while len(words) >= 2 and words[-2] == 0 and words[-1] == 0:
        del words[-2:]
    return words[:AT_VECTOR_SIZE]


def write_mm(imgdir: ImageDir, pid: int, vmas: list[Vma], stat: Stat, *, brk: int | None = None,
             auxv: list[int] | None = None, exe_file_id: int = 0, file_ids: dict | None = None,
             fdflags: dict | None = None, dumpable: int | None = None, thp_disabled: bool = False,
             guards: list[tuple[int, int]] = (), vm_flags: dict | None = None) -> None:
    """mm-PID.img. file_ids / fdflags: (start, end) of a file VMA -> REG file id / open mode;
    vm_flags: (start, end) -> VmFlags codes (kernel.procfs.read_vm_flags)."""
    heap = next((v for v in vmas if v.name == "[heap]"), None)
    mm = mm_pb2.mm_entry(
        mm_start_code=stat.start_code, mm_end_code=stat.end_code,
        mm_start_data=stat.start_data, mm_end_data=stat.end_data,
        mm_start_stack=stat.start_stack, mm_start_brk=stat.start_brk,
        mm_brk=brk if brk is not None else (heap.end if heap else stat.start_brk),
        mm_arg_start=stat.arg_start, mm_arg_end=stat.arg_end,
        mm_env_start=stat.env_start, mm_env_end=stat.env_end,
        exe_file_id=exe_file_id, mm_saved_auxv=image_auxv(auxv or []),
        vmas=image_vmas(vmas, file_ids or {}, fdflags or {}, vm_flags))
    if dumpable is not None:
        mm.dumpable = dumpable
    if thp_disabled:
        mm.thp_disabled = True
    for start, end in guards:
        mm.cs_guards.extend((start, end))
    imgdir.write(f"mm-{pid}.img", [mm])


def write_stats(imgdir: ImageDir, s: DumpStats, *, tree_uffd_fds: list[tuple[int, int]] = (),
                uffd_inos: list[tuple[int, int]] = ()) -> None:
    """stats-dump; tree_uffd_fds: (pid, fd) of every userfaultfd a tree's pre-dump parked;
    uffd_inos: (pid, inode) of every parked userfaultfd (a tree's or the one process's)."""
    d = stats_pb2.dump_stats_entry(
        freezing_time=min(s.freezing_time, U32), frozen_time=min(s.frozen_time, U32),
        memdump_time=min(s.memdump_time, U32), memwrite_time=min(s.memwrite_time, U32),
        pages_scanned=s.pages_scanned, pages_skipped_parent=s.pages_skipped_parent,
        pages_written=s.pages_written, pages_lazy=0,
        cs_pages_skipped=s.pages_skipped, cs_track_backend=s.track_backend, cs_mode=s.mode,
        cs_scan_time=min(s.scan_time, U32))
    if s.uffd_fd >= 0:
        d.cs_uffd_fd = s.uffd_fd
    for pid, fd in tree_uffd_fds:
        d.cs_tree_uffd_fds.extend((pid, fd))
    for pid, ino in uffd_inos:
        d.cs_uffd_inos.extend((pid, ino))
    imgdir.write("stats-dump", [stats_pb2.stats_entry(dump=d)])


def write_tree_images(tree: Tree, imgdir) -> list[str]:
    """pstree.img (every process, parents first; ppid 0 for the root) and ids-<pid>.img for
    each living process (a zombie has none, as with CRIU, whose restore would take a zombie's
    empty ids for new namespaces), from the tree model; returns the names."""
    from coldsnap.images.pb import pstree_pb2
    imgdir.write("pstree.img", [pstree_pb2.pstree_entry(pid=t.pid, ppid=tree.image_ppid(t), pgid=t.pgid,
                                                        sid=t.sid, threads=t.tids) for t in tree])
    names = ["pstree.img"]
    for t in tree.living:
        imgdir.write(f"ids-{t.pid}.img", [kobj_ids(t)])
        names.append(f"ids-{t.pid}.img")
    return names


def kobj_ids(t: Task):
    """The task_kobj_ids_entry of a task of the model (ids-PID.img, inventory.root_ids)."""
    from coldsnap.images.pb import ids_pb2
    ns = {f"{kind}_ns_id": t.ns_ids[kind] for kind in NS_KINDS if kind in t.ns_ids}
    return ids_pb2.task_kobj_ids_entry(vm_id=t.vm_id, files_id=t.files_id, fs_id=t.fs_id,
                                       sighand_id=t.sighand_id, **ns)
