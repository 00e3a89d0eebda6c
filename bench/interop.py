#!/usr/bin/env python3
"""CRIU 4.2's restore of a coldsnap dump against coldsnap's own restore of the same images.

    python3 bench/interop.py [--sizes 256M,1G] [--runs 5] [--criu PATH]

Per size: one bench/restore_target of SIZE private anonymous memory (every byte non-zero,
idle) is dumped once with `coldsnap dump` into tmpfs (/dev/shm); then, in ABBA order, each
round restores those images detached with

    criu      `criu restore -D DIR -d --shell-job` (the target is not a session leader)
    coldsnap  `python3 -m coldsnap restore -D DIR -d`

timing the command from start to exit (the process then runs on its own), checks that the
restored process has the dumped PID and its memory (first, middle and last page), and
SIGKILLs and reaps it. The benchmark is a child subreaper: restored processes become its
children. Medians over the rounds go to --out, section "CRIU interop (issue 10)".
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (BENCH, LIVE, become_subreaper, build_restore_target,  # noqa: E402
                    kill_reap, log, median, parse_size, reap, run_meta, scratch_dir,
                    size_name, spread, start_restore_target, unwind_on_signals, write_section)
from restore import samples  # noqa: E402

SECTION = "## CRIU interop (issue 10)"
DEFAULT_CRIU = BENCH.parent.parent / "shared" / "peers" / "criu-4.2" / "criu"


def timed(argv: list[str]) -> float:
    t0 = time.perf_counter()
    run = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, text=True)
    took = time.perf_counter() - t0
    if run.returncode != 0:
        raise RuntimeError(f"{' '.join(argv[:3])} exited {run.returncode}: {run.stderr.strip()[-300:]}")
    return took


def one(tool: str, criu: Path, images: Path, pid: int, addr: int, size: int, want) -> float:
    if tool == "criu":
        argv = [str(criu), "restore", "-D", str(images), "-d", "--shell-job", "-o", "restore.log"]
    else:
        argv = [sys.executable, "-m", "coldsnap", "restore", "-D", str(images), "-d"]
    took = timed(argv)
    LIVE.add(pid)
    try:
        if samples(pid, addr, size) != want:
            raise RuntimeError(f"{tool}: restored memory differs from the dumped memory")
    finally:
        kill_reap(pid)
    return took


def bench_size(size: int, runs: int, criu: Path) -> dict[str, list[float]]:
    out: dict[str, list[float]] = {"criu": [], "coldsnap": []}
    with scratch_dir() as d:
        images = d / "img"
        pid, addr = start_restore_target(size)
        try:
            want = samples(pid, addr, size)
            subprocess.run([sys.executable, "-m", "coldsnap", "dump", "-t", str(pid), "-D", str(images)],
                           check=True, capture_output=True)
        finally:
            reap(pid)
        for r in range(runs):
            order = ("criu", "coldsnap") if r % 2 == 0 else ("coldsnap", "criu")
            for tool in order:
                took = one(tool, criu, images, pid, addr, size, want)
                out[tool].append(took)
                log(f"{size_name(size)} round {r + 1}: {tool} {took * 1000:.0f} ms")
    return out


def report(results: dict[int, dict[str, list[float]]], meta: dict) -> str:
    ms = lambda s: f"{s * 1000:.0f} ms"  # noqa: E731
    lines = [SECTION, "",
             f"`{meta['cmd']}` — {meta['date']}, Linux {meta['uname']}, {meta['cpus']} CPUs, "
             f"THP {meta['thp']}, rev {meta['rev']}, load average {meta['load']} at the start. "
             "Images of an idle target written once by "
             "`coldsnap dump` on tmpfs; each tool restores them detached (wall time of the command, "
             "medians with min–max), the restored memory checked, the process killed.", "",
             "| size | `criu restore` | `coldsnap restore` | CRIU / coldsnap |", "|---|---|---|---|"]
    for size, r in results.items():
        lines.append(f"| {size_name(size)} | {spread(r['criu'], ms)} | {spread(r['coldsnap'], ms)} | "
                     f"{median(r['criu']) / median(r['coldsnap']):.2f} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="256M,1G")
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--criu", type=Path, default=DEFAULT_CRIU)
    ap.add_argument("--out", type=Path, default=BENCH / "RESULTS.md")
    args = ap.parse_args(argv)
    unwind_on_signals()
    become_subreaper()
    build_restore_target()
    load = "/".join(f"{x:.1f}" for x in os.getloadavg())
    results = {}
    try:
        for size in (parse_size(s) for s in args.sizes.split(",")):
            results[size] = bench_size(size, args.runs, args.criu)
    finally:
        for pid in list(LIVE):
            kill_reap(pid)
    text = report(results, run_meta("interop.py", argv, load=load))
    print(text)
    write_section(args.out, text, SECTION)
    return 0


if __name__ == "__main__":
    sys.exit(main())
