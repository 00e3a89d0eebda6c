#!/usr/bin/env python3
"""The start of a command through `coldsnap service`, from the exec of the installed
`coldsnap` to the command running in the worker, split into its steps (issue 13, session 9):
two revisions side by side.

    python3 bench/client_path.py [--base REV] [--runs 40] [--gap 0.2] [--restores 5] [--size 8M]

Per side: a `coldsnap service` of that side's src/ (its accept, receive, checks, hand-over
and the worker's receive, set-up and argument parsing stamped into a log file, CLOCK_MONOTONIC)
and that side's bin/coldsnap installed as pip installs it in a virtual environment beside
this interpreter (its python3 a link to this one, an editable install's .pth naming the
side's src/, no PYTHONPATH: the client finds the package as a user's does), with a few
lines added to stamp it too: its first Python line, the client imported, connect,
sendmsg, the first reply, its exit. The command: `coldsnap check --json` (near-zero work), GAP
seconds after the previous one (a user's pace: the service's spare worker is ready, its
pages copied; 0: back to back, the spare mostly still copying). Sides alternate (ABBA); then RESTORES rounds of an 8 MiB bench/restore_target dumped and
`restore -d` through each side's service (command wall time, from the exec of the script to
its exit). Steps, ms, medians (min):

    sh+python  exec of the script to its first Python line: /bin/sh's line, the interpreter's
               start-up (-S) and the compile of the script's Python part
    find       the launcher: finding the package (the .pth) and importing the client
    request    the client imported to connect(): _socket, the request's pieces
    send       connect() to sendmsg(): the peer check, encoding, cwd, signal handlers
    wake       sendmsg() to the service having read the request (its epoll round, recvmsg)
    checks     the request received to the caller checked (uid, namespaces, root, caps,
               confinement, cgroup, the code watch)
    hand-over  checked to the request's sendmsg to the spare (its cgroup joined)
    spare      that sendmsg to the spare having the request (its wake-up, recvmsg)
    set-up     received to cli.main: decode, dup2/fchdir, environment, stdio
    parse      cli.main to the command's function (argparse, handlers, display)
    to command exec to the command's function: the sum
    wall       the whole command, exec to exit
The stamping itself adds a few microseconds per stamp (and the client's, its lines)."""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import sysconfig
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (BENCH, LIVE, Service, become_subreaper, build_restore_target, export_revision,  # noqa: E402
                    kill_reap, log, parse_size, reap, run_meta, scratch_dir, start_restore_target,
                    unwind_on_signals, write_section)

SECTION = "## The start of a command through the service, step by step (issue 13, session 9)"
STEPS = ["sh+python", "find", "request", "send", "wake", "checks", "hand-over", "spare", "set-up", "parse",
         "to command", "wall"]

# The service with its request path stamped. argv: src, log path, address.
SERVICE = r"""
import os, sys, time
src, LOG, address = sys.argv[1:4]
sys.path.insert(0, src)
now = time.monotonic_ns
recs = []
SERVICE_PID = os.getpid()
def stamp(name):
    recs.append((name, now()))
def flush():
    global recs
    if recs:
        fd = os.open(LOG, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o644)
        os.write(fd, "".join(f"{n} {t}\n" for n, t in recs).encode())
        os.close(fd)
        recs = []
def wrap(owner, name, before=None, after=None, then=None):
    fn = getattr(owner, name, None)
    if fn is None:
        return
    def run(*a, **k):
        if before:
            stamp(before)
        got = fn(*a, **k)
        if after:
            stamp(after)
        if then:
            then()
        return got
    setattr(owner, name, run)
import coldsnap.service.server as S, coldsnap.service.worker as W, coldsnap.cli as cli
receive = W.receive
def _receive(*a, **k):
    got = receive(*a, **k)
    stamp("srecv" if os.getpid() == SERVICE_PID else "wrecv")
    return got
W.receive = _receive
wrap(S.Service, "_readable", before="readable")
wrap(S.Service, "_refusal", before="check<", after="check>")
wrap(S.Service, "_hand_over", before="hand<", after="hand>")
wrap(S.Service, "_start", after="started", then=flush)
wrap(W, "run_request", before="setup")
wrap(cli, "main", before="main")
wrap(cli, "run", before="run")
exit_worker = W.exit_worker
def _exit_worker(code):
    flush()
    exit_worker(code)
W.exit_worker = _exit_worker
sys.exit(S.run_service(address))
"""

