"""`coldsnap service`: a resident process with every module of the commands imported, which
forks one worker per request; the worker takes on the caller's stdio, cwd, environment and
umask and runs the command as `coldsnap` itself would (cli.main), so that a short command
costs a fork instead of the interpreter's start-up and ~70 ms of imports.

The loop is single-threaded (a worker is forked from it, and restore clones the worker raw):
one selector over the listening socket, the connections, each worker's pidfd and a wake-up
socket for SIGTERM/SIGINT. Who may ask: only a process of the service's own uid (the socket
is 0600, and SO_PEERCRED is checked), and only one that lives where the service does (same
namespaces, root, cgroup and capabilities): anyone else is told to run the command itself,
which the client then does. A broken or hostile request gets an error or a closed
connection, never the service's end.

On SIGTERM/SIGINT the service stops accepting, removes its socket, passes SIGTERM to every
running worker (each unwinds as an interrupted command does: targets resumed, no half image
directory, exit 143 relayed to its client), waits for them (STOP_WAIT at most) and exits 0.
"""
from __future__ import annotations

import errno
import gc
import io
import os
import pkgutil
import selectors
import signal
import socket
import stat
import struct
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass, field
from importlib import import_module
from typing import NoReturn

from .. import cli
from ..errors import CsError
from ..kernel.pidfd import pidfd_open, pidfd_send_signal
from ..kernel.procfs import read_surroundings
from . import protocol as P

DEFAULT_ADDRESS = "/run/coldsnap/service.sock"
PACKAGE = os.path.dirname(os.path.dirname(os.path.realpath(__file__)))
REQUEST_TIMEOUT = 5.0       # seconds from connect to a complete request
MAX_PENDING = 32            # connections still owing their request
MAX_WORKERS = 64            # requests running at once; more are told to run themselves
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
    command: str = ""           # its command's name, for the log
    gone: bool = False          # the client closed its end


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


def bind(address: str) -> tuple[socket.socket, tuple[int, int]]:
    """A listening socket on ADDRESS (0600; its directory made 0700 when missing), replacing a
    stale socket file; ServiceError when something answers there already. Also returns the
    socket file's identity, so that only our own is removed at the end."""
    parent = os.path.dirname(address) or "."
    os.makedirs(parent, mode=0o700, exist_ok=True)
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
    old = os.umask(0o077)
    try:
        sock.bind(address)
    except OSError as e:
        sock.close()
        raise ServiceError(f"cannot listen on {address}: {e.strerror}") from None
    finally:
        os.umask(old)
    os.chmod(address, 0o600)
    sock.listen(64)
    sock.setblocking(False)
    st = os.stat(address)
    return sock, (st.st_dev, st.st_ino)


