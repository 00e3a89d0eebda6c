"""Ordinary programs dumped and restored from the command line: coldsnap (in-process, and
through a `coldsnap service` as a user runs it once one runs) side by side with CRIU 4.2
(issue 13: "the whole `coldsnap dump` command took 0.18-0.22 s against CRIU's 0.04-0.07 s").

Each round starts every program afresh for every tool (interleaved: program by program, the
tools in turn), waits until it is ready, dumps it (which kills it), restores it with -d and
checks that it is back (a server answers: an HTTP GET, a Redis PING; the others are alive and
not stopped), then kills what was restored. Images on tmpfs. A program whose binary is missing
is left out and said so; a tool that fails on a program gets the error in its cell.

Wall = the whole command from exec to exit; coldsnap runs as bin/coldsnap installed beside
python3 (python3 -S, the client): in-process with no service (interpreter start-up and imports
included; until session 10 this column ran `python3 -m coldsnap`, the whole `site` set-up
first), "via service" handed to the worker; frozen = `frozen_time` of the dump's stats-dump.

    python3 bench/programs.py [--runs 5] [--only NAME,...] [--out bench/RESULTS.md]
"""
from __future__ import annotations

import argparse
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (BENCH, LIVE, Service, become_subreaper, install_script, log, median, reap, run_meta,  # noqa: E402
                    scratch_dir, spread, unwind_on_signals, write_section)
from small import (CRIU_DEFAULT, VIA, Tool, compile_sources, coldsnap_tool, criu_tool, criu_usable,  # noqa: E402
                   frozen_ms, service_tool, timed)

SECTION = "## Ordinary programs: coldsnap vs CRIU 4.2 from the command line (issue 13)"
PY = sys.executable


# ----------------------------------------------------------------------------- the programs

@dataclass
class Program:
    name: str
    need: str                                           # the binary it runs
    argv: Callable[[Path], list[str]]                   # its command line, given its directory
    ready: Callable[[Path, int], bool]                  # (its directory, pid): ready to be dumped
    back: Callable[[Path, int], bool] = lambda d, pid: True    # restored and answering


def said(word: str) -> Callable[[Path, int], bool]:
    return lambda d, pid: word in (d / "out").read_text(errors="replace")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def ask(address, request: bytes, family=socket.AF_INET) -> bytes:
    with socket.socket(family) as s:
        s.settimeout(5)
        s.connect(address)
        s.sendall(request)
        return s.recv(256)


def http_port(d: Path) -> int:
    return int((d / "port").read_text())


def http_server(d: Path) -> list[str]:
    port = free_port()
    (d / "port").write_text(str(port))
    return [PY, "-u", "-m", "http.server", str(port), "--bind", "127.0.0.1", "--directory", str(d)]


def nginx(d: Path) -> list[str]:
    port = free_port()
    (d / "port").write_text(str(port))
    (d / "nginx.conf").write_text(
        f"daemon off; master_process on; worker_processes 1; pid {d}/nginx.pid; error_log {d}/error.log;\n"
        "events { worker_connections 64; }\n"
        f"http {{ access_log off; client_body_temp_path {d}; proxy_temp_path {d}; fastcgi_temp_path {d};\n"
        f"  uwsgi_temp_path {d}; scgi_temp_path {d};\n"
        f"  server {{ listen 127.0.0.1:{port}; location / {{ return 200 \"ok\\n\"; }} }} }}\n")
    return ["nginx", "-c", str(d / "nginx.conf"), "-p", str(d)]


def has_child(pid: int) -> bool:
    try:
        return bool(Path(f"/proc/{pid}/task/{pid}/children").read_text().split())
    except OSError:
        return False


def java(d: Path) -> list[str]:
    (d / "Idle.java").write_text('public class Idle { public static void main(String[] a) throws Exception '
                                 '{ System.out.println("ready"); Thread.sleep(1000000000L); } }\n')
    return ["java", "-XX:+UseSerialGC", "-Xmx64m", "-XX:-UsePerfData", str(d / "Idle.java")]


def tcl(d: Path) -> list[str]:
    (d / "idle.tcl").write_text("puts ready; flush stdout; vwait forever\n")
    return ["tclsh", str(d / "idle.tcl")]


def get_ok(d: Path, pid: int) -> bool:
    return ask(("127.0.0.1", http_port(d)), b"GET / HTTP/1.0\r\n\r\n").startswith(b"HTTP/1.")


