"""SysV segments and semaphore sets of a restore, made again with their ids and keys.

This machine's IPC namespace is everyone's, so what a restore guarantees is:
  - each object comes back with its id, key, owner (uid/gid), permission bits and size,
    a segment with its bytes, a set with its values; its creator (cuid/cgid) becomes
    coldsnap's user, its times and last pids are not kept; SHM_LOCKED is set again, and a
    segment marked for removal (SHM_DEST) is marked again once every process has attached it;
  - the id is chosen with /proc/sys/kernel/{shm,sem}_next_id, under a lock that every
    coldsnap holds for it (/run/lock/coldsnap-sysv.lock); a program outside coldsnap that
    makes an object at that instant can still take the id: the restore then removes what
    it made and says so;
  - an object still there under that id with the same key, size and creator is the dumped
    tree's own, left behind when its processes died: it is replaced, unless a segment is
    still attached somewhere or a set's last operation came from a living process (the
    restore refuses); any other object holding the id or the key refuses the restore.
Every object made is removed again when the restore fails.
"""
from __future__ import annotations

import ctypes
import errno
import os
import struct
from dataclasses import dataclass, field

from ..errors import CsError, TargetError
from ..images import framing
from ..images.directory import ImageDir
from ..images.pb import ipc_sem_pb2, ipc_shm_pb2
from ..kernel import sysv, vm
from ..kernel.page import PAGE_SIZE
from ..kernel.procfs import SysvObject, read_sysvipc, set_ipc_next_id
from ..memory.source import PageSource

LOCK = "/run/lock/coldsnap-sysv.lock"
IPC_PRIVATE = 0


@dataclass
class SysvImages:
    """The SysV objects of a dump (ipcns-*-NS.img) and the segments' pages."""
    segments: list[ipc_shm_pb2.ipc_shm_entry] = field(default_factory=list)
    sets: list[tuple[ipc_sem_pb2.ipc_sem_entry, list[int]]] = field(default_factory=list)
    pages: dict[int, PageSource] = field(default_factory=dict)      # segment id -> its bytes

    def size(self, shmid: int) -> int:
        return next(s.size for s in self.segments if s.desc.id == shmid)


def read_sysv(d: ImageDir, ns_id: int, pages) -> SysvImages:
    """ipcns-shm/sem-NS.img; pages(id) gives a segment's page source (None: no data)."""
    out = SysvImages()
    for m, _ in framing.read_entries(d.path(f"ipcns-shm-{ns_id}.img"), missing_ok=True):
        out.segments.append(m)
        src = pages(m.desc.id)
        if src is not None:
            out.pages[m.desc.id] = src
    for m, raw in framing.read_entries(d.path(f"ipcns-sem-{ns_id}.img"), missing_ok=True):
        out.sets.append((m, list(struct.unpack_from(f"<{m.nsems}H", raw))))
    return out


@dataclass
class SysvMade:
    """The objects a restore made: removed on failure, SHM_DEST set again on success."""
    shm_ids: list[int] = field(default_factory=list)
    sem_ids: list[int] = field(default_factory=list)
    to_destroy: list[int] = field(default_factory=list)

    def finish(self) -> None:
        """Every process attached its segments: mark those that were marked for removal."""
        for sid in self.to_destroy:
            sysv.shm_rmid(sid)
        self.shm_ids, self.sem_ids, self.to_destroy = [], [], []

    def remove(self) -> None:
        for sid in self.shm_ids:
            _quietly(sysv.shm_rmid, sid)
        for sid in self.sem_ids:
            _quietly(sysv.sem_rmid, sid)
        self.shm_ids, self.sem_ids, self.to_destroy = [], [], []


