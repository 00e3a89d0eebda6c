"""The `coldsnap` command: a thin argparse front on the API, CRIU-style options.

The error boundary: every error leaves here as one line `coldsnap: ...` on stderr (and, with
--json, as a JSON object on stdout) with an exit code that names its class (EXIT_CODES)."""
from __future__ import annotations

import argparse
import gc
import os
import signal
import sys
from typing import Callable

from . import cli_stream, cli_transport
from .errors import AccessDenied, CsError, ImageError, Interrupted, NoSuchProcess, Unsupported

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_NO_SUCH_PROCESS = 3
EXIT_ACCESS_DENIED = 4
EXIT_UNSUPPORTED = 5
EXIT_BAD_IMAGE = 6
EXIT_STDOUT_GONE = 128 + signal.SIGPIPE     # as a filter SIGPIPE kills: `coldsnap show DIR | head`
EXIT_CODES = [(NoSuchProcess, EXIT_NO_SUCH_PROCESS), (AccessDenied, EXIT_ACCESS_DENIED),
              (Unsupported, EXIT_UNSUPPORTED), (ImageError, EXIT_BAD_IMAGE)]

EPILOG = """exit status:
  0    success (restore without -d: the restored process's own exit status, or
       128+N when signal N killed it)
  1    any other error (one line on stderr: "coldsnap: ...")
  2    usage: bad options or option combinations
  3    no such process (it never existed or exited meanwhile)
  4    access denied (permissions, or the process is traced by someone else)
  5    the process uses something coldsnap does not support
  6    bad, missing or refused images
  130  interrupted by SIGINT (Ctrl-C), 143 by SIGTERM, 129 by SIGHUP: the target was resumed first
  141  stdout's reader went away (`coldsnap show DIR | head`): nothing more is said

--json: the command's result as one JSON object on stdout; on an error the object is
{"error": {"type", "message", "exit_code"[, "pid"]}} and stderr says it as without --json.
"""


class UsageError(CsError):
    """Options that parse but do not go together (exit code 2)."""


def exit_code(e: BaseException) -> int:
    """The exit code of coldsnap for an error that reached the CLI."""
    if isinstance(e, KeyboardInterrupt):
        return 128 + signal.SIGINT
    if isinstance(e, Interrupted):
        return 128 + e.signum
    if isinstance(e, UsageError):
        return EXIT_USAGE
    cause = getattr(e, "cause", None)       # an error that words another (a failed migration)
    if isinstance(e, CsError) and isinstance(cause, CsError):
        return exit_code(cause)
    return next((code for cls, code in EXIT_CODES if isinstance(e, cls)), EXIT_ERROR)


def error_words(e: BaseException) -> str:
    """The one line a person reads for an error that reached the CLI: control characters
    (a newline in a path the error names: a file's or one a hostile image made up) are
    shown escaped, so that it stays one line."""
    if isinstance(e, KeyboardInterrupt):
        return "interrupted by SIGINT"
    if isinstance(e, OSError) and not isinstance(e, CsError):
        words = f"{e.strerror or e}" + (f": {e.filename}" if e.filename else "")
    else:
        words = str(e)
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in words)


def _size(text: str) -> int:
    units = {"k": 1 << 10, "m": 1 << 20, "g": 1 << 30}
    t = text.strip().lower().rstrip("b").rstrip("i")
    mult = units.get(t[-1:], 1)
    try:
        size = int(t[:-1] if t[-1:] in units else t) * mult
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a size: {text!r}") from None
    if size < 0:
        raise argparse.ArgumentTypeError(f"not a size: {text!r}")
    return size


def _buffer_size(text: str) -> int:
    """A copy buffer's size: a page at least (found wrong only after the freeze, otherwise)."""
    size = _size(text)
    if size < 4096:
        raise argparse.ArgumentTypeError(f"{text!r}: a buffer holds one page (4K) at least")
    return size


_count = cli_transport._count
_seconds = cli_transport.bounded(float, lambda t: 0 <= t < float("inf"), "not a number of seconds: {0}",
                                 "{0}: seconds from 0 on")
_pid = cli_transport._pid


class _Parser(argparse.ArgumentParser):
    """argparse, which also answers a usage error with a JSON object when --json was given."""

    def error(self, message: str):
        if "--json" in self._argv:
            print(_json({"error": {"type": "UsageError", "message": message, "exit_code": EXIT_USAGE}}))
        super().error(message)

    _argv: list[str] = []


