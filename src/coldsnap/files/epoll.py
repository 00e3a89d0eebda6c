"""epoll: its registrations, re-added once every fd sits at its final number.

A registration belongs to an open file description and the fd number it was added as: it
outlives the closing of that number. One whose number is closed, or now names another file
(kcmp KCMP_EPOLL_TFD tells), is kept with `via`, an fd of the same table that holds the
watched file: restore puts that file on the number for the time of the EPOLL_CTL_ADD.
"""
from __future__ import annotations

import ctypes
import fcntl
import os
from dataclasses import dataclass, field

from coldsnap.errors import ImageError, Unsupported
from coldsnap.images.pb import eventpoll_pb2, fdinfo_pb2
from coldsnap.kernel.fdinfo import fd_inode
from coldsnap.kernel.fdstate import EpollTfd
from coldsnap.kernel.kcmp import same_epoll_target
from coldsnap.kernel.libc import check, libc

from .model import FdType, Fown
from .ops import FileOps, OpenCtx, Probe, fown_of, fown_pb, read_fown

EPOLL_CTL_ADD = 1


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


class _EpollEvent(ctypes.Structure):
    _pack_ = 1            # struct epoll_event is packed on x86-64
    _fields_ = [("events", ctypes.c_uint32), ("data", ctypes.c_uint64)]


def _holder(p: Probe, t: EpollTfd, toff: int) -> int:
    """The fd of p's table that holds the file registration t watches: t.tfd itself when it
    still does, else another; Unsupported when no fd holds it any more. `toff`: which of the
    registrations made as number t.tfd it is (fdinfo and kcmp walk them in the same order)."""
    candidates = [t.tfd] + sorted(fd for fd in p.open_fds if fd != t.tfd)
    for fd in candidates:
        if fd not in p.open_fds:
            continue
        try:
            if fd_inode(p.pid, fd) != t.ino:
                continue
            if same_epoll_target(p.pid, fd, p.fd, t.tfd, toff):
                return fd
        except OSError:
            continue
    raise Unsupported(f"fd {p.fd}: epoll watches, as fd {t.tfd}, a file no fd holds any more; "
                      "not supported")


class EpollOps(FileOps):
    def collect(self, p: Probe, fid: int) -> EpollFile:
        targets, seen = [], {}
        for t in p.info.tfds:
            toff = seen[t.tfd] = seen.get(t.tfd, -1) + 1
            via = _holder(p, t, toff)
            targets.append(EpollTarget(t.tfd, t.events, t.data, -1 if via == t.tfd else via,
                                       t.sdev, t.ino, t.pos))
        targets.sort(key=lambda t: (t.tfd, t.via))
        return EpollFile(fid, p.flags, targets, read_fown(p.dup))

    def to_image(self, f: EpollFile, new_id) -> list[fdinfo_pb2.file_entry]:
        e = fdinfo_pb2.file_entry(type=fdinfo_pb2.EVENTPOLL, id=f.id)
        tfds = []
        for t in f.targets:
            m = eventpoll_pb2.eventpoll_tfd_entry(id=f.id, tfd=t.tfd, events=t.events, data=t.data,
                                                  dev=t.dev, inode=t.inode, pos=t.pos)
            if t.via >= 0:
                m.cs_via = t.via
            tfds.append(m)
        e.epfd.CopyFrom(eventpoll_pb2.eventpoll_file_entry(id=f.id, flags=f.flags, fown=fown_pb(f.fown),
                                                           tfd=tfds))
        return [e]

    def from_image(self, e, regs) -> EpollFile:
        return EpollFile(e.id, e.epfd.flags,
                         [EpollTarget(t.tfd, t.events, t.data, t.cs_via if t.HasField("cs_via") else -1,
                                      t.dev, t.inode, t.pos) for t in e.epfd.tfd],
                         fown_of(e.epfd.fown))

    def open(self, f: EpollFile, ctx: OpenCtx) -> int:
        return ctx.high(check(libc.epoll_create1(os.O_CLOEXEC), "epoll_create1"))

    def post_open(self, f: EpollFile, fd: int, ctx: OpenCtx) -> None:
        super().post_open(f, fd, ctx)
        for t in f.targets:     # registrations name the final fd numbers
            if t.via < 0:
                _add(fd, t, ctx.name(f.id))
            else:
                _add_through(fd, t, ctx, ctx.name(f.id))


def _add(epfd: int, t: EpollTarget, name: str) -> None:
    ev = _EpollEvent(t.events, t.data)
    if libc.epoll_ctl(epfd, EPOLL_CTL_ADD, t.tfd, ctypes.byref(ev)) == -1:
        err = ctypes.get_errno()
        raise ImageError(f"{name}: cannot watch fd {t.tfd}: {os.strerror(err)}")


def _add_through(epfd: int, t: EpollTarget, ctx: OpenCtx, name: str) -> None:
    """Register the file of fd t.via as number t.tfd: put it there for the call, then give
    the number back what it holds in the final table (or close it)."""
    try:
        saved = fcntl.fcntl(t.tfd, fcntl.F_DUPFD_CLOEXEC, ctx.base)
        cloexec = bool(fcntl.fcntl(t.tfd, fcntl.F_GETFD) & fcntl.FD_CLOEXEC)
    except OSError:
        saved, cloexec = -1, True
    try:
        try:
            os.dup2(t.via, t.tfd)
        except OSError as e:
            raise ImageError(f"{name}: cannot watch fd {t.tfd} through fd {t.via}: {e.strerror}") from None
        _add(epfd, t, name)
    finally:
        if saved >= 0:
            os.dup2(saved, t.tfd, inheritable=not cloexec)
            os.close(saved)
        else:
            try:
                os.close(t.tfd)
            except OSError:
                pass            # the dup2 failed: nothing there
