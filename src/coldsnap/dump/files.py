"""Dump of a task's fd table, cwd/root/umask and its open file objects.

The target need not be stopped by us here: every fd is reached through /proc and a
duplicate taken with pidfd_getfd, then inspected with ordinary calls.
"""
from __future__ import annotations

import ctypes
import errno
import fcntl
import os
import re
import socket
import stat
import struct
from dataclasses import dataclass, field
from enum import IntEnum

from pathlib import Path

from coldsnap.errors import ImageError, TargetError
from coldsnap.images import framing
from coldsnap.images.pb import (eventfd_pb2, eventpoll_pb2, fdinfo_pb2, fown_pb2, fs_pb2, pipe_pb2,
                                regfile_pb2, sk_inet_pb2, sk_opts_pb2)
from coldsnap.kernel import fdinfo as K
from coldsnap.kernel.libc import libc


class FdType(IntEnum):
    """fd_types of the image format (fdinfo_entry.type / file_entry.type)."""
    REG = 1
    PIPE = 2
    FIFO = 3
    INETSK = 4
    UNIXSK = 5
    EVENTFD = 6
    EVENTPOLL = 7
    TTY = 11


F_SETSIG, F_GETSIG = 10, 11
F_SETOWN_EX, F_GETOWN_EX = 15, 16
F_SETPIPE_SZ, F_GETPIPE_SZ = 1031, 1032
EFD_SEMAPHORE = 1
SPLICE_F_NONBLOCK = 2
DEFAULT_PIPE_SIZE = 65536
_MEM_DEVICES = {(1, 3), (1, 5), (1, 7), (1, 8), (1, 9)}   # null zero full random urandom


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

    kind = FdType.REG


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
    id: int
    counter: int
    flags: int                    # open flags (O_NONBLOCK) | EFD_SEMAPHORE
    fown: Fown = field(default_factory=Fown)

    kind = FdType.EVENTFD


@dataclass(slots=True)
class EpollTarget:
    tfd: int
    events: int
    data: int


@dataclass(slots=True)
class EpollFile:
    id: int
    flags: int
    targets: list[EpollTarget] = field(default_factory=list)
    fown: Fown = field(default_factory=Fown)

    kind = FdType.EVENTPOLL


@dataclass(slots=True)
class SockOpts:
    reuseaddr: bool = False
    reuseport: bool = False
    rcvbuf: int = 0               # as getsockopt reports it (twice what was set)
    sndbuf: int = 0
    keepalive: bool = False
    broadcast: bool = False       # likewise (see _EXTRA_OPTS)
    nodelay: bool = False         # TCP only; kept in images only if the schema has the field
    v6only: bool = False          # AF_INET6 only
    snd_tmo: tuple[int, int] = (0, 0)   # SO_SNDTIMEO (sec, usec)
    rcv_tmo: tuple[int, int] = (0, 0)   # SO_RCVTIMEO


@dataclass(slots=True)
class InetSocket:
    """A TCP socket that listens or is not connected yet, or an unconnected UDP socket."""
    id: int
    family: int
    type: int                     # SOCK_STREAM / SOCK_DGRAM
    proto: int
    state: int                    # K.TCP_LISTEN, or 7 (CLOSE) for anything not listening
    addr: str
    port: int
    flags: int
    backlog: int = 0
    inode: int = 0
    opts: SockOpts = field(default_factory=SockOpts)
    fown: Fown = field(default_factory=Fown)

    kind = FdType.INETSK


FileObj = RegFile | PipeFile | EventfdFile | EpollFile | InetSocket


@dataclass(slots=True)
class FdEntry:
    fd: int
    file_id: int
    cloexec: bool


@dataclass(slots=True)
class PipeData:
    """Bytes buffered in a pipe or FIFO at dump time (peeked, not consumed), and its capacity."""
    pipe_id: int
    data: bytes
    size: int = DEFAULT_PIPE_SIZE


