#!/usr/bin/env python3
"""The lazy restore's own work through `coldsnap service` (issue 12): where the worker's time
goes, from the request's arrival to the command's exit, and two revisions side by side.

    python3 bench/lazy_work.py [--base REV] [--sizes 256M,1G] [--runs 5]    # Markdown to stdout

One dump per size of bench/warm_app.py holding SIZE of numpy data (images on tmpfs), made
with this tree's coldsnap. Per side (this tree, and REV's src/ exported with `git archive`
when --base is given) a `coldsnap service` runs for the whole bench, started by a wrapper
that times parts of the command in its workers (functions wrapped before the service
forks them; CLOCK_MONOTONIC stamps written to a file). Per round and side (ABBA), the
command as a user runs it, through the service (this tree's bin/coldsnap, as installed,
with the client of the side: the service serves only its own coldsnap): `coldsnap restore
-D DIR -d --lazy-pages`, then a request to the restored program, SIGKILL, and a wait for the
lazy server's guardian.

Columns (medians in ms): command = exec to exit of the client; worker = the request in the
worker's hands (after the spare's receive, or the forked worker's start) to its _exit;
before / after = the rest of the command before and after the worker's part (client
start-up, service hand-over; the service seeing the worker's end, the client's exit); then
parts of the worker's: load (load_tree), blank (make_blank_tree), server (start_server: the
lazy server's fork), transplant (all processes; its parts map (_map_vmas: an injected
mmap per area, open/close per file), write (the pages written before the process runs) and
arm (the userfaultfd)), go (waiting for the guardian's word), other (the rest: parsing,
images dir, seize, rlimits, the JSON answer, the worker's exit); cpu = the worker's CPU
time over its part (user + system: the steadier figure on a loaded machine); faults = its
minor page faults (copy-on-write of what it shares with the service and its forks, the
pages files read); steal = CPU time the host took from this VM during the command (/proc/stat,
10 ms ticks, both CPUs: a run with steal was slowed by the host, not by coldsnap). --fresh: a
new dump before each restore (as bench/lazy.py does).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (BENCH, LIVE, SHM, become_subreaper, export_revision, kill_reap, log,  # noqa: E402
                    median, parse_size, run_meta, size_name, steal_ms, unwind_on_signals, wait_exit)
from lazy import App, ask, coldsnap_dump  # noqa: E402

SECTION = "### Lazy restore through the service: the worker's own work"
ROOT = BENCH.parent
# the parts timed in the worker: name -> function (module:attribute); a revision that lacks
# one is timed without it
PARTS = {"load": "coldsnap.restore.restore:load_tree", "blank": "coldsnap.restore.restore:make_blank_tree",
         "server": "coldsnap.restore.lazy_start:start_server", "transplant": "coldsnap.restore.restore:transplant",
         "map": "coldsnap.restore.transplant:Transplant._map_vmas", "write": "coldsnap.restore.transplant:PageWriter.write",
         "arm": "coldsnap.restore.lazy:arm", "go": "coldsnap.restore.lazy_start:LazyServer.go"}
SERIAL = ("load", "blank", "server", "transplant", "go")      # parts of the worker's time, one after the other

# the service, with parts of its workers' commands timed (stamps: pid name start end minor-faults)
WRAPPER = r"""
import importlib, os, resource, sys, time
log_path, parts = sys.argv.pop(1), sys.argv.pop(1)
import coldsnap.cli as cli
import coldsnap.service.worker as W
now = time.monotonic_ns
def faults():
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt
def cpu_us():
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return int((ru.ru_utime + ru.ru_stime) * 1e6)
def stamp(name, t0, t1, flt=0):
    fd = os.open(log_path, os.O_WRONLY | os.O_APPEND)
    os.write(fd, f"{os.getpid()} {name} {t0} {t1} {flt}\n".encode())
    os.close(fd)
def timed(spec, name):
    mod, _, attr = spec.partition(":")
    owner, _, fn_name = attr.rpartition(".")
    try:
        obj = importlib.import_module(mod)
        obj = getattr(obj, owner) if owner else obj
        fn = getattr(obj, fn_name)
    except (ImportError, AttributeError):
        return
    def run(*a, **k):
        t, f = now(), faults()
        try:
            return fn(*a, **k)
        finally:
            stamp(name, t, now(), faults() - f)
    setattr(obj, fn_name, run)
for part in parts.split(","):
    name, _, spec = part.partition("=")
    timed(spec, name)
timed("coldsnap.service.worker:copy_shared_pages", "spare_copy")
receive = W.receive
def received(*a, **k):
    got = receive(*a, **k)
    stamp("got", now(), cpu_us(), faults())
    return got