def _verbosity(text: str) -> int:
    """CRIU's -vN, and -vvv (as argparse gives it: "vv"): each v one level above its
    default 2, up to 4."""
    if text.isdigit():
        return int(text)
    if set(text) <= {"v"}:
        return min(4, 3 + len(text))
    raise argparse.ArgumentTypeError(f"not a verbosity: {text!r}")


def _criu_log_args(p: argparse.ArgumentParser) -> None:
    """CRIU's logging options, so that its command lines run: coldsnap says one line (its
    result or its error) at any verbosity, and -o keeps those lines."""
    p.add_argument("-v", dest="verbosity", nargs="?", const=3, type=_verbosity, metavar="N",
                   help="accepted as CRIU's -v, -vN, -vvv: coldsnap says the same at every level")
    p.add_argument("-o", "--log-file", metavar="FILE",
                   help="also append the command's result or error line to FILE (CRIU's log file; "
                        "a relative FILE is in the working directory, not in -D)")


def _sized(formatter: type[argparse.HelpFormatter]) -> Callable[..., argparse.HelpFormatter]:
    """FORMATTER given the width it would otherwise ask shutil.get_terminal_size for, found
    the same way (COLUMNS, else stdout's terminal, else 80; minus argparse's margin of 2):
    argparse makes a formatter at every add_argument, and shutil imports zlib, bz2 and lzma."""
    def make(prog: str) -> argparse.HelpFormatter:
        return formatter(prog, width=_columns() - 2)
    return make


def _columns() -> int:
    try:
        columns = int(os.environ.get("COLUMNS", ""))
    except ValueError:
        columns = 0
    if columns <= 0:
        try:
            columns = os.get_terminal_size(sys.__stdout__.fileno()).columns
        except (AttributeError, ValueError, OSError):
            columns = 0
    return columns if columns > 0 else 80


_NO_CRIU_LOG = ("service", "demo")      # the service has its own -o; the demo is no CRIU command


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The parser of the `coldsnap` command line, for every command (None) or, as a run
    needs, for COMMAND alone (the whole costs ~6 ms of each start). A name that is no
    command gets every command by name, for argparse's answer."""
    p = _Parser(prog="coldsnap", description="Checkpoint/restore of Linux processes.",
                epilog=EPILOG, formatter_class=_sized(argparse.RawDescriptionHelpFormatter))
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in [command] if command in _COMMANDS else _COMMANDS:
        words, declare = _COMMANDS[name]
        cmd = sub.add_parser(name, help=words, formatter_class=_sized(argparse.HelpFormatter))
        if command is None or command == name:
            declare(cmd)
            if name not in _NO_CRIU_LOG:
                _criu_log_args(cmd)
    return p


_BUILT: dict[str, argparse.ArgumentParser] = {}     # a resident service's, one per command


def prebuild_parsers() -> None:
    """Every command's parser built now, once (a resident service, before it forks its
    workers: each would otherwise build its command's, ~1 ms of every command). Parsing does
    not change a parser, and a worker runs one command."""
    for name in _COMMANDS:
        _BUILT[name] = build_parser(name)


def _command_in(argv: list[str]) -> str | None:
    """The command an argument list names (its first word that is not an option), if any."""
    return next((a for a in argv if not a.startswith("-")), None)


def _json_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", action="store_true", help="print the result as one JSON object on stdout")


def _freeze_cgroup_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--freeze-cgroup", metavar="PATH",
                   help="freeze the tree through this cgroup's freezer (v1 freezer.state or v2 "
                        "cgroup.freeze) before seizing it; every process below the root must be in it")


