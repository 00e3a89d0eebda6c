#!/usr/bin/env python3
"""Where `coldsnap restore -d` through `coldsnap service` spends its wall time, by phase, for
ordinary programs (issue 13, session 9): two revisions side by side.

    python3 bench/program_restore.py --base REV [--only bash,redis,python http] [--runs 5]

Per side a `coldsnap service` of that side's src/ runs with the restore's functions wrapped
to stamp CLOCK_MONOTONIC (perf_counter_ns) into a log file: the worker's request taken, the
command's start, the images loaded, each blank process's clone, its fd table and its "ok",
the rlimits, the seize, each transplant, the release, the command's end and the worker's
exit. One run = the program of bench/programs.py started afresh (and ready), dumped through
that service, killed, then `bin/coldsnap restore -D DIR -d` timed from exec to exit (the
bench stamps those two from here), the program checked to answer, killed. Sides alternate
(ABBA). Medians (min) per phase, in ms:

    client     exec of bin/coldsnap to the worker taking the request (python3 -S, the
               client, the service's hand-over to its spare)
    start      request taken to restore() called (stdio, environment, cli.main's parse)
    load       restore() called to the blank tree begun: the images read and checked (load_tree;
               SharedMemory, ghosts, network lock)
    blank      make_blank_tree: the whole blank tree, cloned, set up, every "ok" read (and
               from session 9 on, the rest of the images read meanwhile)
    load+blank the two
      clone    . coldsnap's clone of the root (fork of the worker) returned in the parent
      fds      . the blank processes' fd tables (rebuild_fds or apply_fds, open_shared), summed
    seize      rlimits and freeze_known, its seize included (until session 10 the column
               stopped where the with-block begins: the seize itself, e.g. its wait for a
               blank process still unmapping its memory, was in no column)
    transplant every transplant, summed
      threads  . the making of every other thread and its state (from session 10 on one
               batch of clone3s, then each thread's own calls), summed
    release    the end of the with-block (detach) to restore() returning
    finish     restore() returned to the worker's exit (JSON/printing, exit_worker)
    exit       the worker's exit to the client's exit (the service reports the end)
    wall       the whole command
    worker CPU the worker's CPU time from the request taken to its exit (schedstat)
    tree CPU   the restored processes' CPU time right after the command: their blank
               processes' set-up and the calls injected into them by the transplant
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (BENCH, LIVE, Service, become_subreaper, export_revision, log, median, reap,  # noqa: E402
                    run_meta, scratch_dir, unwind_on_signals, write_section)
from programs import PROGRAMS, kill_tree, running, start, tree_of  # noqa: E402

SECTION = "## Ordinary programs: where the restore through the service goes (issue 13, session 9)"
TIMELINE = bool(os.environ.get("BENCH_TIMELINE"))
COLS = ["wall", "client", "start", "load", "blank", "load+blank", "clone", "fds", "seize", "transplant", "threads",
        "release", "finish", "exit", "worker CPU", "tree CPU"]

# The service, with the restore's functions stamped. argv: src, log path, address.
SERVICE = r"""
import os, sys, time
src, LOG, address = sys.argv[1:4]
sys.path.insert(0, src)
now = time.perf_counter_ns
recs = []
def stamp(name):
    recs.append((name, os.getpid(), now()))
def cpu_stamp(name):     # this thread's CPU time so far, ns (schedstat), as a stamp
    with open("/proc/thread-self/schedstat") as f:
        recs.append((name, os.getpid(), int(f.read().split()[0])))
def flush():
    global recs
    if recs:
        fd = os.open(LOG, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o644)
        os.write(fd, "".join(f"{n} {p} {t}\n" for n, p, t in recs).encode())
        os.close(fd)
        recs = []
def wrap(mod, name, label=None, end=True):
    fn = getattr(mod, name)
    label = label or name
    def run(*a, **k):
        stamp(label + "<")
        try:
            return fn(*a, **k)
        finally:
            if end:
                stamp(label + ">")
    setattr(mod, name, run)
import coldsnap.service.server as S, coldsnap.service.worker as W, coldsnap.cli as cli
import coldsnap.restore.restore as R, coldsnap.restore.blank as B
run_request = W.run_request
def _run_request(*a, **k):
    cpu_stamp("cpu<")
    return run_request(*a, **k)
