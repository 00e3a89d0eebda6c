"""The table of file kinds: which operations class handles what an fd points at.

A new kind is one FileOps subclass and one line in OPS (plus, for a new kind of object,
a line in `classify`); a kind of the format without operations is refused by name.
"""
from __future__ import annotations

import os
import socket
import stat

from coldsnap.errors import ImageError, Unsupported
from coldsnap.images.pb import fdinfo_pb2
from coldsnap.kernel import fdinfo as K

from .anon import InotifyOps, SignalfdOps, TimerfdOps
from .epoll import EpollOps
from .eventfd import EventfdOps
from .inet import InetOps
from .memfd import PREFIX as MEMFD_PREFIX, MemfdOps
from .model import FdType
from .ops import FileOps, Probe
from .pipes import FifoOps, PipeOps
from .regular import RegOps
from .tty import TtyOps
from .unix import UnixOps

OPS: dict[FdType, FileOps] = {
    FdType.REG: RegOps(),
    FdType.PIPE: PipeOps(),
    FdType.FIFO: FifoOps(),
    FdType.EVENTFD: EventfdOps(),
    FdType.EVENTPOLL: EpollOps(),
    FdType.INETSK: InetOps(),
    FdType.UNIXSK: UnixOps(),
    FdType.SIGNALFD: SignalfdOps(),
    FdType.TIMERFD: TimerfdOps(),
    FdType.INOTIFY: InotifyOps(),
    FdType.MEMFD: MemfdOps(),
    FdType.TTY: TtyOps(),
}
# kinds the format knows that may have no operations yet: how a refusal names them
_NAMES = {FdType.TTY: "tty"}
_ANON = {"eventfd": FdType.EVENTFD, "eventpoll": FdType.EVENTPOLL, "signalfd": FdType.SIGNALFD,
         "timerfd": FdType.TIMERFD, "inotify": FdType.INOTIFY}
_SOCKETS = {socket.AF_INET: FdType.INETSK, socket.AF_INET6: FdType.INETSK, socket.AF_UNIX: FdType.UNIXSK}
_OTHER_FAMILIES = {socket.AF_NETLINK: "netlink", socket.AF_PACKET: "packet"}


def classify(p: Probe) -> FdType:
    """The kind of the object behind p (fills p.st for paths); Unsupported naming the fd
    for what coldsnap does not handle."""
    link, fd = p.link, p.fd
    if link.kind is K.LinkKind.PATH:
        if link.path.startswith(MEMFD_PREFIX) and link.deleted:
            return FdType.MEMFD
        p.st = os.fstat(p.dup)
        if link.deleted and p.st.st_nlink == 0 and not stat.S_ISREG(p.st.st_mode):
            raise Unsupported(f"fd {fd}: {stat.filemode(p.st.st_mode)[0]}-type file {link.path} was deleted; "
                              "only deleted regular files are supported")
        return FdType.FIFO if stat.S_ISFIFO(p.st.st_mode) else FdType.REG
    if link.kind is K.LinkKind.PIPE:
        return FdType.PIPE
    if link.kind is K.LinkKind.SOCKET:
        s = socket.socket(fileno=p.dup)     # reads the family itself; the fd stays the caller's
        family = int(s.family)
        s.detach()
        if family not in _SOCKETS:
            raise Unsupported(f"fd {fd}: {_OTHER_FAMILIES.get(family, f'family {family}')} socket is not supported")
        return _SOCKETS[family]
    if link.kind is K.LinkKind.ANON and link.anon in _ANON:
        return _ANON[link.anon]
    what = link.anon if link.kind is K.LinkKind.ANON else link.raw
    raise Unsupported(f"fd {fd}: {what} is not supported")


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