class Service:
    def __init__(self, listener: socket.socket, address: str, ident: tuple[int, int]) -> None:
        self.listener, self.address, self.ident = listener, address, ident
        self.sel = selectors.DefaultSelector()
        self.conns: dict[int, Conn] = {}            # socket fd -> connection
        self.workers: dict[int, Conn] = {}          # pidfd -> connection
        self.stopping = 0                           # the signal that asked us to stop
        self.stop_by = 0.0
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
        try:
            while not (self.stopping and (not self.workers or time.monotonic() > self.stop_by)):
                for key, _ in self.sel.select(self._timeout()):
                    try:
                        self._dispatch(key.data)
                    except Exception:           # a bug: say it, drop that client, serve on
                        log(f"dropped a connection after an error:\n{traceback.format_exc().rstrip()}")
                        if isinstance(key.data, Conn) and not key.data.worker:
                            self._close(key.data)
                self._expire()
                if self.stopping and self.listener.fileno() >= 0:
                    self._stop_accepting()
        finally:
            self._stop_accepting()
        return 0

    def _dispatch(self, what) -> None:
        if what == "listen":
            self._accept()
        elif what == "wake":
            self._drain_wake()
        elif isinstance(what, tuple):
            self._reap(what[1])
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
            st = os.stat(self.address)
            if (st.st_dev, st.st_ino) == self.ident:
                os.unlink(self.address)
        except OSError:
            pass
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
            except OSError as e:            # EMFILE and the like: refuse this one, keep serving
                log(f"accept: {e.strerror}")
                return
            if sum(1 for c in self.conns.values() if not c.worker) >= MAX_PENDING:
                sock.close()
                continue
            sock.setblocking(False)
            conn = Conn(sock, time.monotonic() + REQUEST_TIMEOUT)
            self.conns[sock.fileno()] = conn
            self.sel.register(sock, selectors.EVENT_READ, conn)

    def _readable(self, conn: Conn) -> None:
        if conn.worker:
            self._from_running_client(conn)
            return
        fds: list[int] = []
        try:
            data, fds = _receive(conn.sock)
            if not data:
                self._close(conn)
                return
            request = P.decode_request(data)
            if len(fds) != P.REQUEST_FDS:
                raise P.ProtocolError(f"a request comes with {P.REQUEST_FDS} fds, not {len(fds)}")
            reason = self._refusal(conn, request)
            if reason:
                log(f"runs in the caller: {reason}")
                _send(conn.sock, b"local " + reason.encode())
                self._close(conn)
                return
            self._start(conn, request, fds)
        except (BlockingIOError, InterruptedError):
            pass
        except P.ProtocolError as e:
            log(f"refused a request: {e}")
            _send(conn.sock, b"error " + str(e).encode())
            self._close(conn)
        except OSError as e:
            log(f"request: {e.strerror or e}")
            self._close(conn)
        finally:
            for fd in fds:
                os.close(fd)

    def _refusal(self, conn: Conn, request: P.Request) -> str:
        """Why this caller should run its command itself ('' when the service may run it)."""
        pid, uid, _ = struct.unpack("3i", conn.sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 12))
        if uid != os.geteuid():
            return "the service runs requests of its own user only"
        if pid <= 0:
            return "the caller is in another pid namespace"
        if os.path.realpath(request.package) != PACKAGE:
            return f"the service runs the coldsnap of {PACKAGE}, not of {request.package}"
        if not P.runs_in_service(request.argv):
            return "this command runs in the caller's process"
        if self.stopping:
            return "the service is stopping"
        if len(self.workers) >= MAX_WORKERS:
            return "the service is busy"
        try:
            differs = read_surroundings(pid).difference(read_surroundings(os.getpid()))
        except (CsError, OSError):
            return "the caller is gone or cannot be inspected"
        return f"the caller's {differs} is not the service's" if differs else ""

    def _start(self, conn: Conn, request: P.Request, fds: list[int]) -> None:
        for f in (sys.stdout, sys.stderr):
            f.flush()           # nothing of ours may reach the client through the worker
        pid = os.fork()
        if pid == 0:
            self._become_worker(request, fds)
        conn.worker, conn.command = pid, next((a for a in request.argv if not a.startswith("-")), "")
        conn.pidfd = pidfd_open(pid)
        self.workers[conn.pidfd] = conn
        self.sel.register(conn.pidfd, selectors.EVENT_READ, ("worker", conn))
        _send(conn.sock, b"started %d" % pid)

    def _from_running_client(self, conn: Conn) -> None:
        try:
            data, fds = _receive(conn.sock)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
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

    def _reap(self, conn: Conn) -> None:
        info = os.waitid(os.P_PIDFD, conn.pidfd, os.WEXITED | os.WNOHANG)
        if info is None:
            return
        by_signal = info.si_code in (os.CLD_KILLED, os.CLD_DUMPED)
        log(f"worker {conn.worker} ({conn.command}) " + (f"killed by signal {info.si_status}" if by_signal
                                                          else f"exited {info.si_status}")
            + (" (its client had left)" if conn.gone else ""))
        if not conn.gone:
            _send(conn.sock, P.encode_exit(info.si_status, by_signal))
        self.sel.unregister(conn.pidfd)
        del self.workers[conn.pidfd]
        os.close(conn.pidfd)
        self._close(conn)

    def _close(self, conn: Conn) -> None:
        if self.conns.pop(conn.sock.fileno(), None) is not None and not conn.gone:
            self.sel.unregister(conn.sock)
        conn.sock.close()

    # ------------------------------------------------------------------ the worker

    def _become_worker(self, request: P.Request, fds: list[int]) -> NoReturn:
        """In the forked child: drop everything of the service, take on the caller's
        context, run the command as `coldsnap` would and exit with its code."""
        code = 1
        try:
            signal.set_wakeup_fd(-1)
            signal.signal(signal.SIGINT, signal.default_int_handler)
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            # no signal meant for the service's group; not a session of its own: with autogroup
            # scheduling each session is a group of its own, and a new one ran a dump's frozen
            # copy at half speed on a loaded machine (memdump 13.4 against 5.2 ms, 8 MiB)
            os.setpgid(0, 0)
            self.sel.close()
            for s in (self.listener, self.wake_r, self.wake_w, *(c.sock for c in self.conns.values())):
                s.close()
            for fd in self.workers:
                os.close(fd)
            for target, fd in enumerate(fds[:3]):
                os.dup2(fd, target)
            os.fchdir(fds[3])
            for fd in fds:
                os.close(fd)
            os.umask(request.umask)
            os.environ.clear()
            os.environ.update(request.environ)
            tempfile.tempdir = None             # TMPDIR as the caller has it
            _new_stdio()
            code = cli.main(request.argv, own_process=True)
        except SystemExit as e:                 # argparse: usage errors, --help
            code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
            if isinstance(e.code, str):
                print(e.code, file=sys.stderr)
        except BaseException:                   # a bug: as the interpreter would show it
            traceback.print_exc()
            code = 1
        finally:
            _exit_worker(code)


