"""The `coldsnap` command: a thin argparse front on the API, CRIU-style options, one-line errors."""
from __future__ import annotations

import argparse
import json
import sys

from .errors import CsError

EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130


def _size(text: str) -> int:
    units = {"k": 1 << 10, "m": 1 << 20, "g": 1 << 30}
    t = text.strip().lower().rstrip("b").rstrip("i")
    mult = units.get(t[-1:], 1)
    try:
        return int(t[:-1] if t[-1:] in units else t) * mult
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a size: {text!r}") from None


def _pid(text: str) -> int:
    try:
        pid = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a process id: {text!r}") from None
    if pid <= 0:
        raise argparse.ArgumentTypeError(f"not a process id: {text!r}")
    return pid


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="coldsnap", description="Checkpoint/restore of Linux processes.")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    pd = sub.add_parser("pre-dump", help="save a running process's memory, keeping it frozen only to plan")
    pd.add_argument("-t", "--tree", type=_pid, required=True, metavar="PID", help="process to pre-dump")
    pd.add_argument("-D", "--images-dir", required=True, metavar="DIR", help="new or empty directory for the images")
    pd.add_argument("--prev-images-dir", metavar="DIR", help="previous images to link as parent")
    pd.add_argument("--pre-dump-mode", choices=("nofreeze", "live", "frozen"),
                    help="nofreeze (default where userfaultfd write tracking works): track writes "
                         "with a userfaultfd parked in the target, never freeze it after the one "
                         "injected call; live: freeze only to scan, leave nothing behind; frozen: "
                         "copy pages before resuming (the baseline)")
    pd.add_argument("--buffer-size", type=_size, default="4M", metavar="SIZE", help="drain buffer (default 4M)")
    pd.add_argument("--scan", choices=("auto", "ioctl", "read"), default="auto",
                    help="page scan: PAGEMAP_SCAN ioctl or /proc/PID/pagemap read")
    pd.add_argument("--iterations", type=int, default=1, metavar="N",
                    help="run N pre-dumps into DIR/1..DIR/N, each saving only pages written since the last")
    pd.add_argument("--track-mem", choices=("uffd", "soft-dirty", "none"),
                    help="dirty tracking: userfaultfd write-protect (chosen where it works), "
                         "soft-dirty bits (kernels with CONFIG_MEM_SOFT_DIRTY; read and cleared "
                         "in a short freeze) or none. For a single pre-dump uffd is "
                         "--pre-dump-mode nofreeze (the tracking fd stays parked in the target for "
                         "the next run, see `untrack`) and none is live")
    pd.add_argument("--auto-dedup", action="store_true",
                    help="free the parent images' copies of pages this pre-dump wrote again")
    pd.add_argument("--interval", type=float, default=0.0, metavar="SECONDS",
                    help="pause between the iterations of a series")

    du = sub.add_parser("dump", help="checkpoint a process for good: all its state, then kill it")
    du.add_argument("-t", "--tree", type=_pid, required=True, metavar="PID", help="process to dump")
    du.add_argument("-D", "--images-dir", required=True, metavar="DIR", help="new or empty directory for the images")
    du.add_argument("--prev-images-dir", metavar="DIR",
                    help="previous (pre-)dump to link as parent; with its parked tracking, "
                         "pages not written since are left to it")
    du.add_argument("--leave-running", action="store_true", help="resume the process instead of killing it")
    du.add_argument("--shell-job", action="store_true", help="allow a process attached to a terminal")

    ut = sub.add_parser("untrack", help="remove coldsnap's write tracking from a process")
    ut.add_argument("pid", type=_pid, metavar="PID")

    rs = sub.add_parser("restore", help="bring a dumped process back to life (same PID and TIDs)")
    rs.add_argument("-D", "--images-dir", required=True, metavar="DIR", help="images of `coldsnap dump`")
    rs.add_argument("-d", "--restore-detached", action="store_true",
                    help="detach once the process runs (default: wait and pass its exit status on)")
    rs.add_argument("--shell-job", action="store_true",
                    help="give the process coldsnap's terminal where it had one")

    sh = sub.add_parser("show", help="summarise an images directory")
    sh.add_argument("dir", metavar="DIR")
    sh.add_argument("--json", action="store_true", help="print JSON instead of text")

    sub.add_parser("check", help="report which kernel features coldsnap can use here")

    dm = sub.add_parser("demo", help="start a sample workload, pre-dump it, print the stats")
    dm.add_argument("--size", type=_size, default="256M", metavar="SIZE", help="workload memory (default 256M)")
    dm.add_argument("-D", "--images-dir", metavar="DIR", help="keep the images here (default: a temporary dir)")
    return p


