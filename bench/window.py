#!/usr/bin/env python3
"""Where the final dump's frozen window goes, for a small process (issue 13).

    python3 bench/window.py [--sizes 8M,64M] [--runs 9]

Target: bench/restore_target.c (SIZE of private anonymous memory, every byte non-zero, idle).
One run = a fresh target, `dump(pid, DIR)` called in this process with the phases of
coldsnap/dump/dump.py timed from outside (each named function wrapped while it runs; a name
that no longer exists is reported, not guessed). Phases, inside the freeze unless said:

    seize     freezing_time: seizing every thread (before the freeze is complete)
    checks    refuse_tree, /proc/PID/maps, refuse_mappings, classify_all
    state     collect_task_state: registers, signals, timers... (injected calls)
    memory    plan_pages (page scan, tracking) + save_private (the copy) + shared memory
    files     the fd table (FileRegistry.collect, add_mapped) and mapped_files
    images    core, mm, pstree/ids, files, inventory, stats images and the commit
    kill      kill_held: SIGKILL and the wait for the end of every thread
    other     frozen - the phases above (bookkeeping between them)

Frozen = the returned stats' frozen_time: from the freeze to the last thread's death, as
CRIU counts it (the stats-dump image is written before the commit and the kill, so its
frozen_time ends there). Medians (min) over the runs; images on tmpfs, removed each run.
Markdown to stdout and to --out, section "Final dump's frozen window (issue 13)".
"""
from __future__ import annotations

import argparse
import collections
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (BENCH, SHM, become_subreaper, build_restore_target, kill_reap, log,  # noqa: E402
                    median, parse_size, reap, run_meta, size_name, start_restore_target,
                    unwind_on_signals, write_section)

SECTION = "## Final dump's frozen window (issue 13)"
PHASES = {
    "checks": ["refuse_tree", "read_maps", "refuse_mappings", "classify_all"],
    "state": ["collect_task_state"],
    "memory": ["plan_pages", "save_private", "save_shmem", "save_sysv"],
    "files": ["FileRegistry.collect", "FileRegistry.add_mapped", "mapped_files"],
    "images": ["write_core_images", "write_mm", "write_tree_images", "write_files_images",
               "write_inventory", "write_stats", "ImageDir.commit"],
    "kill": ["kill_held"],
}


def instrument(acc: collections.Counter) -> list[str]:
    """Wrap every phase function; returns the names not found."""
    import coldsnap.dump.dump as D
    missing = []
    for names in PHASES.values():
        for name in names:
            owner, attr = (getattr(D, name.split(".")[0], None), name.split(".")[1]) if "." in name else (D, name)
            f = getattr(owner, attr, None) if owner is not None else None
            if f is None:
                missing.append(name)
                continue

            def timed(*a, _f=f, _name=name, **k):
                t = time.perf_counter_ns()
                try:
                    return _f(*a, **k)
                finally:
                    acc[_name] += time.perf_counter_ns() - t
            setattr(owner, attr, timed)
    return missing


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="8M,64M")
    ap.add_argument("--runs", type=int, default=9)
    ap.add_argument("--out", default=str(BENCH / "RESULTS.md"))
    args = ap.parse_args(argv)
    unwind_on_signals()
    become_subreaper()
    build_restore_target()
    from coldsnap.dump.dump import dump
    acc: collections.Counter = collections.Counter()
    missing = instrument(acc)
    rows = []
    for text in args.sizes.split(","):
        size = parse_size(text)
        res: dict[str, list[float]] = collections.defaultdict(list)
        for r in range(args.runs + 1):              # the first run warms up, unrecorded
            pid, _ = start_restore_target(size)
            d = tempfile.mkdtemp(prefix="coldsnap-bench-", dir=SHM)
            try:
                acc.clear()
                st = dump(pid, Path(d) / "img")
                reap(pid)
            finally:
                kill_reap(pid)
                shutil.rmtree(d, ignore_errors=True)
            if not r:
                continue
            res["frozen"].append(st.frozen_time / 1e3)
            res["seize"].append(st.freezing_time / 1e3)
            for phase, names in PHASES.items():
                res[phase].append(sum(acc[n] for n in names) / 1e6)
            res["other"].append(res["frozen"][-1] - sum(res[p][-1] for p in PHASES))
        log(f"{size_name(size)} done")
        rows.append((size, res))
    meta = run_meta("window.py", argv)
    cols = ["frozen", "seize", *PHASES, "other"]
    L = [SECTION, "", f"Command: `{meta['cmd']}`  ", f"coldsnap: {meta['rev']}  ",
         f"Date: {meta['date']}; kernel `{meta['uname']}`; {meta['cpus']} CPUs; THP `{meta['thp']}`; "
         "images on tmpfs. The machine was shared with other work while it ran.", "",
         "| size | n | " + " | ".join(f"{c} ms" for c in cols) + " |", "|---|---|" + "---|" * len(cols)]
    for size, res in rows:
        L.append(f"| {size_name(size)} | {len(res['frozen'])} | " +
                 " | ".join(f"{median(res[c]):.2f} ({min(res[c]):.2f})" for c in cols) + " |")
    L += ["", "Median (min) per phase over the runs, each phase's median on its own (they need not "
          "add up). Phases as in the script's docstring" +
          (f"; not found in this revision: {', '.join(missing)}" if missing else "") + "."]
    text = "\n".join(L) + "\n"
    print(text)
    write_section(Path(args.out), text, SECTION)
    return 0


if __name__ == "__main__":
    sys.exit(main())