def _pre_dump_args(pd: argparse.ArgumentParser) -> None:
    _json_arg(pd)
    pd.add_argument("-t", "--tree", type=_pid, required=True, metavar="PID", help="process to pre-dump")
    pd.add_argument("-D", "--images-dir", metavar="DIR", help="new or empty directory for the images")
    cli_stream.add_args(pd)
    pd.add_argument("--prev-images-dir", metavar="DIR", help="previous images to link as parent")
    pd.add_argument("--pre-dump-mode", choices=("nofreeze", "live", "frozen"),
                    help="nofreeze (default where userfaultfd write tracking works): track writes "
                         "with a userfaultfd parked in the target, never freeze it after the one "
                         "injected call; live: freeze only to scan, leave nothing behind; frozen: "
                         "copy pages before resuming (the baseline)")
    pd.add_argument("--buffer-size", type=_buffer_size, default="4M", metavar="SIZE", help="drain buffer (default 4M)")
    pd.add_argument("--scan", choices=("auto", "ioctl", "read"), default="auto",
                    help="page scan: PAGEMAP_SCAN ioctl or /proc/PID/pagemap read")
    pd.add_argument("--iterations", type=_count, default=1, metavar="N",
                    help="run N pre-dumps into DIR/1..DIR/N, each saving only pages written since the last")
    pd.add_argument("--track-mem", choices=("uffd", "soft-dirty", "none"),
                    help="dirty tracking: userfaultfd write-protect (chosen where it works), "
                         "soft-dirty bits (kernels with CONFIG_MEM_SOFT_DIRTY; read and cleared "
                         "in a short freeze) or none. For a single pre-dump uffd is "
                         "--pre-dump-mode nofreeze (the tracking fd stays parked in the target for "
                         "the next run, see `untrack`) and none is live")
    pd.add_argument("--auto-dedup", action="store_true",
                    help="free the parent images' copies of pages this pre-dump wrote again")
    pd.add_argument("--interval", type=_seconds, default=0.0, metavar="SECONDS",
                    help="pause between the iterations of a series")
    cli_transport.add_client_args(pd)
    _freeze_cgroup_arg(pd)


def _dump_args(du: argparse.ArgumentParser) -> None:
    _json_arg(du)
    du.add_argument("-t", "--tree", type=_pid, required=True, metavar="PID", help="process to dump")
    du.add_argument("-D", "--images-dir", metavar="DIR", help="new or empty directory for the images")
    cli_stream.add_args(du)
    du.add_argument("--prev-images-dir", metavar="DIR",
                    help="previous (pre-)dump to link as parent; with its parked tracking, "
                         "pages not written since are left to it")
    du.add_argument("--leave-running", action="store_true", help="resume the process instead of killing it")
    du.add_argument("-j", "--shell-job", action="store_true", help="allow a process attached to a terminal")
    du.add_argument("--ext-unix-sk", action="store_true",
                    help="dump a datagram unix socket connected to a named socket outside the tree; "
                         "restore connects it to that name again")
    du.add_argument("--ghost-limit", type=_size, default="1M", metavar="SIZE",
                    help="largest deleted file held open or mapped whose contents are saved (default 1M)")
    _freeze_cgroup_arg(du)
    cli_transport.add_client_args(du)
    du.add_argument("--tcp-established", action="store_true",
                    help="save established TCP connections (the default; CRIU's spelling, accepted)")
    du.add_argument("--tcp-close", action="store_true",
                    help="drop established TCP connections instead of saving them: they come back "
                         "closed (listening sockets are kept)")
    du.add_argument("--network-lock", choices=("nftables", "skip"), default="nftables",
                    help="how the packets of saved connections are held back until the restore: an "
                         "nftables table of their own (default), or not at all (skip: the kernel may "
                         "answer the peer with a reset meanwhile)")


def _untrack_args(ut: argparse.ArgumentParser) -> None:
    _json_arg(ut)
    ut.add_argument("pid", type=_pid, metavar="PID")


def _restore_args(rs: argparse.ArgumentParser) -> None:
    _json_arg(rs)
    rs.add_argument("-D", "--images-dir", metavar="DIR", help="images of `coldsnap dump`")
    cli_stream.add_args(rs, restore=True)
    rs.add_argument("-d", "--restore-detached", action="store_true",
                    help="detach once the process runs (default: wait and pass its exit status on)")
    rs.add_argument("--ext-unix-sk", action="store_true",
                    help="accepted for CRIU's command lines: what the dump let go (dump --ext-unix-sk) is "
                         "reconnected anyway")
    rs.add_argument("-j", "--shell-job", action="store_true",
                    help="give the process coldsnap's terminal where it had one")
    rs.add_argument("--lazy-pages", action="store_true",
                    help="let the process run before its private memory is in: a detached server "
                         "answers its page faults and pushes the rest (see `lazy-status`)")
    rs.add_argument("--lazy-log", metavar="FILE", help="with --lazy-pages: the server's log (default: none)")
    cli_transport.add_restore_args(rs)
    rs.add_argument("--tcp-established", action="store_true",
                    help="rebuild saved TCP connections (the default; CRIU's spelling, accepted)")
    rs.add_argument("--tcp-close", action="store_true",
                    help="bring saved TCP connections back closed instead (listeners are kept)")
    rs.add_argument("--network-lock", choices=("nftables", "skip"), default="nftables",
                    help="hold the connections' packets back while they are rebuilt (default), or not "
                         "(skip); a lock the dump left is lifted either way")