def _exit_worker(code: int) -> NoReturn:
    """As `coldsnap` ends (cli.command), but never through SystemExit: that would unwind into
    the service's loop, in this forked child."""
    try:
        threading = sys.modules["threading"]
        for t in threading.enumerate():     # as the interpreter would: join what still runs
            if t is not threading.main_thread() and not t.daemon:
                t.join()
        sys.stdout.flush()
        sys.stderr.flush()
    except BaseException:
        pass
    os._exit(code)


def _receive(sock: socket.socket) -> tuple[bytes, list[int]]:
    """One record and the fds that came with it (all of them, to be closed by the caller);
    a record cut short (too large, or too many fds) is a ProtocolError."""
    fds: list[int] = []
    data, ancdata, flags, _ = sock.recvmsg(P.MAX_REQUEST + 1, socket.CMSG_SPACE(4 * (P.REQUEST_FDS + 1)),
                                           socket.MSG_CMSG_CLOEXEC)
    for level, kind, payload in ancdata:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            fds += [int.from_bytes(payload[i:i + 4], sys.byteorder) for i in range(0, len(payload) - 3, 4)]
    if flags & (socket.MSG_TRUNC | socket.MSG_CTRUNC) or len(data) > P.MAX_REQUEST:
        for fd in fds:
            os.close(fd)
        raise P.ProtocolError("request too large or with too many fds")
    return data, fds


def _send(sock: socket.socket, record: bytes) -> None:
    try:
        sock.send(record[:P.MAX_REPLY])
    except OSError:             # the client is gone: nothing to tell
        pass


def _new_stdio() -> None:
    """sys.stdin/stdout/stderr on fds 0-2 again, buffered as the interpreter would have set
    them up for these files (stdout line-buffered only on a terminal)."""
    def stream(fd: int, old, writing: bool):
        raw = io.FileIO(fd, "w" if writing else "r", closefd=False)
        tty = raw.isatty()
        buf = io.BufferedWriter(raw) if writing else io.BufferedReader(raw)
        return io.TextIOWrapper(buf, encoding=old.encoding, errors=old.errors,
                                line_buffering=writing and (tty or fd == 2))
    sys.stdin = sys.__stdin__ = stream(0, sys.__stdin__ or sys.stdin, False)
    sys.stdout = sys.__stdout__ = stream(1, sys.__stdout__ or sys.stdout, True)
    sys.stderr = sys.__stderr__ = stream(2, sys.__stderr__ or sys.stderr, True)


def log(line: str) -> None:
    print(f"coldsnap service: {line}", file=sys.stderr, flush=True)


def daemonize(pidfile: str | None, log_file: str | None, keep: int) -> None:
    """Go to the background: the parent exits 0 once the child is set up (the socket already
    listens), the child leads a session of its own with stdio on /dev/null (stderr on
    LOG_FILE when given) and no other fd than KEEP (the listening socket): whatever its
    starter left open would otherwise stay open for as long as the service runs."""
    r, w = os.pipe()
    pid = os.fork()
    if pid:
        os.close(w)
        os.read(r, 1)           # the child is ready (or gone)
        os._exit(0)
    os.close(r)
    os.setsid()
    for low, high in ((3, min(keep, w)), (min(keep, w) + 1, max(keep, w)), (max(keep, w) + 1, os.sysconf("SC_OPEN_MAX"))):
        os.closerange(low, high)
    if pidfile:
        with open(pidfile, "w") as f:
            f.write(f"{os.getpid()}\n")
    null = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(null, fd)
    os.close(null)
    if log_file:
        fd = os.open(log_file, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
        os.dup2(fd, 2)
        os.close(fd)
    os.write(w, b"1")
    os.close(w)


def run_service(address: str | None, daemon: bool = False, pidfile: str | None = None,
                log_file: str | None = None) -> int:
    """`coldsnap service`: serve on ADDRESS until SIGTERM or SIGINT."""
    address = os.path.abspath(address or DEFAULT_ADDRESS)
    if (pidfile or log_file) and not daemon:
        raise cli.UsageError("--pidfile and --log-file go with --daemon")
    listener, ident = bind(address)
    try:
        import_everything()
        gc.collect()
        gc.freeze()             # what the imports made stays out of every later collection
        if daemon:
            daemonize(pidfile and os.path.abspath(pidfile), log_file and os.path.abspath(log_file),
                      listener.fileno())
        service = Service(listener, address, ident)
        log(f"listening on {address}")
        return service.serve()
    finally:
        try:
            st = os.stat(address)
            if (st.st_dev, st.st_ino) == ident:
                os.unlink(address)
        except OSError:
            pass
        if pidfile and daemon:
            try:
                os.unlink(os.path.abspath(pidfile))
            except OSError:
                pass
