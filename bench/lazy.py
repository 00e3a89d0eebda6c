#!/usr/bin/env python3
"""Warm start and lazy restore (issue 12): how soon a checkpointed service answers.

    python3 bench/lazy.py [--sizes 256M,1G] [--runs 3] [--redis 1G] [--criu PATH] [--out FILE]

Service: bench/warm_app.py, a Python program that listens, imports numpy and loads SIZE of
data from a .npy file on tmpfs, then answers requests on its socket. Per round and size, in
turn (the order rotates each round):

- cold:  start it; time until its answer to a request sent at once (the request waits in
         the listen backlog while the program imports and loads)
- eager: `coldsnap restore -D DIR -d` of a dump taken once it was ready; time from the
         command's start to the answer of a request sent when the command returns
- lazy:  the same with `--lazy-pages`; also when the last page is in (the server's guardian
         exits) and the time a request that reads every page takes right after the first
         answer, inside the program, against the same request after an eager restore
- lazy-svc: the lazy restore command run as a user runs it through a `coldsnap service`
         started for the run (the script pip installs, the service's address in
         COLDSNAP_SERVICE): the interpreter's start-up without the imports
- lazy-ps: the same, dumped with --page-server to a coldsnap page server on loopback and
         restored with --lazy-pages --page-server (every lazy page fetched over TCP)
- criu:  CRIU 4.2 `criu lazy-pages -D DIR` daemon + `criu restore --lazy-pages -d` of CRIU's
         own dump (needs fs.pipe-max-size >= 4 MiB: raised for these runs, then put back)

Redis (--redis SIZE, 0 to skip): redis-server filled with DEBUG POPULATE to SIZE, dumped once,
restored eagerly and lazily (alternating): command wall time, time to a GET's answer sent
when the command returns, and when the last page is in.

Images on tmpfs (/dev/shm). The benchmark is a child subreaper: restored processes and the
lazy server's guardian become its children and are reaped here. Medians (min-max) are
printed as Markdown and written to --out, section "Warm start and lazy restore (issue 12)".
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (wait_exit, BENCH, LIVE, MIB, Service, become_subreaper, kill_reap, log, median, parse_size,  # noqa: E402
                    reap, run_meta, size_name, spread, steal_ms, unwind_on_signals, write_section)

SECTION = "## Warm start and lazy restore (issue 12)"
CRIU_DEFAULT = BENCH.parent.parent / "shared" / "peers" / "criu-4.2" / "criu"
PY = sys.executable
COLDSNAP = [PY, "-m", "coldsnap"]
APP = BENCH / "warm_app.py"
PIPE_MAX = Path("/proc/sys/fs/pipe-max-size")
SERVER_CPU = re.compile(r"\((\d+) ms after go, CPU (\d+) ms")     # the lazy server's last log line


def ms(t0: int) -> float:
    return (time.perf_counter_ns() - t0) / 1e6


def ask(port: int, what: str, timeout: float = 120) -> str:
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as c:
        c.sendall(what.encode() + b"\n")
        data = b""
        while not data.endswith(b"\n"):
            chunk = c.recv(4096)
            if not chunk:
                break
            data += chunk
    return data.decode().strip()


def run(argv, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([str(a) for a in argv], stdin=subprocess.DEVNULL, capture_output=True, text=True, **kw)




class App:
    """One incarnation of warm_app.py in a scratch directory."""

    def __init__(self, work: Path, data: Path):
        self.work, self.data = work, data
        self.port_file = work / "port"
        self.pid = 0

    def start(self) -> float:
        """Start it cold: ms until its first answer."""
        self.port_file.unlink(missing_ok=True)
        t0 = time.perf_counter_ns()
        with open(self.work / "app.log", "ab") as out:
            p = subprocess.Popen([PY, APP, self.data, self.port_file], stdin=subprocess.DEVNULL, stdout=out,
                                 stderr=out, start_new_session=True, env={**os.environ, "OPENBLAS_NUM_THREADS": "1"})
        p.returncode = 0            # reaped by us (common.reap), not by Popen
        self.pid = p.pid
        LIVE.add(p.pid)
        while not self.port_file.exists():
            time.sleep(0.0005)
        self.port = int(self.port_file.read_text())
        ask(self.port, "first")
        return ms(t0)


STOLEN: list[float] = []       # ms the host took from this VM during each restore command (common.steal_ms)


def coldsnap_dump(app: App, images: Path, server: str | None = None) -> None:
    r = run([*COLDSNAP, "dump", "-t", app.pid, "-D", images, *(["--page-server", server] if server else [])])
    if r.returncode:
        raise RuntimeError(f"coldsnap dump: {r.stderr.strip()}")
    reap(app.pid)


def coldsnap_restore(images: Path, lazy: bool, server: str | None = None,
                     via: Service | None = None, lazy_log: Path | None = None) -> tuple[float, float, dict]:
    """(command ms, ms to the first answer, --json result); server: pages from that page server;
    via: the command through that service; lazy_log: the lazy server's log there."""
    prefix, env = ([str(via.script)], via.env) if via else (COLDSNAP, None)
    stolen = steal_ms()
    t0 = time.perf_counter_ns()
    r = run([*prefix, "restore", "-D", images, "-d", "--json", *(["--lazy-pages"] if lazy else []),
             *(["--lazy-log", lazy_log] if lazy_log else []), *(["--page-server", server] if server else [])], env=env)
    t_cmd = ms(t0)
    STOLEN.append(steal_ms() - stolen)
    if r.returncode:
        raise RuntimeError(f"coldsnap restore: {r.stderr.strip()}")
    res = json.loads(r.stdout)
    LIVE.add(res["pid"])
    return t_cmd, t0, res