def _lazy_status_args(ls: argparse.ArgumentParser) -> None:
    _json_arg(ls)
    ls.add_argument("pid", type=_pid, metavar="PID", help="the restored root process")


def _network_unlock_args(nu: argparse.ArgumentParser) -> None:
    _json_arg(nu)
    nu.add_argument("-D", "--images-dir", required=True, metavar="DIR", help="images of `coldsnap dump`")


def _dir_args(p: argparse.ArgumentParser) -> None:
    _json_arg(p)
    p.add_argument("dir", metavar="DIR")


def _gc_args(p: argparse.ArgumentParser) -> None:
    _json_arg(p)
    p.add_argument("dir", metavar="DIR", nargs="?",
                   help="images directory (default: the work directories in the temporary directory)")


def _demo_size(text: str) -> int:
    """The demo workload's memory: 1M at least (--size 0 crashed it, a size that is no
    whole number of pages made it write past its end: 'cannot seize N: it is a zombie')."""
    size = _size(text)
    if size < 1 << 20:
        raise argparse.ArgumentTypeError(f"{text!r}: the demo workload needs 1M at least")
    return size & ~4095


def _demo_args(dm: argparse.ArgumentParser) -> None:
    dm.add_argument("--size", type=_demo_size, default="256M", metavar="SIZE", help="workload memory (default 256M)")
    dm.add_argument("-D", "--images-dir", metavar="DIR", help="keep the images here (default: a temporary dir)")


def _socket_path(text: str) -> str:
    """--address of the service: an empty one served on the default socket, the very one
    COLDSNAP_SERVICE="" keeps every command away from."""
    if not text:
        raise argparse.ArgumentTypeError("an empty path (leave --address out for the default socket)")
    return text


def _service_args(sv: argparse.ArgumentParser) -> None:
    sv.add_argument("--address", type=_socket_path, metavar="PATH",
                    help="the socket to serve on (default /run/coldsnap/service.sock)")
    sv.add_argument("-d", "--daemon", action="store_true", help="go to the background once listening")
    sv.add_argument("--pidfile", metavar="FILE", help="with --daemon: write the service's pid here")
    sv.add_argument("-o", "--log-file", metavar="FILE", help="with --daemon: append the service's log here")


# command -> (its line in --help, what declares its options)
_COMMANDS = {
    "pre-dump": ("save a running process's memory, keeping it frozen only to plan", _pre_dump_args),
    "dump": ("checkpoint a process for good: all its state, then kill it", _dump_args),
    "untrack": ("remove coldsnap's write tracking from a process and every process below it", _untrack_args),
    "restore": ("bring a dumped process back to life (same PID and TIDs)", _restore_args),
    "lazy-status": ("pages still to come of a --lazy-pages restore", _lazy_status_args),
    "network-unlock": ("lift the network lock a dump left for its TCP connections (restore lifts it itself)",
                       _network_unlock_args),
    "show": ("summarise an images directory", _dir_args),
    "gc": ("remove the staging directories that killed coldsnap runs left beside images directory DIR "
           "(and inside DIR), without DIR the work directories of killed migrate and migrate-receive runs "
           "in the temporary directory; a live run's are kept", _gc_args),
    "check": ("report which kernel features coldsnap can use here, and which CRIU versions its images are "
              "tested with", _json_arg),
    **cli_transport.COMMANDS,
    "service": ("serve commands from a resident process with every module loaded: `coldsnap` "
                "hands them over (COLDSNAP_SERVICE names the socket)", _service_args),
    "demo": ("start a sample workload, pre-dump it, print the stats", _demo_args),
}


def _json(obj, **how) -> str:
    """obj as JSON text (json is imported only when --json asks for it)."""
    import json
    return json.dumps(obj, **how)


def _out(args: argparse.Namespace, obj: dict, *lines: str) -> None:
    """The result of a command: one JSON object with --json, else its lines of text."""
    _close_display()
    if getattr(args, "json", False):
        print(_json(obj))
        _log(_json(obj))
    else:
        for line in lines:
            print(line)
        _log(*lines)


_log_file = None        # -o FILE: opened before the command runs, so that a bad path fails first


def _open_log(args: argparse.Namespace) -> None:
    global _log_file
    path = getattr(args, "log_file", None)
    if path is not None and args.command not in _NO_CRIU_LOG:
        try:
            _log_file = open(path, "a", encoding="utf-8")
        except OSError as e:
            raise CsError(f"{path}: cannot open the log file: {e.strerror}") from None


