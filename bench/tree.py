#!/usr/bin/env python3
"""Process trees: freeze and dump time of coldsnap and CRIU 4.2 side by side (issue 9).

    python3 bench/tree.py [--trees 1,10,100] [--size 1M] [--runs 3] [--chain-runs 2]
                          [--criu PATH] [--out FILE]

Target: bench/tree_target.c (built into bench/out/): a root and N-1 children, each with
SIZE of private anonymous memory (every byte non-zero), all holding both ends of one pipe
(one byte in it) and each child a pipe to the root; idle in pause(), the root a session
leader, stdio on /dev/null. One tree per size serves every run (both tools dump with
--leave-running); images on tmpfs, removed after each dump.

Per run and tree the two tools alternate who goes first (ABBA). Figures per dump: the
freezing and frozen times of its stats-dump (CRIU's and ours have the same fields: freezing
= seizing the tree, frozen = from the freeze to the resume), the command's wall time.

Chain: on the largest tree, coldsnap alone (CRIU 4.2's pre-dump needs soft-dirty bits,
which this kernel lacks): two tracked no-freeze pre-dumps (the second on the first), then
the dump on that chain; its frozen time, per process, against a plain dump's.

Medians are printed as Markdown and written to --out, section "Process trees ... (issue 9)".
"""
from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (BENCH, OUT_DIR, become_subreaper, compile_c, log, median, parse_size,  # noqa: E402
                    run_meta, scratch_dir, size_name, spread, unwind_on_signals, write_section)
from small import COLDSNAP, CRIU_DEFAULT, criu_usable, timed  # noqa: E402

SECTION = "## Process trees: coldsnap vs CRIU 4.2 (issue 9)"
TARGET_SRC = BENCH / "tree_target.c"
TARGET_BIN = OUT_DIR / "tree_target"


def start_tree(n: int, size: int) -> subprocess.Popen:
    p = subprocess.Popen([str(TARGET_BIN), str(n), str(size)], stdin=subprocess.DEVNULL,
                         stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, start_new_session=True)
    line = p.stdout.readline()
    p.stdout.close()
    if line.strip() != "ready":
        stop_tree(p)
        raise RuntimeError(f"tree of {n} did not start: {line!r}")
    return p


def stop_tree(p: subprocess.Popen) -> None:
    """SIGTERM the root (it SIGKILLs its children), reap it and, as subreaper, the children."""
    try:
        os.kill(p.pid, signal.SIGTERM)
    except ProcessLookupError:
        pass
    p.wait()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            if os.waitpid(-1, os.WNOHANG)[0] == 0:
                time.sleep(0.01)
        except ChildProcessError:
            return


def stats(images: Path) -> tuple[float, float]:
    """(freezing ms, frozen ms) of a dump's stats-dump."""
    from coldsnap.images.framing import read_single
    d = read_single(images / "stats-dump").dump
    return d.freezing_time / 1e3, d.frozen_time / 1e3


def dump_once(tool: str, argv_of, pid: int) -> dict:
    with scratch_dir() as d:
        images = d / "images"
        images.mkdir()
        rc, wall, out, err, cpu = timed(argv_of(pid, images))
        if rc:
            return {"error": f"{tool} dump exit {rc}: {(err or out).strip()[-200:]}"}
        freezing, frozen = stats(images)
        return {"freezing": freezing, "frozen": frozen, "wall": wall, "cpu": cpu}


def coldsnap_dump(pid: int, d: Path, *more: str) -> list[str]:
    return COLDSNAP + ["dump", "-t", str(pid), "-D", str(d), "--leave-running", *more]


def criu_dump(criu: Path):
    return lambda pid, d: [str(criu), "dump", "-t", str(pid), "-D", str(d), "--leave-running", "-o", "dump.log"]


def chain_once(pid: int) -> dict:
    """Two tracked pre-dumps then the dump on them; the dump's figures, or {"error": ...}."""
    with scratch_dir() as d:
        p1, p2, img = d / "1", d / "2", d / "3"
        for argv in (COLDSNAP + ["pre-dump", "-t", str(pid), "-D", str(p1)],
                     COLDSNAP + ["pre-dump", "-t", str(pid), "-D", str(p2), "--prev-images-dir", str(p1)]):
            rc, _, out, err, _ = timed(argv)
            if rc:
                return {"error": f"pre-dump exit {rc}: {(err or out).strip()[-200:]}"}
        rc, wall, out, err, cpu = timed(coldsnap_dump(pid, img, "--prev-images-dir", str(p2)))
        if rc:
            return {"error": f"dump on the chain exit {rc}: {(err or out).strip()[-200:]}"}
        freezing, frozen = stats(img)
        return {"freezing": freezing, "frozen": frozen, "wall": wall, "cpu": cpu}