PROGRAMS = [
    Program("python http.server", "python3", http_server, said("Serving HTTP"), get_ok),
    Program("python + numpy", "python3",
            lambda d: [PY, "-c", "import numpy, time; a = numpy.ones(1 << 20); print('ready', flush=True); "
                                 "time.sleep(1e6)"], said("ready")),
    Program("redis-server", "redis-server",
            lambda d: ["redis-server", "--port", "0", "--unixsocket", str(d / "redis.sock"), "--save", "",
                       "--appendonly", "no"], said("ready to accept"),
            lambda d, pid: ask(str(d / "redis.sock"), b"PING\r\n", socket.AF_UNIX) == b"+PONG\r\n"),
    Program("nginx (master + worker)", "nginx", nginx,
            lambda d, pid: (d / "nginx.pid").exists() and has_child(pid), get_ok),
    Program("node", "node", lambda d: ["node", "-e", "console.log('ready'); setInterval(() => {}, 1 << 30)"],
            said("ready")),
    Program("java", "java", java, said("ready")),
    Program("perl", "perl", lambda d: ["perl", "-e", "$| = 1; print qq(ready\\n); while (1) { sleep 1000000 }"], said("ready")),
    Program("tclsh", "tclsh", tcl, said("ready")),
    Program("bash with a child", "bash", lambda d: ["bash", "-c", "sleep 1000000 & echo ready; wait"],
            lambda d, pid: said("ready")(d, pid) and has_child(pid)),
]


# ----------------------------------------------------------------------------- one cycle

def tree_of(pid: int) -> list[int]:
    """PID and every process below it."""
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        try:
            for t in os.listdir(f"/proc/{p}/task"):
                todo += map(int, Path(f"/proc/{p}/task/{t}/children").read_text().split())
        except OSError:
            pass
    return out


def kill_tree(pid: int) -> None:
    for p in tree_of(pid):
        try:
            os.kill(p, signal.SIGKILL)
        except ProcessLookupError:
            pass
    reap_all()


def reap_all() -> None:
    """Reap every child that ended (we are the subreaper of what restores detach)."""
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        LIVE.discard(pid)


def running(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
    except OSError:
        return False
    return state in "RS"


def start(prog: Program, d: Path) -> int:
    with open(d / "out", "w") as out:
        p = subprocess.Popen(prog.argv(d), stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                             cwd=d)
    LIVE.add(p.pid)
    p.returncode = 0            # we reap it ourselves
    deadline = time.monotonic() + 30
    while not prog.ready(d, p.pid):
        if time.monotonic() > deadline or not os.path.exists(f"/proc/{p.pid}"):
            kill_tree(p.pid)
            raise RuntimeError(f"{prog.name} did not get ready: {(d / 'out').read_text()[-200:]!r}")
        time.sleep(0.01)
    time.sleep(0.1)             # past its start-up's last steps
    return p.pid


def why(said: str, log_file: Path) -> str:
    """The last line a failed command said, or the first error line of its log (CRIU's -o)."""
    lines = said.strip().splitlines()[-1:]
    if not lines and log_file.exists():
        lines = [ln for ln in log_file.read_text(errors="replace").splitlines() if "Error" in ln][:1]
    return lines[0].strip()[-160:] if lines else "?"


def cycle(tool: Tool, prog: Program) -> dict:
    with scratch_dir() as d:
        pid = start(prog, d)
        try:
            images = d / "images"
            images.mkdir()
            rc, dump_wall, out, err, _ = timed(tool.dump(pid, images), tool.env)
            if rc:
                return {"error": f"dump exit {rc}: {why(err or out, images / 'dump.log')}"}
            kill_tree(pid)      # a tree's other processes died with it; reap them all
            reap(pid)
            frozen = frozen_ms(images)
            rc, restore_wall, out, err, _ = timed(tool.restore(images), tool.env)
            if rc:
                return {"error": f"restore exit {rc}: {why(err or out, images / 'restore.log')}"}
            LIVE.add(pid)
            try:
                ok = running(pid) and prog.back(d, pid)
            except OSError:
                ok = False
            if not ok:
                state = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0] \
                    if os.path.exists(f"/proc/{pid}") else "gone"
                return {"error": f"restored program does not answer (state {state})"}
            return {"dump": dump_wall, "restore": restore_wall, "frozen": frozen}
        finally:
            kill_tree(pid)


# ----------------------------------------------------------------------------- report