def _log(*lines: str) -> None:
    """LINES appended to the -o log file, if there is one."""
    if _log_file is not None:
        try:
            _log_file.write("".join(f"{line}\n" for line in lines))
            _log_file.flush()
        except OSError:
            pass            # the command's own output said it already


def _close_log() -> None:
    global _log_file
    if _log_file is not None:
        try:
            _log_file.close()
        except OSError:
            pass
        _log_file = None


# Opening /proc/PID/map_files (every dump) and choosing a PID (clone3 set_tid, every
# restore) take one of these; without either a command failed half-way with a raw EPERM.
CAP_SYS_ADMIN, CAP_CHECKPOINT_RESTORE = 21, 40


def _need_checkpoint_caps(command: str) -> None:
    from .kernel.procfs import effective_caps
    if not effective_caps() & (1 << CAP_SYS_ADMIN | 1 << CAP_CHECKPOINT_RESTORE):
        raise AccessDenied(None, command,       # type: ignore[arg-type]  (no process is concerned)
                           "needs CAP_CHECKPOINT_RESTORE or CAP_SYS_ADMIN (run it as root)")


def run(args: argparse.Namespace) -> int:
    if args.command in ("pre-dump", "dump", "restore"):
        cli_stream.check(args, UsageError)
    if args.command in ("dump", "restore", "migrate", "migrate-receive"):
        _need_checkpoint_caps(args.command)
    if args.command in ("pre-dump", "dump"):
        _refuse_lazy(args.tree)
        if args.stream:
            return cli_stream.run_dump(args, run_command, _out)
    return run_command(args)


