#!/usr/bin/env python3
"""Where a lazily restored process that reads all its memory waits (issue 12): the read-all
of bench/lazy.py, split by the lazy server's own counters, beside an eager restore.

    python3 bench/lazy_read.py [--sizes 256M,1G] [--runs 3] [--base REV] [--fresh] [--out FILE]

bench/warm_app.py of SIZE is started and dumped once per size; then, per round, the same
images are restored (`coldsnap restore -D DIR -d --json`, the command in-process) eagerly
and lazily (and lazily by revision REV's coldsnap with --base), in an order that alternates;
each time the program answers its first request, then "all" (it sums every value: a
sequential read of SIZE, right after the first answer, while a lazy restore's pages still
arrive), and after a lazy restore the server's guardian is waited for; then "all" once more
(every page in: a lazy restore's 4 KiB pages against the huge pages an eager restore writes
into areas advised MADV_HUGEPAGE, as numpy's array is). --fresh: the program
is started and dumped again before every restore, as bench/lazy.py does (its memory freed
just before the restore; slower and noisier on a VM that hands freed memory back to its host).

Per side, medians: the command, the first answer and the read-all answered (from the
command's start), the read-all inside the program, the last page in; the command's CPU (an
eager restore copies there); the lazy server's line (--lazy-log): its time after go, its CPU
and that of its threads (main, copy helper, page tables of the pages files), faults, pages
per fault, UFFDIO_COPY calls, and the time its copies took answering faults and pushing.
Section "Lazy restore: where the read-all waits (issue 12)" of --out (default: stdout only).
"""
from __future__ import annotations

import argparse
import json
import os
import re
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (LIVE, become_subreaper, export_revision, kill_reap, log, median, parse_size,  # noqa: E402
                    run_meta, size_name, unwind_on_signals, wait_exit, write_section)
from lazy import COLDSNAP, App, ask, coldsnap_dump, ms, run  # noqa: E402

SECTION = "## Lazy restore: where the read-all waits (issue 12)"
# the server's last line (restore/lazy_server.py): the numbers this bench reads from it (an
# older revision's line (--base) has only some of them)
SERVER = [re.compile(p) for p in (
    r"\((?P<after_go>\d+) ms after go, CPU (?P<cpu>\d+) ms",
    r"main thread (?P<main>\d+), page tables (?P<tables>\d+), copy helper (?P<helper>-?\d+)\)",
    r"(?P<pushed>\d+) pushed, (?P<fault_pages>\d+) on (?P<faults>\d+) faults",
    r"(?P<copies>\d+) copies, (?P<fault_ms>\d+) ms answering faults, (?P<push_ms>\d+) ms pushing")]


def restore_once(app: App, images: Path, lazy: bool, src: str | None, log_file: Path) -> dict:
    """One restore of IMAGES and the read-all after it: the figures of that round."""
    env = {**os.environ, "PYTHONPATH": src} if src else None
    log_file.unlink(missing_ok=True)
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter_ns()
    r = run([*COLDSNAP, "restore", "-D", images, "-d", "--json",
             *(["--lazy-pages", "--lazy-log", log_file] if lazy else [])], env=env)
    got = {"cmd": ms(t0)}
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if r.returncode:
        raise RuntimeError(f"coldsnap restore: {r.stderr.strip()}")
    res = json.loads(r.stdout)
    LIVE.add(res["pid"])
    got["cmd_cpu"] = (after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime) * 1e3
    ask(app.port, "first")
    got["first"] = ms(t0)
    got["inside"] = float(ask(app.port, "all").split()[1])
    got["to_all"] = ms(t0)
    if lazy:
        LIVE.add(res["lazy_guardian"])
        wait_exit(res["lazy_guardian"])
        got["last"] = ms(t0)
        text = log_file.read_text() if log_file.exists() else ""
        if "every page is in" not in text:
            raise RuntimeError(f"the lazy server did not bring every page in: {text[-300:]!r}")
        for pattern in SERVER:
            if (found := pattern.search(text)) is not None:
                got.update({k: float(v) for k, v in found.groupdict().items()})
    got["again"] = float(ask(app.port, "all").split()[1])    # every page in: 4 KiB pages against huge ones
    kill_reap(res["pid"])
    return got


