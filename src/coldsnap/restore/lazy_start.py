"""Starting a lazy restore's server and guardian, and asking the server how far it is: the
part of restore/lazy_server.py that coldsnap itself imports (the server's own code is
imported in the forked server and guardian, so the restore command does not pay for it).

    server = start_server(images, root, log=None)     # a seed's (lazy_seed.py), else forked
    server.hand(pid, uffd, layout); ...; server.go(hold)    # or server.abort()
    lazy_status(root) -> dict
"""
from __future__ import annotations

import os
import resource
import signal
import socket
import sys

from ..errors import CsError
from ..kernel.pidfd import pidfd_open
from .lazy_name import status_name


def status_listener(root: int) -> socket.socket | None:
    """The lazy server's status socket, bound before coldsnap learns the server's pid (so a
    status asked once the restore returned waits for the answer), or None if the name is
    taken (by anybody: the pages are served all the same)."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC | socket.SOCK_NONBLOCK)
    try:
        s.bind(status_name(root))
        s.listen(8)
        return s
    except OSError as e:
        print(f"coldsnap lazy server: no status socket: {e.strerror}", file=sys.stderr)
        s.close()
        return None


def lazy_status(root: int, timeout: float = 2.0) -> dict:
    """What the server of the lazy restore of ROOT says about itself."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    try:
        s.settimeout(timeout)
        try:
            s.connect(status_name(root))
        except OSError:
            raise CsError(f"no lazy restore of {root} is in progress (every page is in)") from None
        data = b""
        while chunk := s.recv(4096):
            data += chunk
    finally:
        s.close()
    import json         # here only: lazy-status alone needs it
    return json.loads(data)


def recv_fds(sock: socket.socket, size: int = 64, most: int = 16) -> tuple[bytes, list[int]] | None:
    """One message (at most SIZE bytes) and its fds (at most MOST); None at EOF."""
    msg, fds, _, _ = socket.recv_fds(sock, size, most)
    if not msg and not fds:
        return None
    return msg, fds


# a middle process forked ahead by coldsnap service's spare worker (restore/lazy_seed.py
# Seed), taken by the next start_server
SEED = None


# -- coldsnap's handle on the server ----------------------------------------------------------

class LazyServer:
    """coldsnap's end: where to send each process's userfaultfd. The server and guardian
    start while the processes are transplanted; go() is where coldsnap waits for them."""

    def __init__(self, middle: int, info: int, to_server: socket.socket, to_guardian: socket.socket,
                 images=None):
        self._middle, self._info = middle, info
        self._to_server, self._to_guardian = to_server, to_guardian
        self._images = images           # a seed's server learns each process from hand()
        self.server = self.guardian = 0

    def hand(self, pid: int, fd: int, layout=None) -> None:
        """Give the server and the guardian each a copy of PID's uffd (held in flight until
        they read it: never a moment with no holder); a seed's server the process's LAYOUT
        (restore/lazy.py), saved runs and pages files with it."""
        msg = f"fd {pid}".encode()
        socket.send_fds(self._to_guardian, [msg], [fd])
        if self._images is None:
            socket.send_fds(self._to_server, [msg], [fd])
            return
        from .lazy_seed import encode_process
        parts, files = encode_process(self._images.procs[pid], layout)
        try:
            socket.send_fds(self._to_server, [msg + b"\n" + parts], [fd, *files])
        finally:
            for f in files:
                os.close(f)

    def go(self, hold: bool = False) -> None:
        """Every process is built: the server may push. Raises CsError if it never started.
        Waits for the guardian's word alone (it has forked the server), not for the middle
        process's exit nor the server's first steps: a loaded machine may schedule those
        late, and the processes would wait for them (settle() reaps the middle afterwards).
        HOLD: the server answers faults at once but begins its push (and the filling of its
        page tables) only once this process has exited (a command that returns as soon as
        the processes run: until its end it needs the CPUs the push would take), or after
        lazy_server.HOLD_MAX."""
        try:
            got = self._pids()
            if len(got) != 2:
                raise CsError("cannot start the lazy-pages server")
            self.guardian, self.server = int(got[0]), int(got[1])
            if not hold:
                self._to_server.send(b"go")
                return
            me = pidfd_open(os.getpid())
            try:
                socket.send_fds(self._to_server, [b"go"], [me])
            finally:
                os.close(me)
        finally:
            self._close()

    def settle(self) -> None:
        """Reap the middle process (it exits as soon as it has forked the guardian)."""
        if self._middle:
            os.waitpid(self._middle, 0)
            self._middle = 0

    def abort(self) -> None:
        """The restore failed: the server exits without pushing, the guardian kills what is left."""
        self._close()
        self._pids()
        self.settle()

    def _pids(self) -> list[bytes]:
        """The guardian's and the server's pids (the guardian's one write: a pipe never splits
        it), or fewer if the guardian ended first."""
        if self._info < 0:
            return []
        try:
            return os.read(self._info, 64).split()
        finally:
            os.close(self._info)
            self._info = -1

    def _close(self) -> None:
        for s in (self._to_server, self._to_guardian):
            s.close()


