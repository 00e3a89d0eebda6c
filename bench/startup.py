#!/usr/bin/env python3
"""What the short commands pay before their work: interpreter start-up and imports (issue 13).

    python3 bench/startup.py [--runs 9] [--size 8M] [--src DIR...] [--callgrind] [--launcher CMD]

Per round, on fresh 8 MiB targets (bench/restore_target.c, images on tmpfs): `pre-dump
--track-mem none`, a tracked `pre-dump` (the default), `dump`, `restore -d` and `restore -d
--lazy-pages` of that dump (its server and guardian are waited for), each run as `python3 -m
coldsnap` with the sources of --src (default: this tree's src/, byte-compiled first). Wall =
exec to exit; CPU = user + system of the command's process (wait4). --launcher CMD: also time
the same commands started by CMD (e.g. an installed script) instead of `python3 -m coldsnap`.
Several --src trees (e.g. a base revision's, extracted with `git archive`) alternate round by
round, so that the machine's drift hits each alike.

--callgrind: instructions (valgrind --tool=callgrind, deterministic whatever the load) of
importing, in a fresh interpreter, every module each command had loaded by its end (in the
order it loaded them), and of `python3 -c pass` for the floor. The module lists come from
one extra run of each command under -X importtime (with a sitecustomize that makes the
modules imported by importlib.import_module show there too).

Medians (min–max) as Markdown on stdout.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (wait_exit, LIVE, MIB, become_subreaper, build_restore_target, kill_reap,  # noqa: E402
                    parse_size, reap, scratch_dir, spread, start_restore_target,
                    unwind_on_signals)

PY = sys.executable
COMMANDS = ("pre-dump (untracked)", "pre-dump (tracked)", "dump", "restore -d", "restore --lazy-pages")


def timed(argv: list[str], env: dict) -> tuple[float, float, str, str]:
    """(wall ms, CPU ms, stdout, stderr) of argv; it must succeed."""
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        t0 = time.perf_counter_ns()
        p = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=err, text=True, env=env)
        _, status, ru = os.wait4(p.pid, 0)
        wall = (time.perf_counter_ns() - t0) / 1e6
        p.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        o, e = out.read(), err.read()
    if p.returncode:
        raise RuntimeError(f"{' '.join(argv)}: exit {p.returncode}: {(e or o).strip()[-300:]}")
    return wall, (ru.ru_utime + ru.ru_stime) * 1e3, o, e




def one_round(prefix: list[str], env: dict, size: int, res: dict) -> None:
    """Every command once on fresh targets; res[command] gets (wall, CPU, stderr)."""
    def run(name: str, *args) -> str:
        wall, cpu, out, err = timed(prefix + [str(a) for a in args], env)
        res.setdefault(name, []).append((wall, cpu, err))
        return out

    with scratch_dir() as d:
        pid, _ = start_restore_target(size)
        try:
            run("pre-dump (untracked)", "pre-dump", "-t", pid, "-D", d / "pre1", "--track-mem", "none")
            run("pre-dump (tracked)", "pre-dump", "-t", pid, "-D", d / "pre2")
        finally:
            kill_reap(pid)
        pid, _ = start_restore_target(size)
        try:
            run("dump", "dump", "-t", pid, "-D", d / "img")
            reap(pid)
            run("restore -d", "restore", "-D", d / "img", "-d")
            LIVE.add(pid)
            kill_reap(pid)
            lazy = json.loads(run("restore --lazy-pages", "restore", "-D", d / "img", "-d", "--lazy-pages", "--json"))
            LIVE.update((pid, lazy["lazy_guardian"]))
            wait_exit(lazy["lazy_guardian"])
        finally:
            kill_reap(pid)


# A sitecustomize for the -X importtime runs only: importlib.import_module goes through
# importlib's Python code, which -X importtime does not report; calling __import__ first makes
# the modules a command imports that way (a file kind's operations, an image's messages)
# appear in the list like the others.
IMPORTTIME_HOOK = """import importlib, importlib.util
_import_module = importlib.import_module
def import_module(name, package=None):
    __import__(importlib.util.resolve_name(name, package))
    return _import_module(name, package)
