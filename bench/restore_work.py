#!/usr/bin/env python3
"""The restore's own work, after the imports: two revisions side by side (issue 13).

    python3 bench/restore_work.py --base REV [--sizes 8M,64M,256M] [--runs 7]

One dump per size (this tree's coldsnap, of a fresh bench/restore_target.c with SIZE of
private anonymous memory, every byte non-zero, idle; images on tmpfs), then per round and
side (PYTHONPATH = one side's src/; the base revision exported with `git archive` into
bench/out/rev-SHA/, byte-compiled as the new side is) two runs of `restore -D DIR -d`, each
followed by a check of the first and last page of the restored memory, SIGKILL and reap:

 1. a fresh interpreter that imports coldsnap.cli and coldsnap.restore.restore untimed
    (with --service: every module and the service's warm-up, as a service's worker has
    them), then times `cli.main(["restore", "-D", DIR, "-d", "--json"])`:
        own        cli.main from its call to its return (argument parsing included; the
                   interpreter's start-up, the imports and its exit excluded)
        own CPU    coldsnap's CPU time (user + system, every thread) over the same span: the
                   steadier figure on a loaded machine (the blank child's is not in it)
        load       load_tree (the images read and checked)
        blank      make_blank_tree (the blank child forked, set up, ready)
        transplant every transplant (the reshaping by injected calls, memory included)
        memory     its memory part (map every area, write every page)
        calls      injected system calls
 2. the command as a user runs it, `python3 -m coldsnap restore -D DIR -d`: wall time
    from exec to exit and CPU time (user + system of the command's process, wait4).

Both sides alternate who goes first (ABBA). Medians (min) and the load average before and
after; Markdown to stdout and to --out, section "Restore's own work".
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import CLI_MAIN_MARKED  # noqa: E402
from common import (export_revision, BENCH, LIVE, SHM, become_subreaper, build_restore_target, kill_reap,  # noqa: E402
                    log, median, parse_size, run_meta, size_name, start_restore_target,
                    unwind_on_signals, write_section)

SECTION = "## Restore's own work after the imports (issue 13)"
ROOT = BENCH.parent
PAGE = 4096
OWN = ("own", "own_cpu", "load", "blank", "transplant", "memory")

CHILD = r"""
import contextlib, io, json, os, resource, sys, time
if os.environ.get("BENCH_LIKE_SERVICE"):        # --service: as a service's worker has it
    import coldsnap.service.server as S
    S.import_everything()
    getattr(S, "warm_up", lambda: None)()
import coldsnap.cli as cli
import coldsnap.restore.restore as R
spent = {"load": 0, "blank": 0, "transplant": 0}
def timed(name, fn):
    def run(*a, **k):
        t = time.perf_counter_ns()
        try:
            return fn(*a, **k)
        finally:
            spent[name] += time.perf_counter_ns() - t
    return run
R.load_tree = timed("load", R.load_tree)
R.make_blank_tree = timed("blank", R.make_blank_tree)
R.transplant = timed("transplant", R.transplant)
""" + CLI_MAIN_MARKED + r"""
res = json.loads(out.getvalue())
print(json.dumps({"own": (t1 - t0) / 1e6, "own_cpu": (c1 - c0) * 1e3, **{k: v / 1e6 for k, v in spent.items()},
                  "memory": res["memory_ms"], "calls": res["injected_calls"], "pid": res["pid"]}))
"""




def dump(size: int, images: Path) -> tuple[int, int]:
    """(pid, address of its memory) of a target dumped into IMAGES (killed by the dump, reaped)."""
    pid, addr = start_restore_target(size)
    try:
        subprocess.run([sys.executable, "-m", "coldsnap", "dump", "-t", str(pid), "-D", str(images)],
                       env={**os.environ, "PYTHONPATH": str(ROOT / "src")}, check=True,
                       stdout=subprocess.DEVNULL)
    finally:
        kill_reap(pid)
    return pid, addr


def restored(pid: int, addr: int, size: int) -> None:
    """Check the restored memory's first and last page (every byte non-zero), kill, reap."""
    LIVE.add(pid)
    try:
        fd = os.open(f"/proc/{pid}/mem", os.O_RDONLY)
        try:
            for at in (addr, addr + size - PAGE):
                if 0 in os.pread(fd, PAGE, at):
                    raise RuntimeError(f"restored memory of {pid} differs at {at:#x}")
        finally:
            os.close(fd)
    finally:
        kill_reap(pid)


def own(src: Path, images: Path, addr: int, size: int, like_service: bool = False) -> dict:
    env = {**os.environ, "PYTHONPATH": str(src)}
    if like_service:
        env["BENCH_LIKE_SERVICE"] = "1"
    p = subprocess.run([sys.executable, "-c", CHILD, "restore", "-D", str(images), "-d"], env=env,
                       capture_output=True, text=True)
    if p.returncode:
        raise RuntimeError(p.stderr.strip()[-400:])
    r = json.loads(p.stdout.strip().splitlines()[-1])
    restored(r.pop("pid"), addr, size)
    return r


