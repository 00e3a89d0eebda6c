"""The table of file kinds: which operations class handles what an fd points at.

A new kind is one FileOps subclass and one line in OPS (plus, for a new kind of object,
a line in `classify`); a kind of the format without operations is refused by name.
A kind's module is imported the first time OPS is asked for that kind: a command pays
only for the kinds its process has (most have regular files and pipes, no sockets).
"""
from __future__ import annotations

import os
import stat
from collections.abc import Iterable, Mapping
from importlib import import_module
from typing import TYPE_CHECKING

from coldsnap.errors import CsError, ImageError, Unsupported
from coldsnap.images.pb import fdinfo_pb2
from coldsnap.kernel import fdinfo as K

from .model import MEMFD_PREFIX, FdType

if TYPE_CHECKING:
    from .ops import FileOps, Probe

# kind -> (module of this package, operations class)
_OPS_CLASSES: dict[FdType, tuple[str, str]] = {
    FdType.REG: ("regular", "RegOps"),
    FdType.PIPE: ("pipes", "PipeOps"),
    FdType.FIFO: ("pipes", "FifoOps"),
    FdType.EVENTFD: ("eventfd", "EventfdOps"),
    FdType.EVENTPOLL: ("epoll", "EpollOps"),
    FdType.INETSK: ("inet", "InetOps"),
    FdType.UNIXSK: ("unix", "UnixOps"),
    FdType.SIGNALFD: ("anon", "SignalfdOps"),
    FdType.TIMERFD: ("anon", "TimerfdOps"),
    FdType.INOTIFY: ("anon", "InotifyOps"),
    FdType.MEMFD: ("memfd", "MemfdOps"),
    FdType.TTY: ("tty", "TtyOps"),
}


class _Table(Mapping):
    """OPS: kind -> its operations, each made (its module imported) on first use."""

    def __init__(self) -> None:
        self._made: dict[FdType, FileOps] = {}

    def __getitem__(self, kind: FdType) -> FileOps:
        ops = self._made.get(kind)
        if ops is None:
            module, name = _OPS_CLASSES[kind]
            ops = self._made[kind] = getattr(import_module(f".{module}", __package__), name)()
        return ops

    def __iter__(self):
        return iter(_OPS_CLASSES)

    def __len__(self) -> int:
        return len(_OPS_CLASSES)


OPS: Mapping[FdType, FileOps] = _Table()
# kinds the format knows that may have no operations yet: how a refusal names them
_NAMES = {FdType.TTY: "tty"}
SECRETMEM = "/secretmem"        # how a memfd_secret() file shows in /proc (on a kernel-internal mount)
_ANON = {"eventfd": FdType.EVENTFD, "eventpoll": FdType.EVENTPOLL, "signalfd": FdType.SIGNALFD,
         "timerfd": FdType.TIMERFD, "inotify": FdType.INOTIFY}


def prepare(pids: Iterable[int]) -> None:
    """Import, before a dump's freeze, the operations of every kind the fds of PIDS may
    be (from their /proc links alone: a socket may be inet or unix), so that the frozen
    window never waits for an import. A process gone meanwhile is skipped."""
    kinds = {FdType.REG}
    for pid in pids:
        try:
            links = K.raw_fd_links(pid)
        except (CsError, OSError):
            continue
        for raw in set(links.values()):
            link = K.parse_fd_link(-1, raw)
            if link.kind is K.LinkKind.PIPE:
                kinds.add(FdType.PIPE)
            elif link.kind is K.LinkKind.SOCKET:
                kinds |= {FdType.INETSK, FdType.UNIXSK}
            elif link.kind is K.LinkKind.ANON and link.anon in _ANON:
                kinds.add(_ANON[link.anon])
            elif link.kind is K.LinkKind.PATH and link.path.startswith(MEMFD_PREFIX):
                kinds.add(FdType.MEMFD)
    for kind in kinds:
        OPS[kind]


def classify(p: Probe) -> FdType:
    """The kind of the object behind p (fills p.st for paths); Unsupported naming the fd
    for what coldsnap does not handle."""
    link, fd = p.link, p.fd
    if link.kind is K.LinkKind.PATH:
        if link.path.startswith(MEMFD_PREFIX) and link.deleted:
            return FdType.MEMFD
        if link.path == SECRETMEM and link.deleted:
            # its pages cannot be read, its file cannot be opened again: found only at restore
            raise Unsupported(f"fd {fd}: memfd_secret() memory is not supported")
        p.st = os.fstat(p.dup)
        if link.deleted and p.st.st_nlink == 0 and not stat.S_ISREG(p.st.st_mode):
            raise Unsupported(f"fd {fd}: {stat.filemode(p.st.st_mode)[0]}-type file {link.path} was deleted; "
                              "only deleted regular files are supported")
        return FdType.FIFO if stat.S_ISFIFO(p.st.st_mode) else FdType.REG
    if link.kind is K.LinkKind.PIPE:
        return FdType.PIPE
    if link.kind is K.LinkKind.SOCKET:
        return _socket_kind(p.dup, fd)
    if link.kind is K.LinkKind.ANON and link.anon in _ANON:
        return _ANON[link.anon]
    what = link.anon if link.kind is K.LinkKind.ANON else link.raw
    raise Unsupported(f"fd {fd}: {what} is not supported")


def _socket_kind(dup: int, fd: int) -> FdType:
    import socket   # for processes with sockets only: the module costs ~9 M instructions to import
    s = socket.socket(fileno=dup)     # reads the family itself; the fd stays the caller's
    family = int(s.family)
    s.detach()
    if family in (socket.AF_INET, socket.AF_INET6):
        return FdType.INETSK
    if family == socket.AF_UNIX:
        return FdType.UNIXSK
    other = {socket.AF_NETLINK: "netlink", socket.AF_PACKET: "packet"}.get(family, f"family {family}")
    raise Unsupported(f"fd {fd}: {other} socket is not supported")


def ops_to_collect(kind: FdType, fd: int) -> FileOps:
    ops = OPS.get(kind)
    if ops is None:
        raise Unsupported(f"fd {fd}: {_NAMES.get(kind, kind.name)} is not supported yet")
    return ops


def ops_to_restore(e: fdinfo_pb2.file_entry) -> FileOps:
    ops = OPS.get(FdType(e.type)) if e.type in FdType._value2member_map_ else None
    if ops is None:
        raise ImageError(f"files.img: file {e.id} has type {fdinfo_pb2.fd_types.Name(e.type)}, "
                         "which coldsnap cannot restore")
    return ops