def report(results: dict, names: list[str], skipped: dict, meta: dict) -> str:
    L = [SECTION, "", f"Command: `{meta['cmd']}`  ", f"coldsnap: {meta['rev']}  ",
         f"Date: {meta['date']}; kernel `{meta['uname']}`; {meta['cpus']} CPUs; images on tmpfs; "
         f"load before the run {meta['load']}.", "",
         "| program | n | dump wall ms: CRIU / coldsnap / via service | via service / CRIU "
         "| restore -d wall ms: CRIU / coldsnap / via service | via service / CRIU | frozen ms: CRIU / coldsnap |",
         "|---|---|---|---|---|---|---|"]
    for prog in names:
        per = results.get(prog, {})
        cells, n = {}, 0
        for tool in ("CRIU", "coldsnap", VIA):
            rs = per.get(tool, [])
            good = [r for r in rs if "error" not in r]
            bad = [r["error"] for r in rs if "error" in r]
            n = max(n, len(good))
            cells[tool] = (good, bad[0] if bad and not good else "")

        def col(key: str) -> str:
            return " / ".join(spread([r[key] for r in cells[t][0]], lambda x: f"{x:.0f}") if cells[t][0]
                              else f"({cells[t][1] or '-'})" for t in ("CRIU", "coldsnap", VIA))

        def ratio(key: str) -> str:
            a, b = cells[VIA][0], cells["CRIU"][0]
            return f"{median([r[key] for r in a]) / median([r[key] for r in b]):.2f}x" if a and b else "-"
        frozen = " / ".join(f"{median([r['frozen'] for r in cells[t][0]]):.1f}" if cells[t][0] else "-"
                            for t in ("CRIU", VIA))
        L.append(f"| {prog} | {n} | {col('dump')} | {ratio('dump')} | {col('restore')} | {ratio('restore')} "
                 f"| {frozen} |")
    for prog, why in skipped.items():
        L.append(f"| {prog} | 0 | left out: {why} | | | | |")
    L += ["", "Median (min–max) over the rounds; an error in parentheses when every round of that tool "
          "failed. Each program started afresh for each tool, interleaved; the dump kills it, the restore "
          "(-d) brings it back and it must answer (HTTP GET, Redis PING) or run. CRIU: `criu dump "
          "--shell-job` / `criu restore -d --shell-job` (the programs share the bench's session). "
          "Via service: bin/coldsnap as installed, with a `coldsnap service` running; frozen ms of "
          "coldsnap are those of the runs through the service."]
    return "\n".join(L) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--only", default="", help="comma-separated program names (a prefix each)")
    ap.add_argument("--criu", default=str(CRIU_DEFAULT))
    ap.add_argument("--out", default=str(BENCH / "RESULTS.md"))
    args = ap.parse_args(argv)
    unwind_on_signals()
    become_subreaper()
    compile_sources()
    criu = Path(args.criu)
    criu_skip = criu_usable(criu)
    if criu_skip:
        log(f"CRIU columns skipped: {criu_skip}")
    progs, skipped = [], {}
    for p in PROGRAMS:
        if args.only and not any(p.name.startswith(o) for o in args.only.split(",")):
            continue
        if shutil.which(p.need) is None:
            skipped[p.name] = f"no {p.need} here"
        else:
            progs.append(p)
    load = os.getloadavg()[0]
    results: dict = {}
    with tempfile.TemporaryDirectory(prefix="coldsnap-programs-") as keep:
        service = Service(Path(keep))
        script, env = install_script(Path(keep) / "installed")
        try:
            tools = ([coldsnap_tool([str(script)], env=env), service_tool(service)]
                     + ([] if criu_skip else [criu_tool(criu)]))
            for r in range(args.runs):
                for prog in progs:
                    for tool in tools:
                        res = cycle(tool, prog)
                        results.setdefault(prog.name, {}).setdefault(tool.name, []).append(res)
                        if "error" in res:
                            log(f"round {r + 1}: {prog.name}, {tool.name}: {res['error']}")
                log(f"round {r + 1} of {args.runs} done")
        finally:
            service.stop()
            reap_all()
    meta = run_meta("programs.py", argv, load=f"{load:.1f}")
    section = report(results, [p.name for p in progs], skipped, meta)
    print(section)
    if args.out:
        write_section(Path(args.out), section, SECTION)
    return 0


if __name__ == "__main__":
    sys.exit(main())