W.run_request = _run_request
wrap(W, "run_request")
wrap(R, "restore")
wrap(R, "load_tree")
wrap(R, "make_blank_tree")
wrap(R, "_set_rlimits", "rlimits")
wrap(R, "freeze_known")
import coldsnap.seize.freezer as F
enter = F.FrozenTree.__enter__
def _enter(self):
    try:
        return enter(self)
    finally:
        stamp("seized")
F.FrozenTree.__enter__ = _enter
wrap(R, "transplant")
import coldsnap.restore.transplant as T
wrap(T.Transplant, "_new_threads" if hasattr(T.Transplant, "_new_threads") else "_new_thread", "threads")
for name in ("rebuild_fds", "apply_fds", "open_shared", "default_signal_actions"):
    if hasattr(B, name):
        wrap(B, name)
clone = B._clone
def _clone(*a, **k):
    stamp("clone<")
    got = clone(*a, **k)
    stamp("clone>" if got else "child")
    return got
B._clone = _clone
send = B._send
def _send(w, msg):
    stamp("ok")
    flush()
    return send(w, msg)
B._send = _send
exit_worker = W.exit_worker
def _exit_worker(code):
    stamp("exit")
    cpu_stamp("cpu>")
    flush()
    exit_worker(code)
W.exit_worker = _exit_worker
sys.exit(S.run_service(address))
"""


class TracedService(Service):
    """`coldsnap service` of SRC on a temporary address, its stamps in WHERE/stamps.log."""

    def __init__(self, src: Path, where: Path) -> None:
        self.stamps = where / "stamps.log"
        super().__init__(where, src, lambda address: [sys.executable, "-c", SERVICE, str(src), str(self.stamps),
                                                      str(address)])

    def take_stamps(self) -> list[tuple[str, int, int]]:
        try:
            text = self.stamps.read_text()
        except FileNotFoundError:
            return []
        self.stamps.unlink()
        # a blank process flushes what it inherited of the worker's stamps too: once each
        return list(dict.fromkeys((n, int(p), int(t)) for n, p, t in (ln.split() for ln in text.splitlines())))


def phases(stamps: list[tuple[str, int, int]], t0: int, t1: int) -> dict:
    """The phases (module docstring) of one restore from its stamps, ms."""
    first: dict[str, int] = {}
    last: dict[str, int] = {}
    for n, _, t in stamps:
        first.setdefault(n, t)
        last[n] = t

    def summed(name: str) -> float:
        opened, total = {}, 0
        for n, p, t in stamps:
            if n == name + "<":
                opened[p] = t
            elif n == name + ">" and p in opened:
                total += t - opened.pop(p)
        return total / 1e6

    worker = next(p for n, p, _ in stamps if n == "run_request<")
    ends = [t for n, p, t in stamps if n == "exit" and p == worker]
    freeze = [t for n, p, t in stamps if n == "seized" and p == worker]
    tp_end = max(t for n, p, t in stamps if n == "transplant>" and p == worker)
    out = {"wall": (t1 - t0) / 1e6,
           "client": (first["run_request<"] - t0) / 1e6,
           "start": (first["restore<"] - first["run_request<"]) / 1e6,
           "load": (first["make_blank_tree<"] - first["restore<"]) / 1e6,
           "blank": summed("make_blank_tree"),
           "load+blank": (last["make_blank_tree>"] - first["restore<"]) / 1e6,
           "clone": (min(t for n, p, t in stamps if n == "clone>") - first["clone<"]) / 1e6,
           "fds": summed("rebuild_fds") + summed("apply_fds") + summed("open_shared"),
           "seize": summed("rlimits") + (freeze[0] - first["freeze_known<"]) / 1e6,
           "transplant": summed("transplant"),
           "threads": summed("threads"),
           "release": (last["restore>"] - tp_end) / 1e6,
           "finish": (ends[0] - last["restore>"]) / 1e6,
           "exit": (t1 - ends[0]) / 1e6,
           "worker CPU": (last["cpu>"] - first["cpu<"]) / 1e6}
    return out


def one(prog, service: TracedService) -> dict:
    with scratch_dir() as d:
        pid = start(prog, d)
        try:
            images = d / "images"
            images.mkdir()
            rc, _, _, out = service.run(["dump", "-t", str(pid), "-D", str(images)])
            if rc:
                return {"error": f"dump: {out.strip()[-160:]}"}
            kill_tree(pid)
            reap(pid)
            service.take_stamps()
            rc, t0, t1, out = service.run(["restore", "-D", str(images), "-d"])
            if rc:
                return {"error": f"restore: {out.strip()[-160:]}"}
            LIVE.add(pid)
            tree_cpu = sum(tree_cpu_ns(p) for p in tree_of(pid)) / 1e6     # before it answers anything
            if not (running(pid) and prog.back(d, pid)):
                return {"error": "restored program does not answer"}
            stamps = service.take_stamps()
            if TIMELINE:
                log(f"{prog.name}: " + " ".join(f"{n}@{p % 1000}:{(t - t0) / 1e6:.2f}" for n, p, t in stamps)
                    + f" end:{(t1 - t0) / 1e6:.2f}")
            return {**phases(stamps, t0, t1), "tree CPU": tree_cpu}
        finally:
            kill_tree(pid)


def tree_cpu_ns(pid: int) -> int:
    """CPU time of every thread of PID so far (schedstat), ns; 0 if it is gone."""
    total = 0
    try:
        for t in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{t}/schedstat") as f:
                total += int(f.read().split()[0])
    except OSError:
        pass
    return total


def cell(xs: list[float]) -> str:
    return f"{median(xs):.1f} ({min(xs):.1f})" if xs else "-"


def report(res: dict, sides: list[str], meta: dict, loads: tuple) -> str:
    L = [SECTION, "", f"Command: `{meta['cmd']}`  ", f"Revisions: {meta['revs']}  ",
         f"Date: {meta['date']}; kernel `{meta['uname']}`; {meta['cpus']} CPUs; images on tmpfs; load "
         f"before / after: {loads[0]:.1f} / {loads[1]:.1f}.", "",
         "| program | side | n | " + " | ".join(COLS) + " |", "|---|---|---|" + "---|" * len(COLS)]
    for prog, per in res.items():
        for side in sides:
            rows = [r for r in per.get(side, []) if "error" not in r]
            errs = [r["error"] for r in per.get(side, []) if "error" in r]
            if not rows:
                L.append(f"| {prog} | {side} | 0 | {errs[0] if errs else '-'} |" + " |" * (len(COLS) - 1))
                continue
            L.append(f"| {prog} | {side} | {len(rows)} | "
                     + " | ".join(cell([r[c] for r in rows]) for c in COLS) + " |")
    L += ["", "ms, median (min); phases as in bench/program_restore.py's docstring (clone and fds are "
          "parts of blank)."]
    return "\n".join(L) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--base", default="", help="revision to compare with (default: this tree alone)")
    ap.add_argument("--only", default="bash,redis,python http")
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--out", default=str(BENCH / "RESULTS.md"))
    args = ap.parse_args(argv)
    unwind_on_signals()
    become_subreaper()
    progs = [p for p in PROGRAMS if any(p.name.startswith(o) for o in args.only.split(","))]
    sides = {"new": BENCH.parent / "src"}
    if args.base:
        sides = {"base": export_revision(args.base)[1], **sides}
    loads = [os.getloadavg()[0]]
    res: dict = {p.name: {} for p in progs}
    with tempfile.TemporaryDirectory(prefix="coldsnap-progrestore-") as keep:
        services = {}
        try:
            for side, src in sides.items():
                (Path(keep) / side).mkdir()
                services[side] = TracedService(src, Path(keep) / side)
            order = list(sides)
            for r in range(args.runs):
                for prog in progs:
                    for side in (order if r % 2 == 0 else order[::-1]):
                        res[prog.name].setdefault(side, []).append(one(prog, services[side]))
                log(f"round {r + 1} of {args.runs} done")
        finally:
            for s in services.values():
                s.stop()
    loads.append(os.getloadavg()[0])
    meta = run_meta("program_restore.py", argv)
    meta["revs"] = " / ".join(f"{s} {src}" for s, src in sides.items())
    text = report(res, list(sides), meta, tuple(loads))
    print(text)
    if args.out:
        write_section(Path(args.out), text, SECTION)
    return 0


if __name__ == "__main__":
    sys.exit(main())
