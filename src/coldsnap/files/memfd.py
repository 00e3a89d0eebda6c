"""memfd: an open file description of a memfd (its flags and offset) and the inode behind it.

The inode (name, size, mode, owner, seals, bytes) is saved once for the whole dump beside
the shared memory (dump/memfd.py, memfd.img) and made once at restore, in coldsnap
(restore/shmem.py), which sets `source` on every MemfdFile of the registry before the
blank processes exist: a process opens that path (/proc/COLDSNAP/fd/N) to get a new open
file description of the very same inode, then moves to the saved offset.
"""
from __future__ import annotations

import fcntl
import os
from dataclasses import dataclass, field

from coldsnap.errors import ImageError
from coldsnap.images.pb import fdinfo_pb2, memfd_pb2

from .model import MEMFD_PREFIX, FdType, Fown
from .ops import FileOps, OpenCtx, Probe, fown_of, fown_pb, read_fown

F_GET_SEALS = 1034


@dataclass(slots=True)
class MemfdFile:
    """One open file description of a memfd; inode: the memfd's inode number."""
    id: int
    inode: int
    flags: int
    pos: int = 0
    fown: Fown = field(default_factory=Fown)
    name: str = ""              # without the "memfd:" prefix (dump side)
    source: str | None = None   # restore: what to open to reach the inode (restore/shmem.py)

    kind = FdType.MEMFD


def memfd_name(path: str) -> str:
    """The memfd's name from a /proc link or maps path ("/memfd:NAME (deleted)")."""
    return path.removesuffix(" (deleted)").removeprefix(MEMFD_PREFIX)


def seals_of(fd: int) -> int:
    return fcntl.fcntl(fd, F_GET_SEALS)


class MemfdOps(FileOps):
    def collect(self, p: Probe, fid: int) -> MemfdFile:
        st = os.fstat(p.dup)
        return MemfdFile(fid, st.st_ino, p.flags, p.info.pos, read_fown(p.dup), memfd_name(p.link.path))

    def to_image(self, f: MemfdFile, new_id) -> list[fdinfo_pb2.file_entry]:
        e = fdinfo_pb2.file_entry(type=fdinfo_pb2.MEMFD, id=f.id)
        e.memfd.CopyFrom(memfd_pb2.memfd_file_entry(id=f.id, flags=f.flags, pos=f.pos, fown=fown_pb(f.fown),
                                                    inode_id=f.inode))
        return [e]

    def from_image(self, e, regs) -> MemfdFile:
        m = e.memfd
        return MemfdFile(e.id, m.inode_id, m.flags, m.pos, fown_of(m.fown))

    def validate(self, f: MemfdFile, name: str, *, shell_job: bool) -> None:
        if f.flags & os.O_PATH:
            raise ImageError(f"{name}: an O_PATH memfd is not supported")

    def open(self, f: MemfdFile, ctx: OpenCtx) -> int:
        if f.source is None:
            raise ImageError(f"{ctx.name(f.id)}: memfd inode {f.inode} is not in memfd.img")
        fd = ctx.high(os.open(f.source, (f.flags & (os.O_ACCMODE | os.O_APPEND)) | os.O_CLOEXEC))
        os.lseek(fd, f.pos, os.SEEK_SET)
        return fd
