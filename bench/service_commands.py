"""The `coldsnap` command's wall time through `coldsnap service`, this tree's against
revision REV's (--base), side by side:

    python3 bench/service_commands.py [--base REV] [--runs 30] [--pause 0.2] [--out FILE]

Per side a service (bench/common.Service: bin/coldsnap as installed) runs for the whole bench;
each round, in an order that alternates, a process of 8 MiB (bench/restore_target.c) is
dumped and restored -d, then a failing `show` (exit 6) and a `check` run: the client's wall
time from exec to its end (small.timed). --pause: seconds before each command (as a user
types them: the previous worker has ended; 0: back to back, as a script runs them).
Medians and minimums; Markdown to stdout (and into FILE's section with --out).
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import small  # noqa: E402
from common import (LIVE, MIB, Service, become_subreaper, build_restore_target, export_revision,  # noqa: E402
                    kill_reap, reap, run_meta, scratch_dir, start_restore_target, unwind_on_signals,
                    write_section)

SECTION = "## The command through the service, side by side with another revision"
COMMANDS = ("dump 8M", "restore -d 8M", "show (fails: 6)", "check")


def one_round(svc: Service, side: str, d: Path, pause: float, res: dict) -> None:
    def timed(what: str, argv: list[str]) -> None:
        time.sleep(pause)
        rc, wall, out, err, _ = small.timed(argv, svc.env)
        if rc != (6 if what.startswith("show") else 0):
            raise RuntimeError(f"{side}: {what} exit {rc}: {(err or out).strip()[-200:]}")
        res.setdefault((side, what), []).append(wall)

    tool = small.service_tool(svc)
    pid, _ = start_restore_target(8 * MIB)
    images = d / f"images-{time.monotonic_ns()}"
    images.mkdir()
    try:
        timed("dump 8M", tool.dump(pid, images))
        reap(pid)
        timed("restore -d 8M", tool.restore(images))
        LIVE.add(pid)                   # ours once the worker that restored it has ended
    finally:
        kill_reap(pid)
    timed("show (fails: 6)", [str(svc.script), "show", str(d / "nothing")])
    timed("check", [str(svc.script), "check"])


def report(res: dict, sides: list[str], meta: dict, loads: list[float], pause: float) -> str:
    base, this = sides
    lines = [SECTION, "", f"Command: `{meta['cmd']}`  ", f"coldsnap: {meta['rev']}; base {base}  ",
             f"{meta['date']}, Linux {meta['uname']}, {meta['cpus']} CPUs; load (1 min) during the run "
             f"{min(loads):.1f}-{max(loads):.1f}; {pause:g} s before each command", "",
             f"| command (wall ms) | {base} median | this median | ratio | {base} min | this min | runs |",
             "|---|---|---|---|---|---|---|"]
    for what in COMMANDS:
        b, t = res[(base, what)], res[(this, what)]
        lines.append(f"| {what} | {statistics.median(b):.1f} | {statistics.median(t):.1f} | "
                     f"{statistics.median(t) / statistics.median(b):.2f}x | {min(b):.1f} | {min(t):.1f} | {len(t)} |")
    return "\n".join(lines) + "\n"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--base", default="HEAD~1", help="the revision to compare with (default HEAD~1)")
    ap.add_argument("--runs", type=int, default=30)
    ap.add_argument("--pause", type=float, default=0.2)
    ap.add_argument("--out", help="write the report into this file's section")
    args = ap.parse_args()
    os.environ["COLDSNAP_SERVICE"] = ""
    unwind_on_signals()
    become_subreaper()
    build_restore_target()
    small.compile_sources()
    base, base_src = export_revision(args.base)
    sides = [base, "this"]
    res: dict = {}
    loads: list[float] = []
    with scratch_dir() as d:
        services = {}
        try:
            for side, src in ((base, base_src), ("this", None)):
                (d / side).mkdir()
                services[side] = Service(d / side, src)
            for r in range(args.runs):
                for side in (sides if r % 2 == 0 else sides[::-1]):
                    one_round(services[side], side, d, args.pause, res)
                loads.append(os.getloadavg()[0])
        finally:
            for svc in services.values():
                svc.stop()
            for pid in list(LIVE):
                kill_reap(pid)
    text = report(res, sides, run_meta("service_commands.py", None), loads, args.pause)
    print(text)
    if args.out:
        write_section(Path(args.out), text, SECTION)
    return 0


if __name__ == "__main__":
    sys.exit(main())
