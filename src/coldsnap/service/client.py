"""The `coldsnap` command as installed: hand the command line to a running `coldsnap service`
when there is one, else run it in this process (cli.command), with no visible difference.

This module is what every command starts with, so it imports only built-in modules (no
`socket`, whose enums cost more than the whole request; not even `os`, 1 ms to import
without `site`: `posix` is its system calls); the installed script (bin/coldsnap) even
starts it without `site`, and a command run here then adds the site directories alone
(add_site_dirs). The service to use: the address in COLDSNAP_SERVICE ("" for none), else
DEFAULT_ADDRESS when that file exists. The command runs here when nobody answers there (or a
listener of another user: it gets nothing), when the service says so (another user,
namespace, root, confinement, coldsnap, a cgroup it cannot join; `restore --shell-job`), or
when the request cannot be sent.

Through the service, this process sends its stdio and cwd (as fds), environment, umask and
arguments, then waits: SIGINT, SIGTERM and SIGHUP are passed on to the worker, and its end
is this process's end (the same exit code, or the same signal)."""
import gc
import posix
import sys

from . import protocol as P

DEFAULT_ADDRESS = "/run/coldsnap/service.sock"      # = server.DEFAULT_ADDRESS (not imported: heavy)


def package_dir() -> str:
    """This coldsnap's package directory, links resolved (the service compares it as it
    comes: a lookup there could hang it for all): os.path.realpath's result, from `posix`'s
    lstat and readlink."""
    here = __file__.rpartition("/")[0].rpartition("/")[0]     # .../coldsnap/service/client.py
    try:
        return _resolved(here if here.startswith("/") else f"{posix.getcwd()}/{here}")
    except OSError:             # a loop of links, say: as os.path.realpath makes it out
        import os.path
        return os.path.realpath(here)


def _resolved(path: str) -> str:
    """The absolute PATH of an existing file with every link followed, and . and .. gone."""
    done, todo, links = "", path.split("/")[::-1], 0
    while todo:
        name = todo.pop()
        if name in ("", "."):
            continue
        if name == "..":
            done = done.rpartition("/")[0]
            continue
        step = f"{done}/{name}"
        if posix.lstat(step).st_mode & 0o170000 != 0o120000:      # not a symbolic link
            done = step
            continue
        links += 1
        if links > 40:
            raise OSError("too many levels of symbolic links")
        target = posix.readlink(step)
        if target.startswith("/"):
            done = ""
        todo += target.split("/")[::-1]
    return done or "/"


PACKAGE = package_dir()


def command() -> None:
    """Entry point of the `coldsnap` script and of `python3 -m coldsnap`."""
    code = through_service(sys.argv[1:])
    if code is None:
        # the imports and the parse without the cyclic garbage collector (~4% of their
        # instructions); cli.main turns it back on for a command that is not one-shot
        gc.disable()
        try:
            if sys.flags.no_site:   # the installed script skipped it: the command needs its packages
                add_site_dirs()
            from ..cli import command as in_process
        except KeyboardInterrupt:   # Ctrl-C before the command can catch it: nothing began
            import _signal
            _exit(-_signal.SIGINT)
        in_process()            # exits
    _exit(code)


