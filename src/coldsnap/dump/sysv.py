"""The SysV shared memory segments and semaphore sets of a dumped tree.

There is no IPC namespace of the tree's own to save whole (the machine's is shared with
everyone), so the tree's objects are picked:
  - a segment: attached by a process of the tree (its VMAs: /SYSV<key>, inode = the id),
    or created by one (cpid) and not attached at all;
  - a semaphore set: one whose last operation (GETPID of any of its semaphores) came
    from a process of the tree.
Each goes into ipcns-shm-NS.img / ipcns-sem-NS.img (NS: the root's ipc_ns_id) with its
key, id, owner, creator, mode and size; a segment's bytes into pagemap-shmem-ID.img (the
pages resident or swapped: mincore on coldsnap's own read-only attach, every page when part
of it is in swap), a set's values after its entry, as CRIU writes them. Undo (SEM_UNDO)
adjustments of processes cannot be read from outside: they are not saved.
"""
from __future__ import annotations

import ctypes
import re
import struct
from dataclasses import dataclass

from ..errors import TargetError, Unsupported
from ..images.directory import ImageDir
from ..images.pb import ipc_desc_pb2, ipc_sem_pb2, ipc_shm_pb2
from ..kernel import sysv
from ..kernel.page import PAGE_SIZE
from ..kernel.procfs import SysvObject, read_sysvipc
from ..kernel.shm import resident_pages
from ..memory.sink import PageSink, PagemapKey, PlanFeed, SinkCounts
from ..memory.vma import Kind, Vma


@dataclass(eq=False, repr=False)
class SysvSaved:
    """What save_sysv wrote: how many segments and semaphore sets, and the segments' pages."""
    segments: int = 0
    sets: int = 0
    counts: SinkCounts | None = None


def sysv_attached(views: list[tuple[int, list[Vma]]]) -> set[int]:
    """Ids of the segments the processes have attached."""
    return {v.inode for _, vmas in views for v in vmas if v.is_sysv}


def save_sysv(imgdir: ImageDir, sink: PageSink, views: list[tuple[int, list[Vma]]], ns_id: int) -> SysvSaved:
    """The tree's segments and semaphore sets (module docstring) into the images."""
    pids = {pid for pid, _ in views}
    attached = sysv_attached(views)
    anon_shmids = {v.inode for _, vmas in views for v in vmas if v.kind is Kind.ANON_SHARED} - attached
    shms = read_sysvipc("shm")
    out = SysvSaved(counts=SinkCounts())
    entries = []
    for sid in sorted(attached | {i for i, o in shms.items() if o.cpid in pids and not o.nattch}):
        o = shms.get(sid)
        if o is None:
            raise TargetError(f"SysV shared memory {sid}: not in /proc/sysvipc/shm (another IPC namespace?)")
        if sid in anon_shmids:
            raise Unsupported(f"SysV shared memory {sid}: its id is also the inode of a shared "
                              f"anonymous object of the tree; not supported")
        entries.append(ipc_shm_pb2.ipc_shm_entry(desc=_desc(o), size=o.size, in_pagemaps=True))
        out.counts.add(_save_segment(sink, o))
    imgdir.write(f"ipcns-shm-{ns_id}.img", entries)
    out.segments = len(entries)
    sets = []
    for o in read_sysvipc("sem").values():
        try:
            if not any(sysv.sem_getpid(o.id, n) in pids for n in range(o.size)):
                continue
            values = sysv.sem_getall(o.id, o.size)
        except OSError:
            continue                # removed meanwhile: not the tree's (it is frozen)
        raw = struct.pack(f"<{o.size}H", *values)
        sets.append((ipc_sem_pb2.ipc_sem_entry(desc=_desc(o), nsems=o.size),
                     raw.ljust((len(raw) + 7) & ~7, b"\0")))
    imgdir.write(f"ipcns-sem-{ns_id}.img", sets)
    out.sets = len(sets)
    return out


def _desc(o: SysvObject) -> ipc_desc_pb2.ipc_desc_entry:
    return ipc_desc_pb2.ipc_desc_entry(key=o.key, uid=o.uid, gid=o.gid, cuid=o.cuid, cgid=o.cgid,
                                       mode=o.mode, id=o.id)


def _save_segment(sink: PageSink, o: SysvObject) -> SinkCounts:
    """pagemap-shmem-ID: the segment's pages that hold data, read through a read-only attach
    of coldsnap's own (the processes are frozen: nothing writes meanwhile)."""
    size = (o.size + PAGE_SIZE - 1) & ~(PAGE_SIZE - 1)
    try:
        addr = sysv.shmat(o.id, 0, sysv.SHM_RDONLY)
    except OSError as e:
        raise TargetError(f"SysV shared memory {o.id}: cannot attach it: {e.strerror}") from None
    try:
        have = b"\1" * (size // PAGE_SIZE) if o.swap else resident_pages(addr, size)
        sink.begin(PagemapKey(o.id, shmem=True))
        feed = PlanFeed(sink)
        for run in re.finditer(b"\1+", have):          # runs of resident pages
            off, n = run.start() * PAGE_SIZE, (run.end() - run.start()) * PAGE_SIZE
            data = (ctypes.c_char * n).from_address(addr + off)
            feed.present((off,), (n,), memoryview(data))
        counts = feed.finish()
        sink.end()
        return counts
    finally:
        sysv.shmdt(addr)