def make_sysv(images: SysvImages) -> SysvMade:
    """Make every object of IMAGES with its id and key (module docstring)."""
    made = SysvMade()
    if not images.segments and not images.sets:
        return made
    try:
        with sysv.ids_lock(LOCK):
            shms, sems = read_sysvipc("shm"), read_sysvipc("sem")
            for s in images.segments:
                _clear_way("shm", s.desc, s.size, shms)
            for m, _ in images.sets:
                _clear_way("sem", m.desc, m.nsems, sems)
            for s in images.segments:
                sid = _create("shm", s.desc, lambda key, flags: sysv.shmget(key, s.size, flags))
                made.shm_ids.append(sid)
                sysv.shm_set_perm(sid, s.desc.uid, s.desc.gid, s.desc.mode)
                _fill(sid, s.size, images.pages.get(sid))
                if s.desc.mode & sysv.SHM_LOCKED:
                    sysv.shm_lock(sid)
                if s.desc.mode & sysv.SHM_DEST:
                    made.to_destroy.append(sid)
            for m, values in images.sets:
                sid = _create("sem", m.desc, lambda key, flags: sysv.semget(key, m.nsems, flags))
                made.sem_ids.append(sid)
                sysv.sem_setall(sid, values)
                sysv.sem_set_perm(sid, m.desc.uid, m.desc.gid, m.desc.mode)
    except BaseException as e:
        made.remove()
        if isinstance(e, OSError):
            raise CsError(f"cannot make the SysV objects again: {e}") from None
        raise
    return made


def _clear_way(kind: str, desc, size: int, have: dict[int, SysvObject]) -> None:
    """Remove the dumped tree's own leftover at desc.id; refuse anything else in the way."""
    what = "SysV shared memory" if kind == "shm" else "SysV semaphore set"
    old = have.get(desc.id)
    if old is not None:
        same = (old.key == desc.key and old.size == size and old.cuid == desc.cuid)
        if not same:
            raise TargetError(f"{what} {desc.id}: the id is taken by another object (key {old.key:#x}); "
                              "cannot restore it with its id")
        if kind == "shm" and old.nattch:
            raise TargetError(f"{what} {desc.id} (key {desc.key:#x}): still attached by "
                              f"{old.nattch} process(es); cannot restore it")
        if kind == "sem":
            living = [p for p in (sysv.sem_getpid(desc.id, n) for n in range(size)) if p and _alive(p)]
            if living:
                raise TargetError(f"{what} {desc.id} (key {desc.key:#x}): in use by process "
                                  f"{living[0]}; cannot restore it")
        _remove(kind)(desc.id)
        del have[desc.id]
    if desc.key != IPC_PRIVATE:
        other = next((o for o in have.values() if o.key == desc.key), None)
        if other is not None:
            raise TargetError(f"{what} {desc.id}: its key {desc.key:#x} is taken by object {other.id}; "
                              "cannot restore it")


def _create(kind: str, desc, get) -> int:
    """The object made with desc.id (under the ids lock). The kernel forgets *_next_id once an
    object took it, and -1 cannot be written back: when the call fails, a throwaway private
    object takes it instead, so that nobody else's object gets the id later by surprise."""
    set_ipc_next_id(kind, desc.id)
    try:
        got = get(desc.key, sysv.IPC_CREAT | sysv.IPC_EXCL | (desc.mode & 0o777))
    except BaseException:
        _quietly(_remove(kind), get(IPC_PRIVATE, sysv.IPC_CREAT | 0o600))
        raise
    if got != desc.id:
        _remove(kind)(got)
        raise TargetError(f"SysV {kind} {desc.id}: made as {got} (the id is taken); cannot restore it")
    return got


def _remove(kind: str):
    return sysv.shm_rmid if kind == "shm" else sysv.sem_rmid


def _fill(sid: int, size: int, pages: PageSource | None) -> None:
    """The segment's saved bytes, written through an attach of our own."""
    if pages is None:
        return
    addr = sysv.shmat(sid)
    try:
        limit = (size + PAGE_SIZE - 1) & ~(PAGE_SIZE - 1)
        for offset, nbytes, buf, at in pages.mapped():
            if offset + nbytes > limit:
                raise CsError(f"pagemap-shmem-{sid}.img: pages at {offset:#x} beyond the segment's {size} bytes")
            ctypes.memmove(addr + offset, vm.address(buf) + at, nbytes)
    finally:
        sysv.shmdt(addr)
        pages.close()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
        return True
    except ProcessLookupError:
        return False
    except PermissionError:
        return True


def _quietly(fn, *args) -> None:
    try:
        fn(*args)
    except OSError as e:
        if e.errno not in (errno.EINVAL, errno.EIDRM):
            raise
