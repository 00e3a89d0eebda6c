#!/usr/bin/env python3
"""The final dump's own work, after the imports: two revisions side by side (issue 13).

    python3 bench/dump_work.py --base REV [--sizes 8M,64M,256M] [--runs 7] [--tracked 8M]

What `coldsnap dump -t PID -D DIR` does once its modules are imported: each run is a fresh
interpreter (PYTHONPATH = one side's src/; the base revision's exported with `git archive`
into bench/out/rev-SHA/) that imports coldsnap.cli and coldsnap.dump.dump untimed (with
--service: every module, the service's warm-up and the spare's copy buffers first), then
times `cli.main(["dump", ...])` on a fresh bench/restore_target.c (SIZE of private
anonymous memory, every byte non-zero, idle; images on tmpfs):

    own      cli.main from its call to its return: argument parsing, the work before the
             freeze, the freeze, what follows it (the command's start-up and imports excluded)
    cpu      user + system CPU time of the command's process (all its threads) over the same
             span: the work itself, less sensitive than the walls to a loaded machine
    before   from the call to the freeze's start (freeze_tree entered)
    frozen   frozen_time of the dump's stats (seize done to the last thread's death)
    after    from the tree's release (freeze_tree left) to the return

With --tracked SIZES, a second kind of run for those sizes: a tracked no-freeze pre-dump
first (`coldsnap pre-dump`, the same side, untimed), then the dump with --prev-images-dir,
which adopts and collects the parked write tracking.

Per round both sides run in alternating order (ABBA). Medians (min) and the load average
before and after; Markdown to stdout and to --out, section "Final dump's own work".
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import CLI_MAIN_MARKED  # noqa: E402
from common import (export_revision, revision, BENCH, SHM, become_subreaper, build_restore_target, kill_reap, log,  # noqa: E402
                    median, parse_size, reap, run_meta, size_name, start_restore_target,
                    unwind_on_signals, write_section)

SECTION = "## Final dump's own work after the imports (issue 13)"
ROOT = BENCH.parent
COLS = ("own", "cpu", "before", "frozen", "after")

CHILD = r"""
import contextlib, io, json, os, resource, sys, time
if os.environ.get("BENCH_LIKE_SERVICE"):        # --service: as a service's spare worker has it
    import coldsnap.service.server as S, coldsnap.memory.frozen_copy as F
    S.import_everything()
    getattr(S, "warm_up", lambda: None)()
    getattr(F, "make_buffers_ahead", lambda: None)()
import coldsnap.cli as cli
import coldsnap.dump.dump as D
marks = {}
inner = D.freeze_tree
@contextlib.contextmanager
def marked(*a, **k):
    marks["freeze"] = time.perf_counter_ns()
    with inner(*a, **k) as held:
        yield held
    marks["thawed"] = time.perf_counter_ns()
D.freeze_tree = marked
""" + CLI_MAIN_MARKED + r"""
st = json.loads(out.getvalue())["stats"]
print(json.dumps({"own": (t1 - t0) / 1e6, "cpu": (c1 - c0) * 1e3, "before": (marks["freeze"] - t0) / 1e6,
                  "frozen": st["frozen_time"] / 1e3, "after": (t1 - marks["thawed"]) / 1e6}))
"""






def one(src: Path, size: int, tracked: bool, like_service: bool = False) -> dict:
    env = {**os.environ, "PYTHONPATH": str(src)}
    if like_service:
        env["BENCH_LIKE_SERVICE"] = "1"
    pid, _ = start_restore_target(size)
    try:
        with tempfile.TemporaryDirectory(prefix="coldsnap-bench-", dir=SHM) as d:
            argv = ["dump", "-t", str(pid), "-D", f"{d}/img"]
            if tracked:
                subprocess.run([sys.executable, "-m", "coldsnap", "pre-dump", "-t", str(pid), "-D", f"{d}/pre"],
                               env=env, check=True, stdout=subprocess.DEVNULL)
                argv += ["--prev-images-dir", f"{d}/pre"]
            p = subprocess.run([sys.executable, "-c", CHILD, *argv], env=env, capture_output=True, text=True)
            if p.returncode:
                raise RuntimeError(p.stderr.strip()[-400:])
            reap(pid)
            return json.loads(p.stdout.strip().splitlines()[-1])
    finally:
        kill_reap(pid)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--base", required=True)
    ap.add_argument("--sizes", default="8M,64M,256M")
    ap.add_argument("--tracked", default="8M", help="sizes also run after a tracked pre-dump ('' for none)")
    ap.add_argument("--runs", type=int, default=7)
    ap.add_argument("--out", default=str(BENCH / "RESULTS.md"))
    ap.add_argument("--service", action="store_true",
                    help="as a service's spare worker runs it: every module imported, the service's "
                         "warm-up and the spare's copy buffers made first")
    args = ap.parse_args(argv)
    unwind_on_signals()
    become_subreaper()
    build_restore_target()
    base_sha, base_src = export_revision(args.base)
    new_src = ROOT / "src"
    subprocess.run([sys.executable, "-m", "compileall", "-q", str(new_src)], check=True)
    sides = [("base", base_src), ("new", new_src)]
    kinds = [(parse_size(s), False) for s in args.sizes.split(",")]
    kinds += [(parse_size(s), True) for s in args.tracked.split(",") if s]
    load0 = os.getloadavg()
    res: dict = {}
    for size, tracked in kinds:
        for r in range(args.runs + 1):          # the first round warms up, unrecorded
            for name, src in (sides if r % 2 else sides[::-1]):
                got = one(src, size, tracked, args.service)
                if r:
                    res.setdefault((size, tracked, name), []).append(got)
        log(f"{size_name(size)}{' tracked' if tracked else ''} done")
    load1 = os.getloadavg()
    meta = run_meta("dump_work.py", argv)
    L = [SECTION, "", f"Command: `{meta['cmd']}`  ", f"base {base_sha}, new: {revision()}  ",
         f"Date: {meta['date']}; kernel `{meta['uname']}`; {meta['cpus']} CPUs; images on tmpfs; "
         f"load average {load0[0]:.1f} before, {load1[0]:.1f} after.", "",
         "| size | dump | n | " + " | ".join(f"{c} ms base / new" for c in COLS) + " |",
         "|---|---|---|" + "---|" * len(COLS)]
    for size, tracked in kinds:
        b, n = res[(size, tracked, "base")], res[(size, tracked, "new")]
        cells = [f"{median([x[c] for x in b]):.1f} ({min(x[c] for x in b):.1f}) / "
                 f"**{median([x[c] for x in n]):.1f}** ({min(x[c] for x in n):.1f})" for c in COLS]
        L.append(f"| {size_name(size)} | {'after a tracked pre-dump' if tracked else 'plain'} | {len(n)} | "
                 + " | ".join(cells) + " |")
    L += ["", "Median (min) over the rounds. own = cli.main of `coldsnap dump` after its imports; cpu = its "
          "CPU time (every thread of the command; the target's own exit is not in it); "
          "before / after = the parts of it before the freeze and after the tree's release; "
          "frozen = stats-dump frozen_time (see the script's docstring)."]
    text = "\n".join(L) + "\n"
    print(text)
    write_section(Path(args.out), text, SECTION)
    return 0


if __name__ == "__main__":
    sys.exit(main())
