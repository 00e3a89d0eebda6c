"""The command-line side of the page server: `coldsnap page-server` and the --page-server
options of pre-dump and dump (kept apart from cli.py, which calls in here)."""
from __future__ import annotations

import argparse
import os
import sys
from typing import Any, Callable

from .errors import CsError


def add_tls_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--tls-cacert", metavar="PEM", help="CA certificate both ends trust (TLS with all three)")
    p.add_argument("--tls-cert", metavar="PEM", help="this end's certificate")
    p.add_argument("--tls-key", metavar="PEM", help="this end's private key")


def add_client_args(p: argparse.ArgumentParser) -> None:
    """--page-server and its options, for pre-dump and dump."""
    p.add_argument("--page-server", type=host_port, metavar="HOST:PORT",
                   help="send the pages to a page server (coldsnap's or `criu page-server`); the "
                        "other images are written in -D as CRIU does")
    p.add_argument("--token-file", metavar="FILE",
                   help="present the shared token in FILE to the page server (coldsnap's only)")
    p.add_argument("--compress", action="store_true",
                   help="zstd-compress the pages on the wire (coldsnap's page server only)")
    add_tls_args(p)


def _session_name(text: str) -> str:
    """--page-session: a session is a directory of the page server's -D (an empty name read
    the session of -D's name instead; a path was sent, for the server to refuse)."""
    if text in ("", ".", "..") or "/" in text:
        raise argparse.ArgumentTypeError(f"{text!r}: not a session name (a directory name, no path)")
    return text


def add_restore_args(p: argparse.ArgumentParser) -> None:
    """--page-server and its options, for restore: the pages of a session stored there."""
    p.add_argument("--page-server", type=host_port, metavar="HOST:PORT",
                   help="read the pages from a coldsnap page server's session (the other images "
                        "from -D); with --lazy-pages they are fetched as the process needs them")
    p.add_argument("--page-session", type=_session_name, metavar="NAME",
                   help="with --page-server: the session to read (default: the name of -D, which "
                        "is the session a dump -D DIR --page-server made)")
    p.add_argument("--token-file", metavar="FILE", help="present the shared token in FILE to the page server")
    add_tls_args(p)


def restore_pages(args: argparse.Namespace):
    """Where a restore reads its pages: None (the images directory) or a page server's session."""
    if not args.page_server:
        if args.page_session or _client_options_given(args):
            raise CsError("--page-session, --token-file and --tls-* go with --page-server")
        return None
    from .transport.source import RemotePages
    from .transport.wire import Endpoint
    session = args.page_session or os.path.basename(os.path.normpath(args.images_dir))
    return RemotePages(Endpoint.parse(args.page_server), _client_options(args), session)


def bounded(convert: Callable[[str], Any], ok: Callable[[Any], bool], bad: str, out: str = "") -> Callable[[str], Any]:
    """An argparse type: CONVERT(text), taken when OK says so. BAD (the text unreadable) and
    OUT (out of range; default BAD) say why not, "{0}" standing for the text quoted."""
    def parse(text: str):
        try:
            value = convert(text)
        except ValueError:
            raise argparse.ArgumentTypeError(bad.format(repr(text))) from None
        if not ok(value):
            raise argparse.ArgumentTypeError((out or bad).format(repr(text)))
        return value
    return parse


_port = bounded(int, lambda p: 0 <= p <= 65535, "not a port: {0}", "not a port: {0} (0 to 65535)")
_timeout = bounded(float, lambda t: 0 < t < float("inf"), "not a number of seconds: {0}", "{0}: seconds above 0")
_milliseconds = bounded(float, lambda t: 0 <= t < float("inf"), "not a number of milliseconds: {0}",
                        "{0}: milliseconds from 0 on")
_count = bounded(int, lambda n: n >= 1, "not a number: {0}", "{0}: at least 1")
_pid = bounded(int, lambda pid: pid > 0, "not a process id: {0}")


def host_port(text: str) -> str:
    """An argparse type: HOST:PORT as Endpoint.parse takes it (a usage error, exit 2, else);
    the text itself is kept, the callers parse it where they connect."""
    from .transport.wire import Endpoint
    try:
        Endpoint.parse(text)
    except CsError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    return text