def run(args: argparse.Namespace) -> int:
    if args.command == "pre-dump" and args.iterations > 1:
        return run_series(args)
    if args.command == "pre-dump":
        args.pre_dump_mode, args.track_mem = _pre_dump_plan(args)
    if args.command == "pre-dump" and args.track_mem != "none":
        from .dump.iterate import pre_dump_tracked
        track = args.track_mem
        stats = pre_dump_tracked(args.tree, args.images_dir, prev_images_dir=args.prev_images_dir,
                                 buffer_size=args.buffer_size, track=track,
                                 freeze_plan=args.pre_dump_mode == "live")
        print(f"pre-dump of {args.tree} (tracking {stats.track_backend}): {stats.pages_written} pages "
              f"written, {stats.pages_skipped_parent} in parent, {stats.pages_skipped} skipped, "
              f"frozen {stats.frozen_time / 1000:.2f} ms")
        if stats.uffd_fd >= 0:
            print(f"write tracking stays in {args.tree} (fd {stats.uffd_fd}) until `coldsnap dump` "
                  f"or `coldsnap untrack {args.tree}`")
        _dedup(args, args.images_dir)
        return 0
    if args.command == "dump":
        from .dump.dump import dump
        stats = dump(args.tree, args.images_dir, prev_images_dir=args.prev_images_dir,
                     leave_running=args.leave_running, shell_job=args.shell_job)
        print(f"dump of {args.tree} (tracking {stats.track_backend}): {stats.pages_written} pages "
              f"written, {stats.pages_skipped_parent} in parent, frozen {stats.frozen_time / 1000:.2f} ms, "
              f"{'left running' if args.leave_running else 'killed'}")
        return 0
    if args.command == "untrack":
        from .dump.untrack import untrack
        closed = untrack(args.pid)
        print(f"closed coldsnap's userfaultfd in {args.pid} (fd {', '.join(map(str, closed))})"
              if closed else f"{args.pid} carries no coldsnap tracking")
        return 0
    if args.command == "pre-dump":
        from .dump.predump import pre_dump
        stats = pre_dump(args.tree, args.images_dir, mode=args.pre_dump_mode,
                         buffer_size=args.buffer_size, scan=args.scan,
                         prev_images_dir=args.prev_images_dir)
        print(f"pre-dump of {args.tree} ({stats.mode}): {stats.pages_written} pages written, "
              f"{stats.pages_skipped} skipped, frozen {stats.frozen_time / 1000:.2f} ms")
        _dedup(args, args.images_dir)
        return 0
    if args.command == "restore":
        return run_restore(args)
    if args.command == "show":
        from .show import describe, render
        info = describe(args.dir)
        print(json.dumps(info, indent=2) if args.json else render(info))
        return 0
    if args.command == "check":
        from .kernel.features import FALLBACKS, probe
        feats = probe().as_dict()
        for name, ok in feats.items():
            print(f"{name:16} {'yes' if ok else 'no '}  " + ("" if ok else f"-> {FALLBACKS[name]}"))
        return 0
    if args.command == "demo":
        from .demo import demo
        return demo(args.size, args.images_dir)
    raise AssertionError(args.command)


def _pre_dump_plan(args: argparse.Namespace) -> tuple[str, str]:
    """(mode, tracking) of a single pre-dump from --pre-dump-mode and --track-mem.

    Tracking: uffd goes with nofreeze (or live: planned in a short freeze), soft-dirty with
    live (its bits are read in a short freeze), none with live or frozen. Unset, both follow
    what this kernel offers."""
    from .dump.iterate import check_track, choose_track
    from .kernel.features import probe
    mode, track = args.pre_dump_mode, args.track_mem
    if track is None:
        track = "uffd" if mode == "nofreeze" else "none" if mode else choose_track(probe())
    fits = {"uffd": ("nofreeze", "live"), "soft-dirty": ("live",), "none": ("live", "frozen")}[track]
    if mode is None:
        mode = fits[0]
    elif mode not in fits:
        raise CsError(f"--pre-dump-mode {mode} does not go with --track-mem {track} "
                      f"(it goes with {' or '.join(fits)})")
    check_track(track)
    return mode, track


def _dedup(args: argparse.Namespace, images_dir) -> None:
    if args.auto_dedup:
        from .dump.dedup import dedup_parents
        freed = dedup_parents(images_dir, args.tree)
        print(f"auto-dedup: {freed >> 20} MiB freed in the parent images")


def run_series(args: argparse.Namespace) -> int:
    import os
    import time

    from .dump.iterate import choose_track, pre_dump_series
    from .errors import ImageError
    from .kernel.features import probe
    if os.path.isdir(args.images_dir) and os.listdir(args.images_dir):
        raise ImageError(f"{args.images_dir}: images directory is not empty")
    if args.prev_images_dir:
        raise CsError("--prev-images-dir cannot start a series yet; give a new -D instead")
    series = pre_dump_series(args.tree, args.images_dir, args.iterations,
                             track=args.track_mem or choose_track(probe()),
                             buffer_size=args.buffer_size,
                             between=(lambda i: time.sleep(args.interval)) if args.interval else None)
    if args.auto_dedup:
        for i in range(2, args.iterations + 1):
            _dedup(args, os.path.join(args.images_dir, str(i)))
    print(f"{'iter':>4} {'tracking':8} {'frozen ms':>9} {'written':>9} {'in parent':>9} {'skipped':>7}")
    for i, s in enumerate(series, 1):
        print(f"{i:4} {s.track_backend:8} {s.frozen_time / 1000:9.2f} {s.pages_written:9} "
              f"{s.pages_skipped_parent:9} {s.pages_skipped:7}")
    return 0


def run_restore(args: argparse.Namespace) -> int:
    import os

    from .restore.restore import restore
    res = restore(args.images_dir, detach=args.restore_detached, shell_job=args.shell_job)
    if res.exit_status is None:
        s = res.stats
        print(f"restored {res.pid} ({res.threads} thread{'s' if res.threads > 1 else ''}) in "
              f"{res.total_ns / 1e6:.1f} ms, memory {s.memory_ns / 1e6:.1f} ms, {s.calls} injected calls",
              file=sys.stderr)
        return 0
    status = res.exit_status
    return os.WEXITSTATUS(status) if os.WIFEXITED(status) else 128 + os.WTERMSIG(status)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return run(args)
    except CsError as e:
        print(f"coldsnap: {e}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        print("coldsnap: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except OSError as e:
        print(f"coldsnap: {e.strerror or e}" + (f": {e.filename}" if e.filename else ""), file=sys.stderr)
        return EXIT_ERROR


if __name__ == "__main__":
    sys.exit(main())
