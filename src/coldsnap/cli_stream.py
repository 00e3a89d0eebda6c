"""`--stream` of `dump`, `pre-dump` and `restore`: the images as one byte stream on stdout
or stdin (images/stream.py) instead of a directory, e.g. `coldsnap dump -t PID --stream |
ssh host coldsnap restore --stream -d`.

The (pre-)dump itself is unchanged and writes into a private spool directory (mkdtemp under
$TMPDIR, 0700; a dump's committed without fsync): its frozen window is that of a dump with
-D. The stream is written from the spool once the command's work is done (the target
already killed or running again), and the spool is removed. If the stream breaks (or a
signal ends coldsnap) after a dump killed its target, the spool is all that is left of the
process: it is kept and the error names it.
A restore reads the whole stream into its own spool, checks it to its end marker, restores
from it and removes it (before waiting for the process, without -d): a truncated, corrupt or
hostile stream makes no process. Results and errors go to stderr, stdout carries the stream.
"""
from __future__ import annotations

import argparse
import contextlib
import os
import signal
import sys
from pathlib import Path
from typing import Callable

from .errors import CsError, ImageError, Interrupted

SPOOL_PREFIX = "coldsnap-stream."


def add_args(p: argparse.ArgumentParser, restore: bool = False) -> None:
    if restore:
        p.add_argument("--stream", action="store_true",
                       help="read the images as one stream from stdin (what `dump --stream` writes) "
                            "instead of -D")
    else:
        p.add_argument("--stream", action="store_true",
                       help="write the images (and their parent chain) as one stream on stdout instead "
                            "of into -D; results go to stderr")


def check(args: argparse.Namespace, usage: type[CsError]) -> None:
    """-D or --stream, and what --stream does not go with."""
    if bool(args.images_dir) == bool(args.stream):
        raise usage("give one of -D/--images-dir and --stream")
    if not args.stream:
        return
    if getattr(args, "page_server", None):
        raise usage("--stream and --page-server both say where the pages are: give one")
    if args.command == "restore":
        if args.lazy_pages:
            raise usage("--lazy-pages does not go with --stream (its server reads the images after the restore)")
        if os.isatty(0):
            raise usage("--stream reads the images from stdin, which is a terminal")
        return
    if args.command == "pre-dump":
        if args.iterations > 1:
            raise usage("--stream carries one pre-dump, not a series (--iterations)")
        if args.track_mem is None and args.pre_dump_mode in (None, "live"):
            args.track_mem = "none"
        if args.track_mem == "uffd" or args.pre_dump_mode == "nofreeze":
            raise usage("--stream leaves no images for a next pre-dump to follow: the write tracking "
                        "it parks in the target would be stranded (use --pre-dump-mode live)")
    if os.isatty(1):
        raise usage("--stream writes the images to stdout, which is a terminal: redirect or pipe it")


def take_stdout() -> int:
    """A private fd on stdout for the stream; fd 1 becomes stderr, so that nothing printed by
    the command (results, errors, progress) can slip into the stream."""
    fd = os.dup(1)
    os.set_inheritable(fd, False)
    sys.stdout.flush()
    os.dup2(2, 1)
    return fd


UNWINDING = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)     # what ends a command (cli.main)


@contextlib.contextmanager
def signals_held():
    """The signals that end a command wait (blocked) until the end of the block: one that
    came meanwhile raises there, once what the block made is in the hands of its remover."""
    held = signal.pthread_sigmask(signal.SIG_BLOCK, UNWINDING)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, held)


def new_spool() -> Path:
    """A new spool directory; call it with signals_held, the result kept where its remover
    finds it inside the block (else a signal right after the mkdir would leave it)."""
    import tempfile         # here only: with shutil, random and the compressors, ~3 ms of every start
    try:
        return Path(tempfile.mkdtemp(prefix=SPOOL_PREFIX))
    except OSError as e:
        raise ImageError(f"{tempfile.gettempdir()}: cannot make a spool directory: {e.strerror}") from None


Output = Callable[..., None]            # cli._out: (args, result object, *lines)


def run_dump(args: argparse.Namespace, inner: Callable[[argparse.Namespace, Output], int], out: Output) -> int:
    """dump/pre-dump --stream: inner (the command as with -D) into a spool, then the stream;
    inner's result is said through OUT once the stream is written."""
    import shutil
    from .images.stream import check_parent_depth, write_stream
    if args.prev_images_dir:
        check_parent_depth(args.prev_images_dir)
    said: list[tuple[dict, tuple[str, ...]]] = []
    stream_fd = take_stdout()
    spool: Path | None = None
    try:
        try:
            with signals_held():
                spool = new_spool()
            images = spool / "images"
            args.images_dir = str(images)
            code = inner(args, lambda _args, obj, *lines: said.append((obj, lines)))
        except BaseException:
            if spool is not None:
                shutil.rmtree(spool, ignore_errors=True)
            raise
        target_gone = args.command == "dump" and not args.leave_running
        try:
            counts = write_stream(images, stream_fd)
        except BaseException as e:
            if not target_gone:
                shutil.rmtree(spool, ignore_errors=True)
                raise
            raise _kept(e, images) from None
    finally:
        os.close(stream_fd)     # the reader sees the stream end now, whatever comes after
    shutil.rmtree(spool, ignore_errors=True)
    obj, lines = said[-1]
    obj = {**obj, "images_dir": None, "stream": {"levels": counts.levels, "entries": counts.entries,
                                                "data_bytes": counts.data_bytes, "bytes": counts.stream_bytes}}
    out(args, obj, *lines, f"streamed {counts.levels} images director{'ies' if counts.levels > 1 else 'y'}, "
                            f"{counts.entries} files, {counts.stream_bytes / (1 << 20):.1f} MiB")
    return code


def _kept(e: BaseException, images: Path) -> BaseException:
    """The error of a stream broken after the dump killed its target (a broken pipe, a
    signal...), its words naming where the images stay: they are all that is left of it."""
    if isinstance(e, KeyboardInterrupt):
        e = Interrupted(signal.SIGINT)
    if isinstance(e, (ImageError, Interrupted)):
        e.args = (f"{e}; the images are kept in {images}",)
    return e


class StreamSpool:
    """restore --stream: the stream read from stdin into a spool, removed on every exit. The
    spool is made inside the `with` (by read): one made before it would stay if a signal came
    between the two."""

    def __init__(self) -> None:
        self.spool: Path | None = None

    def read(self) -> Path:
        from .images.stream import read_stream
        with signals_held():
            self.spool = new_spool()
        top, _ = read_stream(0, self.spool)
        return top

    def remove(self) -> None:
        if self.spool is not None:
            import shutil
            shutil.rmtree(self.spool, ignore_errors=True)

    def __enter__(self) -> "StreamSpool":
        return self

    def __exit__(self, *exc) -> None:
        self.remove()
