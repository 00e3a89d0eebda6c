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
(an injected shmat at the dumped address).
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field

from ..kernel.page import PAGE_SIZE
from ..kernel.procfs import fd_path
from ..kernel.shm import anon_shmem
from ..memory.source import PageSource
from .sysv import SysvImages, SysvMade, make_sysv


@dataclass
class ShmemImage:
    """A shared anonymous object of the dump: its size and its saved pages (None: no page
    held data)."""
    shmid: int
    size: int
    pages: PageSource | None


@dataclass
class SharedMemory:
    """The shared memory objects coldsnap made for a restore: its fds on the shared
    anonymous ones, the SysV objects (restore/sysv.py). Leaving the `with` closes the fds;
    with an exception it also removes the SysV objects made; finish() after a success."""
    sysv: SysvImages = field(default_factory=SysvImages)
    fds: dict[int, int] = field(default_factory=dict)     # shmid -> fd
    made: SysvMade = field(default_factory=SysvMade)

    @classmethod
    def make(cls, objects: dict[int, ShmemImage], sysv: SysvImages) -> "SharedMemory":
        shm = cls(sysv)
        try:
            for o in objects.values():
                fd = shm.fds[o.shmid] = anon_shmem(_page_up(o.size))
                if o.pages is not None:
                    _fill(fd, o)
            shm.made = make_sysv(sysv)
        except BaseException:
            shm.close()
            raise
        return shm

    def path(self, shmid: int) -> str:
        """What a restored process opens to map object SHMID."""
        return fd_path(os.getpid(), self.fds[shmid])

    def finish(self) -> None:
        """Every process has mapped what it had."""
        self.made.finish()

    def close(self) -> None:
        for fd in self.fds.values():
            os.close(fd)
        self.fds.clear()

    def __enter__(self) -> "SharedMemory":
        return self

    def __exit__(self, exc_type, *exc: object) -> None:
        self.close()
        if exc_type is not None:
            self.made.remove()


def _page_up(n: int) -> int:
    return (n + PAGE_SIZE - 1) & ~(PAGE_SIZE - 1)


def _fill(fd: int, o: ShmemImage) -> None:
    try:
        for offset, nbytes, buf, at in o.pages.mapped():
            view = memoryview(buf[at:at + nbytes])
            done = 0
            while done < nbytes:
                done += os.pwrite(fd, view[done:], offset + done)
    finally:
        o.pages.close()