def run_command(args: argparse.Namespace, out: Callable[..., None] = _out) -> int:
    """The command ARGS names; its result said through OUT (--stream: cli_stream.run_dump's)."""
    if args.command == "pre-dump" and args.iterations > 1:
        return run_series(args)
    if args.command == "pre-dump":
        from .dump.plan import ModeMismatch, choose_pre_dump
        from .dump.predump import pre_dump
        try:
            mode, track = choose_pre_dump(args.pre_dump_mode, args.track_mem, held=bool(args.freeze_cgroup))
        except ModeMismatch as e:
            raise UsageError(str(e)) from None
        stats = pre_dump(args.tree, args.images_dir, mode=mode, track=track, buffer_size=args.buffer_size,
                         scan=args.scan, prev_images_dir=args.prev_images_dir, freeze_cgroup=args.freeze_cgroup,
                         pages=cli_transport.page_target(args))
        if track == "none":
            lines = [f"pre-dump of {args.tree} ({stats.mode}): {stats.pages_written} pages written, "
                     f"{stats.pages_skipped} skipped, frozen {stats.frozen_time / 1000:.2f} ms"]
        else:
            lines = [f"pre-dump of {args.tree} (tracking {stats.track_backend}): {stats.pages_written} pages "
                     f"written, {stats.pages_skipped_parent} in parent, {stats.pages_skipped} skipped, "
                     f"frozen {stats.frozen_time / 1000:.2f} ms"]
        if stats.uffd_fd >= 0:
            lines.append(f"write tracking stays in {args.tree} (fd {stats.uffd_fd}) until `coldsnap dump` "
                         f"or `coldsnap untrack {args.tree}`")
        out(args, _dedup(args, args.images_dir, lines, _result(args, stats)), *lines)
        return 0
    if args.command == "dump":
        from .dump.dump import dump
        if args.tcp_close and args.tcp_established:
            raise UsageError("--tcp-close and --tcp-established contradict each other")
        stats = dump(args.tree, args.images_dir, prev_images_dir=args.prev_images_dir,
                     leave_running=args.leave_running, shell_job=args.shell_job,
                     freeze_cgroup=args.freeze_cgroup, ext_unix_sk=args.ext_unix_sk,
                     pages=cli_transport.page_target(args), tcp_close=args.tcp_close,
                     network_lock=args.network_lock != "skip",
                     ghost_limit=args.ghost_limit, durable=not args.stream)
        out(args, _result(args, stats, left_running=args.leave_running),
            f"dump of {args.tree} (tracking {stats.track_backend}): {stats.pages_written} pages "
            f"written, {stats.pages_skipped_parent} in parent, frozen {stats.frozen_time / 1000:.2f} ms, "
            f"{'left running' if args.leave_running else 'killed'}")
        return 0
    if args.command == "page-server":
        return cli_transport.run_page_server(args)
    if args.command == "migrate-receive":
        return cli_transport.run_migrate_receive(args)
    if args.command == "migrate":
        return cli_transport.run_migrate(args)
    if args.command == "untrack":
        from .dump.untrack import untrack
        closed = untrack(args.pid)
        where = ", ".join(f"{p} (fd {', '.join(map(str, fds))})" for p, fds in closed.items())
        out(args, {"pid": args.pid, "closed_fds": closed.get(args.pid, []),
                   "processes": {str(p): fds for p, fds in closed.items()}},
            f"closed coldsnap's userfaultfd in {where}" if closed
            else f"{args.pid} and the processes below it carry no coldsnap tracking")
        return 0
    if args.command == "restore":
        return run_restore(args)
    if args.command == "lazy-status":
        from .restore.lazy_start import lazy_status
        try:
            st = lazy_status(args.pid)
        except CsError:
            from .kernel.procfs import read_stat
            read_stat(args.pid)     # no such process at all: NoSuchProcess, exit 3
            raise
        out(args, st, f"lazy restore of {args.pid}: {st['pages_left']} of {st['pages_total']} pages still to "
                      f"come ({st['faults']} faults, {st['pushed_pages']} pages pushed, server {st['server']})")
        return 0
    if args.command == "network-unlock":
        from .restore.connections import unlock_images
        table = unlock_images(args.images_dir)
        out(args, {"images_dir": str(args.images_dir), "table": table},
            f"removed nftables table inet {table}" if table else f"{args.images_dir}: the dump left no network lock")
        return 0
    if args.command == "show":
        from .show import describe, render
        info = describe(args.dir)
        print(_json(info, indent=2) if args.json else render(info))
        return 0
    if args.command == "gc":
        from .images.directory import collect_garbage
        removed, kept = collect_garbage(args.dir)
        as_dict = lambda s: {"path": str(s.path), "pid": s.pid}  # noqa: E731
        out(args, {"removed": [as_dict(s) for s in removed], "kept": [as_dict(s) for s in kept]},
            *[f"removed {s.path} (left by coldsnap {s.pid})" for s in removed],
            *[f"kept {s.path}: coldsnap {s.pid} is still writing it" for s in kept])
        return 0
    if args.command == "check":
        from . import CRIU_TESTED
        from .kernel.features import FALLBACKS, probe
        feats = probe().as_dict()
        out(args, {**feats, "criu_tested": list(CRIU_TESTED)},
            *(f"{name:16} {'yes' if ok else 'no '}  " + ("" if ok else f"-> {FALLBACKS[name]}")
              for name, ok in feats.items()),
            f"{'criu':16} images tested both ways with CRIU {', '.join(CRIU_TESTED)}")
        return 0
    if args.command == "service":
        from .service.server import run_service
        return run_service(args.address, daemon=args.daemon, pidfile=args.pidfile, log_file=args.log_file)
    if args.command == "demo":
        from .demo import demo
        return demo(args.size, args.images_dir)
    raise AssertionError(args.command)


def _result(args: argparse.Namespace, stats, **more) -> dict:
    """The JSON object of a (pre-)dump: which process, where, and its stats."""
    return {"pid": args.tree, "images_dir": str(args.images_dir), **more, "stats": stats.as_dict()}


def _dedup(args: argparse.Namespace, images_dir, lines: list[str], result: dict) -> dict:
    """--auto-dedup after a pre-dump: its line of text, and `dedup_freed_bytes` in the JSON."""
    if args.auto_dedup:
        from .dump.dedup import dedup_parents
        freed = dedup_parents(images_dir, args.tree)
        lines.append(f"auto-dedup: {freed >> 20} MiB freed in the parent images")
        result["dedup_freed_bytes"] = freed
    return result