@dataclass(slots=True)
class FilesSnapshot:
    pid: int
    fds: list[FdEntry]
    files: dict[int, FileObj]
    cwd_id: int
    root_id: int
    umask: int
    pipe_data: dict[int, PipeData] = field(default_factory=dict)

    @property
    def cwd(self) -> str:
        return self.files[self.cwd_id].path      # type: ignore[union-attr]

    @property
    def root(self) -> str:
        return self.files[self.root_id].path     # type: ignore[union-attr]

    @property
    def terminal_fds(self) -> list[int]:
        return [e.fd for e in self.fds if getattr(self.files[e.file_id], "terminal", False)]

    @property
    def lone_pipe_fds(self) -> list[int]:
        """Fds of pipes whose other end is not in this table: restored without their peer."""
        dirs: dict[int, set[bool]] = {}
        for e in self.fds:
            f = self.files[e.file_id]
            if isinstance(f, PipeFile) and not f.fifo_path:
                dirs.setdefault(f.pipe_id, set()).add(f.flags & os.O_ACCMODE == os.O_RDONLY)
        return [e.fd for e in self.fds if isinstance(f := self.files[e.file_id], PipeFile)
                and not f.fifo_path and len(dirs[f.pipe_id]) == 1]

    def file_of(self, fd: int) -> FileObj:
        return next(self.files[e.file_id] for e in self.fds if e.fd == fd)


# --- collection -------------------------------------------------------------------------

def is_terminal_dev(rdev: int) -> bool:
    """/dev/ttyN (major 4), /dev/pts/N (136-143), /dev/tty and /dev/console (5:0, 5:1)."""
    major, minor = os.major(rdev), os.minor(rdev)
    return major == 4 or 136 <= major <= 143 or (major == 5 and minor in (0, 1))


def _fown(dup: int) -> Fown:
    try:
        raw = fcntl.fcntl(dup, F_GETOWN_EX, bytes(8))
    except OSError as e:
        if e.errno == errno.EBADF:      # O_PATH descriptors have no owner
            return Fown()
        raise
    pid_type, pid = struct.unpack("ii", raw)
    return Fown(signum=fcntl.fcntl(dup, F_GETSIG), pid_type=pid_type if pid else 0, pid=pid)


def _inspect_path(fd: int, link: K.FdLink, info: K.FdInfo, dup: int, fid: int,
                  flags: int) -> FileObj:
    if link.path.startswith("/memfd:"):
        raise TargetError(f"fd {fd}: memfd {link.path} is not supported yet")
    st = os.fstat(dup)
    if link.deleted and st.st_nlink == 0:
        raise TargetError(f"fd {fd}: file {link.path} was deleted; deleted files are not supported yet")
    fown = _fown(dup)
    if stat.S_ISREG(st.st_mode) or stat.S_ISDIR(st.st_mode):
        return RegFile(fid, link.path, flags, info.pos, st.st_size if stat.S_ISREG(st.st_mode) else None,
                       st.st_mode, info.mnt_id, fown)
    if stat.S_ISFIFO(st.st_mode):
        if flags & os.O_DIRECT:
            raise TargetError(f"fd {fd}: packet-mode (O_DIRECT) FIFO is not supported")
        return PipeFile(fid, st.st_ino, flags, link.path, fown)
    if stat.S_ISCHR(st.st_mode):
        if is_terminal_dev(st.st_rdev):
            return RegFile(fid, link.path, flags, 0, None, st.st_mode, info.mnt_id, fown, terminal=True)
        if (os.major(st.st_rdev), os.minor(st.st_rdev)) in _MEM_DEVICES:
            return RegFile(fid, link.path, flags, info.pos, None, st.st_mode, info.mnt_id, fown)
        raise TargetError(f"fd {fd}: character device {link.path} "
                          f"({os.major(st.st_rdev)}:{os.minor(st.st_rdev)}) is not supported")
    raise TargetError(f"fd {fd}: {stat.filemode(st.st_mode)[0]}-type file {link.path} is not supported")