def fmt(x: float) -> str:
    return f"{x:.0f}" if x >= 100 else f"{x:.1f}" if x >= 10 else f"{x:.2f}"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--trees", default="1,10,100", help="tree sizes (processes)")
    ap.add_argument("--size", default="1M", help="private memory per process")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--chain-runs", type=int, default=2)
    ap.add_argument("--criu", type=Path, default=CRIU_DEFAULT)
    ap.add_argument("--out", type=Path, default=BENCH / "RESULTS.md")
    args = ap.parse_args(argv)
    trees = [int(x) for x in args.trees.split(",")]
    size = parse_size(args.size)
    unwind_on_signals()
    become_subreaper()
    compile_c(TARGET_SRC, TARGET_BIN)
    no_criu = criu_usable(args.criu)
    tools = {"coldsnap": coldsnap_dump}
    if not no_criu:
        tools["CRIU"] = criu_dump(args.criu)
    res: dict[tuple[int, str], list[dict]] = {}
    chain: list[dict] = []
    t0 = time.monotonic()
    for n in trees:
        tree = start_tree(n, size)
        try:
            for r in range(args.runs):
                order = list(tools) if r % 2 == 0 else list(reversed(tools))
                for name in order:
                    got = dump_once(name, tools[name], tree.pid)
                    res.setdefault((n, name), []).append(got)
                    log(f"tree {n} run {r + 1} {name}: {got}")
            if n == max(trees):
                for r in range(args.chain_runs):
                    got = chain_once(tree.pid)
                    chain.append(got)
                    log(f"tree {n} chain run {r + 1}: {got}")
        finally:
            stop_tree(tree)
    log(f"done in {time.monotonic() - t0:.0f} s")

    meta = run_meta("tree.py", argv)
    out = [SECTION, "",
           f"Command: `{meta['cmd']}`  ",
           f"coldsnap: {meta['rev']}  ",
           f"Date: {meta['date']}; kernel `{meta['uname']}`; {meta['cpus']} CPUs; THP `{meta['thp']}`; "
           f"images on tmpfs (/dev/shm); {size_name(size)} of private memory per process. "
           f"CRIU: " + (f"`{args.criu}`." if not no_criu else f"not run ({no_criu})."), "",
           "### Dump of a tree, left running",
           "",
           "| processes | n | freezing ms: CRIU / coldsnap | frozen ms: CRIU / coldsnap | coldsnap / CRIU frozen "
           "| coldsnap frozen ms per process | dump wall ms: CRIU / coldsnap | dump CPU ms: CRIU / coldsnap |",
           "|---|---|---|---|---|---|---|---|"]
    errors = []
    for n in trees:
        cs = [x for x in res.get((n, "coldsnap"), []) if "error" not in x]
        cr = [x for x in res.get((n, "CRIU"), []) if "error" not in x]
        errors += [x["error"] for k in ("coldsnap", "CRIU") for x in res.get((n, k), []) if "error" in x]

        def col(key, rows):
            return spread([x[key] for x in rows], fmt) if rows else "-"
        ratio = f"{median([x['frozen'] for x in cs]) / median([x['frozen'] for x in cr]):.2f}x" if cs and cr else "-"
        per = fmt(median([x["frozen"] for x in cs]) / n) if cs else "-"
        out.append(f"| {n} | {len(cs)} | {col('freezing', cr)} / {col('freezing', cs)} | "
                   f"{col('frozen', cr)} / {col('frozen', cs)} | {ratio} | {per} | {col('wall', cr)} / {col('wall', cs)} "
                   f"| {col('cpu', cr)} / {col('cpu', cs)} |")
    big = max(trees)
    ok = [x for x in chain if "error" not in x]
    errors += [x["error"] for x in chain if "error" in x]
    plain = [x for x in res.get((big, "coldsnap"), []) if "error" not in x]
    out += ["", f"### Final dump of the {big}-process tree after two tracked pre-dumps (coldsnap)", "",
            "| dump | n | freezing ms | frozen ms | frozen ms per process | wall ms | CPU ms |",
            "|---|---|---|---|---|---|---|"]
    for label, rows in (("no parent (above)", plain), ("on the pre-dump chain", ok)):
        if rows:
            out.append(f"| {label} | {len(rows)} | {spread([x['freezing'] for x in rows], fmt)} | "
                       f"{spread([x['frozen'] for x in rows], fmt)} | {fmt(median([x['frozen'] for x in rows]) / big)} | "
                       f"{spread([x['wall'] for x in rows], fmt)} | {spread([x['cpu'] for x in rows], fmt)} |")
    out += ["", "Median (min–max) over the runs. Freezing and frozen ms are the `freezing_time` and "
            "`frozen_time` of each dump's stats-dump (the same fields for both tools); CPU ms = user + "
            "system time of the dump command (wait4), which the other load of a shared machine inflates "
            "less than the frozen window (the target must be scheduled for every injected call). Both tools dump "
            "with `--leave-running`, so one tree serves every run. CRIU 4.2's pre-dump does not run on "
            "this kernel (no soft-dirty bits), hence the chain row is coldsnap's alone."]
    if errors:
        out += ["", "Errors: " + "; ".join(sorted(set(errors)))]
    text = "\n".join(out) + "\n"
    print(text)
    write_section(args.out, text, SECTION)
    return 0


if __name__ == "__main__":
    sys.exit(main())