def add_server_args(p: argparse.ArgumentParser) -> None:
    """Where a server listens and whom it lets in (page-server, migrate-receive)."""
    p.add_argument("--port", type=_port, required=True, metavar="N", help="TCP port (0: any free one)")
    p.add_argument("--address", default="127.0.0.1", metavar="A", help="address to listen on (default loopback)")
    p.add_argument("--token-file", metavar="FILE",
                   help="refuse every client that does not present the token in FILE first")
    p.add_argument("--idle-timeout", type=_timeout, default=60.0, metavar="SECONDS",
                   help="close a connection silent this long (default 60)")
    add_tls_args(p)


def server_options(args: argparse.Namespace):
    from .transport.server import ServerOptions
    from .transport.wire import tls_files
    return ServerOptions(token=read_token(args.token_file), idle_timeout=args.idle_timeout,
                         tls=tls_files(args.tls_cacert, args.tls_cert, args.tls_key))


def _page_server_args(ps: argparse.ArgumentParser) -> None:
    ps.add_argument("-D", "--images-dir", required=True, metavar="DIR",
                    help="each session becomes a directory in DIR (named by a coldsnap client, "
                         "session-N for a CRIU client)")
    add_server_args(ps)


def _migrate_receive_args(mr: argparse.ArgumentParser) -> None:
    mr.add_argument("-D", "--images-dir", metavar="DIR", help="keep the received images here (default: a "
                    "temporary directory, removed at the end)")
    mr.add_argument("--keep-serving", action="store_true", help="serve more migrations after the first")
    mr.add_argument("--no-prebuild", action="store_true", help="do not build the process's memory ahead as "
                    "pre-copies arrive: restore all of it at switchover")
    add_server_args(mr)


def _migrate_args(mg: argparse.ArgumentParser) -> None:
    mg.add_argument("-t", "--tree", type=_pid, required=True, metavar="PID", help="process to move")
    mg.add_argument("--to", type=host_port, required=True, metavar="HOST:PORT", help="where migrate-receive listens")
    mg.add_argument("--max-downtime", type=_milliseconds, default=100.0, metavar="MS",
                    help="stop pre-copying once the predicted final delta fits in MS (default 100)")
    mg.add_argument("--max-iterations", type=_count, default=8, metavar="N", help="pre-copy iterations at most")
    mg.add_argument("-D", "--images-dir", metavar="DIR", help="keep the source's images here (default: a "
                    "temporary directory, removed at the end)")
    mg.add_argument("--token-file", metavar="FILE", help="present this token to the destination")
    mg.add_argument("--compress", action="store_true", help="zstd-compress pages on the wire")
    mg.add_argument("--timeout", type=_timeout, default=60.0, metavar="SECONDS",
                    help="give up (the source runs on) when the destination is silent this long (default 60)")
    mg.add_argument("--post-copy", action="store_true",
                    help="after the pre-copy iterations, send no private page: the destination runs the "
                         "process at once and fetches them from this command, which serves until it has "
                         "them all (losing this host meanwhile kills the process there)")
    mg.add_argument("--json", action="store_true", help="one JSON object on stdout at the end")
    mg.add_argument("--on-switchover", metavar="CMD",
                    help="shell command run here once the destination runs the process and the source is "
                         "killed, before the source's network lock is lifted: move the service address "
                         "(env COLDSNAP_SOURCE_PID, COLDSNAP_DESTINATION_PID; its output goes to stderr)")
    add_tls_args(mg)


# cli.py's table of commands: command -> (its line in --help, what declares its options)
COMMANDS = {
    "page-server": ("receive pre-dumps and dumps sent with --page-server", _page_server_args),
    "migrate-receive": ("the destination of `coldsnap migrate`: receive, restore, exit", _migrate_receive_args),
    "migrate": ("move a running process tree to a `coldsnap migrate-receive`", _migrate_args),
}


def run_migrate_receive(args: argparse.Namespace) -> int:
    from .restore.receive import migrate_receive
    opts = server_options(args)
    answer = migrate_receive(args.address, args.port, images_dir=args.images_dir, keep_serving=args.keep_serving,
                             prebuild=not args.no_prebuild, options=opts, ready=lambda port: print(f"migrate-receive: listening on "
                                                                    f"{args.address}:{port}", flush=True))
    print(f"migrate-receive: process {answer['pid']} runs here", flush=True)
    return 0


