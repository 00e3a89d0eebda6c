"""epoll: its registrations, re-added once every fd sits at its final number."""
from __future__ import annotations

import ctypes
import os

from coldsnap.errors import ImageError, Unsupported
from coldsnap.images.pb import eventpoll_pb2, fdinfo_pb2
from coldsnap.kernel.fdinfo import fd_inode
from coldsnap.kernel.libc import check, libc

from .model import EpollFile, EpollTarget
from .ops import FileOps, OpenCtx, Probe, fown_of, fown_pb, read_fown

EPOLL_CTL_ADD = 1


class _EpollEvent(ctypes.Structure):
    _pack_ = 1            # struct epoll_event is packed on x86-64
    _fields_ = [("events", ctypes.c_uint32), ("data", ctypes.c_uint64)]


class EpollOps(FileOps):
    def collect(self, p: Probe, fid: int) -> EpollFile:
        # Each registration must still be reachable as the fd number it was added with.
        for t in p.info.tfds:
            ok = t.tfd in p.open_fds
            if ok:
                ok = fd_inode(p.pid, t.tfd) == t.ino
            if not ok:
                raise Unsupported(f"fd {p.fd}: epoll watches a file no longer open as fd {t.tfd}; "
                                  "not supported")
        targets = [EpollTarget(t.tfd, t.events, t.data) for t in sorted(p.info.tfds, key=lambda t: t.tfd)]
        return EpollFile(fid, p.flags, targets, read_fown(p.dup))

    def to_image(self, f: EpollFile, new_id) -> list[fdinfo_pb2.file_entry]:
        e = fdinfo_pb2.file_entry(type=fdinfo_pb2.EVENTPOLL, id=f.id)
        e.epfd.CopyFrom(eventpoll_pb2.eventpoll_file_entry(
            id=f.id, flags=f.flags, fown=fown_pb(f.fown),
            tfd=[eventpoll_pb2.eventpoll_tfd_entry(id=f.id, tfd=t.tfd, events=t.events, data=t.data)
                 for t in f.targets]))
        return [e]

    def from_image(self, e, regs) -> EpollFile:
        return EpollFile(e.id, e.epfd.flags, [EpollTarget(t.tfd, t.events, t.data) for t in e.epfd.tfd],
                         fown_of(e.epfd.fown))

    def open(self, f: EpollFile, ctx: OpenCtx) -> int:
        return ctx.high(check(libc.epoll_create1(os.O_CLOEXEC), "epoll_create1"))

    def post_open(self, f: EpollFile, fd: int, ctx: OpenCtx) -> None:
        super().post_open(f, fd, ctx)
        for t in f.targets:     # registrations name the final fd numbers
            ev = _EpollEvent(t.events, t.data)
            if libc.epoll_ctl(fd, EPOLL_CTL_ADD, t.tfd, ctypes.byref(ev)) == -1:
                err = ctypes.get_errno()
                raise ImageError(f"{ctx.name(f.id)}: cannot watch fd {t.tfd}: {os.strerror(err)}")