W.receive = received
run_request = W.run_request
def request(*a, **k):
    stamp("request", now(), cpu_us(), faults())
    return run_request(*a, **k)
W.run_request = request
exit_worker = W.exit_worker
def leave(code):
    stamp("exit", now(), cpu_us(), faults())
    exit_worker(code)
W.exit_worker = leave
sys.exit(cli.main(["service", *sys.argv[1:]]))
"""


class ProfiledService:
    """A `coldsnap service` of SRC whose workers stamp their parts into a log file."""

    def __init__(self, src: Path, where: Path, more: list[str] = ()):
        where.mkdir()
        self.address, self.log = where / "service.sock", where / "stamps"
        self.log.write_text("")
        (where / "bin").mkdir()
        (where / "bin" / "python3").symlink_to(sys.executable)
        self.script = where / "bin" / "coldsnap"      # as an install leaves it (common.Service)
        shutil.copy(ROOT / "bin" / "coldsnap", self.script)
        self.env = {**os.environ, "COLDSNAP_SERVICE": str(self.address), "PYTHONPATH": str(src)}
        out = where / "service.log"
        with open(out, "w") as f:
            parts = ",".join([f"{k}={v}" for k, v in PARTS.items()] + list(more))
            self.proc = subprocess.Popen([sys.executable, "-c", WRAPPER, str(self.log), parts, "--address", str(self.address)],
                                         stdin=subprocess.DEVNULL, stdout=f, stderr=f,
                                         env={**os.environ, "PYTHONPATH": str(src), "COLDSNAP_SERVICE": ""})
        deadline = time.monotonic() + 60
        while "listening" not in out.read_text():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"coldsnap service did not start: {out.read_text().strip()}")
            time.sleep(0.02)

    def stamps(self) -> list[tuple[int, str, int, int, int]]:
        """The stamps written since the last call (one command runs at a time): pid, name,
        start, end (CPU µs at the points got, request, exit), minor faults (over the span; at
        those points: the count so far)."""
        text = self.log.read_text()
        self.log.write_text("")
        return [(int(p), n, int(a), int(b), int(f)) for p, n, a, b, f in (line.split() for line in text.splitlines())]

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
        self.proc.wait()


def one(svc: ProfiledService, app: App, images: Path, lazy: bool = True) -> dict:
    """One restore (lazy: --lazy-pages) through SVC: its split (ms)."""
    svc.stamps()
    stolen = steal_ms()
    t0 = time.monotonic_ns()
    r = subprocess.run([str(svc.script), "restore", "-D", str(images), "-d", "--json", *(["--lazy-pages"] if lazy else [])],
                       env=svc.env, stdin=subprocess.DEVNULL, capture_output=True, text=True)
    t1 = time.monotonic_ns()
    stolen = steal_ms() - stolen
    if r.returncode:
        raise RuntimeError(f"coldsnap restore: {r.stderr.strip()[-400:]}")
    res = json.loads(r.stdout)
    LIVE.add(res["pid"])
    LIVE.add(res.get("lazy_guardian", 0))
    ask(app.port, "first")
    kill_reap(res["pid"])
    if "lazy_guardian" in res:
        wait_exit(res["lazy_guardian"])
    stamps = svc.stamps()
    exits = [s for s in stamps if s[1] == "exit"]
    if not exits:
        raise RuntimeError(f"no exit stamp: {stamps}")
    worker = exits[0][0]
    mine = [s for s in stamps if s[0] == worker]
    at = {n: a for _, n, a, _, _ in mine if n in ("got", "request", "exit")}
    flt = {n: f for _, n, _, _, f in mine if n in ("got", "request", "exit")}
    cpu = {n: b for _, n, _, b, _ in mine if n in ("got", "request", "exit")}
    start = at.get("got", at.get("request"))
    row = {"command": (t1 - t0) / 1e6, "before": (start - t0) / 1e6, "worker": (at["exit"] - start) / 1e6,
           "after": (t1 - at["exit"]) / 1e6, "spare": 1.0 if "got" in at else 0.0, "steal": stolen}
    for name in PARTS:
        row[name] = sum(b - a for _, n, a, b, _ in mine if n == name) / 1e6
        row[name + "_faults"] = sum(f for _, n, _, _, f in mine if n == name)
    row["faults"] = flt["exit"] - flt.get("got", flt.get("request"))
    row["cpu"] = (cpu["exit"] - cpu.get("got", cpu.get("request"))) / 1e3
    row["other"] = row["worker"] - sum(row[k] for k in SERIAL)
    row["more"] = {}
    for _, n, a, b, _ in mine:
        if n not in PARTS and n not in ("got", "request", "exit", "spare_copy"):
            row["more"][n] = row["more"].get(n, 0) + (b - a) / 1e6
    copies = [(a, b) for _, n, a, b, _ in mine if n == "spare_copy"]
    # still copying when the request came: a copy the request cut short ends just before it
    # reaches the worker (one that was done long before ends as the spare says b"r")
    row["copy_late"] = 1.0 if copies and copies[0][1] > start - 1_000_000 else 0.0
    return row


COLUMNS = ("command", "before", "worker", "after", "load", "blank", "server", "transplant", "map", "write", "arm",
           "go", "other", "cpu", "faults", "steal")



def report(res: dict, meta: dict, load0, load1, base: str | None) -> str:
    L = [SECTION, "", f"Command: `{meta['cmd']}`  ",
         f"Revisions: {'base ' + base + ', ' if base else ''}new {meta['rev']}  ",
         f"Date: {meta['date']}; kernel `{meta['uname']}`; {meta['cpus']} CPUs; THP `{meta['thp']}`; "
         f"images on tmpfs; load average before / after: "
         f"{load0[0]:.1f} {load0[1]:.1f} {load0[2]:.1f} / {load1[0]:.1f} {load1[1]:.1f} {load1[2]:.1f}.", "",
         "| size | side | n | " + " | ".join(COLUMNS) + " | spare copying |",
         "|---|---|---|" + "---|" * (len(COLUMNS) + 1)]
    for size, sides in res.items():
        for name, rows in sides.items():
            if not rows:
                L.append(f"| {size_name(size)} | {name} | 0 | failed |")
                continue
            L.append(f"| {size_name(size)} | {name} | {len(rows)} | "
                     + " | ".join(f"{median([r[k] for r in rows]):.{0 if k in ('faults', 'steal') else 1}f}"
                                  for k in COLUMNS)
                     + f" | {sum(r['copy_late'] for r in rows):.0f}/{len(rows)} |")
    L += ["", "Medians in ms (bench/lazy_work.py docstring: the columns). worker = the request in the "
          "worker's hands to its exit; load ... other are parts of it (map, write and arm: of transplant); "
          "spare copying = runs where the spare worker was still copying its shared pages when the "
          "request came (its copy ended within 1 ms of the request's arrival: cut short)."]
    return "\n".join(L) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--base")
    ap.add_argument("--sizes", default="256M,1G")
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--part", action="append", default=[], metavar="NAME=MODULE:ATTR",
                    help="one more function to time in the worker (printed per run, not in the table)")
    ap.add_argument("--fresh", action="store_true", help="a new dump before each restore (as bench/lazy.py does)")
    args = ap.parse_args(argv)
    unwind_on_signals()
    become_subreaper()
    new_src = ROOT / "src"
    subprocess.run([sys.executable, "-m", "compileall", "-q", str(new_src)], check=True)
    work = Path(tempfile.mkdtemp(prefix="coldsnap-bench-", dir=SHM))
    sides: list[tuple[str, Path]] = [("new", new_src)]
    base = None
    if args.base:
        base, base_src = export_revision(args.base)
        sides.insert(0, ("base", base_src))
    services = {}
    res: dict = {}
    load0 = os.getloadavg()
    try:
        for name, src in sides:
            services[name] = ProfiledService(src, work / f"svc-{name}", args.part)
        import numpy as np
        for size in (parse_size(s) for s in args.sizes.split(",")):
            res[size] = {name: [] for name, _ in sides}
            data = work / "data.npy"
            np.save(data, np.arange(size // 8, dtype=np.int64) * 7 + 3)
            app = App(work, data)
            images = work / "img"
            shutil.rmtree(images, ignore_errors=True)
            app.start()
            coldsnap_dump(app, images)
            for i in range(args.runs):
                for name, _ in sides if i % 2 == 0 else sides[::-1]:
                    if args.fresh and (i or name != sides[0][0]):
                        shutil.rmtree(images)
                        app.start()
                        coldsnap_dump(app, images)
                    row = one(services[name], app, images)
                    res[size][name].append(row)
                    log(f"{size_name(size)} {name}: " + " ".join(f"{k} {row[k]:.1f}" for k in COLUMNS)
                        + "; minor faults " + " ".join(f"{k} {row[k + '_faults']}" for k in PARTS)
                        + "".join(f"; {k} {v:.2f}" for k, v in row["more"].items()))
            shutil.rmtree(images)
            data.unlink()
    finally:
        for svc in services.values():
            svc.stop()
        shutil.rmtree(work, ignore_errors=True)
    load1 = os.getloadavg()
    text = report(res, run_meta("lazy_work.py", argv), load0, load1, base)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
