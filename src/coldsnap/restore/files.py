"""Rebuild a dumped fd table, cwd, root and umask inside the blank restore child.

`rebuild_fds` runs as plain Python in the freshly forked child before it is reshaped into
the target. Every object is first created at a high "temporary" fd number, so that it
cannot collide with a target number, then dup2'ed down; finally everything else is closed.

Pipes whose other end was not in the dumped process (e.g. a shell pipeline or the pipe to
a parent) are recreated as fresh pipes: the peer is *not* reconnected. A lone read end sees
the saved data then EOF; writes to a lone write end fail with EPIPE/SIGPIPE.
"""
from __future__ import annotations

import ctypes
import errno
import fcntl
import os
import resource
import socket
import stat
import struct
from collections.abc import Collection

from coldsnap.dump.files import (F_SETOWN_EX, F_SETPIPE_SZ, F_SETSIG, DEFAULT_PIPE_SIZE, EFD_SEMAPHORE,
                                 EpollFile, EventfdFile, FileObj, FilesSnapshot, Fown, InetSocket, PipeFile,
                                 RegFile, peek_pipe)
from coldsnap.errors import ImageError
from coldsnap.kernel import fdinfo as K
from coldsnap.kernel.libc import check, libc

EPOLL_CTL_ADD = 1
# F_SETFL can only change these; the access mode and creation flags come from open().
_SETFL_MASK = os.O_APPEND | os.O_NONBLOCK | os.O_DIRECT | os.O_NOATIME | 0o20000  # O_ASYNC


class _EpollEvent(ctypes.Structure):
    _pack_ = 1            # struct epoll_event is packed on x86-64
    _fields_ = [("events", ctypes.c_uint32), ("data", ctypes.c_uint64)]


def _first_fd(snap: FilesSnapshot) -> dict[int, int]:
    """file id -> the lowest fd number that refers to it (to name it in messages)."""
    out: dict[int, int] = {}
    for e in sorted(snap.fds, key=lambda e: e.fd):
        out.setdefault(e.file_id, e.fd)
    return out


# --- validation, before any process exists ---------------------------------------------

def _check_reg(name: str, f: RegFile) -> None:
    try:
        st = os.stat(f.path)
    except OSError as e:
        raise ImageError(f"{name}: {f.path} is gone ({e.strerror})") from None
    if f.mode and stat.S_IFMT(st.st_mode) != stat.S_IFMT(f.mode):
        raise ImageError(f"{name}: {f.path} is no longer the same kind of file")
    if f.size is not None and f.flags & os.O_ACCMODE == os.O_RDONLY and st.st_size != f.size:
        raise ImageError(f"{name}: {f.path} changed size ({f.size} -> {st.st_size} bytes)")


def _check_port(name: str, s: InetSocket) -> None:
    if s.port == 0:
        return
    with socket.socket(s.family, s.type, s.proto) as t:
        t.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, int(s.opts.reuseaddr))
        if s.family == socket.AF_INET6:
            t.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, int(s.opts.v6only))
        try:
            t.bind((s.addr, s.port))
        except OSError as e:
            raise ImageError(f"{name}: cannot bind {_where(s)}: {e.strerror}") from None


def _where(s: InetSocket) -> str:
    return f"[{s.addr}]:{s.port}" if s.family == socket.AF_INET6 else f"{s.addr}:{s.port}"


def validate_files(snap: FilesSnapshot, *, shell_job: bool = False) -> None:
    """Check what can be checked before creating a process; ImageError with one line."""
    names = {fid: f"fd {fd}" for fid, fd in _first_fd(snap).items()}
    names[snap.cwd_id], names[snap.root_id] = "cwd", "root"
    for fid, f in snap.files.items():
        name = names.get(fid, f"file {fid}")
        if isinstance(f, RegFile) and f.terminal:
            if not shell_job:
                raise ImageError(f"{name}: was the terminal {f.path}; restore needs --shell-job")
        elif isinstance(f, RegFile):
            _check_reg(name, f)
        elif isinstance(f, PipeFile) and f.fifo_path:
            try:
                if not stat.S_ISFIFO(os.stat(f.fifo_path).st_mode):
                    raise ImageError(f"{name}: {f.fifo_path} is no longer a FIFO")
            except FileNotFoundError:
                raise ImageError(f"{name}: FIFO {f.fifo_path} is gone") from None
        elif isinstance(f, InetSocket):
            _check_port(name, f)
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    need = max([e.fd for e in snap.fds] + [2]) + len(snap.files) + 8
    if hard != resource.RLIM_INFINITY and need > hard:
        raise ImageError(f"fd table needs {need} descriptors, RLIMIT_NOFILE hard limit is {hard}")


# --- rebuild, inside the blank child ----------------------------------------------------