def command(src: Path, images: Path, addr: int, size: int) -> dict:
    env = {**os.environ, "PYTHONPATH": str(src)}
    with tempfile.TemporaryFile("w+") as out:
        t0 = time.perf_counter_ns()
        p = subprocess.Popen([sys.executable, "-m", "coldsnap", "restore", "-D", str(images), "-d"], env=env,
                             stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT)
        _, status, ru = os.wait4(p.pid, 0)
        wall = (time.perf_counter_ns() - t0) / 1e6
        p.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        text = out.read()
    m = re.search(r"restored (\d+)", text)
    if p.returncode or not m:
        raise RuntimeError(f"restore exit {p.returncode}: {text.strip()[-400:]}")
    restored(int(m.group(1)), addr, size)
    return {"wall": wall, "cpu": (ru.ru_utime + ru.ru_stime) * 1e3}


def _f(x: float) -> str:
    return f"{x:.1f}" if x < 100 else f"{x:.0f}"


def cell(xs: list[float]) -> str:
    return f"{_f(median(xs))} ({_f(min(xs))})"


def report(res: dict, sides: list, meta: dict, load0, load1) -> str:
    L = [SECTION, "", f"Command: `{meta['cmd']}`  ",
         f"Revisions: base {sides[0][0]}, new {meta['rev']}  ",
         f"Date: {meta['date']}; kernel `{meta['uname']}`; {meta['cpus']} CPUs; THP `{meta['thp']}`; "
         f"images on tmpfs ({SHM}); load average before / after: "
         f"{load0[0]:.1f} {load0[1]:.1f} {load0[2]:.1f} / {load1[0]:.1f} {load1[1]:.1f} {load1[2]:.1f}.",
         "", "| size | side | n | own ms | own CPU ms | load ms | blank ms | transplant ms | memory ms | injected calls "
         "| command wall ms | command CPU ms |", "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for size, by_side in res.items():
        for name, rows in by_side.items():
            if not rows:
                L.append(f"| {size_name(size)} | {name} | 0 | failed |")
                continue
            L.append(f"| {size_name(size)} | {name} | {len(rows)} | "
                     + " | ".join(cell([r[k] for r in rows]) for k in OWN)
                     + f" | {median([r['calls'] for r in rows]):.0f} | "
                     + " | ".join(cell([r[k] for r in rows]) for k in ("wall", "cpu")) + " |")
    L += ["", "Median (min) over the rounds. own = `cli.main` of the restore in an interpreter that "
          "imported its modules first (parsing, loading, blank child, seize, transplant, release; "
          "start-up, imports and exit excluded), own CPU its CPU time (coldsnap's threads, not the "
          "blank child's); load, blank, transplant and memory are parts of it. "
          "command = `python3 -m coldsnap restore -D DIR -d` from exec to exit, in separate runs."]
    return "\n".join(L) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--base", required=True)
    ap.add_argument("--sizes", default="8M,64M,256M")
    ap.add_argument("--runs", type=int, default=7)
    ap.add_argument("--out", default=str(BENCH / "RESULTS.md"))
    ap.add_argument("--service", action="store_true",
                    help="own work as a service's worker does it: every module imported and the "
                         "service's warm-up done first (server.import_everything, warm_up)")
    args = ap.parse_args(argv)
    unwind_on_signals()
    become_subreaper()
    build_restore_target()
    base_sha, base_src = export_revision(args.base)
    new_src = ROOT / "src"
    subprocess.run([sys.executable, "-m", "compileall", "-q", str(new_src)], check=True)
    sides = [(base_sha, base_src), ("new", new_src)]
    load0 = os.getloadavg()
    res: dict = {}
    for size in (parse_size(s) for s in args.sizes.split(",")):
        res[size] = {"base": [], "new": []}
        images = Path(tempfile.mkdtemp(prefix="coldsnap-bench-", dir=SHM)) / "img"
        try:
            _, addr = dump(size, images)
            for i in range(args.runs):
                order = [("base", base_src), ("new", new_src)]
                for name, src in order if i % 2 == 0 else order[::-1]:
                    try:
                        row = own(src, images, addr, size, args.service) | command(src, images, addr, size)
                    except RuntimeError as e:
                        log(f"{size_name(size)} {name}: {e}")
                        continue
                    res[size][name].append(row)
                log(f"{size_name(size)} round {i + 1}/{args.runs}")
        finally:
            shutil.rmtree(images.parent, ignore_errors=True)
    load1 = os.getloadavg()
    text = report(res, sides, run_meta("restore_work.py", argv), load0, load1)
    print(text)
    write_section(Path(args.out), text, SECTION)
    return 0


if __name__ == "__main__":
    sys.exit(main())
