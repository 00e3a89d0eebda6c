#!/usr/bin/env python3
"""How long the first tracked pre-dump holds the task, threads included (issue 13).

    python3 bench/first_predump.py [--sizes 8M,64M,256M] [--threads 1,4] [--runs 7]

Target: bench/threads_target.c, SIZE of private anonymous memory (every page written) and
THREADS threads in all, each idle in pause(); fds 0-2 on /dev/null. One run = a fresh target,
`python3 -m coldsnap pre-dump -t PID -D DIR` (the default where userfaultfd write tracking
works: nofreeze, the tracker created by one injected call and parked in the target), then
`coldsnap untrack PID`, SIGKILL and reap. Frozen ms = stats-dump `frozen_time` (every thread
held, seize done, until the last detach); seize ms = `freezing_time` (seizing every thread:
the first one stops before the last one does). Variants interleaved per round (order
alternating), medians (min–max). Images on tmpfs, removed after each run.

Medians are printed as Markdown and written to --out, section "First tracked pre-dump".
"""
from __future__ import annotations

import argparse
import signal
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (BENCH, OUT_DIR, compile_c, log, parse_size, run_meta, scratch_dir,  # noqa: E402
                    size_name, spread, unwind_on_signals, write_section)

SECTION = "## First tracked pre-dump (issue 13)"
TARGET_SRC = BENCH / "threads_target.c"
TARGET_BIN = OUT_DIR / "threads_target"
COLDSNAP = [sys.executable, "-m", "coldsnap"]


def one_run(size: int, threads: int) -> dict:
    from coldsnap.images.framing import read_single
    p = subprocess.Popen([str(TARGET_BIN), str(size), str(threads)], stdin=subprocess.DEVNULL,
                         stdout=subprocess.PIPE, text=True)
    try:
        if p.stdout.readline().strip() != "ready":
            raise RuntimeError(f"target {size_name(size)}/{threads} did not start")
        with scratch_dir() as d:
            r = subprocess.run(COLDSNAP + ["pre-dump", "-t", str(p.pid), "-D", str(d / "img")],
                               capture_output=True, text=True)
            if r.returncode:
                raise RuntimeError(f"pre-dump failed: {(r.stderr or r.stdout).strip()[-200:]}")
            st = read_single(d / "img" / "stats-dump").dump
            subprocess.run(COLDSNAP + ["untrack", str(p.pid)], capture_output=True, check=True)
            return {"frozen": st.frozen_time / 1e3, "seize": st.freezing_time / 1e3,
                    "mode": st.cs_mode if st.HasField("cs_mode") else "?"}
    finally:
        p.send_signal(signal.SIGKILL)
        p.wait()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="8M,64M,256M")
    ap.add_argument("--threads", default="1,4")
    ap.add_argument("--runs", type=int, default=7)
    ap.add_argument("--out", default=str(BENCH / "RESULTS.md"))
    args = ap.parse_args(argv)
    unwind_on_signals()
    compile_c(TARGET_SRC, TARGET_BIN)
    variants = [(parse_size(s), int(t)) for s in args.sizes.split(",") for t in args.threads.split(",")]
    res: dict = {v: [] for v in variants}
    for r in range(args.runs):
        for v in (variants if r % 2 == 0 else variants[::-1]):
            res[v].append(one_run(*v))
        log(f"round {r + 1}/{args.runs} done")
    meta = run_meta("first_predump.py", argv)
    L = [SECTION, "", f"Command: `{meta['cmd']}`  ", f"coldsnap: {meta['rev']}  ",
         f"Date: {meta['date']}; kernel `{meta['uname']}`; {meta['cpus']} CPUs; THP `{meta['thp']}`; "
         f"images on tmpfs. Machine shared with other work while it ran (medians, min–max).", "",
         "| size | threads | n | mode | frozen ms | seize ms | held ms (seize + frozen) |",
         "|---|---|---|---|---|---|---|"]
    for (size, threads), runs in res.items():
        fr = [x["frozen"] for x in runs]
        sz = [x["seize"] for x in runs]
        held = [a + b for a, b in zip(fr, sz)]
        f2 = "{:.2f}".format
        L.append(f"| {size_name(size)} | {threads} | {len(runs)} | {runs[0]['mode']} | "
                 f"**{spread(fr, f2)}** | {spread(sz, f2)} | {spread(held, f2)} |")
    L += ["", "Frozen = `frozen_time` of the pre-dump's stats-dump (goal: under 1 ms); seize = "
          "`freezing_time`, spent before the freeze is complete (threads stop one after another)."]
    text = "\n".join(L) + "\n"
    print(text)
    write_section(Path(args.out), text, SECTION)
    return 0


if __name__ == "__main__":
    sys.exit(main())
