"""What coldsnap knows of open files: the kinds every process may have (files opened by
path, pipes), fd tables, pipe contents, deleted files' contents.

Shared by dump (filled from /proc) and restore (filled from images); no I/O here. The other
kinds' dataclasses live beside their operations (eventfd.py, anon.py, epoll.py, inet.py,
unix.py, memfd.py, sockopts.py): a command imports them only for a process that has such
files (each dataclass costs about 1 ms to build at import, issue 13).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from enum import IntEnum
from typing import TYPE_CHECKING, NamedTuple

if TYPE_CHECKING:
    from .anon import InotifyFile, SignalfdFile, TimerfdFile
    from .epoll import EpollFile
    from .eventfd import EventfdFile
    from .inet import InetSocket
    from .unix import UnixSocket


class FdType(IntEnum):
    """fd_types of the image format (fdinfo_entry.type / file_entry.type)."""
    REG = 1
    PIPE = 2
    FIFO = 3
    INETSK = 4
    UNIXSK = 5
    EVENTFD = 6
    EVENTPOLL = 7
    INOTIFY = 8
    SIGNALFD = 9
    TTY = 11
    TIMERFD = 17
    MEMFD = 18


DEFAULT_PIPE_SIZE = 65536
EFD_SEMAPHORE = 1
MEMFD_PREFIX = "/memfd:"    # how /proc/PID/fd names a memfd


class Fown(NamedTuple):
    """F_SETOWN state of a file description (all zero: no owner)."""
    uid: int = 0
    euid: int = 0
    signum: int = 0
    pid_type: int = 0
    pid: int = 0


@dataclass(slots=True)
class RegFile:
    """A file opened by path: regular file, directory, memory device, or the terminal."""
    id: int
    path: str
    flags: int                    # open flags, without O_CLOEXEC
    pos: int = 0
    size: int | None = None       # regular files only
    mode: int = 0
    mnt_id: int = -1
    fown: Fown = field(default_factory=Fown)
    terminal: bool = False        # a tty: re-attached to the restorer's own, never reopened
    ghost: int = 0                # deleted while open or mapped: the id of its saved contents
    tty_info: bytes | None = None  # a terminal's tty_info_entry (serialized, id unset): a TTY entry

    @property
    def kind(self) -> FdType:
        return FdType.TTY if self.tty_info is not None else FdType.REG


@dataclass(slots=True)
class PipeFile:
    """One end of a pipe (or of a FIFO when fifo_path is set). Ends share pipe_id (inode)."""
    id: int
    pipe_id: int
    flags: int
    fifo_path: str = ""
    fown: Fown = field(default_factory=Fown)

    @property
    def kind(self) -> FdType:
        return FdType.FIFO if self.fifo_path else FdType.PIPE


if TYPE_CHECKING:
    FileObj = (RegFile | PipeFile | EventfdFile | EpollFile | InetSocket | UnixSocket | SignalfdFile
               | TimerfdFile | InotifyFile)


class FdEntry(NamedTuple):
    """One fd of a table: which file it points at, close-on-exec or not."""
    fd: int
    file_id: int
    cloexec: bool


@dataclass(slots=True)
class PipeData:
    """Bytes buffered in a pipe or FIFO at dump time (peeked, not consumed), its capacity,
    and the length of each of its buffers (empty: unknown, one run)."""
    pipe_id: int
    data: bytes
    size: int = DEFAULT_PIPE_SIZE
    bufs: list[int] = field(default_factory=list)


@dataclass(slots=True)
class Ghost:
    """The saved contents and attributes of a regular file deleted while open or mapped (a
    "ghost file"): `chunks` are (offset, bytes) of its data, holes left out."""
    id: int
    mode: int
    uid: int
    gid: int
    size: int
    chunks: list[tuple[int, bytes]] = field(default_factory=list)
    dev: int = 0
    ino: int = 0
    atime_ns: int = 0
    mtime_ns: int = 0


class FsState(NamedTuple):
    """cwd, root (REG file ids) and umask of one task: its fs-PID.img."""
    cwd_id: int
    root_id: int
    umask: int
