"""`coldsnap service`: a resident process with every module of the commands imported, which
runs each request in a worker of its own (worker.py: forked ahead of it when it can); the
worker takes on the caller's stdio, cwd, environment and umask and runs the command as
`coldsnap` itself would (cli.main), so that a short command costs no interpreter start-up
and no imports (~70 ms).

The loop is single-threaded (a worker is forked from it, and restore clones the worker raw):
one selector over the listening socket, the connections, each worker's pidfd and channel
and a wake-up socket for SIGTERM/SIGINT. A worker says its command's end on its channel as
soon as the command is done (worker.exit_worker), and the client has it at once, not after
the worker's teardown; the worker's pidfd then only tells when it is gone (and its end, to
a client whose worker died before its word). Who may ask: only a process of the service's own uid (the socket
is 0600, and SO_PEERCRED is checked), and only one that lives where the service does (same
namespaces, root, capabilities and confinement: no_new_privs, seccomp, LSM label;
read in /proc while a pidfd pins the caller, SO_PEERPIDFD's): anyone else is told to run the
command itself, which the client then does. A worker is moved into its caller's cgroups before
it runs the command (what it restores lands there, as with the command in-process). A broken or hostile request gets an error or a closed
connection, never the service's end.

On SIGTERM/SIGINT the service stops accepting, removes its socket, passes SIGTERM to every
running worker (each unwinds as an interrupted command does: targets resumed, no half image
directory, exit 143 relayed to its client), waits for them (STOP_WAIT at most) and exits 0.
"""
from __future__ import annotations

import errno
import fcntl
import gc
import os
import pkgutil
import selectors
import signal
import socket
import stat
import struct
import sys
import time
import traceback
from dataclasses import dataclass, field
from typing import Literal
from importlib import import_module
from pathlib import Path

from .. import cli
from ..errors import CsError
from ..kernel.anonfd import inotify_add_watch, inotify_init1
from ..kernel.cgroup import directories as cgroup_directories, move_into
from ..kernel.pidfd import peer_pidfd, pidfd_open, pidfd_send_signal
from ..kernel.procfs import CgroupFile, cgroup_mounts, read_surroundings
from . import protocol as P
from . import worker as W

DEFAULT_ADDRESS = "/run/coldsnap/service.sock"
PACKAGE = os.path.dirname(os.path.dirname(os.path.realpath(__file__)))
REQUEST_TIMEOUT = 5.0       # seconds from connect to a complete request
MAX_PENDING = 32            # connections still owing their request
MAX_WORKERS = 64            # requests running at once; more are told to run themselves
SUN_PATH_MAX = 107          # bytes of a unix socket's path (sun_path holds 108 with its NUL)
STOP_WAIT = 10.0            # seconds the service waits for its workers once told to stop
# modules a command imports inside functions (the package's own are all imported by a walk)
EXTRA_MODULES = ("numpy", "json", "subprocess", "shutil", "threading", "concurrent.futures",
                 "ipaddress", "bisect", "ctypes.util", "zstandard", "ssl", "rich.progress",
                 "rich.console")
NOT_IMPORTED = ("coldsnap.__main__", "coldsnap.restore.receive_worker")


class ServiceError(CsError):
    """The service cannot start (its address is taken, or unusable)."""


@dataclass
class Conn:
    """One client: its socket and, once its request runs, its worker."""
    sock: socket.socket
    deadline: float
    worker: int = 0
    pidfd: int = -1
    channel: socket.socket | None = None    # where its worker says its end (worker.exit_worker)
    command: str = ""           # its command's name, for the log
    cgroups: list[Path] = field(default_factory=list)     # the caller's, where they are not ours
    gone: bool = False          # the client closed its end
    said: tuple[int, bool] | None = None    # the end its worker said (status, by signal), relayed


@dataclass
class Spare:
    """A worker forked ahead of its request (worker.run_spare), and its end of their channel."""
    pid: int
    pidfd: int
    channel: socket.socket
    # "copying" its shared pages (its channel said nothing yet), "ready" (it said b"r": copied)
    # or "ended" (its channel's end came first: it is leaving, or gone)
    state: Literal["copying", "ready", "ended"] = "copying"


def import_everything() -> None:
    """Every module a command may need, imported once here instead of in each command."""
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")     # as cli.main: numpy starts no pool
    import coldsnap
    for mod in pkgutil.walk_packages(coldsnap.__path__, "coldsnap."):
        if mod.name not in NOT_IMPORTED:
            import_module(mod.name)
    for name in EXTRA_MODULES:
        try:
            import_module(name)
        except ImportError:         # optional (zstandard, rich): the command imports it or fails alike
            pass