class _Builder:
    def __init__(self, snap: FilesSnapshot, base: int, tty: int | None):
        self.snap, self.base, self.tty = snap, base, tty
        self.temps: dict[int, int] = {}          # file id -> temporary fd
        self.extra: list[int] = []               # helpers closed at the end (other pipe ends…)
        self.names = {fid: f"fd {fd}" for fid, fd in _first_fd(snap).items()}

    def high(self, fd: int) -> int:
        """Move a fresh fd above every target number (keeps O_CLOEXEC until placed)."""
        new = fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, self.base)
        os.close(fd)
        return new

    def reg(self, f: RegFile) -> int:
        if f.terminal:
            assert self.tty is not None
            return fcntl.fcntl(self.tty, fcntl.F_DUPFD_CLOEXEC, self.base)
        name = self.names.get(f.id, f"file {f.id}")
        _check_reg(name, f)
        try:
            fd = self.high(os.open(f.path, f.flags | os.O_CLOEXEC))
        except OSError as e:
            raise ImageError(f"{name}: cannot open {f.path}: {e.strerror}") from None
        if f.pos and not f.flags & os.O_PATH:
            os.lseek(fd, f.pos, os.SEEK_SET)
        return fd

    def pipes(self, ends: list[PipeFile]) -> None:
        """All ends of one pipe share one fresh pipe; its data is written back."""
        r, w = (self.high(x) for x in os.pipe2(os.O_CLOEXEC))
        self._fill(w, ends[0].pipe_id)
        used: set[int] = set()
        for p in ends:
            end = r if p.flags & os.O_ACCMODE == os.O_RDONLY else w
            self.temps[p.id] = end if end not in used else fcntl.fcntl(end, fcntl.F_DUPFD_CLOEXEC, self.base)
            used.add(end)
        self.extra += [x for x in (r, w) if x not in used]

    def fifo(self, ends: list[PipeFile]) -> None:
        # An O_RDWR holder keeps the FIFO open so one-sided opens neither block nor fail.
        holder = self.high(os.open(ends[0].fifo_path, os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC))
        self.extra.append(holder)
        # A FIFO still open elsewhere is the same live pipe: its bytes are already there.
        if not peek_pipe(holder).data:
            self._fill(holder, ends[0].pipe_id)
        for p in ends:
            self.temps[p.id] = self.high(os.open(p.fifo_path, p.flags | os.O_NONBLOCK | os.O_CLOEXEC))

    def _fill(self, w: int, pipe_id: int) -> None:
        pd = self.snap.pipe_data.get(pipe_id)
        if pd is None:
            return
        if pd.size != DEFAULT_PIPE_SIZE:
            fcntl.fcntl(w, F_SETPIPE_SZ, pd.size)   # before the data: capacity must fit it
        view = memoryview(pd.data)
        while view:
            view = view[os.write(w, view):]

    def eventfd(self, f: EventfdFile) -> int:
        fd = self.high(os.eventfd(0, os.EFD_CLOEXEC | (f.flags & (EFD_SEMAPHORE | os.O_NONBLOCK))))
        if f.counter:
            os.eventfd_write(fd, f.counter)   # eventfd()'s initval is only 32 bits wide
        return fd

    def epoll(self, f: EpollFile) -> int:
        return self.high(check(libc.epoll_create1(os.O_CLOEXEC), "epoll_create1"))

    def inet(self, f: InetSocket) -> int:
        name = self.names.get(f.id, f"file {f.id}")
        s = socket.socket(f.family, f.type, f.proto)
        try:
            o = f.opts
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, int(o.reuseaddr))
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, int(o.reuseport))
            s.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, int(o.keepalive))
            s.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, int(o.broadcast))
            s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, struct.pack("qq", *o.snd_tmo))
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, struct.pack("qq", *o.rcv_tmo))
            # Set buffer sizes only when they differ from the default: setting them locks
            # them and turns off the kernel's autotuning. The kernel doubles what is set.
            for opt, val in ((socket.SO_RCVBUF, o.rcvbuf), (socket.SO_SNDBUF, o.sndbuf)):
                if val and s.getsockopt(socket.SOL_SOCKET, opt) != val:
                    s.setsockopt(socket.SOL_SOCKET, opt, val // 2)
            if f.type == socket.SOCK_STREAM:
                s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, int(o.nodelay))
            if f.family == socket.AF_INET6:
                s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, int(o.v6only))
            try:
                if f.port or f.state == K.TCP_LISTEN:
                    s.bind((f.addr, f.port))
                if f.state == K.TCP_LISTEN:
                    s.listen(f.backlog)
            except OSError as e:
                raise ImageError(f"{name}: cannot bind/listen {_where(f)}: {e.strerror}") from None
            return self.high(s.detach())
        finally:
            s.close()

    def create_all(self) -> None:
        pipes: dict[int, list[PipeFile]] = {}
        for f in self.snap.files.values():
            if f.id in (self.snap.cwd_id, self.snap.root_id):
                continue
            if isinstance(f, PipeFile):
                pipes.setdefault(f.pipe_id, []).append(f)
            elif isinstance(f, RegFile):
                self.temps[f.id] = self.reg(f)
            elif isinstance(f, EventfdFile):
                self.temps[f.id] = self.eventfd(f)
            elif isinstance(f, EpollFile):
                self.temps[f.id] = self.epoll(f)
            elif isinstance(f, InetSocket):
                self.temps[f.id] = self.inet(f)
        for ends in pipes.values():
            (self.fifo if ends[0].fifo_path else self.pipes)(ends)
        for f in self.snap.files.values():
            if isinstance(f, RegFile) and (f.terminal or f.flags & os.O_PATH):
                continue    # the terminal is shared with us; O_PATH fds take no F_SETFL
            if f.id in self.temps:
                self._status(self.temps[f.id], f)

    def _status(self, fd: int, f: FileObj) -> None:
        flags = f.flags & _SETFL_MASK
        if fcntl.fcntl(fd, fcntl.F_GETFL) & _SETFL_MASK != flags:
            fcntl.fcntl(fd, fcntl.F_SETFL, flags)
        self._fown(fd, f.fown)

    def _fown(self, fd: int, fown: Fown) -> None:
        if fown.signum:
            fcntl.fcntl(fd, F_SETSIG, fown.signum)
        if fown.pid:
            # The child becomes the dumped task, so an owner that was the task is us now.
            pid = os.getpid() if fown.pid == self.snap.pid else fown.pid
            try:
                fcntl.fcntl(fd, F_SETOWN_EX, struct.pack("ii", fown.pid_type, pid))
            except OSError as e:
                if e.errno != errno.ESRCH:   # an owner that no longer exists: leave unset
                    raise

    def register_epolls(self) -> None:
        for f in self.snap.files.values():
            if not isinstance(f, EpollFile):
                continue
            for t in f.targets:
                ev = _EpollEvent(t.events, t.data)
                r = libc.epoll_ctl(self.temps[f.id], EPOLL_CTL_ADD, t.tfd, ctypes.byref(ev))
                if r == -1:
                    err = ctypes.get_errno()
                    raise ImageError(f"{self.names[f.id]}: cannot watch fd {t.tfd}: {os.strerror(err)}")


