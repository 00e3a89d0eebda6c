#!/usr/bin/env python3
"""Where the final dump's frozen window goes for ordinary programs: two revisions side by
side (issue 13, session 8).

    python3 bench/program_window.py --base REV [--only node,redis-server,...] [--runs 5]

The programs of bench/programs.py (node, redis-server, java...). One run = the program started
afresh (and ready, as programs.py waits for it), then a fresh interpreter of one side
(PYTHONPATH = its src/; the base revision exported with `git archive`) that imports every
module and does the warm-up a `coldsnap service` does before it forks its workers, then calls
`dump(pid, DIR)` with the phases of bench/window.py timed from outside. Sides alternate per
run (ABBA). Frozen = the stats' frozen_time; before = from the call to the freeze. Medians
(min); Markdown to stdout (and to --out, section "Ordinary programs: frozen window split").
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (BENCH, become_subreaper, export_revision, log, median, reap, run_meta,  # noqa: E402
                    scratch_dir, unwind_on_signals, write_section)
from programs import PROGRAMS, kill_tree, start  # noqa: E402
from window import PHASES  # noqa: E402

SECTION = "## Ordinary programs: frozen window split (issue 13, session 8)"
COLS = ["frozen", "before", *PHASES, "other"]

CHILD = r"""
import collections, gc, json, sys, time
sys.path.insert(0, sys.argv[3])
from coldsnap.service.server import import_everything, warm_up
import_everything(); warm_up(); gc.collect(); gc.freeze()
import window
acc = collections.Counter()
window.instrument(acc)
from coldsnap.dump.dump import dump
t = time.perf_counter_ns()
st = dump(int(sys.argv[1]), sys.argv[2])
out = {"frozen": st.frozen_time / 1e3, "before": (st.frozen_at_ns - t) / 1e6}
for phase, names in window.PHASES.items():
    out[phase] = sum(acc[n] for n in names) / 1e6
out["other"] = out["frozen"] - sum(out[p] for p in window.PHASES)
print(json.dumps(out))
"""


def one(prog, src: Path) -> dict:
    with scratch_dir() as d:
        pid = start(prog, d)
        try:
            run = subprocess.run([sys.executable, "-c", CHILD, str(pid), str(d / "img"), str(BENCH)],
                                 env={**os.environ, "PYTHONPATH": str(src)}, capture_output=True, text=True)
            if run.returncode:      # a revision that refuses the program: said in its row
                return {"error": run.stderr.strip().splitlines()[-1][-160:]}
            reap(pid)
            return json.loads(run.stdout.splitlines()[-1])
        finally:
            kill_tree(pid)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--base", required=True)
    ap.add_argument("--only", default="node,redis-server,java,tclsh,python")
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--out", default="")
    args = ap.parse_args(argv)
    unwind_on_signals()
    become_subreaper()
    base_sha, base_src = export_revision(args.base)
    sides = [(f"base {base_sha}", base_src), ("new", BENCH.parent / "src")]
    progs = [p for p in PROGRAMS if any(p.name.startswith(o) for o in args.only.split(","))]
    load = os.getloadavg()
    res: dict = {}
    for r in range(args.runs):
        for prog in progs:
            for name, src in (sides if r % 2 == 0 else sides[::-1]):
                out = one(prog, src)
                if "error" in out:
                    log(f"{prog.name}, {name}: {out['error']}")
                for k, v in out.items():
                    res.setdefault((prog.name, name), {}).setdefault(k, []).append(v)
        log(f"round {r + 1} of {args.runs} done")
    meta = run_meta("program_window.py", argv)
    L = [SECTION, "", f"Command: `{meta['cmd']}`  ", f"Revisions: base {base_sha}, new {meta['rev']}  ",
         f"Date: {meta['date']}; kernel `{meta['uname']}`; {meta['cpus']} CPUs; images on tmpfs; load average "
         f"before / after: {' '.join(f'{x:.1f}' for x in load)} / {' '.join(f'{x:.1f}' for x in os.getloadavg())}.",
         "", "| program | side | n | " + " | ".join(f"{c} ms" for c in COLS) + " |",
         "|---|---|---|" + "---|" * len(COLS)]
    for prog in progs:
        for name, _ in sides:
            v = res[(prog.name, name)]
            if "frozen" not in v:
                L.append(f"| {prog.name} | {name} | 0 | ({v['error'][0]}) |" + " |" * (len(COLS) - 1))
                continue
            L.append(f"| {prog.name} | {name} | {len(v['frozen'])} | " +
                     " | ".join(f"{median(v[c]):.2f} ({min(v[c]):.2f})" for c in COLS) + " |")
    L += ["", "Median (min) per phase, each on its own; phases as in bench/window.py (seize is not "
          "in the frozen time: CRIU's frozen_time starts when every task is seized). Each dump runs in "
          "a fresh interpreter warmed up as the service's workers are (every module imported, "
          "`service.server.warm_up`), in-process rather than through a worker."]
    text = "\n".join(L) + "\n"
    print(text)
    if args.out:
        write_section(Path(args.out), text, SECTION)
    return 0


if __name__ == "__main__":
    sys.exit(main())