def add_site_dirs() -> None:
    """The site directories on sys.path as `site` puts them (a virtual environment's, the
    user's, the installation's, and the directories their .pth files name), for the packages
    a command runs with (protobuf; numpy, rich where needed), but not the code other packages
    put in .pth files (`import ...` lines, sitecustomize): that is their start-up, not the
    command's (on the test machine one such line imports certifi, importlib.resources and
    zipfile: ~6 ms of every command run here). The whole set-up (site.main) if protobuf is
    not found that way."""
    import os
    import site
    venv, system, user = [], site.PREFIXES, site.check_enableusersite()
    bin_dir = os.path.dirname(os.path.abspath(sys.executable))
    for cfg in (f"{bin_dir}/pyvenv.cfg", f"{os.path.dirname(bin_dir)}/pyvenv.cfg"):
        try:        # a virtual environment: its own directory first; the rest unless isolated
            with open(cfg, encoding="utf-8") as f:
                keys = dict((k.strip().lower(), v.strip().lower()) for k, _, v in (ln.partition("=") for ln in f))
        except OSError:
            continue
        venv = [os.path.dirname(bin_dir)]
        if keys.get("include-system-site-packages", "true") != "true":
            system, user = [], False
        break
    dirs = [*site.getsitepackages(venv), *([site.getusersitepackages()] if user else []),
            *site.getsitepackages(system)]
    for d in dirs:
        if not os.path.isdir(d):
            continue
        if d not in sys.path:
            sys.path.append(d)
        for name in sorted(n for n in os.listdir(d) if n.endswith(".pth") and not n.startswith(".")):
            try:
                with open(os.path.join(d, name), encoding="utf-8") as pth:
                    lines = pth.read().splitlines()
            except (OSError, UnicodeDecodeError):
                continue        # as `site` does: a bad .pth file is skipped
            for line in lines:
                if not line.strip() or line.startswith(("#", "import ", "import\t")):
                    continue
                path = os.path.abspath(os.path.join(d, line.rstrip()))
                if path not in sys.path and os.path.exists(path):
                    sys.path.append(path)
    if not any(os.path.isdir(f"{p}/google/protobuf") for p in sys.path):
        site.main()


def service_address() -> str | None:
    address = environ().get(b"COLDSNAP_SERVICE")
    if address is None:
        try:
            posix.stat(DEFAULT_ADDRESS)
        except (OSError, ValueError):
            return None
        return DEFAULT_ADDRESS
    return address.decode(sys.getfilesystemencoding(), "surrogateescape") or None


def environ() -> dict[bytes, bytes]:
    """The environment as it is now: os.environb where `os` is loaded (it may have changed
    it), else the one this process started with."""
    os = sys.modules.get("os")
    return posix.environ if os is None else os.environb


class _Forwarder:
    """Signal handlers that pass SIGINT/SIGTERM/SIGHUP on through the connection."""

    def __init__(self, sock) -> None:
        import _signal
        self.sock, self.caught, self._signal = sock, [], _signal
        # a signal the caller ignores (nohup, a script's background job) the command ignores
        # in-process too; but SIGTERM, which cli.main catches whatever it was
        self.old = {n: _signal.signal(n, self) for n in P.FORWARDED
                    if n == P.SIGTERM or _signal.getsignal(n) != _signal.SIG_IGN}

    def __call__(self, signum: int, frame: object) -> None:
        self.caught.append(signum)
        try:
            self.sock.send(P.encode_signal(signum))
        except OSError:
            pass

    def restore(self) -> None:
        for n, handler in self.old.items():
            self._signal.signal(n, handler)


def through_service(argv: list[str]) -> int | None:
    """The command's exit code (negative: killed by that signal) when the service ran it,
    None when it is to run here."""
    address = service_address()
    if address is None or not P.runs_in_service(argv):
        return None
    request = P.encode_request(argv, [b"%s=%s" % kv for kv in environ().items()], _umask(), PACKAGE)
    if len(request) > P.MAX_REQUEST:
        return None
    import _socket
    sock = _socket.socket(_socket.AF_UNIX, _socket.SOCK_SEQPACKET | _socket.SOCK_CLOEXEC)
    forward, kind, rest = None, "", ""
    try:
        # the request follows the connection at once: the service, woken by the connection,
        # reads it in the same round of its loop
        sock.connect(address)
        if not _ours(sock):
            return None
        cwd = posix.open(".", posix.O_PATH | posix.O_DIRECTORY | posix.O_CLOEXEC)
        try:
            fds = b"".join(fd.to_bytes(4, sys.byteorder) for fd in (0, 1, 2, cwd))
            forward = _Forwarder(sock)      # a signal from here on reaches the worker, or us below
            sock.sendmsg([request], [(_socket.SOL_SOCKET, _socket.SCM_RIGHTS, fds)])
        finally:
            posix.close(cwd)
        kind, rest = P.decode_reply(_first_reply(sock, forward, address))
        if kind != "started":
            return _caught(forward)         # local, or an error: nothing ran
    except (OSError, P.ProtocolError, ValueError):
        return _caught(forward)
    finally:
        if kind != "started":
            if forward is not None:
                forward.restore()
            sock.close()
    try:
        return _wait_for_worker(sock, rest)
    finally:
        forward.restore()
        sock.close()