def one_coldsnap(app: App, images: Path, lazy: bool, out: dict, server: str | None = None,
                 via: Service | None = None) -> None:
    log = images.parent / "lazy.log" if lazy and not server and not via else None    # the in-process lazy one's
    if log:
        log.unlink(missing_ok=True)
    t_cmd, t0, res = coldsnap_restore(images, lazy, server, via, log)
    ask(app.port, "first")
    t_first = ms(t0)
    key = ("lazy" if lazy else "eager") + ("_ps" if server else "") + ("_svc" if via else "")
    out.setdefault(f"{key}_steal", []).append(STOLEN[-1])     # in the per-round log line: a slow round's why
    out.setdefault(f"{key}_cmd", []).append(t_cmd)
    out.setdefault(f"{key}_first", []).append(t_first)
    out.setdefault(f"{key}_inside", []).append(res["total_ms"])   # restore() itself, start-up excluded
    t_all = time.perf_counter_ns()
    inside = float(ask(app.port, "all").split()[1])
    out.setdefault(f"{key}_all_inside", []).append(inside)
    out.setdefault(f"{key}_all_wall", []).append(ms(t_all))
    out.setdefault(f"{key}_to_all", []).append(ms(t0))      # restore start -> every page read
    if lazy:
        LIVE.add(res["lazy_guardian"])
        wait_exit(res["lazy_guardian"])
        out.setdefault(f"{key}_last", []).append(ms(t0))
    if log and (found := SERVER_CPU.search(log.read_text() if log.exists() else "")):
        out.setdefault("lazy_server_after_go", []).append(float(found[1]))
        out.setdefault("lazy_server_cpu", []).append(float(found[2]))
    kill_reap(res["pid"])