# Lines added to the client's script: its first Python line, and before command().
CLIENT_HEAD = "import time as _cs_time; _cs_t0 = _cs_time.monotonic_ns()\n"
CLIENT_TAIL = r"""
_cs_stamps = [("py", _cs_t0), ("imported", _cs_time.monotonic_ns())]
import _socket as _cs_socket, posix as _cs_posix
class _CsSocket(_cs_socket.socket):
    def connect(self, *a):
        _cs_stamps.append(("connect", _cs_time.monotonic_ns()))
        return super().connect(*a)
    def sendmsg(self, *a):
        _cs_stamps.append(("send", _cs_time.monotonic_ns()))
        return super().sendmsg(*a)
_cs_socket.socket = _CsSocket
_cs_mod = sys.modules["coldsnap.service.client"]
_cs_exit = _cs_mod._exit
def _cs_end(code):
    _cs_stamps.append(("exit", _cs_time.monotonic_ns()))
    fd = _cs_posix.open(_cs_posix.environ[b"CS_STAMPS"], _cs_posix.O_WRONLY | _cs_posix.O_APPEND | _cs_posix.O_CREAT, 0o644)
    _cs_posix.write(fd, "".join(f"{n} {t}\n" for n, t in _cs_stamps).encode())
    _cs_posix.close(fd)
    _cs_exit(code)
_cs_mod._exit = _cs_end
"""


def script_of(rev: str | None) -> str:
    """bin/coldsnap of REV (None: the working tree's)."""
    if rev is None:
        return (BENCH.parent / "bin" / "coldsnap").read_text()
    return subprocess.run(["git", "-C", str(BENCH.parent), "show", f"{rev}:bin/coldsnap"], check=True,
                          capture_output=True, text=True).stdout


def stamped(script: str) -> str:
    sh, py = script.split("\n'''\n", 1)
    body, last = py.rstrip("\n").rsplit("\n", 1)
    assert last == "command()", last
    return sh + "\n'''\n" + CLIENT_HEAD + body + "\n" + CLIENT_TAIL + last + "\n"


class StampedService(Service):
    """The service of SRC with its request path stamped, and the stamped script of REV in a
    virtual environment of WHERE that finds SRC through an editable install's .pth."""

    def __init__(self, src: Path, rev: str | None, where: Path) -> None:
        self.stamps = where / "stamps.log"
        super().__init__(where, src, lambda address: [sys.executable, "-c", SERVICE, str(src), str(self.stamps),
                                                      str(address)])
        venv = where / "venv"
        site = venv / Path(sysconfig.get_path("purelib")).relative_to(sysconfig.get_path("data"))
        site.mkdir(parents=True)
        (venv / "bin").mkdir()
        (venv / "pyvenv.cfg").write_text(f"home = {Path(sys.executable).parent}\n"
                                         "include-system-site-packages = false\n")
        (venv / "bin" / "python3").symlink_to(sys.executable)
        (site / "__editable__.coldsnap-0.1.0.pth").write_text(f"{src}\n")
        self.script = venv / "bin" / "coldsnap"
        self.script.write_text(stamped(script_of(rev)))
        self.script.chmod(0o755)
        self.env = {k: v for k, v in self.env.items() if k != "PYTHONPATH"}
        self.env["CS_STAMPS"] = str(self.stamps)

    def take_stamps(self) -> dict[str, int]:
        try:
            text = self.stamps.read_text()
        except FileNotFoundError:
            return {}
        self.stamps.unlink()
        got: dict[str, int] = {}
        for line in text.splitlines():
            name, t = line.split()
            got.setdefault(name, int(t))        # the first of each (a worker flushes once)
        return got


def steps(s: dict[str, int], t0: int, t1: int) -> dict[str, float]:
    marks = [("sh+python", t0, s["py"]), ("find", s["py"], s["imported"]),
             ("request", s["imported"], s["connect"]), ("send", s["connect"], s["send"]),
             ("wake", s["send"], s["srecv"]), ("checks", s["srecv"], s["check>"]),
             ("hand-over", s["check>"], s["hand<"]), ("spare", s["hand<"], s["wrecv"]),
             ("set-up", s["wrecv"], s["main"]), ("parse", s["main"], s["run"]),
             ("to command", t0, s["run"]), ("wall", t0, t1)]
    return {name: (b - a) / 1e6 for name, a, b in marks}


def trivial(service: StampedService) -> dict[str, float]:
    service.take_stamps()
    rc, t0, t1, out = service.run(["check", "--json"])
    if rc:
        raise RuntimeError(f"check --json: {out.strip()[-200:]}")
    return steps(service.take_stamps(), t0, t1)


