#!/usr/bin/env python3
"""Two revisions of coldsnap side by side: what a user of the command sees.

    python3 bench/revisions.py --base REV [--sizes 8M,256M,1G] [--runs 5]

Says whether a change (a reshape, a new layer) made the commands slower. The base revision's
`src/` is exported with `git archive` into bench/out/rev-SHA/ and run with PYTHONPATH set to it;
the working tree's `src/` is the other side. Per size, in each round, both sides run the same
sequence on a fresh target each (bench/restore_target.c: SIZE of private anonymous memory,
every byte non-zero, idle), in alternating order:

    live      `coldsnap pre-dump --pre-dump-mode live --track-mem none`: frozen ms, command wall ms
    nofreeze  `coldsnap pre-dump` (tracked, parked; the default here): frozen ms, wall ms
    dump      `coldsnap dump --prev-images-dir <nofreeze>`: frozen ms, wall ms (the downtime)
    restore   `coldsnap restore -d` of that dump: wall ms until the command returns

Frozen times come from each image's stats-dump; wall times include interpreter start-up and
imports. Images on tmpfs (/dev/shm), removed after each round. The benchmark is a child
subreaper and reaps every process it starts. Medians are printed as Markdown and written to
--out, section "Revisions side by side".
"""
from __future__ import annotations

import argparse
import datetime
import os
import platform
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

from common import (export_revision, BENCH, become_subreaper, build_restore_target, log, parse_size,
                    scratch_dir, start_restore_target, write_section)

ROOT = BENCH.parent
SECTION = "## Revisions side by side"
STEPS = ("live", "nofreeze", "dump", "restore")

sys.path.insert(0, str(ROOT / "src"))
from coldsnap.images.directory import ImageDir  # noqa: E402  (reads stats of either side)




def kill_reap(pid: int) -> None:
    """SIGKILL and reap PID whoever started it (the target, or the process restored in its place)."""
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    try:
        os.waitpid(pid, 0)
    except ChildProcessError:
        pass
    while os.path.exists(f"/proc/{pid}"):   # restore reuses the PID: wait until it is free
        time.sleep(0.001)


def reap_orphans() -> None:
    while True:
        try:
            if os.waitpid(-1, os.WNOHANG)[0] == 0:
                return
        except ChildProcessError:
            return


def coldsnap(src: Path, *args: str) -> float:
    """Run the command with SRC first on the path; its wall time in ms."""
    env = dict(os.environ, PYTHONPATH=str(src))
    t0 = time.perf_counter()
    r = subprocess.run([sys.executable, "-m", "coldsnap", *args], env=env,
                       stdin=subprocess.DEVNULL, capture_output=True, text=True)
    ms = (time.perf_counter() - t0) * 1e3
    if r.returncode:
        raise RuntimeError(f"coldsnap {' '.join(args)} ({src}): {r.stderr.strip()}")
    return ms


def frozen_ms(images: Path) -> float:
    return ImageDir.open(images, follow_parent=False).read("stats-dump")[0].dump.frozen_time / 1e3


def one_round(src: Path, size: int, work: Path) -> dict[str, tuple[float, float]]:
    """{step: (frozen ms, wall ms)} of one fresh target through the four steps."""
    out: dict[str, tuple[float, float]] = {}
    pid, _ = start_restore_target(size)
    try:
        d = {s: work / s for s in STEPS}
        wall = coldsnap(src, "pre-dump", "-t", str(pid), "-D", str(d["live"]),
                        "--pre-dump-mode", "live", "--track-mem", "none")
        out["live"] = (frozen_ms(d["live"]), wall)
        wall = coldsnap(src, "pre-dump", "-t", str(pid), "-D", str(d["nofreeze"]))
        out["nofreeze"] = (frozen_ms(d["nofreeze"]), wall)
        wall = coldsnap(src, "dump", "-t", str(pid), "-D", str(d["dump"]),
                        "--prev-images-dir", str(d["nofreeze"]))
        out["dump"] = (frozen_ms(d["dump"]), wall)
        kill_reap(pid)                  # dump killed it; the PID must be free for restore
        wall = coldsnap(src, "restore", "-D", str(d["dump"]), "-d")
        out["restore"] = (0.0, wall)
    finally:
        kill_reap(pid)                  # the original, or the restored process with its PID
        reap_orphans()
    return out


def fmt(xs: list[float]) -> str:
    return f"{statistics.median(xs):.1f}" if xs else "-"


def report(results: dict, sides: list[tuple[str, Path]], meta: dict) -> str:
    (a, _), (b, _) = sides
    lines = [SECTION, "",
             f"`{meta['cmd']}` — {meta['date']}, Linux {meta['uname']}, {meta['cpus']} CPUs, "
             f"images on tmpfs; medians of {meta['runs']} interleaved rounds; "
             f"base = {a}, new = {b}. Frozen ms from stats-dump, wall ms of the whole command "
             f"(interpreter start-up and imports included).", "",
             "| size | step | frozen ms base / new | wall ms base / new | wall new/base |",
             "|---|---|---|---|---|"]
    for size, per_side in results.items():
        for step in STEPS:
            fa = [r[step][0] for r in per_side[a]]
            fb = [r[step][0] for r in per_side[b]]
            wa = [r[step][1] for r in per_side[a]]
            wb = [r[step][1] for r in per_side[b]]
            frozen = "-" if step == "restore" else f"{fmt(fa)} / {fmt(fb)}"
            ratio = statistics.median(wb) / statistics.median(wa) if wa and wb else float("nan")
            lines.append(f"| {size} | {step} | {frozen} | {fmt(wa)} / {fmt(wb)} | {ratio:.2f} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--base", required=True, help="revision to compare the working tree with")
    ap.add_argument("--sizes", default="8M,256M,1G")
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--out", default=str(BENCH / "RESULTS.md"))
    args = ap.parse_args(argv)
    signal.signal(signal.SIGTERM, lambda s, f: sys.exit(128 + s))
    become_subreaper()
    build_restore_target()
    sides = [export_revision(args.base), ("working tree", ROOT / "src")]
    results: dict[str, dict[str, list]] = {}
    for text in args.sizes.split(","):
        size = parse_size(text)
        per_side: dict[str, list] = {name: [] for name, _ in sides}
        for r in range(args.runs):
            for name, src in (sides if r % 2 == 0 else sides[::-1]):
                with scratch_dir() as work:
                    per_side[name].append(one_round(src, size, work))
            log(f"{text} round {r + 1}/{args.runs}")
        results[text] = per_side
    meta = {"cmd": "python3 bench/revisions.py " + " ".join(sys.argv[1:] if argv is None else argv),
            "date": datetime.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z"),
            "uname": platform.release(), "cpus": os.cpu_count(), "runs": args.runs}
    section = report(results, sides, meta)
    print(section)
    write_section(Path(args.out), section, SECTION)
    return 0


if __name__ == "__main__":
    sys.exit(main())