def _inspect_socket(pid: int, fd: int, link: K.FdLink, dup: int, fid: int, flags: int) -> InetSocket:
    s = socket.socket(fileno=os.dup(dup))
    try:
        family = s.getsockopt(socket.SOL_SOCKET, socket.SO_DOMAIN)
        stype = s.getsockopt(socket.SOL_SOCKET, socket.SO_TYPE)
        proto = s.getsockopt(socket.SOL_SOCKET, socket.SO_PROTOCOL)
        if family == socket.AF_UNIX:
            raise TargetError(f"fd {fd}: unix socket is not supported yet")
        if family not in (socket.AF_INET, socket.AF_INET6):
            name = {socket.AF_NETLINK: "netlink", socket.AF_PACKET: "packet"}.get(family, f"family {family}")
            raise TargetError(f"fd {fd}: {name} socket is not supported")
        if stype not in (socket.SOCK_STREAM, socket.SOCK_DGRAM):
            raise TargetError(f"fd {fd}: raw/other inet socket (type {stype}) is not supported")
        tcp = stype == socket.SOCK_STREAM
        kind = "TCP" if tcp else "UDP"
        listening = tcp and s.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN) == 1
        if not listening:
            try:
                s.getpeername()
                raise TargetError(f"fd {fd}: connected {kind} socket is not supported yet")
            except OSError as e:
                if e.errno != errno.ENOTCONN:
                    raise
            seen = K.find_net_socket(pid, link.inode)
            if tcp and seen is not None and seen.state not in (K.TCP_LISTEN, 7):
                state = K.TCP_STATES.get(seen.state, str(seen.state))
                raise TargetError(f"fd {fd}: TCP socket in state {state} is not supported yet")
        addr, port = s.getsockname()[:2]
        opts = SockOpts(
            reuseaddr=bool(s.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR)),
            reuseport=bool(s.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT)),
            rcvbuf=s.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF),
            sndbuf=s.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF),
            keepalive=bool(s.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE)),
            broadcast=bool(s.getsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST)),
            nodelay=tcp and bool(s.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)),
            v6only=family == socket.AF_INET6 and bool(s.getsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY)),
            snd_tmo=struct.unpack("qq", s.getsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, 16)),
            rcv_tmo=struct.unpack("qq", s.getsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, 16)))
        backlog = 0
        if listening:
            # Only sock_diag knows the backlog; a task in another net namespace is not
            # visible to ours, so fall back to the kernel's usual default.
            backlog = K.listen_backlog(family, link.inode) or 128
        return InetSocket(fid, family, stype, proto, K.TCP_LISTEN if listening else 7, addr, port,
                          flags, backlog, link.inode, opts, _fown(dup))
    finally:
        s.close()


def _inspect(pid: int, fd: int, link: K.FdLink, info: K.FdInfo, dup: int, fid: int) -> FileObj:
    flags = info.flags & ~os.O_CLOEXEC
    if link.kind is K.LinkKind.PATH:
        return _inspect_path(fd, link, info, dup, fid, flags)
    if link.kind is K.LinkKind.PIPE:
        if flags & os.O_DIRECT:
            raise TargetError(f"fd {fd}: packet-mode (O_DIRECT) pipe is not supported")
        return PipeFile(fid, link.inode, flags, "", _fown(dup))
    if link.kind is K.LinkKind.SOCKET:
        return _inspect_socket(pid, fd, link, dup, fid, flags)
    if link.kind is K.LinkKind.ANON and link.anon == "eventfd":
        sem = EFD_SEMAPHORE if info.eventfd_semaphore else 0
        return EventfdFile(fid, info.eventfd_count or 0, flags | sem, _fown(dup))
    if link.kind is K.LinkKind.ANON and link.anon == "eventpoll":
        targets = [EpollTarget(t.tfd, t.events, t.data) for t in sorted(info.tfds, key=lambda t: t.tfd)]
        return EpollFile(fid, flags, targets, _fown(dup))
    what = link.anon if link.kind is K.LinkKind.ANON else link.raw
    raise TargetError(f"fd {fd}: {what} is not supported")


def _check_epoll(pid: int, fd: int, info: K.FdInfo, open_fds: set[int]) -> None:
    """Each registration must still be reachable as the fd number it was added with."""
    for t in info.tfds:
        ok = t.tfd in open_fds
        if ok:
            try:
                ok = os.stat(f"/proc/{pid}/fd/{t.tfd}").st_ino == t.ino
            except FileNotFoundError:
                ok = False
        if not ok:
            raise TargetError(f"fd {fd}: epoll watches a file no longer open as fd {t.tfd}; "
                              "not supported")