def rebuild_fds(snap: FilesSnapshot, *, shell_job: bool = False, keep_fds: Collection[int] = ()) -> None:
    """Make this process's fd table, cwd, root and umask those of the snapshot.

    Ends with exactly the dumped fd numbers open, plus `keep_fds` (the caller's own
    channels, which must not collide with dumped numbers). With `shell_job`, fds that were
    a terminal become duplicates of the terminal this process inherited on fd 0/1/2.
    """
    targets = {e.fd for e in snap.fds}
    keep = set(keep_fds)
    if keep & targets:
        raise ImageError(f"fd {min(keep & targets)}: needed by the restored task and by coldsnap")
    base = max(targets | keep | {2}) + 1
    _enough_fds(base + len(snap.files) + 8)
    tty = None
    if snap.terminal_fds:
        if not shell_job:
            raise ImageError(f"fd {snap.terminal_fds[0]}: was a terminal; restore needs --shell-job")
        src = next((fd for fd in (0, 1, 2) if _isatty(fd)), None)
        if src is None:
            raise ImageError("--shell-job: coldsnap has no terminal on fd 0, 1 or 2 to give")
        tty = fcntl.fcntl(src, fcntl.F_DUPFD_CLOEXEC, base)
    b = _Builder(snap, base, tty)
    b.create_all()
    for e in snap.fds:
        os.dup2(b.temps[e.file_id], e.fd, inheritable=not e.cloexec)
    b.register_epolls()     # after placement: registrations name the final fd numbers
    for name in os.listdir("/proc/self/fd"):
        fd = int(name)
        if fd not in targets and fd not in keep:
            try:
                os.close(fd)
            except OSError:
                pass        # the listdir's own fd, already closed
    os.umask(snap.umask)
    os.chdir(snap.cwd)      # the cwd path is as seen from our root, so before chroot
    if snap.root != "/":
        os.chroot(snap.root)


def _enough_fds(need: int) -> None:
    """Raise our soft RLIMIT_NOFILE if the table needs it (the task's own limits come later)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < need:
        if hard != resource.RLIM_INFINITY and hard < need:
            raise ImageError(f"fd table needs {need} descriptors, RLIMIT_NOFILE hard limit is {hard}")
        resource.setrlimit(resource.RLIMIT_NOFILE, (need, hard))


def _isatty(fd: int) -> bool:
    try:
        return os.isatty(fd)
    except OSError:
        return False
