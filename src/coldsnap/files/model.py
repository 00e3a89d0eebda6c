"""What coldsnap knows of open files: one dataclass per kind, fd tables, pipe contents.

Shared by dump (filled from /proc) and restore (filled from images); no I/O here.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from enum import IntEnum
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from coldsnap.connections.tcp import TcpStream


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


@dataclass(slots=True)
class Fown:
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


@dataclass(slots=True)
class EventfdFile:
    """An eventfd: its counter and flags."""
    id: int
    counter: int
    flags: int                    # open flags (O_NONBLOCK) | EFD_SEMAPHORE
    fown: Fown = field(default_factory=Fown)

    kind = FdType.EVENTFD


@dataclass(slots=True)
class SignalfdFile:
    """A signalfd: the signals it reads (bit n-1 for signal n)."""
    id: int
    flags: int
    sigmask: int
    fown: Fown = field(default_factory=Fown)

    kind = FdType.SIGNALFD


@dataclass(slots=True)
class TimerfdFile:
    """A timerfd: its clock, expirations not read yet, time left and interval (sec, nsec)."""
    id: int
    flags: int
    clockid: int
    ticks: int
    settime_flags: int
    value: tuple[int, int]
    interval: tuple[int, int]
    fown: Fown = field(default_factory=Fown)

    kind = FdType.TIMERFD


@dataclass(slots=True)
class InotifyWatch:
    """One watch of an inotify instance, on the file at `path` when it was dumped."""
    wd: int
    mask: int
    ignored_mask: int
    ino: int
    dev: int                      # the kernel's dev_t (major << 20 | minor)
    path: str
    handle_type: int = 0
    handle: bytes = b""


@dataclass(slots=True)
class InotifyFile:
    """An inotify instance and its watches (events queued at the dump are not kept)."""
    id: int
    flags: int
    watches: list[InotifyWatch] = field(default_factory=list)
    fown: Fown = field(default_factory=Fown)

    kind = FdType.INOTIFY


@dataclass(slots=True)
class EpollTarget:
    """One registration of an epoll instance: the fd number it was made as; `via`, when that
    number no longer holds the watched file, an fd of the table that does (else -1); the
    watched file's device, inode and position (as CRIU records them)."""
    tfd: int
    events: int
    data: int
    via: int = -1
    dev: int = 0
    inode: int = 0
    pos: int = 0


@dataclass(slots=True)
class EpollFile:
    """An epoll instance and what it watches."""
    id: int
    flags: int
    targets: list[EpollTarget] = field(default_factory=list)
    fown: Fown = field(default_factory=Fown)

    kind = FdType.EVENTPOLL


@dataclass(slots=True)
class SockOpts:
    """The socket options a dump keeps."""
    reuseaddr: bool = False
    reuseport: bool = False
    rcvbuf: int = 0               # as getsockopt reports it (twice what was set)
    sndbuf: int = 0
    keepalive: bool = False
    broadcast: bool = False       # likewise (see inet.EXTRA_OPTS)
    nodelay: bool = False         # TCP only (tcp_opts_entry), like the four below
    cork: bool = False
    keepcnt: int = 0
    keepidle: int = 0
    keepintvl: int = 0
    v6only: bool = False          # AF_INET6 only
    snd_tmo: tuple[int, int] = (0, 0)   # SO_SNDTIMEO (sec, usec)
    rcv_tmo: tuple[int, int] = (0, 0)   # SO_RCVTIMEO
    passcred: bool = False        # SO_PASSCRED, unix sockets only


@dataclass(slots=True)
class InetSocket:
    """A TCP socket that listens, is not connected yet or is connected (an established stream:
    `stream` holds what TCP_REPAIR read, None when --tcp-close dropped it), or an unconnected
    UDP socket."""
    id: int
    family: int
    type: int                     # SOCK_STREAM / SOCK_DGRAM
    proto: int
    state: int                    # TCP_LISTEN, ESTABLISHED, CLOSE_WAIT, or 7 (CLOSE) for the rest
    addr: str
    port: int
    flags: int
    backlog: int = 0
    inode: int = 0
    opts: SockOpts = field(default_factory=SockOpts)
    fown: Fown = field(default_factory=Fown)
    peer_addr: str = ""           # a connected socket's peer
    peer_port: int = 0
    stream: TcpStream | None = None

    kind = FdType.INETSK


@dataclass(slots=True)
class UnixSocket:
    """An AF_UNIX socket: one end of a connected pair inside the tree, a listener, or an
    unconnected socket. Peers pair by inode; `queue` is what waits in its receive queue
    (peeked, not consumed), one item per datagram / seqpacket record."""
    id: int
    inode: int
    type: int                     # SOCK_STREAM / SOCK_DGRAM / SOCK_SEQPACKET
    state: int                    # 1 connected, 10 listening, 7 neither
    flags: int
    peer: int = 0                 # inode of the other end
    name: bytes = b""             # bound name; abstract names start with NUL
    backlog: int = 0
    shutdown: int = 0             # 1 receive, 2 send side shut down
    perms: tuple[int, int, int] | None = None   # mode, uid, gid of the bound socket file
    deleted: bool = False         # its socket file was unlinked since bind
    opts: SockOpts = field(default_factory=SockOpts)
    queue: list[bytes] = field(default_factory=list)
    fown: Fown = field(default_factory=Fown)
    connect_to: bytes = b""       # not in images: the peer's name, for a datagram socket
                                  # connected one-way to a named socket of the tree
    external: bool = False        # connect_to names a socket outside the tree (--ext-unix-sk)

    kind = FdType.UNIXSK


FileObj = (RegFile | PipeFile | EventfdFile | EpollFile | InetSocket | UnixSocket | SignalfdFile | TimerfdFile
           | InotifyFile)


@dataclass(slots=True)
class FdEntry:
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


@dataclass(slots=True)
class FsState:
    """cwd, root (REG file ids) and umask of one task: its fs-PID.img."""
    cwd_id: int
    root_id: int
    umask: int
