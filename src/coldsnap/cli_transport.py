"""The command-line side of the page server: `coldsnap page-server` and the --page-server
options of pre-dump and dump (kept apart from cli.py, which calls in here)."""
from __future__ import annotations

import argparse
import sys

from .errors import CsError


def add_tls_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--tls-cacert", metavar="PEM", help="CA certificate both ends trust (TLS with all three)")
    p.add_argument("--tls-cert", metavar="PEM", help="this end's certificate")
    p.add_argument("--tls-key", metavar="PEM", help="this end's private key")


def add_client_args(p: argparse.ArgumentParser) -> None:
    """--page-server and its options, for pre-dump and dump."""
    p.add_argument("--page-server", metavar="HOST:PORT",
                   help="send the pages to a page server (coldsnap's or `criu page-server`); the "
                        "other images are written in -D as CRIU does")
    p.add_argument("--token-file", metavar="FILE",
                   help="present the shared token in FILE to the page server (coldsnap's only)")
    p.add_argument("--compress", action="store_true",
                   help="zstd-compress the pages on the wire (coldsnap's page server only)")
    add_tls_args(p)


def add_commands(sub) -> None:
    ps = sub.add_parser("page-server", help="receive pre-dumps and dumps sent with --page-server")
    ps.add_argument("-D", "--images-dir", required=True, metavar="DIR",
                    help="each session becomes a directory in DIR (named by a coldsnap client, "
                         "session-N for a CRIU client)")
    ps.add_argument("--port", type=int, required=True, metavar="N", help="TCP port (0: any free one)")
    ps.add_argument("--address", default="127.0.0.1", metavar="A", help="address to listen on (default loopback)")
    ps.add_argument("--token-file", metavar="FILE",
                    help="refuse every client that does not present the token in FILE first")
    ps.add_argument("--idle-timeout", type=float, default=60.0, metavar="SECONDS",
                    help="close a connection silent this long (default 60)")
    add_tls_args(ps)


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
        if getattr(args, "token_file", None) or getattr(args, "compress", False) or getattr(args, "tls_cacert", None):
            raise CsError("--token-file, --compress and --tls-* go with --page-server")
        return LOCAL
    from .transport.client import ClientOptions
    from .transport.sink import ServerPages
    from .transport.wire import Endpoint, tls_files
    opts = ClientOptions(token=read_token(args.token_file), compress=args.compress,
                         tls=tls_files(args.tls_cacert, args.tls_cert, args.tls_key))
    return ServerPages(Endpoint.parse(args.page_server), opts)


def run_page_server(args: argparse.Namespace) -> int:
    from .errors import Interrupted
    from .transport.server import PageServer, ServerOptions
    from .transport.wire import tls_files
    opts = ServerOptions(token=read_token(args.token_file), idle_timeout=args.idle_timeout,
                         tls=tls_files(args.tls_cacert, args.tls_cert, args.tls_key))
    server = PageServer(args.images_dir, args.address, args.port, opts)
    print(f"page-server: listening on {args.address}:{server.port}, sessions into {server.images_dir}", flush=True)
    try:
        server.serve_forever()
    except (Interrupted, KeyboardInterrupt):
        pass
    finally:
        server.stop()
    print("page-server: stopped", file=sys.stderr, flush=True)
    return 0