NOTICE_AFTER = 5.0          # seconds of a silent service before the client says it waits
WAKE_EVERY = 0.25           # seconds: how soon a signal ends that wait


def _first_reply(sock, forward: _Forwarder, address: str) -> bytes:
    """The service's answer to the request: at once from a service that runs. A silent one
    (stopped by Ctrl-Z, say) is waited for, with a word on stderr after NOTICE_AFTER: the
    command must not run here while the service may still run it. A signal ends the wait
    (b"": _caught then ends us by it; the service, finding the request followed by a signal
    or by our end, runs nothing)."""
    import _socket
    sock.settimeout(WAKE_EVERY)
    silent = 0
    try:
        while True:
            try:
                return sock.recv(P.MAX_REPLY)
            except _socket.timeout:
                if forward.caught:
                    return b""
                silent += 1
                if silent == round(NOTICE_AFTER / WAKE_EVERY):
                    pid = int.from_bytes(sock.getsockopt(_socket.SOL_SOCKET, _socket.SO_PEERCRED, 12)[:4], sys.byteorder)
                    print(f"coldsnap: the service at {address} (pid {pid}) has not answered for "
                          f"{NOTICE_AFTER:g} s; waiting for it (Ctrl-C gives up)", file=sys.stderr, flush=True)
    finally:
        sock.settimeout(None)


def _ours(sock) -> bool:
    """Whether the listener at the other end runs as our user (SO_PEERCRED): whoever else
    listens there (someone who could write in its directory first) gets nothing of ours, no
    stdio, cwd or environment. The service serves its own user only anyway."""
    import _socket
    creds = sock.getsockopt(_socket.SOL_SOCKET, _socket.SO_PEERCRED, 12)
    return int.from_bytes(creds[4:8], sys.byteorder) == posix.geteuid()


def _wait_for_worker(sock, worker: str) -> int:
    """The worker's end as the service reports it. The command runs over there from now on:
    whatever goes wrong here, it must not run here a second time."""
    why = ""
    try:
        while data := _recv(sock):
            kind, rest = P.decode_reply(data)
            if kind == "exit":
                how, _, n = rest.partition(" ")
                return -int(n) if how == "signal" else int(n)
    except (OSError, P.ProtocolError, ValueError) as e:
        why = f" ({e})"
    print(f"coldsnap: lost the service while its worker {worker} ran the command{why}", file=sys.stderr)
    return 1


def _recv(sock) -> bytes:
    """The service's next record. It closes the connection once it sent the worker's end,
    unread what we sent meanwhile (a second signal passed on as the worker ended): the kernel
    then reports ECONNRESET, once, to our next read, ahead of that end still queued."""
    try:
        return sock.recv(P.MAX_REPLY)
    except ConnectionResetError:
        return sock.recv(P.MAX_REPLY)


def _caught(forward: _Forwarder | None) -> int | None:
    """Nothing ran: run here, unless a signal came meanwhile (it was meant for the command)."""
    if forward is not None and forward.caught:
        return -forward.caught[0]
    return None


def _umask() -> int:
    mask = posix.umask(0o022)
    posix.umask(mask)
    return mask


def _exit(code: int) -> None:
    """End as the worker did: its exit code, or its signal (then 128+N if that one is caught)."""
    try:
        sys.stdout.flush()
        sys.stderr.flush()
    except OSError:
        pass
    if code < 0:
        import _signal
        if -code not in (_signal.SIGKILL, _signal.SIGSTOP):      # neither can have a handler
            _signal.signal(-code, _signal.SIG_DFL)
        posix.kill(posix.getpid(), -code)
        code = 128 - code
    posix._exit(code)