def warm_up() -> None:
    """What each worker's command would work out again on its first use, and a fork inherits
    as it is, worked out once here: the commands' parsers, the restore's (restore/images.py
    warm_up)."""
    from ..restore.images import warm_up as warm_restore
    cli.prebuild_parsers()
    warm_restore()


def code_snapshot() -> dict[str, tuple[int, int]]:
    """(mtime_ns, size) of the source file of every coldsnap module imported: a request is
    run here only while they are unchanged (a coldsnap upgraded or edited in place since the
    service started would otherwise run as it was)."""
    out = {}
    for name, module in list(sys.modules.items()):
        path = getattr(module, "__file__", None)
        if path and (name == "coldsnap" or name.startswith("coldsnap.")):
            st = os.stat(path)
            out[path] = (st.st_mtime_ns, st.st_size)
    return out


def code_changed(snapshot: dict[str, tuple[int, int]]) -> bool:
    for path, was in snapshot.items():
        try:
            st = os.stat(path)
        except OSError:
            return True
        if (st.st_mtime_ns, st.st_size) != was:
            return True
    return False


IN_MODIFY, IN_ATTRIB, IN_MOVED_FROM, IN_MOVED_TO, IN_CREATE, IN_DELETE = 0x2, 0x4, 0x40, 0x80, 0x100, 0x200
IN_Q_OVERFLOW = 0x4000
_EVENT = struct.Struct("iIII")          # struct inotify_event: wd, mask, cookie, len; then the name


class CodeWatch:
    """Whether a source file of the coldsnap imported here changed since: inotify on its
    package directories, so that a request costs one read instead of ~175 stats (0.4-0.9
    ms). Where inotify fails (its limits), and once its queue overflowed, the stats of
    code_changed."""

    def __init__(self, snapshot: dict[str, tuple[int, int]]) -> None:
        self.snapshot, self.changed, self.fd = snapshot, False, -1
        try:
            self.fd = inotify_init1(os.O_NONBLOCK | os.O_CLOEXEC)
            for d in sorted({os.path.dirname(p) for p in snapshot}):
                inotify_add_watch(self.fd, d, IN_MODIFY | IN_ATTRIB | IN_MOVED_FROM | IN_MOVED_TO
                                  | IN_CREATE | IN_DELETE)
        except OSError:
            self.close()
        self.changed = code_changed(snapshot)   # what happened before the watches

    def __call__(self) -> bool:
        if self.changed or self.fd < 0:
            return self.changed or code_changed(self.snapshot)
        while True:
            try:
                data = os.read(self.fd, 64 << 10)
            except BlockingIOError:
                return self.changed
            at, overflow = 0, False
            while at + _EVENT.size <= len(data):
                _, mask, _, n = _EVENT.unpack_from(data, at)
                name = data[at + _EVENT.size:at + _EVENT.size + n].rstrip(b"\0")
                self.changed |= name.endswith((b".py", b".so"))     # not __pycache__ and the like
                overflow |= bool(mask & IN_Q_OVERFLOW)
                at += _EVENT.size + n
            if overflow:                    # events were dropped: the files say what changed
                self.changed |= code_changed(self.snapshot)

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


