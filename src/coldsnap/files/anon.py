"""signalfd, timerfd and inotify: anonymous-inode files rebuilt from what fdinfo shows.

A timerfd comes back armed with the time it had left at the dump (the time spent in images
does not count, as with CRIU) and its interval; expirations not read yet are set again with
TFD_IOC_SET_TICKS. An inotify instance gets its watches again by path (found at the dump
from each watch's file handle) and with their wd numbers; events queued at the dump are
lost, as with CRIU.
"""
from __future__ import annotations

import errno
import os
import struct
from dataclasses import dataclass, field

from coldsnap.errors import ImageError, TargetError, Unsupported
from coldsnap.images.pb import fdinfo_pb2, fh_pb2, fsnotify_pb2, signalfd_pb2, timerfd_pb2
from coldsnap.kernel import anonfd as A
from coldsnap.kernel.fdinfo import read_fd_link
from coldsnap.kernel.fdstate import InotifyMark
from coldsnap.kernel.procfs import mount_points

from .model import FdType, Fown
from .ops import FileOps, OpenCtx, Probe, fown_of, fown_pb, read_fown

_NONBLOCK = os.O_NONBLOCK
_CLOEXEC = os.O_CLOEXEC
_IN_MASK_ADD = 0x20000000
_IN_MASK_CREATE = 0x10000000
_FH_WORDS = 16                    # fh_entry holds at least 16 64-bit words (128 bytes)


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


class SignalfdOps(FileOps):
    def collect(self, p: Probe, fid: int) -> SignalfdFile:
        return SignalfdFile(fid, p.flags, p.info.sigmask or 0, read_fown(p.dup))

    def to_image(self, f: SignalfdFile, new_id) -> list[fdinfo_pb2.file_entry]:
        e = fdinfo_pb2.file_entry(type=fdinfo_pb2.SIGNALFD, id=f.id)
        e.sgfd.CopyFrom(signalfd_pb2.signalfd_entry(id=f.id, flags=f.flags, fown=fown_pb(f.fown),
                                                    sigmask=f.sigmask))
        return [e]

    def from_image(self, e, regs) -> SignalfdFile:
        return SignalfdFile(e.id, e.sgfd.flags, e.sgfd.sigmask, fown_of(e.sgfd.fown))

    def open(self, f: SignalfdFile, ctx: OpenCtx) -> int:
        return ctx.high(A.signalfd(f.sigmask, _CLOEXEC | (f.flags & _NONBLOCK)))


class TimerfdOps(FileOps):
    def collect(self, p: Probe, fid: int) -> TimerfdFile:
        t = p.info.timerfd
        if t is None:
            raise TargetError(f"fd {p.fd}: timerfd without its fdinfo lines")
        return TimerfdFile(fid, p.flags, t.clockid, t.ticks, t.settime_flags, t.value, t.interval,
                           read_fown(p.dup))

    def to_image(self, f: TimerfdFile, new_id) -> list[fdinfo_pb2.file_entry]:
        e = fdinfo_pb2.file_entry(type=fdinfo_pb2.TIMERFD, id=f.id)
        e.tfd.CopyFrom(timerfd_pb2.timerfd_entry(
            id=f.id, flags=f.flags, fown=fown_pb(f.fown), clockid=f.clockid, ticks=f.ticks,
            settime_flags=f.settime_flags, vsec=f.value[0], vnsec=f.value[1], isec=f.interval[0],
            insec=f.interval[1]))
        return [e]

    def from_image(self, e, regs) -> TimerfdFile:
        t = e.tfd
        return TimerfdFile(e.id, t.flags, t.clockid, t.ticks, t.settime_flags, (t.vsec, t.vnsec),
                           (t.isec, t.insec), fown_of(t.fown))

    def open(self, f: TimerfdFile, ctx: OpenCtx) -> int:
        try:
            fd = ctx.high(A.timerfd_create(f.clockid, _CLOEXEC | (f.flags & _NONBLOCK)))
        except OSError as e:
            raise ImageError(f"{ctx.name(f.id)}: timerfd on clock {f.clockid}: {e.strerror}") from None
        if f.value != (0, 0):
            A.timerfd_settime(fd, 0, f.value, f.interval)    # relative: the time it had left
        if f.ticks:
            A.timerfd_set_ticks(fd, f.ticks)
        return fd


