"""The shared memory objects of a restore: each made ONCE, in coldsnap itself, filled with
its saved pages, then mapped by every restored process that had it.

    with SharedMemory.make(images) as shm:     # before the blank processes exist
        ... transplant(task, proc, shm)        # each maps shm.path(shmid) at its addresses

A shared anonymous object (MAP_SHARED|MAP_ANONYMOUS, inherited across fork: one shmem
inode seen by several processes, `pagemap-shmem-SHMID.img`) is created here at its size
(the largest window any process maps) and its pages are written into it with pwrite,
once, straight from the mapped pages files. The transplant of each process opens it
through /proc/COLDSNAP/fd/N (a new open file of the same object) and maps it with its
offset; so every process ends mapping the very same object, and a write by one is seen by
all, as before the dump. coldsnap's own fds are closed when the restore ends: the
processes' mappings hold the objects from then on. SysV segments and semaphore sets are
made again with their ids (restore/sysv.py); each process attaches its segments itself
(an injected shmat at the dumped address). A memfd (memfd.img) is made once here too, with
its name, size, bytes, mode and owner; the fds that held it reopen it in the blank
processes (files/memfd.py), its mappings are opened by the transplant like the shared
anonymous ones, and its seals are added last, once everything is mapped.
"""
from __future__ import annotations

import fcntl
import os
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from ..errors import ImageError
from ..files.model import FdType
from ..files.registry import FileRegistry
from ..kernel.fdio import write_all
from ..kernel.page import PAGE_SIZE
from ..kernel.procfs import fd_path
from ..kernel.shm import anon_shmem
from ..memory.source import PageSource

if TYPE_CHECKING:
    from ..images.pb import memfd_pb2
    from .sysv import SysvImages, SysvMade

F_SEAL_SEAL, F_SEAL_FUTURE_WRITE = 0x1, 0x10
LATE_SEALS = F_SEAL_SEAL | F_SEAL_FUTURE_WRITE   # added once every process mapped its memfds


@dataclass(eq=False, repr=False)
class ShmemImage:
    """A shared anonymous object of the dump: its size and its saved pages (None: no page
    held data)."""
    shmid: int
    size: int
    pages: PageSource | None


@dataclass(eq=False, repr=False)
class MemfdImage:
    """A memfd inode of the dump (memfd.img) and its saved pages (None: no page held data)."""
    entry: memfd_pb2.memfd_inode_entry
    pages: PageSource | None


@dataclass(eq=False, repr=False)
class SharedMemory:
    """The shared memory objects coldsnap made for a restore: its fds on the shared
    anonymous ones, the SysV objects (restore/sysv.py). Leaving the `with` closes the fds;
    with an exception it also removes the SysV objects made; finish() after a success."""
    sysv: SysvImages | None = None     # None: the images hold no SysV object (restore/sysv.py not imported)
    fds: dict[int, int] = field(default_factory=dict)     # shmid -> fd
    made: SysvMade | None = None
    memfds: dict[int, int] = field(default_factory=dict)  # memfd inode -> fd
    seals: dict[int, int] = field(default_factory=dict)   # memfd inode -> seals to add at the end
    memfd_files: dict[int, int] = field(default_factory=dict)   # MEMFD file id -> inode

    @classmethod
    def make(cls, objects: dict[int, ShmemImage], sysv: SysvImages | None,
             memfds: dict[int, MemfdImage] | None = None) -> "SharedMemory":
        shm = cls(sysv)
        try:
            for o in objects.values():
                fd = shm.fds[o.shmid] = anon_shmem(_page_up(o.size))
                if o.pages is not None:
                    _fill(fd, o.pages)
            for inode, m in (memfds or {}).items():
                shm.memfds[inode] = fd = _make_memfd(m)
                seals = m.entry.seals if m.entry.seals != F_SEAL_SEAL else 0
                if seals & ~LATE_SEALS:   # now: F_SEAL_WRITE makes shared read-only mappings
                    fcntl.fcntl(fd, fcntl.F_ADD_SEALS, seals & ~LATE_SEALS)   # unable to turn writable
                if seals & LATE_SEALS:
                    shm.seals[inode] = seals & LATE_SEALS
            if sysv is not None:
                from .sysv import make_sysv
                shm.made = make_sysv(sysv)
        except BaseException:
            shm.close()
            raise
        return shm

    def path(self, shmid: int) -> str:
        """What a restored process opens to map object SHMID."""
        return fd_path(os.getpid(), self.fds[shmid])

    def memfd_path(self, inode: int) -> str:
        """What a restored process opens to reach memfd INODE (a new open file of it)."""
        return fd_path(os.getpid(), self.memfds[inode])

    def give_sources(self, files: FileRegistry, memfd_files: dict[int, int]) -> None:
        """Tell each memfd file of the registry where its inode is, for the blank
        processes (files/memfd.py); memfd_files: MEMFD file id -> inode, for the mappings."""
        self.memfd_files = memfd_files
        for f in files.of_kind(FdType.MEMFD):
            if f.inode not in self.memfds:
                raise ImageError(f"files.img: memfd file {f.id}: inode {f.inode} is not in memfd.img")
            f.source = self.memfd_path(f.inode)

    def finish(self) -> None:
        """Every process has mapped what it had: the memfds get their last seals
        (F_SEAL_FUTURE_WRITE forbids new writable mappings, F_SEAL_SEAL any other seal),
        SysV segments SHM_DEST."""
        for inode, seals in self.seals.items():
            fcntl.fcntl(self.memfds[inode], fcntl.F_ADD_SEALS, seals)
        if self.made is not None:
            self.made.finish()

    def close(self) -> None:
        for fd in [*self.fds.values(), *self.memfds.values()]:
            os.close(fd)
        self.fds.clear()
        self.memfds.clear()

    def __enter__(self) -> "SharedMemory":
        return self

    def __exit__(self, exc_type, *exc: object) -> None:
        self.close()
        if exc_type is not None and self.made is not None:
            self.made.remove()


def _page_up(n: int) -> int:
    return (n + PAGE_SIZE - 1) & ~(PAGE_SIZE - 1)


def _fill(fd: int, pages: PageSource) -> None:
    """Write the saved pages into object FD at their offsets, straight from the pages files."""
    try:
        for offset, nbytes, buf, at in pages.mapped():
            write_all(fd, buf[at:at + nbytes], offset)
    finally:
        pages.close()


def _make_memfd(m: MemfdImage) -> int:
    """The memfd again: name, sealable unless it was not (seals == F_SEAL_SEAL), size,
    bytes, mode and owner (the caller adds its seals)."""
    e = m.entry
    if e.HasField("hugetlb_flag") and e.hugetlb_flag:
        raise ImageError(f"memfd.img: memfd {e.name}: hugetlb memfds are not supported")
    flags = os.MFD_CLOEXEC | (0 if e.seals == F_SEAL_SEAL else os.MFD_ALLOW_SEALING)
    fd = os.memfd_create(e.name, flags)
    try:
        if m.pages is not None:
            _fill(fd, m.pages)
        os.ftruncate(fd, e.size)        # whole pages were written: the size cuts the last one
        if e.HasField("mode"):
            os.fchmod(fd, e.mode & 0o7777)
        os.fchown(fd, e.uid, e.gid)
    except BaseException:
        os.close(fd)
        raise
    return fd