def restore_wall(service: StampedService, size: int) -> float:
    """ms of `restore -D DIR -d` of a SIZE target dumped through SERVICE."""
    with scratch_dir() as d:
        pid, _ = start_restore_target(size)
        try:
            rc, _, _, out = service.run(["dump", "-t", str(pid), "-D", str(d / "img")])
            if rc:
                raise RuntimeError(f"dump: {out.strip()[-200:]}")
            reap(pid)
            rc, t0, t1, out = service.run(["restore", "-D", str(d / "img"), "-d"])
            LIVE.add(pid)
            if rc:
                raise RuntimeError(f"restore: {out.strip()[-200:]}")
            return (t1 - t0) / 1e6
        finally:
            kill_reap(pid)
            service.take_stamps()


def cell(xs: list[float]) -> str:
    return f"{statistics.median(xs):.2f} ({min(xs):.2f})" if xs else "-"


def report(res: dict, walls: dict, sides: dict, meta: dict, loads: list[float], size: int) -> str:
    names = list(sides)
    L = [SECTION, "", f"Command: `{meta['cmd']}`  ", f"Revisions: {meta['revs']}  ",
         f"Date: {meta['date']}; kernel `{meta['uname']}`; {meta['cpus']} CPUs; load before / after: "
         f"{loads[0]:.1f} / {loads[1]:.1f}.", "",
         "`coldsnap check --json` through the service, ms, median (min) of "
         f"{len(res[names[0]])} runs per side, {meta['gap']:g} s apart (steps: bench/client_path.py's "
         "docstring):", "",
         "| step | " + " | ".join(names) + (" | ratio |" if len(names) == 2 else " |"),
         "|---|" + "---|" * (len(names) + (len(names) == 2))]
    for step in STEPS:
        cols = [cell([r[step] for r in res[n]]) for n in names]
        ratio = ""
        if len(names) == 2:
            a, b = (statistics.median([r[step] for r in res[n]]) for n in names)
            ratio = f" {b / a:.2f} |" if a > 0 else " - |"
        L.append(f"| {step} | " + " | ".join(cols) + " |" + ratio)
    if walls[names[0]]:
        L += ["", f"`restore -D DIR -d` of a {size >> 20} MiB target through the service, command wall ms, "
              f"median (min) of {len(walls[names[0]])}: "
              + "; ".join(f"{n} {cell(walls[n])}" for n in names)
              + (f" (ratio {statistics.median(walls[names[1]]) / statistics.median(walls[names[0]]):.2f})"
                 if len(names) == 2 else "") + "."]
    return "\n".join(L) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--base", default="", help="revision to compare with (default: this tree alone)")
    ap.add_argument("--runs", type=int, default=40, help="trivial commands per side")
    ap.add_argument("--gap", type=float, default=0.2, help="seconds between two commands")
    ap.add_argument("--restores", type=int, default=5, help="restores per side")
    ap.add_argument("--size", default="8M")
    ap.add_argument("--out", default=str(BENCH / "RESULTS.md"))
    args = ap.parse_args(argv)
    unwind_on_signals()
    become_subreaper()
    build_restore_target()
    size = parse_size(args.size)
    sides: dict[str, tuple[Path, str | None]] = {"new": (BENCH.parent / "src", None)}
    if args.base:
        sha, src = export_revision(args.base)
        sides = {f"base {sha}": (src, sha), **sides}
    subprocess.run([sys.executable, "-m", "compileall", "-q", str(BENCH.parent / "src")], check=True)
    loads = [os.getloadavg()[0]]
    res: dict[str, list] = {s: [] for s in sides}
    walls: dict[str, list] = {s: [] for s in sides}
    with tempfile.TemporaryDirectory(prefix="coldsnap-clientpath-") as keep:
        services: dict[str, StampedService] = {}
        try:
            for i, (side, (src, rev)) in enumerate(sides.items()):
                (Path(keep) / str(i)).mkdir()
                services[side] = StampedService(src, rev, Path(keep) / str(i))
            order = list(sides)
            for side in order:          # a first command of each, untimed (caches)
                trivial(services[side])
            for r in range(args.runs):
                for side in (order if r % 2 == 0 else order[::-1]):
                    time.sleep(args.gap)
                    res[side].append(trivial(services[side]))
            for r in range(args.restores):
                for side in (order if r % 2 == 0 else order[::-1]):
                    walls[side].append(restore_wall(services[side], size))
                log(f"restore round {r + 1} of {args.restores} done")
        finally:
            for s in services.values():
                s.stop()
    loads.append(os.getloadavg()[0])
    meta = run_meta("client_path.py", argv, gap=args.gap)
    meta["revs"] = " / ".join(f"{s} {src}" for s, (src, _) in sides.items())
    text = report(res, walls, sides, meta, loads, size)
    print(text)
    if args.out:
        write_section(Path(args.out), text, SECTION)
    return 0


if __name__ == "__main__":
    sys.exit(main())