def run_migrate(args: argparse.Namespace) -> int:
    import json
    import shutil

    from .dump.migrate import Policy, migrate
    from .images.directory import make_work_dir
    from .transport.client import ClientOptions
    from .transport.wire import Endpoint, tls_files
    opts = ClientOptions(token=read_token(args.token_file), compress=args.compress, timeout=args.timeout,
                         tls=tls_files(args.tls_cacert, args.tls_cert, args.tls_key))
    work = args.images_dir or make_work_dir("migrate")
    show = sys.stderr.isatty() or not args.json
    try:
        r = migrate(args.tree, Endpoint.parse(args.to), opts,
                    policy=Policy(args.max_downtime, args.max_iterations), workdir=work,
                    report=(lambda line: print(line, file=sys.stderr, flush=True)) if show else (lambda line: None),
                    on_switchover=_switchover_hook(args.on_switchover, args.to),
                    post_copy=args.post_copy)
    finally:
        if not args.images_dir:
            shutil.rmtree(work, ignore_errors=True)
    if args.json:
        print(json.dumps(r.as_dict()))
    else:
        print(f"migrated {r.pid} to {args.to} (pid {r.destination_pid} there) after {len(r.iterations)} "
              f"pre-copy iterations ({r.stop_reason}): downtime {r.downtime_ms:.1f} ms (final dump "
              f"{r.final_dump_ms:.1f}, restore {r.restore_ms:.1f}), {r.final_pages} pages in the final dump"
              + (f" ({r.post_copy_pages} pages came after, in {r.post_copy_ms:.0f} ms)" if r.post_copy else "")
              + f", total {r.total_ms / 1000:.2f} s")
    return 0


def _switchover_hook(cmd: str | None, to: str):
    """migrate's on_switchover for --on-switchover CMD: `sh -c CMD`, a failure in one line."""
    if cmd is None:
        return None
    import subprocess

    def run(result) -> None:
        env = dict(os.environ, COLDSNAP_SOURCE_PID=str(result.pid),
                   COLDSNAP_DESTINATION_PID=str(result.destination_pid))
        rc = subprocess.run(["/bin/sh", "-c", cmd], stdin=subprocess.DEVNULL, stdout=sys.stderr.fileno(),
                            env=env).returncode
        if rc:
            raise CsError(f"{result.pid} runs on {to} (pid {result.destination_pid} there), but "
                          f"--on-switchover exited {rc}")
    return run


def read_token(path: str | None) -> bytes | None:
    if path is None:
        return None
    try:
        with open(path, "rb") as f:
            token = f.read(4096).strip()
    except OSError as e:
        raise CsError(f"{path}: cannot read the token: {e.strerror}") from None
    if not token:
        raise CsError(f"{path}: the token file is empty")
    return token


def page_target(args: argparse.Namespace):
    """The page target of a pre-dump or dump: the images dir, or a page server."""
    from .dump.sink import LOCAL
    if not getattr(args, "page_server", None):
        if _client_options_given(args):
            raise CsError("--token-file, --compress and --tls-* go with --page-server")
        return LOCAL
    from .transport.sink import ServerPages
    from .transport.wire import Endpoint
    return ServerPages(Endpoint.parse(args.page_server), _client_options(args))


def _client_options_given(args: argparse.Namespace) -> bool:
    """Whether any option of a page-server client was given (they need --page-server)."""
    return any(getattr(args, name, None) for name in ("token_file", "compress", "tls_cacert", "tls_cert", "tls_key"))


def _client_options(args: argparse.Namespace):
    """The page-server client's token, compression and TLS, as the options give them."""
    from .transport.client import ClientOptions
    from .transport.wire import tls_files
    return ClientOptions(token=read_token(args.token_file), compress=getattr(args, "compress", False),
                         tls=tls_files(args.tls_cacert, args.tls_cert, args.tls_key))


def run_page_server(args: argparse.Namespace) -> int:
    from .errors import Interrupted
    from .transport.server import PageServer
    server = PageServer(args.images_dir, args.address, args.port, server_options(args))
    print(f"page-server: listening on {args.address}:{server.port}, sessions into {server.images_dir}", flush=True)
    try:
        server.serve_forever()
    except (Interrupted, KeyboardInterrupt):
        pass
    finally:
        server.stop()
    print("page-server: stopped", file=sys.stderr, flush=True)
    return 0