def one_criu(app: App, criu: str, work: Path, out: dict) -> None:
    images = work / "criu-img"
    shutil.rmtree(images, ignore_errors=True)
    images.mkdir()
    r = run([criu, "dump", "-t", app.pid, "-D", images, "-o", "dump.log"])
    if r.returncode:
        raise RuntimeError(f"criu dump failed: see {images}/dump.log")
    reap(app.pid)
    t0 = time.perf_counter_ns()
    daemon = subprocess.Popen([criu, "lazy-pages", "-D", str(images), "-o", "lazy.log"], stdin=subprocess.DEVNULL,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        while not (images / "lazy-pages.socket").exists():     # restore connects to it at once
            if daemon.poll() is not None:
                raise RuntimeError(f"criu lazy-pages exited {daemon.returncode}")
            time.sleep(0.0005)
        r = run([criu, "restore", "-D", images, "-d", "--lazy-pages", "-o", "restore.log"])
        t_cmd = ms(t0)
        if r.returncode:
            raise RuntimeError(f"criu restore --lazy-pages failed: see {images}/restore.log")
        LIVE.add(app.pid)
        ask(app.port, "first")
        out.setdefault("criu_cmd", []).append(t_cmd)
        out.setdefault("criu_first", []).append(ms(t0))
        try:
            daemon.wait(timeout=60)
            out.setdefault("criu_last", []).append(ms(t0))
        except subprocess.TimeoutExpired:
            out["criu_last_note"] = "criu lazy-pages still running 60 s after the restore (killed)"
    finally:
        if daemon.poll() is None:
            daemon.kill()
            daemon.wait()
        kill_reap(app.pid)


def start_page_server(store: Path) -> tuple[subprocess.Popen, str]:
    """A `coldsnap page-server` on loopback for the lazy-ps variant: (process, HOST:PORT)."""
    store.mkdir()
    p = subprocess.Popen([*COLDSNAP, "page-server", "-D", store, "--port", "0"], stdin=subprocess.DEVNULL,
                         stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    line = p.stdout.readline()
    if "listening on" not in line:
        p.kill()
        p.wait()
        raise RuntimeError(f"coldsnap page-server did not start: {line!r}")
    return p, line.split("listening on ")[1].split(",")[0]


def bench_size(size: int, runs: int, criu: str | None, work: Path, server: str | None = None,
               service: Service | None = None) -> dict:
    import numpy as np
    data = work / "data.npy"
    np.save(data, np.arange(size // 8, dtype=np.int64) * 7 + 3)
    out: dict = {}
    app = App(work, data)
    images = work / "img"
    variants = (["cold", "eager", "lazy"] + (["lazy-svc"] if service else []) + (["lazy-ps"] if server else [])
                + (["criu"] if criu else []))
    for rnd in range(runs):
        order = variants[rnd % len(variants):] + variants[:rnd % len(variants)]
        for v in order:
            t_cold = app.start()
            if v == "cold":
                out.setdefault("cold_first", []).append(t_cold)
                kill_reap(app.pid)
                continue
            if v == "criu":
                try:
                    one_criu(app, criu, work, out)
                except RuntimeError as e:
                    out["criu_error"] = str(e)
                    kill_reap(app.pid)
                continue
            shutil.rmtree(images, ignore_errors=True)
            remote = server if v == "lazy-ps" else None
            if remote:
                shutil.rmtree(work / "store" / images.name, ignore_errors=True)
            coldsnap_dump(app, images, remote)
            one_coldsnap(app, images, v != "eager", out, remote, service if v == "lazy-svc" else None)
        log(f"{size_name(size)} round {rnd + 1}: " + ", ".join(f"{k} {v[-1]:.0f}" for k, v in out.items()
                                                                 if isinstance(v, list)))
    data.unlink()
    return out


def bench_redis(size: int, runs: int, work: Path) -> dict:
    redis = shutil.which("redis-server")
    if not redis:
        return {"error": "redis-server not installed"}
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    p = subprocess.Popen([redis, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                          "--enable-debug-command", "yes", "--dir", str(work)], stdin=subprocess.DEVNULL,
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    p.returncode = 0
    LIVE.add(p.pid)
    pid = p.pid
    out: dict = {}
    images = work / "redis-img"
    keys = size // 1100

    def cmd(*args, timeout=120):
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as c:
            c.sendall(b"".join([f"*{len(args)}\r\n".encode()] + [b"$%d\r\n%s\r\n" % (len(a), a.encode())
                                                                 for a in args]))
            return c.recv(65536)

    deadline = time.monotonic() + 10
    while True:
        try:
            cmd("PING")
            break
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)
    cmd("DEBUG", "POPULATE", str(keys), "key", "1000", timeout=600)
    r = run([*COLDSNAP, "dump", "-t", pid, "-D", images])
    if r.returncode:
        raise RuntimeError(f"coldsnap dump of redis: {r.stderr.strip()}")
    reap(pid)
    want = b"value:4242".ljust(1000, b"\0")
    for rnd in range(runs):
        for lazy in ((False, True) if rnd % 2 == 0 else (True, False)):
            t_cmd, t0, res = coldsnap_restore(images, lazy)
            got = cmd("GET", "key:4242")
            key = "lazy" if lazy else "eager"
            out.setdefault(f"{key}_first", []).append(ms(t0))
            out.setdefault(f"{key}_cmd", []).append(t_cmd)
            if want not in got:
                raise RuntimeError(f"redis answered {got[:40]!r}")
            if lazy:
                LIVE.add(res["lazy_guardian"])
                wait_exit(res["lazy_guardian"])
                out.setdefault("lazy_last", []).append(ms(t0))
            kill_reap(pid)
        log(f"redis {size_name(size)} round {rnd + 1}: " + ", ".join(f"{k} {v[-1]:.0f}" for k, v in out.items()))
    out["keys"] = keys
    return out


def criu_works(path: str) -> str | None:
    if not os.access(path, os.X_OK):
        return f"no CRIU binary at {path}"
    r = run([path, "check"])
    return None if r.returncode == 0 else f"criu check: {(r.stdout + r.stderr).strip().splitlines()[-1:]}"


def f1(x: float) -> str:
    return f"{x:.1f}"


def report(meta: dict, sizes: dict, redis: dict | None, criu_note: str) -> str:
    lines = [SECTION, "", f"Command: `{meta['cmd']}`  ", f"coldsnap: {meta['rev']}  ",
             f"Date: {meta['date']}; kernel `{meta['uname']}`; {meta['cpus']} CPUs; THP `{meta['thp']}`; "
             f"images and data on tmpfs (/dev/shm).  ", criu_note, "",
             "### Warm start: a Python service (numpy + its data) answering its first request", "",
             "Time from the start (of the program, or of the restore command) to the answer of its first "
             "request, in ms: median (min–max) over the rounds.", "",
             "| size | n | cold start | eager restore | lazy restore | CRIU 4.2 lazy | restore command eager / lazy / CRIU lazy "
             "| restore() alone eager / lazy | last page in: lazy / CRIU | read-all inside the program after eager / lazy (ratio) "
             "| restore start to read-all answered eager / lazy (ratio) |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for size, o in sizes.items():
        crit = spread(o["criu_first"], f1) if o.get("criu_first") else o.get("criu_error", "—")
        ratio = median(o["lazy_all_inside"]) / median(o["eager_all_inside"])
        lines.append(
            f"| {size_name(size)} | {len(o['cold_first'])} | {spread(o['cold_first'], f1)} | "
            f"{spread(o['eager_first'], f1)} | **{spread(o['lazy_first'], f1)}** | {crit} | "
            f"{f1(median(o['eager_cmd']))} / {f1(median(o['lazy_cmd']))} / "
            f"{f1(median(o['criu_cmd'])) if o.get('criu_cmd') else '—'} | "
            f"{f1(median(o['eager_inside']))} / {f1(median(o['lazy_inside']))} | "
            f"{f1(median(o['lazy_last']))} / {f1(median(o['criu_last'])) if o.get('criu_last') else o.get('criu_last_note', '—')} | "
            f"{f1(median(o['eager_all_inside']))} / {f1(median(o['lazy_all_inside']))} ({ratio:.2f}x) | "
            f"{f1(median(o['eager_to_all']))} / {f1(median(o['lazy_to_all']))} "
            f"({median(o['lazy_to_all']) / median(o['eager_to_all']):.2f}x) |")
    lines += ["", "\"restore() alone\": the restore's own time as `--json` reports it (total_ms), without the "
              "interpreter's start-up and imports that the command's wall time includes. "
              "\"read-all\" is a request that sums every value of the data, sent right after the first "
              "answer (so, after a lazy restore, while the pages still arrive), timed inside the program. "
              "\"last page in\": from the restore command's start until the lazy server's guardian (or CRIU's "
              "lazy-pages daemon) exits."]
    if any(o.get("lazy_server_cpu") for o in sizes.values()):
        lines += ["", "The lazy server of the in-process lazy restore, medians: " + ", ".join(
            f"{size_name(size)} {f1(median(o['lazy_server_after_go']))} ms after go, CPU {f1(median(o['lazy_server_cpu']))} ms"
            for size, o in sizes.items() if o.get("lazy_server_cpu")) + " (~0.4 s of CPU per GiB when the memory "
            "it fills is warm; several times more when this VM's host must fault it in first: bench/RESULTS.md "
            "\"Session 9 (lazy4g)\")."]
    if any(o.get("lazy_svc_first") for o in sizes.values()):
        lines += ["", "### Lazy restore through `coldsnap service`", "",
                  "The lazy restore command as a user runs it (the script pip installs) with a `coldsnap service` "
                  "running: the command's interpreter starts, hands the command to the service's worker (its "
                  "modules imported) and waits for its end. ms, medians (min–max); from the command's start.", "",
                  "| size | n | command: in-process / via service / CRIU | first answer: in-process / via service / CRIU "
                  "| last page in: in-process / via service |",
                  "|---|---|---|---|---|"]
        for size, o in sizes.items():
            if not o.get("lazy_svc_first"):
                continue
            criu_cmd = f1(median(o["criu_cmd"])) if o.get("criu_cmd") else "—"
            criu_first = f1(median(o["criu_first"])) if o.get("criu_first") else "—"
            lines.append(
                f"| {size_name(size)} | {len(o['lazy_svc_first'])} | {f1(median(o['lazy_cmd']))} / "
                f"**{spread(o['lazy_svc_cmd'], f1)}** / {criu_cmd} | {f1(median(o['lazy_first']))} / "
                f"**{spread(o['lazy_svc_first'], f1)}** / {criu_first} | {f1(median(o['lazy_last']))} / "
                f"{f1(median(o['lazy_svc_last']))} |")
    if any(o.get("lazy_ps_first") for o in sizes.values()):
        lines += ["", "### Lazy restore from a page server", "",
                  "The same service dumped with `--page-server` to a coldsnap page server on loopback (its "
                  "session on tmpfs) and restored with `--lazy-pages --page-server`: every lazy page is fetched "
                  "over TCP (one request per fault window or per 1 MiB pushed) instead of mapped from the local "
                  "pages files. ms, medians (min–max).", "",
                  "| size | n | first answer: local / page server | restore() alone: local / page server "
                  "| last page in: local / page server | read-all inside the program: local / page server |",
                  "|---|---|---|---|---|---|"]
        for size, o in sizes.items():
            if not o.get("lazy_ps_first"):
                continue
            lines.append(
                f"| {size_name(size)} | {len(o['lazy_ps_first'])} | {spread(o['lazy_first'], f1)} / "
                f"**{spread(o['lazy_ps_first'], f1)}** | {f1(median(o['lazy_inside']))} / "
                f"{f1(median(o['lazy_ps_inside']))} | {f1(median(o['lazy_last']))} / {f1(median(o['lazy_ps_last']))} | "
                f"{f1(median(o['lazy_all_inside']))} / {f1(median(o['lazy_ps_all_inside']))} |")
    if redis:
        lines += ["", "### Redis: a GET right after the restore", ""]
        if "error" in redis:
            lines.append(f"skipped: {redis['error']}")
        else:
            lines += [f"{redis['keys']} keys of 1000 bytes (DEBUG POPULATE), dumped once; eager and lazy restore "
                      "alternate. Times from the restore command's start, ms.", "",
                      "| restore | n | command | GET answered | last page in |", "|---|---|---|---|---|"]
            for key in ("eager", "lazy"):
                last = spread(redis["lazy_last"], f1) if key == "lazy" else "(before the command returns)"
                lines.append(f"| {key} | {len(redis[f'{key}_first'])} | {spread(redis[f'{key}_cmd'], f1)} | "
                             f"**{spread(redis[f'{key}_first'], f1)}** | {last} |")
    return "\n".join(lines) + "\n"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="256M,1G")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--redis", default="1G", help="redis data size (0: skip)")
    ap.add_argument("--redis-runs", type=int, default=2)
    ap.add_argument("--criu", default=str(CRIU_DEFAULT))
    ap.add_argument("--no-page-server", action="store_true", help="skip the lazy restore from a page server")
    ap.add_argument("--no-service", action="store_true", help="skip the lazy restore through a coldsnap service")
    ap.add_argument("--out", default=str(BENCH / "RESULTS.md"))
    args = ap.parse_args()
    unwind_on_signals()
    become_subreaper()
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
    why = criu_works(args.criu)
    criu = None if why else args.criu
    old_pipe_max = PIPE_MAX.read_text().strip()
    criu_note = (f"CRIU: {why}." if why else f"CRIU: {args.criu} (`criu lazy-pages` needs fs.pipe-max-size >= 4 MiB: "
                 f"raised from {old_pipe_max} for the run, then put back).")
    work = Path("/dev/shm") / f"cs-lazy-bench-{os.getpid()}"
    work.mkdir()
    sizes: dict = {}
    redis = None
    page_server = service = None
    try:
        if criu and int(old_pipe_max) < 4 * MIB:
            PIPE_MAX.write_text(str(4 * MIB))
        server = None
        if not args.no_page_server:
            page_server, server = start_page_server(work / "store")
        if not args.no_service:
            (work / "svc").mkdir()
            service = Service(work / "svc")
        for text in args.sizes.split(","):
            size = parse_size(text)
            sizes[size] = bench_size(size, args.runs, criu, work, server, service)
        if parse_size(args.redis):
            redis = bench_redis(parse_size(args.redis), args.redis_runs, work)
    finally:
        if page_server is not None:
            page_server.terminate()
            page_server.wait()
        if service is not None:
            service.stop()
        PIPE_MAX.write_text(old_pipe_max)
        for pid in list(LIVE):
            kill_reap(pid)
        shutil.rmtree(work, ignore_errors=True)
    text = report(run_meta("lazy.py", None), sizes, redis, criu_note)
    print(text)
    write_section(Path(args.out), text, SECTION)
    return 0


if __name__ == "__main__":
    sys.exit(main())