class InotifyOps(FileOps):
    def collect(self, p: Probe, fid: int) -> InotifyFile:
        watches = [_watch(p, m) for m in sorted(p.info.marks, key=lambda m: m.wd)]
        return InotifyFile(fid, p.flags, watches, read_fown(p.dup))

    def to_image(self, f: InotifyFile, new_id) -> list[fdinfo_pb2.file_entry]:
        e = fdinfo_pb2.file_entry(type=fdinfo_pb2.INOTIFY, id=f.id)
        m = fsnotify_pb2.inotify_file_entry(id=f.id, flags=f.flags, fown=fown_pb(f.fown))
        for w in f.watches:
            raw = w.handle + bytes(-len(w.handle) % 8 + 8 * max(0, _FH_WORDS - (len(w.handle) + 7) // 8))
            words = list(struct.unpack(f"<{len(raw) // 8}Q", raw))
            fh = fh_pb2.fh_entry(bytes=len(w.handle), type=w.handle_type, handle=words, path=w.path)
            m.wd.add(id=f.id, i_ino=w.ino, mask=w.mask, ignored_mask=w.ignored_mask, s_dev=w.dev,
                     wd=w.wd, f_handle=fh)
        e.ify.CopyFrom(m)
        return [e]

    def from_image(self, e, regs) -> InotifyFile:
        watches = []
        for w in e.ify.wd:
            if not w.f_handle.path:
                raise ImageError(f"files.img: inotify {e.id} watch {w.wd} has no path")
            raw = struct.pack(f"<{len(w.f_handle.handle)}Q", *w.f_handle.handle)[:w.f_handle.bytes]
            watches.append(InotifyWatch(w.wd, w.mask, w.ignored_mask, w.i_ino, w.s_dev, w.f_handle.path,
                                        w.f_handle.type, raw))
        return InotifyFile(e.id, e.ify.flags, watches, fown_of(e.ify.fown))

    def validate(self, f: InotifyFile, name: str, *, shell_job: bool) -> None:
        for w in f.watches:
            if not os.path.exists(w.path):
                raise ImageError(f"{name}: inotify watch {w.wd} on {w.path}, which is gone")

    def open(self, f: InotifyFile, ctx: OpenCtx) -> int:
        fd = ctx.high(A.inotify_init1(_CLOEXEC | _NONBLOCK))
        for w in sorted(f.watches, key=lambda w: w.wd):
            _add_watch_as(fd, w, ctx.name(f.id))
        _drain(fd)           # the IN_IGNORED events of the watches made only to skip numbers
        return fd


def _add_watch_as(fd: int, w: InotifyWatch, name: str) -> None:
    """Add the watch so that it gets its dumped wd: numbers are handed out one after the
    other (cyclically), so watches are made and removed until the next one is w.wd."""
    mask = w.mask & ~(_IN_MASK_ADD | _IN_MASK_CREATE)
    for _ in range(w.wd + 1):
        try:
            got = A.inotify_add_watch(fd, w.path, mask)
        except OSError as e:
            raise ImageError(f"{name}: inotify watch on {w.path}: {e.strerror}") from None
        if got == w.wd:
            return
        if got > w.wd:
            break
        A.inotify_rm_watch(fd, got)
    raise ImageError(f"{name}: inotify watch on {w.path} cannot get its number {w.wd} back")


def _drain(fd: int) -> None:
    while True:
        try:
            if not os.read(fd, 65536):
                return
        except BlockingIOError:
            return


def _watch(p: Probe, m: InotifyMark) -> InotifyWatch:
    """The watch of mark m, with the path of the inode it is on (its file handle opened on
    the filesystem the mark names)."""
    where = f"fd {p.fd}: inotify watch {m.wd}"
    path = _path_of(p.pid, m, where)
    return InotifyWatch(m.wd, m.mask, m.ignored_mask, m.ino, m.sdev, path, m.handle_type, m.handle)


def _path_of(pid: int, m: InotifyMark, where: str) -> str:
    major, minor = m.sdev >> 20, m.sdev & 0xFFFFF
    for mj, mn, point in mount_points(pid):
        if (mj, mn) != (major, minor):
            continue
        try:
            mfd = os.open(point, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)   # not O_PATH: EBADF
        except OSError:
            continue
        try:
            fd = A.open_by_handle_at(mfd, m.handle_type, m.handle, os.O_PATH | os.O_CLOEXEC)
        except OSError as e:
            if e.errno == errno.ESTALE:
                raise Unsupported(f"{where}: the watched file (inode {m.ino}) was deleted") from None
            continue
        finally:
            os.close(mfd)
        try:
            link = read_fd_link(os.getpid(), fd).raw
        finally:
            os.close(fd)
        if link.endswith(" (deleted)"):
            raise Unsupported(f"{where}: the watched file {link[:-10]} was deleted")
        return link
    raise Unsupported(f"{where}: cannot find the watched file (inode {m.ino}, device {major}:{minor})")