def bench_size(size: int, runs: int, sides: list[tuple[str, str | None]], fresh: bool, work: Path) -> dict:
    import numpy as np
    data = work / "data.npy"
    np.save(data, np.arange(size // 8, dtype=np.int64) * 7 + 3)
    app = App(work, data)
    images = work / "img"
    shutil.rmtree(images, ignore_errors=True)       # the last size's
    out: dict[str, list[dict]] = {name: [] for name, _ in sides}
    for rnd in range(runs):
        order = sides if rnd % 2 == 0 else sides[::-1]
        for name, src in order:
            if fresh or not images.exists():
                app.start()
                shutil.rmtree(images, ignore_errors=True)
                coldsnap_dump(app, images)
            out[name].append(restore_once(app, images, name != "eager", src, work / "lazy.log"))
        log(f"{size_name(size)} round {rnd + 1}: " + ", ".join(
            f"{name} to_all {out[name][-1]['to_all']:.0f}" for name, _ in sides) + f", load {os.getloadavg()[0]:.1f}")
    data.unlink()
    return out


COLUMNS = [("cmd", "command"), ("cmd_cpu", "its CPU"), ("first", "first answer"), ("inside", "read-all inside"),
           ("to_all", "read-all answered"), ("last", "last page in"), ("again", "read-all again"), ("after_go", "server after go"),
           ("cpu", "server CPU"), ("main", "main"), ("helper", "copy helper"), ("tables", "page tables"),
           ("faults", "faults"), ("per_fault", "pages a fault"), ("copies", "copies"),
           ("fault_ms", "copying for faults"), ("push_ms", "pushing")]


def report(res: dict, meta: dict, loads: tuple, base: str | None, fresh: bool) -> str:
    lines = [SECTION, "", f"Command: `{meta['cmd']}`  ", f"coldsnap: {meta['rev']}" + (f"; base {base}" if base else "") + "  ",
             f"Date: {meta['date']}; kernel `{meta['uname']}`; {meta['cpus']} CPUs; THP `{meta['thp']}`; "
             f"load average {loads[0]:.1f} at the start, {loads[1]:.1f} at the end"
             f"{'; the program started and dumped again before every restore' if fresh else ''}.", "",
             "ms from the restore command's start (command, first answer, read-all answered, last page) or "
             "spent (the rest), medians; pages a fault: pages copied answering faults per fault; ratio: "
             "read-all answered, lazy ÷ eager.", "",
             "| size | side | n | " + " | ".join(t for _, t in COLUMNS) + " | ratio |",
             "|---|---|---|" + "---|" * (len(COLUMNS) + 1)]
    for size, sides in res.items():
        eager = median([r["to_all"] for r in sides.get("eager", [])]) if sides.get("eager") else None
        for name, rows in sides.items():
            for r in rows:
                if "faults" in r:
                    r["per_fault"] = r["fault_pages"] / r["faults"] if r["faults"] else 0
            cells = []
            for key, _ in COLUMNS:
                vals = [r[key] for r in rows if key in r]
                cells.append(f"{median(vals):.0f}" if vals else "—")
            ratio = f"{median([r['to_all'] for r in rows]) / eager:.2f}x" if eager and name != "eager" else ""
            lines.append(f"| {size_name(size)} | {name} | {len(rows)} | " + " | ".join(cells) + f" | {ratio} |")
    return "\n".join(lines) + "\n"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="256M,1G")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--base", help="also restore lazily with this revision's coldsnap")
    ap.add_argument("--fresh", action="store_true", help="start and dump the program again before every restore")
    ap.add_argument("--out", help="write the section into this file too")
    args = ap.parse_args()
    become_subreaper()
    unwind_on_signals()
    sides: list[tuple[str, str | None]] = [("eager", None), ("lazy", None)]
    base = None
    if args.base:
        base, base_src = export_revision(args.base)
        sides.append((f"lazy {base}", str(base_src)))
    load0 = os.getloadavg()[0]
    work = Path(f"/dev/shm/cs-lazy-read-{os.getpid()}")
    work.mkdir()
    res = {}
    try:
        for size in map(parse_size, args.sizes.split(",")):
            res[size] = bench_size(size, args.runs, sides, args.fresh, work)
    finally:
        for pid in list(LIVE):
            kill_reap(pid)
        shutil.rmtree(work, ignore_errors=True)
    text = report(res, run_meta("lazy_read.py", None), (load0, os.getloadavg()[0]), base, args.fresh)
    print(text)
    if args.out:
        write_section(Path(args.out), text, SECTION)
    return 0


if __name__ == "__main__":
    sys.exit(main())