def run_series(args: argparse.Namespace) -> int:
    import time

    from .dump.iterate import pre_dump_series
    if os.path.isdir(args.images_dir) and os.listdir(args.images_dir):
        raise ImageError(f"{args.images_dir}: images directory is not empty")
    if args.prev_images_dir:
        raise UsageError("--prev-images-dir cannot start a series yet; give a new -D instead")
    if args.freeze_cgroup:
        raise UsageError("--freeze-cgroup does not go with --iterations yet")
    series = pre_dump_series(args.tree, args.images_dir, args.iterations,
                             track=args.track_mem,
                             buffer_size=args.buffer_size, pages=cli_transport.page_target(args),
                             between=(lambda i: time.sleep(args.interval)) if args.interval else None)
    lines = [f"{'iter':>4} {'tracking':8} {'frozen ms':>9} {'written':>9} {'in parent':>9} {'skipped':>7}"]
    lines += [f"{i:4} {s.track_backend:8} {s.frozen_time / 1000:9.2f} {s.pages_written:9} "
              f"{s.pages_skipped_parent:9} {s.pages_skipped:7}" for i, s in enumerate(series, 1)]
    result = {"pid": args.tree, "images_dir": str(args.images_dir),
              "iterations": [s.as_dict() for s in series]}
    if args.auto_dedup:
        dedup = [_dedup(args, os.path.join(args.images_dir, str(i)), lines, {})
                 for i in range(2, args.iterations + 1)]
        result["dedup_freed_bytes"] = sum(d["dedup_freed_bytes"] for d in dedup)
    _out(args, result, *lines)
    return 0


def _refuse_lazy(pid: int) -> None:
    """A process whose pages still come from a lazy restore's server has holes that its
    pagemap shows as never written: a dump now would save zeros for them."""
    from .restore.lazy_name import lazy_server_listening
    if lazy_server_listening(pid):
        err = Unsupported(f"{pid} is being restored lazily: pages are still to come from its server; "
                          f"dump it once `coldsnap lazy-status {pid}` says none are left")
        err.pid = pid
        raise err


def run_restore(args: argparse.Namespace) -> int:
    if args.lazy_log and not args.lazy_pages:
        raise UsageError("--lazy-log goes with --lazy-pages")
    if args.tcp_close and args.tcp_established:
        raise UsageError("--tcp-close and --tcp-established contradict each other")
    how = dict(shell_job=args.shell_job, lazy_pages=args.lazy_pages, lazy_log=args.lazy_log,
               tcp_close=args.tcp_close, network_lock=args.network_lock != "skip")
    if args.stream:
        with cli_stream.StreamSpool() as spool:     # removed once the process runs
            top = spool.read()          # before the restore's imports: the writer waits for no one
            from .restore.restore import restore
            res = restore(top, detach=True, **how)
        if not args.restore_detached:
            res.exit_status = os.waitpid(res.pid, 0)[1]
    else:
        from .restore.restore import restore
        # detached, the command ends as the process runs: the lazy server's push waits for that
        res = restore(args.images_dir, detach=args.restore_detached, pages=cli_transport.restore_pages(args),
                      lazy_hold=args.restore_detached, **how)
    result = {"pid": res.pid, "processes": res.processes, "threads": res.threads, "total_ms": round(res.total_ns / 1e6, 3),
              "memory_ms": round(res.stats.memory_ns / 1e6, 3), "injected_calls": res.stats.calls,
              "round_trips": res.stats.trips}
    if res.lazy_server is not None:
        result.update(lazy_server=res.lazy_server, lazy_guardian=res.lazy_guardian, lazy_pages=res.stats.lazy_pages)
    if res.exit_status is None:
        _close_display()
        if args.json:
            _out(args, result)
        else:
            s = res.stats
            tree = f"{res.processes} processes, " if res.processes > 1 else ""
            line = (f"restored {res.pid} ({tree}{res.threads} thread{'s' if res.threads > 1 else ''}) in "
                    f"{res.total_ns / 1e6:.1f} ms, memory {s.memory_ns / 1e6:.1f} ms, {s.calls} injected calls in {s.trips} round trips"
                    + (f", {s.lazy_pages} pages to come from server {res.lazy_server}" if res.lazy_server else ""))
            print(line, file=sys.stderr)
            _log(line)
        return 0
    status = res.exit_status
    code = os.WEXITSTATUS(status) if os.WIFEXITED(status) else 128 + os.WTERMSIG(status)
    if args.json:
        _out(args, {**result, "exit_code": os.WEXITSTATUS(status) if os.WIFEXITED(status) else None,
                    "signal": os.WTERMSIG(status) if os.WIFSIGNALED(status) else None})
    return code


def _reader_gone() -> bool:
    """Whether stdout is a pipe or socket whose reader has gone (poll says POLLERR/POLLHUP)."""
    import select
    try:
        poll = select.poll()
        poll.register(sys.stdout.fileno(), select.POLLOUT)
        return any(ev & (select.POLLERR | select.POLLHUP) for _, ev in poll.poll(0))
    except (OSError, ValueError):
        return False