def start_server(images, root: int, log: str | None = None) -> LazyServer:
    """Start the detached guardian and server (module docstring) for the processes of IMAGES
    (restore/images.py TreeImages), whose blank processes exist already: through the seed
    forked ahead when there is one that can serve them (restore/lazy_seed.py), else by a
    fork of ours."""
    global SEED
    seed, SEED = SEED, None
    if seed is not None and not seed.serves(images):
        seed.discard()
        seed = None
    pidfds = {p: pidfd_open(p) for p in images.procs}
    c2s, s_ctl = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    c2g, g_ctl = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    g_srv, s_grd = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    info_r, info_w = os.pipe()
    out = -1
    try:
        out = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600) if log else \
            os.open(os.devnull, os.O_WRONLY | os.O_CLOEXEC)
        if seed is not None:
            try:
                middle = seed.start(root, out, info_w, (s_ctl, s_grd), (g_ctl, g_srv), pidfds)
                return LazyServer(middle, info_r, c2s, c2g, images)
            except OSError:         # the seed is gone: fork one
                pass
        for proc in images.procs.values():
            proc.private.pin()          # mapped before the fork: the directory may go once we return
        middle = os.fork()
        if middle == 0:
            images.origin.forked()      # a page server's connection stays the restore's alone
            middle_process(images, root, out, pidfds, info_w, (c2s, c2g, info_r), (s_ctl, s_grd), (g_ctl, g_srv))
    except BaseException:
        os.close(info_r)
        c2s.close()
        c2g.close()
        raise
    finally:
        for fd in (out, info_w, *pidfds.values()):
            if fd >= 0:
                os.close(fd)
        for s in (s_ctl, g_ctl, g_srv, s_grd):
            s.close()
    return LazyServer(middle, info_r, c2s, c2g)


def middle_process(images, root, out, pidfds, info_w, coldsnaps, server_ends, guardian_ends) -> None:
    """The middle process (forked, or a seed): a session of its own, then the guardian,
    which forks the server. Never returns."""
    code = 1
    try:
        for s in coldsnaps:
            s.close() if isinstance(s, socket.socket) else os.close(s)
        os.setsid()
        # every fork of a restored process while pages are outstanding costs the server and
        # the guardian an fd each (its child's uffd)
        _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        null = os.open(os.devnull, os.O_RDONLY)
        os.dup2(null, 0)
        os.close(null)
        os.dup2(out, 1)
        os.dup2(out, 2)
        sys.stdout = os.fdopen(1, "w", buffering=1, closefd=False)
        sys.stderr = os.fdopen(2, "w", buffering=1, closefd=False)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)   # coldsnap's handler unwinds a command
        for sig in (signal.SIGINT, signal.SIGHUP, signal.SIGPIPE):   # a guardian gone is no reason to die
            signal.signal(sig, signal.SIG_IGN)
        if os.fork() == 0:
            _guardian_main(images, root, pidfds, info_w, server_ends, guardian_ends)
        code = 0
    finally:
        os._exit(code)


def _guardian_main(images, root, pidfds, info_w, server_ends, guardian_ends) -> None:
    code = 1
    try:
        listener = status_listener(root)
        server = os.fork()
        if server == 0:
            code = 1
            try:
                os.setsid()    # a session apart from the guardian's: one kill of a session spares the other
                os.close(info_w)
                for fd in pidfds.values():
                    os.close(fd)
                for s in guardian_ends:
                    s.close()
                from .lazy_server import Server     # numpy and all: coldsnap does not wait for it
                code = Server(images, root, *server_ends, listener).run()
            except BaseException as e:      # noqa: BLE001 - the log says why; the guardian acts
                print(f"coldsnap lazy server: {e!r}", file=sys.stderr)
            finally:
                os._exit(code)
        for s in (*server_ends, *([listener] if listener is not None else [])):
            s.close()
        os.write(info_w, f"{os.getpid()} {server}".encode())    # what coldsnap's go() waits for
        os.close(info_w)
        from .lazy_guardian import Guardian
        code = Guardian(server, pidfds, *guardian_ends).run()
    except BaseException as e:              # noqa: BLE001
        print(f"coldsnap lazy guardian: {e!r}", file=sys.stderr)
    finally:
        os._exit(code)