importlib.import_module = import_module
"""


def loaded_modules(importtime: str) -> list[str]:
    """The modules an -X importtime run imported after the interpreter's start-up, in order."""
    names, after_site = [], False
    for line in importtime.splitlines():
        m = re.match(r"import time:\s+\d+ \|\s+\d+ \| ( *)(\S+)", line)
        if not m:
            continue
        if after_site:
            names.append(m.group(2))
        elif m.group(2) == "site" and not m.group(1):
            after_site = True
    return names


def instructions(code: str, env: dict) -> int:
    p = subprocess.run(["valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null", PY, "-c", code],
                       capture_output=True, text=True, env=env)
    if p.returncode:
        raise RuntimeError(f"callgrind: {p.stderr.strip()[-300:]}")
    return int(re.search(r"Collected : (\d+)", p.stderr).group(1))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=9)
    ap.add_argument("--size", default="8M")
    ap.add_argument("--src", type=Path, nargs="+", default=[Path(__file__).resolve().parents[1] / "src"],
                    help="source trees, timed side by side (e.g. a base's and this one's)")
    ap.add_argument("--callgrind", action="store_true")
    ap.add_argument("--launcher", help="also time the commands started by this command (first --src)")
    a = ap.parse_args(argv)
    unwind_on_signals()
    become_subreaper()
    build_restore_target()
    size = parse_size(a.size)
    ways: dict[str, tuple[list[str], dict]] = {}
    for src in (s.resolve() for s in a.src):
        subprocess.run([PY, "-m", "compileall", "-q", str(src)], check=True)
        env = {**os.environ, "PYTHONPATH": str(src)}
        ways[f"{src}"] = ([PY, "-m", "coldsnap"], env)
        if a.launcher and len(ways) == 1:
            ways[f"{a.launcher} ({src})"] = (a.launcher.split(), env)
    res: dict[str, dict] = {w: {} for w in ways}
    floor: list[float] = []
    for i in range(a.runs):
        for w in (list(ways) if i % 2 == 0 else list(ways)[::-1]):
            one_round(*ways[w], size, res[w])
        floor.append(timed([PY, "-c", "pass"], os.environ)[0])
    print(f"{a.runs} rounds, {size // MIB} MiB targets; `python3 -c pass` "
          f"{spread(floor, lambda x: f'{x:.0f}')} ms; load {os.getloadavg()[0]:.1f} at the end\n")
    f = lambda x: f"{x:.0f}"  # noqa: E731
    for w in ways:
        print(f"{w}:\n\n| command | wall ms | CPU ms |\n|---|---|---|")
        for c in COMMANDS:
            print(f"| {c} | {spread([r[0] for r in res[w][c]], f)} | {spread([r[1] for r in res[w][c]], f)} |")
        print()
    if a.callgrind:
        for src in a.src:
            env = ways[f"{src.resolve()}"][1]
            imp: dict[str, list] = {}
            with tempfile.TemporaryDirectory() as hook:
                Path(hook, "sitecustomize.py").write_text(IMPORTTIME_HOOK)
                one_round([PY, "-X", "importtime", "-m", "coldsnap"],
                          {**env, "PYTHONPATH": os.pathsep.join([hook, env["PYTHONPATH"]])}, size, imp)
            base = instructions("import importlib", env)
            print(f"{src}:\n\n| command | modules imported after site | import instructions (callgrind) |\n|---|---|---|")
            print(f"| `python3 -c pass` (all of it) | - | {base / 1e6:.0f} M |")
            for c in COMMANDS:
                mods = [m for m in loaded_modules(imp[c][0][2]) if m not in ("__main__", "coldsnap.__main__")]
                code = f"import importlib\nfor m in {mods!r}:\n try: importlib.import_module(m)\n except ImportError: pass"
                n = instructions(code, env) - base
                print(f"| {c} | {len(mods)} | {n / 1e6:.0f} M |")
            print()
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    finally:
        for p in list(LIVE):
            kill_reap(p)
