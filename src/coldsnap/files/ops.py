"""The operations every file kind implements, and what they are handed.

One subclass of `FileOps` per kind (regular.py, pipes.py, eventfd.py, epoll.py, inet.py),
listed in table.py. Dump calls `collect` and `to_image`; restore calls `from_image`,
`validate` (before any process exists), `open` (in the restoring process, at a high
temporary fd) and `post_open` (once every fd sits at its final number).
"""
from __future__ import annotations

import errno
import fcntl
import os
import struct
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from coldsnap.images.pb import fdinfo_pb2, fown_pb2, regfile_pb2
from coldsnap.kernel import fdinfo as K

from .ghost import GhostTable
from .model import Fown, PipeData

if TYPE_CHECKING:
    from coldsnap.connections.hold import TcpHold
    from coldsnap.kernel.fdstate import FdInfo

    from .model import FileObj

F_SETSIG, F_GETSIG = 10, 11
F_SETOWN_EX, F_GETOWN_EX = 15, 16
# F_SETFL can only change these; the access mode and creation flags come from open().
SETFL_MASK = os.O_APPEND | os.O_NONBLOCK | os.O_DIRECT | os.O_NOATIME | 0o20000  # O_ASYNC


@dataclass(eq=False, repr=False)
class Probe:
    """One fd of a target being collected: what /proc says and our duplicate of it."""
    pid: int
    fd: int
    link: K.FdLink
    info: FdInfo
    dup: int                      # pidfd_getfd duplicate, closed by the caller
    open_fds: set[int]            # every fd number of the table (epoll checks its targets)
    shell_job: bool
    pipe_data: dict[int, PipeData]   # of the whole registry: each pipe is peeked once
    ghosts: GhostTable               # of the whole registry: deleted files, saved once
    st: os.stat_result | None = None  # fstat of dup, for files reached by path
    tcp: TcpHold | None = None    # where established TCP sockets go (None: refused)

    @property
    def flags(self) -> int:
        return self.info.flags & ~os.O_CLOEXEC


@dataclass(eq=False, repr=False)
class OpenCtx:
    """What `open`/`post_open` need inside the restoring process."""
    base: int                     # temporary fds go at or above this number
    tty: int | None               # our terminal, for files that were one (--shell-job)
    names: dict[int, str]         # file id -> "fd N", for messages
    pipe_data: dict[int, PipeData]
    dumped_pid: int               # an owner (F_SETOWN) that was the task is this process now
    shared: dict = field(default_factory=dict)   # per-kind state across files (a pipe's two ends)

    def high(self, fd: int) -> int:
        """Move a fresh fd above every target number (keeps O_CLOEXEC until placed)."""
        new = fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, self.base)
        os.close(fd)
        return new

    def name(self, fid: int) -> str:
        return self.names.get(fid, f"file {fid}")


class FileOps:
    """Operations of one file kind; the base gives what most kinds share."""

    def collect(self, p: Probe, fid: int) -> FileObj:
        raise NotImplementedError

    def to_image(self, f: FileObj, new_id) -> list[fdinfo_pb2.file_entry]:
        """files.img entries of f (some kinds need a second one, numbered by new_id())."""
        raise NotImplementedError

    def from_image(self, e: fdinfo_pb2.file_entry, regs: dict[int, regfile_pb2.reg_file_entry]) -> FileObj:
        raise NotImplementedError

    def validate(self, f: FileObj, name: str, *, shell_job: bool) -> None:
        """ImageError (one line starting with `name`) if f cannot be restored here."""

    def open_order(self, f: FileObj) -> int:
        """Files of a higher order are opened after those of a lower one (default 0)."""
        return 0

    def open(self, f: FileObj, ctx: OpenCtx) -> int:
        raise NotImplementedError

    def post_open(self, f: FileObj, fd: int, ctx: OpenCtx) -> None:
        """Status flags and owner, on fd (at its final number): they belong to the description."""
        flags = f.flags & SETFL_MASK
        if fcntl.fcntl(fd, fcntl.F_GETFL) & SETFL_MASK != flags:
            fcntl.fcntl(fd, fcntl.F_SETFL, flags)
        set_fown(fd, f.fown, ctx.dumped_pid)


# --- owner (F_SETOWN_EX / F_SETSIG) --------------------------------------------------------

def read_fown(dup: int) -> Fown:
    try:
        raw = fcntl.fcntl(dup, F_GETOWN_EX, bytes(8))
    except OSError as e:
        if e.errno == errno.EBADF:      # O_PATH descriptors have no owner
            return Fown()
        raise
    pid_type, pid = struct.unpack("ii", raw)
    return Fown(signum=fcntl.fcntl(dup, F_GETSIG), pid_type=pid_type if pid else 0, pid=pid)


def set_fown(fd: int, fown: Fown, dumped_pid: int) -> None:
    if fown.signum:
        fcntl.fcntl(fd, F_SETSIG, fown.signum)
    if fown.pid:
        pid = os.getpid() if fown.pid == dumped_pid else fown.pid
        try:
            fcntl.fcntl(fd, F_SETOWN_EX, struct.pack("ii", fown.pid_type, pid))
        except OSError as e:
            if e.errno != errno.ESRCH:   # an owner that no longer exists: leave unset
                raise


def fown_pb(f: Fown) -> fown_pb2.fown_entry:
    return fown_pb2.fown_entry(uid=f.uid, euid=f.euid, signum=f.signum, pid_type=f.pid_type, pid=f.pid)


def fown_of(m: fown_pb2.fown_entry) -> Fown:
    return Fown(m.uid, m.euid, m.signum, m.pid_type, m.pid)