_tee = libc.tee
_tee.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_size_t, ctypes.c_uint]
_tee.restype = ctypes.c_ssize_t


def peek_pipe(rd: int) -> PipeData:
    """Copy what is buffered in the pipe behind read end `rd` without consuming it (tee)."""
    size = fcntl.fcntl(rd, F_GETPIPE_SZ)
    r, w = os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK)
    try:
        fcntl.fcntl(w, F_SETPIPE_SZ, size)     # same number of slots: tee copies all buffers
        n = _tee(rd, w, size, SPLICE_F_NONBLOCK)
        if n < 0:
            err = ctypes.get_errno()
            if err != errno.EAGAIN:
                raise OSError(err, f"tee: {os.strerror(err)}")
            n = 0
        data = bytearray()
        while len(data) < n:
            data += os.read(r, n - len(data))
        return PipeData(0, bytes(data), size)
    finally:
        os.close(r)
        os.close(w)


def _collect_pipe_data(pid: int, pidfd: int, ends: dict[int, list[tuple[int, PipeFile]]]) -> dict[int, PipeData]:
    out = {}
    for pipe_id, fds in ends.items():
        readers = [fd for fd, p in fds if p.flags & os.O_ACCMODE != os.O_WRONLY]
        if readers:
            rd = K.pidfd_getfd(pidfd, readers[0])
        else:
            # Only the write end is ours: open the same pipe inode for reading through /proc.
            rd = os.open(f"/proc/{pid}/fd/{fds[0][0]}", os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        try:
            pd = peek_pipe(rd)
        finally:
            os.close(rd)
        pd.pipe_id = pipe_id
        out[pipe_id] = pd
    return out


def collect_files(pid: int, *, shell_job: bool = False) -> FilesSnapshot:
    """Capture the fd table of `pid`; TargetError (one line naming the fd) if unsupported."""
    try:
        pidfd = K.pidfd_open(pid)
    except OSError as e:
        raise TargetError(f"cannot open files of {pid}: {e.strerror}") from e
    try:
        fd_numbers = K.list_fds(pid)
        open_fds = set(fd_numbers)
        files: dict[int, FileObj] = {}
        entries: list[FdEntry] = []
        seen: dict[tuple[str, int], list[tuple[int, int]]] = {}   # (link, ino) -> [(fd, id)]
        pipe_ends: dict[int, list[tuple[int, PipeFile]]] = {}
        for fd in fd_numbers:
            try:
                link = K.read_fd_link(pid, fd)
                info = K.read_fdinfo(pid, fd)
            except FileNotFoundError:
                continue    # closed since the listing: only a running target does that
            cloexec = bool(info.flags & os.O_CLOEXEC)
            # Same open file description (dup, fork) -> same file id; kcmp is exact.
            group = seen.setdefault((link.raw, info.ino), [])
            same = next((fid for other, fid in group if K.same_file(pid, fd, other)), None)
            if same is not None:
                entries.append(FdEntry(fd, same, cloexec))
                continue
            fid = len(files) + 1
            try:
                dup = K.pidfd_getfd(pidfd, fd)
            except OSError as e:
                if e.errno == errno.EBADF:
                    continue    # closed since the listing, as above
                raise TargetError(f"fd {fd}: cannot duplicate it: {e.strerror}") from e
            try:
                obj = _inspect(pid, fd, link, info, dup, fid)
            finally:
                os.close(dup)
            if isinstance(obj, EpollFile):
                _check_epoll(pid, fd, info, open_fds)
            if isinstance(obj, PipeFile):
                pipe_ends.setdefault(obj.pipe_id, []).append((fd, obj))
            if isinstance(obj, RegFile) and obj.terminal and not shell_job:
                raise TargetError(f"fd {fd}: terminal {obj.path} is attached (use --shell-job)")
            files[fid] = obj
            group.append((fd, fid))
            entries.append(FdEntry(fd, fid, cloexec))
        pipe_data = _collect_pipe_data(pid, pidfd, pipe_ends)
    finally:
        os.close(pidfd)
    ids = []
    for name in ("cwd", "root"):
        path = os.readlink(f"/proc/{pid}/{name}")
        if path.endswith(" (deleted)"):
            raise TargetError(f"{name}: directory {path[:-10]} was deleted; not supported")
        st = os.stat(f"/proc/{pid}/{name}")
        fid = len(files) + 1
        files[fid] = RegFile(fid, path, os.O_RDONLY | os.O_DIRECTORY | os.O_LARGEFILE, 0, None, st.st_mode)
        ids.append(fid)
    return FilesSnapshot(pid, entries, files, ids[0], ids[1], K.read_umask(pid), pipe_data)


def add_mapped_files(snap: FilesSnapshot, mapped: dict[str, tuple[int, os.stat_result]]) -> dict[str, int]:
    """Add a REG file (pos 0) for each file behind a memory mapping or the exe.

    `mapped`: path -> (open flags, its stat). Ids come after every id already in the
    snapshot (fds, cwd, root), so nothing collides; returns path -> id for mm-PID.img.
    """
    ids: dict[str, int] = {}
    next_id = max(snap.files, default=0) + 1
    for path, (flags, st) in mapped.items():
        size = st.st_size if stat.S_ISREG(st.st_mode) else None
        snap.files[next_id] = RegFile(next_id, path, flags, 0, size, st.st_mode)
        ids[path] = next_id
        next_id += 1
    return ids


# --- images: files.img, fdinfo-<files_id>.img, fs-<pid>.img, pipes-/fifo-data.img ------

FD_CLOEXEC = 1
# SockOpts fields without a CRIU field in sk_opts_entry: written as coldsnap extension
# fields when the schema has them (field name in the schema -> SockOpts attribute).
_EXTRA_OPTS = {"tcp_nodelay": "nodelay", "so_broadcast": "broadcast"}
_OPT_FIELDS = sk_opts_pb2.sk_opts_entry.DESCRIPTOR.fields_by_name
STORED_EXTRA_OPTS = {attr for name, attr in _EXTRA_OPTS.items() if name in _OPT_FIELDS}
# the names of the devices is_terminal_dev() counts (major 4 covers ttyN and ttySN)
_TTY_PATH = re.compile(r"/dev/(pts/\d+|tty(S?\d+)?|console)")


def _fown_pb(f: Fown) -> fown_pb2.fown_entry:
    return fown_pb2.fown_entry(uid=f.uid, euid=f.euid, signum=f.signum, pid_type=f.pid_type, pid=f.pid)


def _fown_of(m: fown_pb2.fown_entry) -> Fown:
    return Fown(m.uid, m.euid, m.signum, m.pid_type, m.pid)


def _addr_words(family: int, addr: str) -> list[int]:
    # Raw in_addr/in6_addr memory read as host-order u32 words, as the format stores them.
    raw = socket.inet_pton(family, addr)
    return list(struct.unpack(f"={len(raw) // 4}I", raw))


def _addr_str(family: int, words: list[int]) -> str:
    return socket.inet_ntop(family, struct.pack(f"={len(words)}I", *words))


def file_entries(snap: FilesSnapshot) -> list[fdinfo_pb2.file_entry]:
    """files.img entries: every object, cwd and root; a FIFO also gets a REG entry for its path."""
    out = []
    next_id = max(snap.files) + 1
    for f in snap.files.values():
        e = fdinfo_pb2.file_entry(type=int(f.kind), id=f.id)
        if isinstance(f, RegFile):
            e.reg.CopyFrom(_reg_pb(f.id, f.path, f.flags, f.pos, f.fown, f.mnt_id, f.size, f.mode))
        elif isinstance(f, PipeFile) and f.fifo_path:
            e.fifo.CopyFrom(pipe_pb2.fifo_entry(id=f.id, pipe_id=f.pipe_id, regf_id=next_id))
            path = fdinfo_pb2.file_entry(type=fdinfo_pb2.REG, id=next_id)
            path.reg.CopyFrom(_reg_pb(next_id, f.fifo_path, f.flags, 0, f.fown, -1, None, stat.S_IFIFO))
            out.append(path)
            next_id += 1
        elif isinstance(f, PipeFile):
            e.pipe.CopyFrom(pipe_pb2.pipe_entry(id=f.id, pipe_id=f.pipe_id, flags=f.flags, fown=_fown_pb(f.fown)))
        elif isinstance(f, EventfdFile):
            # Eventfd files are always O_RDWR, so bit 0 (O_WRONLY) is free to carry
            # EFD_SEMAPHORE, which has that very value in eventfd2's flags.
            e.efd.CopyFrom(eventfd_pb2.eventfd_file_entry(id=f.id, flags=f.flags, pos=0,
                                                           fown=_fown_pb(f.fown), counter=f.counter))
        elif isinstance(f, EpollFile):
            e.epfd.CopyFrom(eventpoll_pb2.eventpoll_file_entry(
                id=f.id, flags=f.flags, fown=_fown_pb(f.fown),
                tfd=[eventpoll_pb2.eventpoll_tfd_entry(id=f.id, tfd=t.tfd, events=t.events, data=t.data)
                     for t in f.targets]))
        elif isinstance(f, InetSocket):
            o = f.opts
            opts = sk_opts_pb2.sk_opts_entry(
                so_sndbuf=o.sndbuf, so_rcvbuf=o.rcvbuf, so_snd_tmo_sec=o.snd_tmo[0],
                so_snd_tmo_usec=o.snd_tmo[1], so_rcv_tmo_sec=o.rcv_tmo[0], so_rcv_tmo_usec=o.rcv_tmo[1],
                reuseaddr=o.reuseaddr, keepalive=o.keepalive, so_reuseport=o.reuseport)
            for name, attr in _EXTRA_OPTS.items():
                if name in _OPT_FIELDS:
                    setattr(opts, name, getattr(o, attr))
            e.isk.CopyFrom(sk_inet_pb2.inet_sk_entry(
                id=f.id, ino=f.inode, family=f.family, type=f.type, proto=f.proto, state=f.state,
                src_port=f.port, dst_port=0, flags=f.flags, backlog=f.backlog,
                src_addr=_addr_words(f.family, f.addr), fown=_fown_pb(f.fown), opts=opts, v6only=o.v6only))
        out.append(e)
    return out


def _reg_pb(fid: int, path: str, flags: int, pos: int, fown: Fown, mnt_id: int, size: int | None,
            mode: int) -> regfile_pb2.reg_file_entry:
    m = regfile_pb2.reg_file_entry(id=fid, flags=flags, pos=pos, fown=_fown_pb(fown), name=path,
                                   mnt_id=mnt_id, mode=mode)
    if size is not None:
        m.size = size
    return m


def fdinfo_entries(snap: FilesSnapshot) -> list[fdinfo_pb2.fdinfo_entry]:
    return [fdinfo_pb2.fdinfo_entry(id=e.file_id, flags=FD_CLOEXEC if e.cloexec else 0,
                                    type=int(snap.files[e.file_id].kind), fd=e.fd) for e in snap.fds]


def write_files_images(snap: FilesSnapshot, imgdir: str | os.PathLike, pid: int, files_id: int) -> None:
    """Write files.img, fdinfo-<files_id>.img, fs-<pid>.img, pipes-data.img and fifo-data.img."""
    d = Path(imgdir)
    framing.write_image(d / "files.img", None, file_entries(snap))
    framing.write_image(d / f"fdinfo-{files_id}.img", None, fdinfo_entries(snap))
    framing.write_image(d / f"fs-{pid}.img", None,
                        [fs_pb2.fs_entry(cwd_id=snap.cwd_id, root_id=snap.root_id, umask=snap.umask)])
    fifos = {f.pipe_id for f in snap.files.values() if isinstance(f, PipeFile) and f.fifo_path}
    for name, want_fifo in (("pipes-data.img", False), ("fifo-data.img", True)):
        # Only pipes with something to restore: an absent entry means empty, default size.
        framing.write_image(d / name, None, [
            (pipe_pb2.pipe_data_entry(pipe_id=pd.pipe_id, bytes=len(pd.data), size=pd.size), pd.data)
            for pd in snap.pipe_data.values()
            if (pd.pipe_id in fifos) == want_fifo and (pd.data or pd.size != DEFAULT_PIPE_SIZE)])


def _file_of(e: fdinfo_pb2.file_entry, regs: dict[int, regfile_pb2.reg_file_entry]) -> FileObj:
    if e.type == fdinfo_pb2.REG:
        r = e.reg
        terminal = stat.S_ISCHR(r.mode) and _TTY_PATH.fullmatch(r.name) is not None
        return RegFile(r.id, r.name, r.flags, r.pos, r.size if r.HasField("size") else None, r.mode,
                       r.mnt_id, _fown_of(r.fown), terminal)
    if e.type == fdinfo_pb2.FIFO:
        reg = regs.get(e.fifo.regf_id)
        if reg is None:
            raise ImageError(f"files.img: FIFO {e.id} refers to missing path entry {e.fifo.regf_id}")
        return PipeFile(e.id, e.fifo.pipe_id, reg.flags, reg.name, _fown_of(reg.fown))
    if e.type == fdinfo_pb2.PIPE:
        return PipeFile(e.id, e.pipe.pipe_id, e.pipe.flags, "", _fown_of(e.pipe.fown))
    if e.type == fdinfo_pb2.EVENTFD:
        return EventfdFile(e.id, e.efd.counter, e.efd.flags, _fown_of(e.efd.fown))
    if e.type == fdinfo_pb2.EVENTPOLL:
        return EpollFile(e.id, e.epfd.flags, [EpollTarget(t.tfd, t.events, t.data) for t in e.epfd.tfd],
                         _fown_of(e.epfd.fown))
    if e.type == fdinfo_pb2.INETSK:
        k, o = e.isk, e.isk.opts
        opts = SockOpts(reuseaddr=o.reuseaddr, reuseport=o.so_reuseport, rcvbuf=o.so_rcvbuf,
                        sndbuf=o.so_sndbuf, keepalive=o.keepalive, v6only=k.v6only,
                        snd_tmo=(o.so_snd_tmo_sec, o.so_snd_tmo_usec),
                        rcv_tmo=(o.so_rcv_tmo_sec, o.so_rcv_tmo_usec))
        for name, attr in _EXTRA_OPTS.items():
            if name in _OPT_FIELDS:
                setattr(opts, attr, getattr(o, name))
        return InetSocket(k.id, k.family, k.type, k.proto, k.state, _addr_str(k.family, list(k.src_addr)),
                          k.src_port, k.flags, k.backlog, k.ino, opts, _fown_of(k.fown))
    raise ImageError(f"files.img: file {e.id} has type {fdinfo_pb2.fd_types.Name(e.type)}, "
                     "which coldsnap cannot restore")


def read_files_images(imgdir: str | os.PathLike, pid: int, files_id: int) -> FilesSnapshot:
    """The snapshot of task `pid` back from its images (files.img may hold other tasks' files)."""
    d = Path(imgdir)
    all_files = {e.id: e for e in framing.read_image(d / "files.img")}
    fdinfos = framing.read_image(d / f"fdinfo-{files_id}.img", missing_ok=True)
    fs = framing.read_single(d / f"fs-{pid}.img")
    regs = {i: e.reg for i, e in all_files.items() if e.type == fdinfo_pb2.REG}
    files: dict[int, FileObj] = {}
    for fid in [fi.id for fi in fdinfos] + [fs.cwd_id, fs.root_id]:
        if fid not in files:
            if fid not in all_files:
                raise ImageError(f"files.img: no file with id {fid}")
            files[fid] = _file_of(all_files[fid], regs)
    fds = [FdEntry(fi.fd, fi.id, bool(fi.flags & FD_CLOEXEC)) for fi in fdinfos]
    pipe_data = {}
    for name in ("pipes-data.img", "fifo-data.img"):
        for m, payload in framing.read_entries(d / name, missing_ok=True):
            pipe_data[m.pipe_id] = PipeData(m.pipe_id, payload or b"", m.size if m.HasField("size")
                                            else DEFAULT_PIPE_SIZE)
    for f in files.values():
        if isinstance(f, PipeFile) and f.pipe_id not in pipe_data:
            pipe_data[f.pipe_id] = PipeData(f.pipe_id, b"")
    return FilesSnapshot(pid, fds, files, fs.cwd_id, fs.root_id, fs.umask if fs.HasField("umask") else 0o22,
                         pipe_data)