def bind(address: str) -> tuple[socket.socket, tuple[int, int]]:
    """A listening socket on ADDRESS (0600; its directory made 0700 when missing), replacing a
    stale socket file; ServiceError when something answers there already. Also returns the
    socket file's identity, so that only our own is removed at the end."""
    if len(os.fsencode(address)) > SUN_PATH_MAX:   # checked first: nothing made for an address that cannot be
        raise ServiceError(f"{address} is too long for a socket's address "
                           f"({len(os.fsencode(address))} bytes, at most {SUN_PATH_MAX})")
    parent = os.path.dirname(address) or "."
    os.makedirs(parent, mode=0o700, exist_ok=True)
    # two services started at once: one replaces a stale socket and listens, the other then
    # finds it answering (unlocked, the second's unlink could take the first's new socket)
    lock = os.open(parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        fcntl.flock(lock, fcntl.LOCK_EX)
        return _replace_and_listen(address)
    finally:
        os.close(lock)


def _replace_and_listen(address: str) -> tuple[socket.socket, tuple[int, int]]:
    try:
        st = os.lstat(address)
    except FileNotFoundError:
        st = None
    if st is not None:
        if not stat.S_ISSOCK(st.st_mode):
            raise ServiceError(f"{address} exists and is not a socket")
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            probe.connect(address)
            raise ServiceError(f"a service already answers on {address}")
        except OSError as e:
            if e.errno not in (errno.ECONNREFUSED, errno.ENOENT):
                raise ServiceError(f"{address}: {e.strerror}") from None
        finally:
            probe.close()
        os.unlink(address)              # stale: nobody listens
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    old = os.umask(0o177)               # 0600 as it is made: no chmod after (through what name?)
    try:
        sock.bind(address)
    except OSError as e:
        sock.close()
        raise ServiceError(f"cannot listen on {address}: {e.strerror or e}") from None
    finally:
        os.umask(old)
    sock.listen(64)
    sock.setblocking(False)
    st = os.lstat(address)
    return sock, (st.st_dev, st.st_ino)


class Service:
    def __init__(self, listener: socket.socket, address: str, ident: tuple[int, int],
                 code: dict[str, tuple[int, int]] | None = None) -> None:
        self.listener, self.address, self.ident = listener, address, ident
        self.code_changed = CodeWatch(code or {})
        # what cannot change for us without our own doing; our cgroup can (it is read again)
        self.surroundings = read_surroundings(os.getpid())
        self.sel = selectors.DefaultSelector()
        self.conns: dict[int, Conn] = {}            # socket fd -> connection
        self.workers: dict[int, Conn] = {}          # pidfd -> connection
        self.stopping = 0                           # the signal that asked us to stop
        self.stop_by = 0.0
        self.spare: Spare | None = None
        self.served = self.served_by_spare = 0
        self.reserve = _reserve_fd()                # to refuse a client when out of fds
        self.own_cgroup = CgroupFile(os.getpid())   # read at each request: it can change
        self.wake_r, self.wake_w = socket.socketpair()
        for s in (self.wake_r, self.wake_w):
            s.setblocking(False)
        self.sel.register(self.listener, selectors.EVENT_READ, "listen")
        self.sel.register(self.wake_r, selectors.EVENT_READ, "wake")

    # ------------------------------------------------------------------ the loop

    def serve(self) -> int:
        signal.set_wakeup_fd(self.wake_w.fileno(), warn_on_full_buffer=False)
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._on_stop_signal)
        # as whoever started us may have left them: SIGCHLD ignored would have the kernel reap
        # our workers before we learn how they ended; a blocked SIGTERM would never stop us
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, (signal.SIGTERM, signal.SIGINT, signal.SIGCHLD))
        try:
            self._fork_spare()
            log(f"listening on {self.address}")     # once set up: tests count our fds from here
            while not (self.stopping and (not self.workers or time.monotonic() > self.stop_by)):
                for key, _ in self.sel.select(self._timeout()):
                    try:
                        self._dispatch(key.data)
                    except Exception:           # a bug: say it, drop what it was about, serve on
                        log(f"dropped a connection after an error:\n{traceback.format_exc().rstrip()}")
                        self._forget(key)
                self._expire()
                if self.stopping and self.listener.fileno() >= 0:
                    self._stop_accepting()
        finally:
            self._stop_accepting()
        log(f"stopped after {self.served} requests, {self.served_by_spare} of them run by a worker forked ahead")
        return 0

    def _forget(self, key: selectors.SelectorKey) -> None:
        """After a bug while handling KEY: stop watching it (a level-triggered fd left
        registered would spin the loop), close the client it concerns and let go of its
        worker (or of the spare). Nothing of them stays watched: a closed fd left in the
        selector would refuse the next fd of that number."""
        self._unwatch(key.fileobj)
        what = key.data[1] if isinstance(key.data, tuple) else key.data
        if isinstance(what, Spare) and what.pidfd >= 0:
            if self.spare is what:
                self.spare = None
            self._unwatch(what.channel)
            what.channel.close()
            self._let_go(what.pidfd, signal.SIGKILL)
            what.pidfd = -1
        elif isinstance(what, Conn):
            if what.pidfd >= 0:
                self.workers.pop(what.pidfd, None)
                self._let_go(what.pidfd, signal.SIGTERM)    # it unwinds as an interrupted command
                what.pidfd = -1
            self._drop_channel(what)
            what.gone = True
            self.conns.pop(what.sock.fileno(), None)
            self._unwatch(what.sock)
            what.sock.close()

    def _let_go(self, pidfd: int, signum: int) -> None:
        """Stop watching a worker after a bug: SIGNUM, reaped if it has ended already (else a
        zombie until we end), its pidfd closed."""
        self._unwatch(pidfd)
        try:
            pidfd_send_signal(pidfd, signum)
            os.waitid(os.P_PIDFD, pidfd, os.WEXITED | os.WNOHANG)
        except (CsError, OSError):
            pass
        os.close(pidfd)

    def _unwatch(self, fileobj) -> None:
        try:
            self.sel.unregister(fileobj)
        except (KeyError, ValueError):
            pass

    def _dispatch(self, what) -> None:
        if what == "listen":
            self._accept()
        elif what == "wake":
            self._drain_wake()
        elif isinstance(what, Spare):
            self._spare_event(what)
        elif isinstance(what, tuple):
            kind, conn = what
            if kind == "said":
                self._worker_said(conn)
            else:
                self._reap(conn)
        else:
            self._readable(what)

    def _on_stop_signal(self, signum: int, frame: object) -> None:
        self.stopping = self.stopping or signum

    def _timeout(self) -> float | None:
        ends = [c.deadline for c in self.conns.values() if not c.worker]
        if self.stopping:
            ends.append(self.stop_by)
        return max(0.0, min(ends) - time.monotonic()) if ends else None

    def _drain_wake(self) -> None:
        try:
            while self.wake_r.recv(64):
                pass
        except BlockingIOError:
            pass

    def _stop_accepting(self) -> None:
        """Once: no new client, our socket file removed, SIGTERM to every running worker."""
        if self.listener.fileno() < 0:
            return
        self.sel.unregister(self.listener)
        self.listener.close()
        self.stop_by = time.monotonic() + STOP_WAIT
        try:
            st = os.lstat(self.address)
            if (st.st_dev, st.st_ino) == self.ident:
                os.unlink(self.address)
        except OSError:
            pass
        self._drop_spare()
        for conn in list(self.conns.values()):
            if conn.worker:
                self._signal(conn, signal.SIGTERM)
            else:
                self._close(conn)

    def _expire(self) -> None:
        now = time.monotonic()
        for conn in [c for c in self.conns.values() if not c.worker and c.deadline < now]:
            self._close(conn)

    # ------------------------------------------------------------------ clients

    def _accept(self) -> None:
        while True:
            try:
                sock, _ = self.listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as e:
                if e.errno in (errno.EMFILE, errno.ENFILE) and self._refuse_one_out_of_fds():
                    continue
                if e.errno == errno.ECONNABORTED:
                    continue
                log(f"accept: {e.strerror}")
                return
            if sum(1 for c in self.conns.values() if not c.worker) >= MAX_PENDING:
                sock.close()
                continue
            sock.setblocking(False)
            conn = Conn(sock, time.monotonic() + REQUEST_TIMEOUT)
            self.conns[sock.fileno()] = conn
            self.sel.register(sock, selectors.EVENT_READ, conn)
            self._first_read(conn)

    def _first_read(self, conn: Conn) -> None:
        """The request, read as soon as its connection is accepted: the client sends it right
        after connecting, so it is there, mostly, and waits for no other round of our loop.
        A bug in it drops this connection alone (the loop's own handler would drop the
        listener's key)."""
        try:
            self._readable(conn)
        except Exception:
            log(f"dropped a connection after an error:\n{traceback.format_exc().rstrip()}")
            self._forget(selectors.SelectorKey(conn.sock, conn.sock.fileno(), selectors.EVENT_READ, conn))

    def _refuse_one_out_of_fds(self) -> bool:
        """Out of fds, take the next connection on the fd kept in reserve for this, tell it
        to run its command itself and close it (left queued, it would wait for ever and its
        listener's readiness spin our loop): whether there was one."""
        if self.reserve < 0:
            return False
        os.close(self.reserve)
        try:
            sock, _ = self.listener.accept()
        except OSError:
            return False
        else:
            log("runs in the caller: the service is out of file descriptors")
            _send(sock, b"local the service is out of file descriptors")
            sock.close()
            return True
        finally:
            self.reserve = _reserve_fd()

    def _readable(self, conn: Conn) -> None:
        if conn.sock.fileno() < 0:      # closed earlier in this round of events (_ended)
            return
        if conn.worker:
            self._from_running_client(conn)
            return
        fds: list[int] = []
        try:
            data, fds = W.receive(conn.sock)
            if not data:
                self._close(conn)
                return
            request = P.decode_request(data)
            if len(fds) != P.REQUEST_FDS:
                raise P.ProtocolError(f"a request comes with {P.REQUEST_FDS} fds, not {len(fds)}")
            if self._withdrawn(conn):
                log("runs nowhere: its caller gave it up before it started")
                _send(conn.sock, b"local given up")
                self._close(conn)
                return
            reason = self._refusal(conn, request)
            if reason:
                log(f"runs in the caller: {reason}")
                _send(conn.sock, b"local " + reason.encode(errors="surrogateescape"))
                self._close(conn)
                return
            self._start(conn, request, data, fds)
        except (BlockingIOError, InterruptedError):
            pass
        except P.ProtocolError as e:
            log(f"refused a request: {e}")
            _send(conn.sock, b"error " + str(e).encode())
            self._close(conn)
        except OSError as e:
            log(f"request: {e.strerror or e}")
            if not conn.worker:     # nothing runs it: the caller does
                _send(conn.sock, b"local the service cannot run it: " + (e.strerror or str(e)).encode())
            self._close(conn)
        finally:
            for fd in fds:
                os.close(fd)

    @staticmethod
    def _withdrawn(conn: Conn) -> bool:
        """Whether the caller gave its request up before we could start it (we were stopped,
        say): a signal record (its client waits no longer) or its end queued behind it."""
        try:
            conn.sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT)
        except BlockingIOError:
            return False
        return True

    def _refusal(self, conn: Conn, request: P.Request) -> str:
        """Why this caller should run its command itself ('' when the service may run it)."""
        pid, uid, _ = struct.unpack("3i", conn.sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 12))
        if uid != os.geteuid():
            return "the service runs requests of its own user only"
        if pid <= 0:
            return "the caller is in another pid namespace"
        if request.package != PACKAGE:      # resolved by the client: a lookup here could hang us
            return f"the service runs the coldsnap of {PACKAGE}, not of {request.package}"
        if not P.runs_in_service(request.argv):
            return "this command runs in the caller's process"
        if self.stopping:
            return "the service is stopping"
        if len(self.workers) >= MAX_WORKERS:
            return "the service is busy"
        try:
            theirs = self._surroundings_of(conn.sock, pid)
            our_cgroup = self.own_cgroup.read()
        except (CsError, OSError):
            return "the caller is gone or cannot be inspected"
        differs = theirs._replace(cgroup="").difference(self.surroundings._replace(cgroup=""))
        if differs:
            return f"the caller's {differs} is not the service's"
        if theirs.cgroup != our_cgroup:
            # the worker joins the caller's cgroups (a restored process lands in them too)
            try:
                conn.cgroups = cgroup_directories(theirs.cgroup, cgroup_mounts(os.getpid()), skip=our_cgroup)
            except (CsError, OSError) as e:
                return f"the caller's cgroup cannot be joined ({e})"
        if self.code_changed():
            return "coldsnap's code changed since the service started (restart it)"
        return ""

    @staticmethod
    def _surroundings_of(sock: socket.socket, pid: int):
        """The surroundings of the caller at SOCK's other end, PID (SO_PEERCRED's: its pid when
        it connected). Read from /proc/PID while a pidfd pins the caller, and only if it still
        lives after: its pid was not taken by another process meanwhile. The pidfd is the
        very caller's (SO_PEERPIDFD); on kernels without it, that of PID once we look (which
        leaves open the time between its connect and now)."""
        pidfd = peer_pidfd(sock)
        if pidfd is None:
            pidfd = pidfd_open(pid)
        try:
            theirs = read_surroundings(pid)
            pidfd_send_signal(pidfd, 0)     # ESRCH: it ended; PID may be another's
        finally:
            os.close(pidfd)
        return theirs

    def _start(self, conn: Conn, request: P.Request, data: bytes, fds: list[int]) -> None:
        """Hand the request to the spare, even one still copying its pages (it stops the copy
        for it: a worker forked now would have none copied); fork a worker when there is none."""
        spare, self.spare = self.spare, None
        usable = spare is not None and spare.state != "ended"
        if usable:
            try:
                _join(spare.pid, conn.cgroups)
            except OSError as e:
                self._end_spare(spare)
                if e.errno != errno.ESRCH:      # not just a spare that died: none can join
                    raise
                spare, usable = None, False
        if usable and self._hand_over(spare, data, fds):
            conn.worker, conn.pidfd, conn.channel = spare.pid, spare.pidfd, spare.channel
            self.sel.modify(conn.pidfd, selectors.EVENT_READ, ("worker", conn))
            if spare.state == "copying":        # its b"r" still to come: read and skipped there
                self.sel.modify(conn.channel, selectors.EVENT_READ, ("said", conn))
            else:
                self.sel.register(conn.channel, selectors.EVENT_READ, ("said", conn))
            self.served_by_spare += 1
        else:
            if spare is not None and spare.pidfd >= 0:
                self.spare = spare          # it ended before any request: its pidfd's event forgets it
                                            # (not one _hand_over found dead: that one is gone)
            conn.worker, conn.pidfd, conn.channel = self._fork_worker(request, fds, conn.cgroups)
            self.sel.register(conn.pidfd, selectors.EVENT_READ, ("worker", conn))
            self.sel.register(conn.channel, selectors.EVENT_READ, ("said", conn))
        conn.command = next((a for a in request.argv if not a.startswith("-")), "")
        self.workers[conn.pidfd] = conn
        self.served += 1
        _send(conn.sock, b"started %d" % conn.worker)

    def _fork_worker(self, request: P.Request, fds: list[int],
                     cgroups: list[Path]) -> tuple[int, int, socket.socket]:
        """A worker forked for REQUEST, moved into CGROUPS, its pidfd and our end of its
        channel. It waits for our b"g" there before it runs the command: without its pidfd
        (out of fds) we could not watch it, and its client, told to run the command itself,
        would run it a second time; nor may it run outside the caller's cgroups."""
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            pid = self._fork(lambda: (ours.close(), W.run_forked(request, fds, theirs)))
        finally:
            theirs.close()
        try:
            pidfd = pidfd_open(pid)
        except OSError:
            ours.close()            # it reads the end of its channel: leaves without running anything
            os.waitpid(pid, 0)
            raise
        try:
            _join(pid, cgroups)
        except OSError:
            ours.close()
            os.waitid(os.P_PIDFD, pidfd, os.WEXITED)
            os.close(pidfd)
            raise
        try:
            ours.send(b"g")
        except OSError:             # killed meanwhile: its pidfd says so
            pass
        ours.setblocking(False)
        return pid, pidfd, ours

    def _hand_over(self, spare: Spare, data: bytes, fds: list[int]) -> bool:
        if spare.state == "copying" and os.geteuid() == 0:
            # it copies at nice 19 (worker.run_spare), where a loaded machine would wake it
            # ms late: back to our own priority first (it is our unreaped child: its pid is its)
            try:
                os.setpriority(os.PRIO_PROCESS, spare.pid, os.getpriority(os.PRIO_PROCESS, 0))
            except OSError:
                pass
        try:
            spare.channel.sendmsg([data], [(socket.SOL_SOCKET, socket.SCM_RIGHTS,
                                            b"".join(fd.to_bytes(4, sys.byteorder) for fd in fds))])
        except OSError as e:                # it died meanwhile: its pidfd says so later
            log(f"the spare worker {spare.pid} took no request: {e.strerror}")
            self._end_spare(spare)
            return False
        return True

    def _fork(self, child) -> int:
        """fork(); the child leaves the service and runs CHILD (which never returns)."""
        for f in (sys.stdout, sys.stderr):
            f.flush()           # nothing of ours may reach a client through a worker
        service = os.getpid()
        # a signal passed on to the child before it drops our handlers would be ours (lost):
        # it waits, blocked, until the command's handlers are in place (cli.main held=...)
        mask = signal.pthread_sigmask(signal.SIG_BLOCK, P.FORWARDED)
        try:
            pid = os.fork()
            if pid == 0:
                try:
                    W.die_with(service)
                    W.leave_service([self.listener, self.wake_r, self.wake_w,
                                     *(c.sock for c in self.conns.values()),
                                     *(c.channel for c in self.workers.values() if c.channel),
                                     *([self.spare.channel] if self.spare else [])],
                                    [*self.workers, *([self.spare.pidfd] if self.spare else []),
                                     *([self.reserve] if self.reserve >= 0 else [])],
                                    [self.sel, self.code_changed, self.own_cgroup])
                    child()
                finally:
                    os._exit(1)     # child() exits by itself; never back into the service's loop
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, mask)
        return pid

    # ------------------------------------------------------------------ the spare worker

    def _fork_spare(self) -> None:
        """A worker ahead of the next request, unless there is one or we are stopping."""
        if self.spare is not None or self.stopping:
            return
        try:
            ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        except OSError as e:                # out of fds: the next request gets a worker forked for it
            log(f"no spare worker: {e.strerror}")
            return
        pid = 0
        try:
            pid = self._fork(lambda: (ours.close(), W.run_spare(theirs)))
            pidfd = pidfd_open(pid)
        except OSError as e:
            ours.close()                    # it reads the end of its channel: leaves, running nothing
            if pid:
                os.waitpid(pid, 0)
            log(f"no spare worker: {e.strerror}")
            return
        finally:
            theirs.close()
        ours.setblocking(False)
        self.spare = Spare(pid, pidfd, ours)
        self.sel.register(self.spare.pidfd, selectors.EVENT_READ, self.spare)
        self.sel.register(ours, selectors.EVENT_READ, self.spare)

    def _spare_event(self, spare: Spare) -> None:
        """The spare is ready (b"r" on its channel), or ended before any request."""
        if spare.pidfd < 0 or spare is not self.spare:     # ended, or handed a request, earlier
            return                                          # in this round of events
        if spare.state == "copying":
            try:
                said = spare.channel.recv(16)
            except BlockingIOError:
                return
            except OSError:
                said = b""
            spare.state = "ready" if said == b"r" else "ended"
            self.sel.unregister(spare.channel)
            if spare.state == "ready":
                return
        if os.waitid(os.P_PIDFD, spare.pidfd, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None:
            log(f"the spare worker {spare.pid} ended before any request")
            self._end_spare(spare)

    def _end_spare(self, spare: Spare) -> None:
        """Kill (if need be), reap and forget a spare that took no request."""
        if self.spare is spare:
            self.spare = None
        try:
            pidfd_send_signal(spare.pidfd, signal.SIGKILL)
        except (CsError, OSError):
            pass
        os.waitid(os.P_PIDFD, spare.pidfd, os.WEXITED)
        for obj in (spare.pidfd, spare.channel):
            try:
                self.sel.unregister(obj)
            except (KeyError, ValueError):
                pass
        os.close(spare.pidfd)
        spare.pidfd = -1                    # its number may be a new worker's pidfd soon
        spare.channel.close()

    def _drop_spare(self) -> None:
        if self.spare is not None:
            self._end_spare(self.spare)

    def _from_running_client(self, conn: Conn) -> None:
        try:
            data, fds = W.receive(conn.sock)
        except (BlockingIOError, InterruptedError):
            return
        except (OSError, P.ProtocolError):     # a record cut short: receive closed its fds
            data, fds = b"", []
        for fd in fds:          # a signal record carries none
            os.close(fd)
        try:
            signum = P.decode_signal(data) if data and not fds else 0
        except P.ProtocolError:
            signum = 0
        if signum:
            self._signal(conn, signum)
            return
        # the client left (or broke the protocol): the worker unwinds as an interrupted command
        conn.gone = True
        self.sel.unregister(conn.sock)
        self._signal(conn, signal.SIGTERM)

    def _signal(self, conn: Conn, signum: int) -> None:
        try:
            pidfd_send_signal(conn.pidfd, signum)
        except (CsError, OSError):       # it has exited meanwhile: its pidfd will say so
            pass

    def _worker_said(self, conn: Conn) -> None:
        """The worker's word on its channel: its command's end (worker.exit_worker), relayed
        now, ahead of its teardown; a spare's b"r" (it was still copying when it took the
        request) is skipped. The channel's end without a word (the worker killed, or gone
        before its command): its pidfd tells the end instead."""
        if conn.channel is None:        # read earlier in this round of events (by _reap)
            return
        while True:
            try:
                data = conn.channel.recv(P.MAX_REPLY)
            except BlockingIOError:
                return
            except OSError:
                data = b""
            if data != b"r":
                break
        self._drop_channel(conn)
        try:
            end = P.decode_exit(data) if data else None
        except P.ProtocolError:
            log(f"worker {conn.worker} ({conn.command}) said no end: {data[:40]!r}")
            end = None
        if end is not None:
            self._ended(conn, *end)

    def _ended(self, conn: Conn, status: int, by_signal: bool) -> None:
        """The command's end, logged and told its client, whose connection then closes: what
        the worker does after (its teardown) is no business of the client's."""
        conn.said = (status, by_signal)
        log(f"worker {conn.worker} ({conn.command}) {_end_words(status, by_signal)}"
            + (" (its client had left)" if conn.gone else ""))
        if not conn.gone:
            _send(conn.sock, P.encode_exit(status, by_signal))
        self._close(conn)

    def _drop_channel(self, conn: Conn) -> None:
        if conn.channel is not None:
            self._unwatch(conn.channel)
            conn.channel.close()
            conn.channel = None

    def _reap(self, conn: Conn) -> None:
        """The worker ended: its end is the one it said, if it did (read first here: a word
        sent before its end wins whichever event we see first); else the kernel's, told its
        client now."""
        info = os.waitid(os.P_PIDFD, conn.pidfd, os.WEXITED | os.WNOHANG)
        if info is None:
            return
        if conn.channel is not None:
            self._worker_said(conn)
        end = (info.si_status, info.si_code in (os.CLD_KILLED, os.CLD_DUMPED))
        if conn.said is None:
            self._ended(conn, *end)
        elif conn.said != end:      # SIGKILLed in its teardown, say: the client has the word
            log(f"worker {conn.worker} ({conn.command}) then {_end_words(*end)}, after its end was told")
        self._drop_channel(conn)
        self.sel.unregister(conn.pidfd)
        del self.workers[conn.pidfd]
        os.close(conn.pidfd)
        conn.pidfd = -1
        # now, while no command of ours runs and its client has ended: forked at the word, it
        # delayed the client's end (on two CPUs, with the worker's teardown on one) by about
        # as much as the word gains, and a spare made once the client has gone gained nothing
        self._fork_spare()

    def _close(self, conn: Conn) -> None:
        if self.conns.pop(conn.sock.fileno(), None) is not None and not conn.gone:
            self.sel.unregister(conn.sock)
        conn.sock.close()


def _end_words(status: int, by_signal: bool) -> str:
    return f"killed by signal {status}" if by_signal else f"exited {status}"


def _reserve_fd() -> int:
    try:
        return os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return -1


def _join(pid: int, cgroups: list[Path]) -> None:
    """Move a worker into its caller's cgroups (OSError: it cannot be, and must not run)."""
    for d in cgroups:
        try:
            move_into(pid, d)
        except OSError as e:
            raise OSError(e.errno, f"cannot join the caller's cgroup {d}: {e.strerror}") from None


def _send(sock: socket.socket, record: bytes) -> None:
    try:
        sock.send(record[:P.MAX_REPLY])
    except OSError:             # the client is gone: nothing to tell
        pass


def log(line: str) -> None:
    print(f"coldsnap service: {line}", file=sys.stderr, flush=True)


def daemonize(pidfile: str | None, log_file: str | None, keep: int) -> None:
    """Go to the background: the parent exits 0 once the child is set up (the socket already
    listens), the child leads a session of its own with stdio on /dev/null (stderr on
    LOG_FILE when given) and no other fd than KEEP (the listening socket): whatever its
    starter left open would otherwise stay open for as long as the service runs. PIDFILE and
    LOG_FILE are opened first, here: a path that cannot be is the command's one-line error,
    not a child's end after its parent said all was well."""
    pid_fd = log_fd = -1
    try:
        if pidfile:
            pid_fd = os.open(pidfile, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
        if log_file:
            log_fd = os.open(log_file, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
    except OSError as e:
        if pid_fd >= 0:
            os.close(pid_fd)
            os.unlink(pidfile)
        raise ServiceError(f"{e.filename}: {e.strerror}") from None
    r, w = os.pipe()
    pid = os.fork()
    if pid:
        os.close(w)
        ready = os.read(r, 1)   # the child is ready (or gone: it said why on our stderr)
        os._exit(0 if ready == b"1" else 1)
    os.close(r)
    os.setsid()
    _close_all_but({keep, w, pid_fd, log_fd})
    if pid_fd >= 0:
        os.write(pid_fd, b"%d\n" % os.getpid())
        os.close(pid_fd)
    null = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(null, fd)
    os.close(null)
    if log_fd >= 0:
        os.dup2(log_fd, 2)
        os.close(log_fd)
    os.write(w, b"1")
    os.close(w)


def _close_all_but(keep: set[int]) -> None:
    """Close every fd from 3 up but those of KEEP."""
    low = 3
    for fd in sorted(k for k in keep if k >= 3):
        os.closerange(low, fd)
        low = fd + 1
    os.closerange(low, os.sysconf("SC_OPEN_MAX"))


def run_service(address: str | None, daemon: bool = False, pidfile: str | None = None,
                log_file: str | None = None) -> int:
    """`coldsnap service`: serve on ADDRESS until SIGTERM or SIGINT."""
    address = os.path.abspath(address or DEFAULT_ADDRESS)
    if (pidfile or log_file) and not daemon:
        raise cli.UsageError("--pidfile and --log-file go with --daemon")
    listener, ident = bind(address)
    try:
        import_everything()
        warm_up()
        gc.collect()
        gc.freeze()             # what the imports made stays out of every later collection
        if daemon:
            daemonize(pidfile and os.path.abspath(pidfile), log_file and os.path.abspath(log_file),
                      listener.fileno())
        return Service(listener, address, ident, code_snapshot()).serve()
    finally:
        try:
            st = os.lstat(address)
            if (st.st_dev, st.st_ino) == ident:
                os.unlink(address)
        except OSError:
            pass
        if pidfile and daemon:
            try:
                os.unlink(os.path.abspath(pidfile))
            except OSError:
                pass
