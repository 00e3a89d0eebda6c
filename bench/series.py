"""Iterative pre-dumps: userfaultfd tracking versus none, side by side (issue 3).

    python3 bench/series.py [--pages 262144] [--runs 3] [--out bench/RESULTS.md]

A target with PAGES filler pages (1 GiB by default) rewrites P% of them between the two
iterations of a series; uffd and none alternate within each round. Reports medians.
"""
from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
from coldsnap.dump.iterate import PreDumpSeries  # noqa: E402

SECTION = "Iterative pre-dumps (issue 3)"


def write_section(path: Path, text: str) -> None:
    """Replace this benchmark's section of RESULTS.md (up to the next '## '), keep the rest."""
    lines = path.read_text().splitlines() if path.exists() else ["# Benchmarks"]
    head = f"## {SECTION}"
    if head in lines:
        a = lines.index(head)
        b = next((i for i in range(a + 1, len(lines)) if lines[i].startswith("## ")), len(lines))
        lines = lines[:a] + text.splitlines() + lines[b:]
    else:
        lines += [""] + text.splitlines()
    path.write_text("\n".join(lines).rstrip("\n") + "\n")


def build() -> Path:
    out = ROOT / "bench" / "out" / "mem_pattern"
    out.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run(["gcc", "-O2", "-o", str(out), str(ROOT / "tests/workloads/mem_pattern.c")], check=True)
    return out


def quiet(pid: int) -> None:
    while Path(f"/proc/{pid}/syscall").read_text().split()[0] != "0":
        time.sleep(0.001)


def one_series(p: subprocess.Popen, track: str, touched: int, gen: int) -> tuple:
    base = Path(tempfile.mkdtemp(prefix="coldsnap-series-", dir="/dev/shm"))
    try:
        with PreDumpSeries(p.pid, base, track=track) as s:
            first = s.step()
            p.stdin.write(f"write {touched} {gen}\n".encode())
            p.stdin.flush()
            p.stdout.readline()
            quiet(p.pid)
            second = s.step()
        return first, second
    finally:
        shutil.rmtree(base, ignore_errors=True)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--pages", type=int, default=262144)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--out", default=str(ROOT / "bench" / "RESULTS.md"))
    args = ap.parse_args()
    p = subprocess.Popen([str(build()), str(args.pages), "1"], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    rows = []
    try:
        p.stdout.readline()
        quiet(p.pid)
        gen = 2
        for pct in (1, 10, 50):
            touched = args.pages * pct // 100
            res = {"uffd": [], "none": []}
            for r in range(args.runs):
                for track in (("uffd", "none") if r % 2 == 0 else ("none", "uffd")):
                    res[track].append(one_series(p, track, touched, gen))
                    gen += 1
            for track, runs in res.items():
                med = lambda f: statistics.median(f(a, b) for a, b in runs)  # noqa: E731
                rows.append((pct, track, touched,
                             med(lambda a, b: b.pages_written),
                             med(lambda a, b: (b.scan_time + b.memdump_time + b.memwrite_time) / 1000),
                             med(lambda a, b: a.frozen_time / 1000),
                             med(lambda a, b: b.frozen_time / 1000)))
    finally:
        p.kill()
        p.wait()
    lines = [f"## {SECTION}", "",
             f"Command: `python3 bench/series.py --pages {args.pages} --runs {args.runs}`  ",
             f"Date: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; kernel "
             f"`{subprocess.run(['uname', '-r'], capture_output=True, text=True).stdout.strip()}`; images on tmpfs.  ",
             f"Target: tests/workloads/mem_pattern.c with {args.pages} filler pages "
             f"({args.pages * 4096 >> 20} MiB), quiet except for rewriting P% of them between iteration 1 and 2. "
             f"uffd and none alternate within each round; medians of {args.runs}.", "",
             "| P | tracking | pages touched | pages written by iteration 2 | written / touched | "
             "iteration 2 time ms (scan+drain) | frozen ms iter 1 | frozen ms iter 2 |",
             "|---|---|---|---|---|---|---|---|"]
    for pct, track, touched, written, t2, f1, f2 in rows:
        lines.append(f"| {pct}% | {track} | {touched} | {written:.0f} | {written / touched:.3f} | "
                     f"{t2:.1f} | {f1:.2f} | {f2:.2f} |")
    lines += ["", "Iteration 2 with uffd writes the touched pages plus the few the target's own stdio "
              "touches; with none it writes everything. 'frozen' for uffd is the one-time arming "
              "(inject userfaultfd()); later iterations do not stop the task.", ""]
    text = "\n".join(lines)
    print(text)
    write_section(Path(args.out), text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