def _quiet_stdout() -> None:
    """stdout onto /dev/null: what is still buffered for a reader that went away is dropped
    instead of failing again at every flush up to the interpreter's exit."""
    fd = os.open(os.devnull, os.O_WRONLY | os.O_CLOEXEC)
    os.dup2(fd, sys.stdout.fileno())
    os.close(fd)


def _raise_interrupted(signum: int, frame: object) -> None:
    raise Interrupted(signum)


_display = None     # the terminal's progress display while a command runs


def _open_display() -> None:
    """A progress display on stderr when it is a terminal (rich imported only then)."""
    global _display
    if sys.stderr.isatty():
        try:
            from .terminal import install
        except ImportError:         # rich missing: run without a display
            return
        _display = install()


def _close_display() -> None:
    """Before the result or an error is printed: no bar may be drawn over them."""
    global _display
    if _display is not None:
        _display.close()
        _display = None


def one_shot(args: argparse.Namespace) -> bool:
    """A command that ends as soon as its one job is done (no server, no series)."""
    return (args.command in ("dump", "untrack", "show", "check", "gc")
            or (args.command == "pre-dump" and args.iterations == 1)
            or (args.command == "restore" and not args.lazy_pages))


def main(argv: list[str] | None = None, *, own_process: bool = False, held: tuple[int, ...] = ()) -> int:
    """Run one command. own_process: the process is the command's alone (`coldsnap`), so a
    one-shot command may run without the cyclic garbage collector: its imports alone set it
    off about 50 times (a tenth of their CPU), and it ends before any garbage could matter.
    held: signals the caller keeps blocked until the command's handlers are in place (a
    service's worker, whose client may pass one on at any moment), unblocked then."""
    # coldsnap never calls BLAS: without this, importing numpy starts OpenBLAS's thread pool
    # (40-50 ms of a dump's or restore's wall time on 2 CPUs)
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
    _Parser._argv = sys.argv[1:] if argv is None else list(argv)
    command = _command_in(_Parser._argv)
    args = (_BUILT.get(command) or build_parser(command)).parse_args(argv)
    if own_process and one_shot(args):
        gc.disable()
    elif own_process:       # the in-process client turned it off for the imports up to here
        gc.enable()
    # SIGTERM and a hangup unwind like Ctrl-C (targets resumed, temporary images removed) and
    # exit 143 and 129 (a hangup ignored, as under nohup, stays ignored); the freezer defers
    # them around its critical sections
    signal.signal(signal.SIGTERM, _raise_interrupted)
    if signal.getsignal(signal.SIGHUP) is not signal.SIG_IGN:
        signal.signal(signal.SIGHUP, _raise_interrupted)
    if args.command != "service":       # its workers open their own
        _open_display()
    try:
        try:
            if held:
                signal.pthread_sigmask(signal.SIG_UNBLOCK, held)
            _open_log(args)
            code = run(args)
            sys.stdout.flush()      # a reader gone shows here, not in the exit's flush
            return code
        finally:
            _close_display()
    except (CsError, OSError, KeyboardInterrupt) as e:
        if isinstance(e, BrokenPipeError) and _reader_gone():
            _quiet_stdout()         # `| head` took what it wanted: no error, as for any filter
            return EXIT_STDOUT_GONE
        code = exit_code(e)
        if getattr(args, "json", False):
            err = {"type": type(e).__name__, "message": error_words(e), "exit_code": code}
            if getattr(e, "pid", None) is not None:
                err["pid"] = e.pid
            try:
                print(_json({"error": err}), flush=True)
            except BrokenPipeError:
                _quiet_stdout()     # stderr still says it
        print(f"coldsnap: {error_words(e)}", file=sys.stderr)
        _log(f"coldsnap: {error_words(e)}")
        return code
    finally:
        _close_log()


def command() -> None:
    """The `coldsnap` command: main(), then leave at once. When main returns, everything a
    command owes is done (images committed, targets resumed, the display closed); the
    interpreter's own teardown, which frees every object of every module (20-30 ms once
    numpy and protobuf are loaded), would only lengthen the command."""
    code = main(own_process=True)
    threading = sys.modules.get("threading")
    if threading is not None and threading.active_count() > 1:
        sys.exit(code)          # a thread still runs: let the interpreter join it
    try:
        sys.stdout.flush()
        sys.stderr.flush()
    except OSError:             # e.g. a closed pipe: the interpreter reports it as usual
        sys.exit(code)
    os._exit(code)


if __name__ == "__main__":
    command()
