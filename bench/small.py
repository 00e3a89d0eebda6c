#!/usr/bin/env python3
"""Small processes from the command line, side by side with CRIU 4.2 (issue 13).

    python3 bench/small.py [--sizes 8M,64M,256M] [--runs 5] [--criu PATH] [--out FILE]

Target: bench/restore_target.c (built into bench/out/) with SIZE of private anonymous memory,
every byte non-zero, fds 0-2 on /dev/null, idle. Images on tmpfs (/dev/shm), removed after
each cycle. The benchmark is a child subreaper: a process restored with -d becomes its child,
and it reaps every target before the next restore reuses the PID.

One cycle of a tool = start a target, `dump -t PID -D DIR` (command wall time; frozen time
from DIR/stats-dump, read for both tools with coldsnap's own image reader since the format is
CRIU's), wait until the PID is free, `restore -D DIR -d` (command wall time), check the first
and last page of the restored memory, SIGKILL and reap it. Per round and size, coldsnap and
CRIU alternate who goes first (ABBA: drift of the shared machine hits both alike).

coldsnap runs as a user runs it without a service: bin/coldsnap installed beside this
interpreter's python3, as pip installs it (it starts python3 -S; a command run in the caller
then adds the site directories, without other packages' .pth code), in its own process
(COLDSNAP_SERVICE=""); until session 10 this column ran `python3 -m coldsnap` (the whole
`site` set-up first). "coldsnap via service" runs the same script once `coldsnap service`
runs (one started for the whole run on a temporary address, stopped at the end),
COLDSNAP_SERVICE naming the address; CRIU as `criu dump --shell-job` / `criu restore -d --shell-job` (the target is not a session
leader), log in the images directory (-o). Without a working CRIU binary (`criu check`
fails or the file is missing) its columns say why they are empty.

Start-up (interleaved rounds too): the interpreter's floor (`python3 -c pass`, `python3 -S
-c pass`), `coldsnap --help`, `coldsnap check`, `coldsnap show DIR` (an 8 MiB dump) and
the installed `coldsnap` script found on PATH (`--help`) wall and CPU times, and each command's import cost: the sum of the top-level `-X importtime` entries after
the interpreter's own start-up (site excluded), from extra runs of the same commands (for dump
and restore one extra, untimed coldsnap cycle per round at the smallest size). coldsnap's
sources are byte-compiled first (compileall), as those of an installed package are.

Medians are printed as Markdown and written to --out, section "Small processes ... (issue 13)".
"""
from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (BENCH, LIVE, MIB, Service, become_subreaper, build_restore_target,  # noqa: E402
                    install_script, kill_reap, log, median, parse_size, reap, run_meta, scratch_dir,
                    size_name, spread, start_restore_target, unwind_on_signals, write_section)

SECTION = "## Small processes: coldsnap vs CRIU 4.2 from the command line (issue 13)"
CRIU_DEFAULT = BENCH.parent.parent / "shared" / "peers" / "criu-4.2" / "criu"
PAGE = 4096
PY = sys.executable
COLDSNAP = [PY, "-m", "coldsnap"]


# ----------------------------------------------------------------------------- helpers

def timed(argv: list[str], env: dict | None = None) -> tuple[int, float, str, str, float]:
    """(exit code, wall ms, stdout, stderr, CPU ms: user + system time of that child alone)."""
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        t0 = time.perf_counter_ns()
        p = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=err, text=True, env=env)
        try:
            _, status, ru = os.wait4(p.pid, 0)
        except BaseException:           # interrupted: do not leave it running
            p.kill()
            p.wait()
            raise
        wall = (time.perf_counter_ns() - t0) / 1e6
        p.returncode = os.waitstatus_to_exitcode(status)     # reaped: keep Popen's hands off
        out.seek(0)
        err.seek(0)
        return p.returncode, wall, out.read(), err.read(), (ru.ru_utime + ru.ru_stime) * 1e3


def import_ms(stderr: str) -> tuple[float, set[str]]:
    """Sum of the top-level `-X importtime` entries after the interpreter's start-up (site and
    what it imports excluded; under -S from the first coldsnap module on), in ms, and the names
    of every module imported after it."""
    total, names, after_site = 0, set(), False
    for line in stderr.splitlines():
        if not line.startswith("import time:") or "|" not in line:
            continue
        _, cum, name = line.split("|")
        if not after_site:
            top = name.lstrip() == name[1:]
            after_site = top and name.strip() in ("site", "coldsnap.service.client")
            if name.strip() == "site":
                continue
        if not after_site:
            continue
        names.add(name.strip())
        if name[1:] == name.strip():           # top level: one space after the bar only
            total += int(cum)
    return total / 1e3, names


def heavy(names: set[str]) -> str:
    """Which large third-party packages a command imported."""
    got = [p for p in ("numpy", "google.protobuf", "rich") if p in names]
    return ", ".join(got) or "-"


def read_pages(pid: int, addr: int, size: int) -> bytes:
    """First and last page of the target's memory (the benchmark runs as root)."""
    fd = os.open(f"/proc/{pid}/mem", os.O_RDONLY)
    try:
        return os.pread(fd, PAGE, addr) + os.pread(fd, PAGE, addr + size - PAGE)
    finally:
        os.close(fd)


def frozen_ms(images: Path) -> float:
    from coldsnap.images.framing import read_single
    return read_single(images / "stats-dump").dump.frozen_time / 1e3


BYTECODE = "python3 -m compileall -q on the imported coldsnap package"


def compile_sources() -> None:
    """Byte-compile the coldsnap being measured: an installed package has its .pyc files,
    and a machine with PYTHONDONTWRITEBYTECODE=1 would otherwise compile every module in
    every command it runs."""
    import coldsnap
    subprocess.run([PY, "-m", "compileall", "-q", str(Path(coldsnap.__file__).parent)], check=True,
                   stdout=subprocess.DEVNULL)


def criu_usable(path: Path) -> str:
    """'' when CRIU can run here, else why not."""
    if not path.is_file() or not os.access(path, os.X_OK):
        return f"no CRIU binary at {path}"
    try:
        p = subprocess.run([str(path), "check"], capture_output=True, text=True, timeout=60)
    except OSError as e:
        return f"{path} does not run: {e}"
    if p.returncode:
        return f"`criu check` fails: {(p.stdout + p.stderr).strip().splitlines()[-1:]}"
    return ""


# ----------------------------------------------------------------------------- one cycle

@dataclass
class Tool:
    name: str
    dump: callable          # (pid, images dir) -> argv
    restore: callable       # images dir -> argv
    env: dict | None = None
    prefix: list[str] = field(default_factory=list)     # coldsnap's: the command before its arguments


def coldsnap_tool(prefix: list[str] = COLDSNAP, name: str = "coldsnap", env: dict | None = None) -> Tool:
    return Tool(name, lambda pid, d: prefix + ["dump", "-t", str(pid), "-D", str(d)],
                lambda d: prefix + ["restore", "-D", str(d), "-d"], env, prefix)


VIA = "coldsnap via service"


def service_tool(service: Service) -> Tool:
    """The dump and restore commands as a user runs them through SERVICE."""
    return coldsnap_tool([str(service.script)], VIA, service.env)


def criu_tool(criu: Path) -> Tool:
    return Tool("CRIU", lambda pid, d: [str(criu), "dump", "-t", str(pid), "-D", str(d), "--shell-job",
                                        "-o", "dump.log"],
                lambda d: [str(criu), "restore", "-D", str(d), "-d", "--shell-job", "-o", "restore.log"])


def cycle(tool: Tool, size: int, keep: Path | None = None) -> dict:
    """Dump a fresh target with TOOL and restore it; walls, frozen time and outputs, or
    {"error": ...}. KEEP: copy the images there (for `show`)."""
    pid, addr = start_restore_target(size)
    try:
        want = read_pages(pid, addr, size)
        with scratch_dir() as d:
            images = d / "images"
            images.mkdir()
            rc, dump_wall, out, err, dump_cpu = timed(tool.dump(pid, images), tool.env)
            if rc:
                return {"error": f"{tool.name} dump exit {rc}: {(err or out).strip()[-200:]}"}
            reap(pid)                           # the dump killed it; its PID must be free
            frozen = frozen_ms(images)
            if keep is not None:
                shutil.copytree(images, keep)
            rc, restore_wall, out2, err2, restore_cpu = timed(tool.restore(images), tool.env)
            if rc:
                return {"error": f"{tool.name} restore exit {rc}: {(err2 or out2).strip()[-200:]}"}
            LIVE.add(pid)                       # detached: now our child (subreaper)
            if read_pages(pid, addr, size) != want:
                return {"error": f"{tool.name}: restored memory differs"}
            return {"dump_wall": dump_wall, "frozen": frozen, "restore_wall": restore_wall,
                    "dump_cpu": dump_cpu, "restore_cpu": restore_cpu,
                    "dump_err": err, "restore_err": err2}
    finally:
        kill_reap(pid)


# ----------------------------------------------------------------------------- start-up

def startup_round(show_dir: Path, res: dict, service: Service | None) -> None:
    """One round of the start-up figures: wall time, then the same command under importtime."""
    cmds = {"python3 -c pass": [PY, "-c", "pass"],
            "python3 -S -c pass": [PY, "-S", "-c", "pass"],
            "coldsnap --help": COLDSNAP + ["--help"],
            "coldsnap check": COLDSNAP + ["check"],
            "coldsnap show DIR": COLDSNAP + ["show", str(show_dir)]}
    on_path = shutil.which("coldsnap")
    if on_path:     # what a user types: the installed script (and any shim in front of it)
        cmds[f"{on_path} --help"] = [on_path, "--help"]
    envs = {}
    if service:
        for what in (["check"], ["show", str(show_dir)]):
            name = f"coldsnap {' '.join(what).replace(str(show_dir), 'DIR')} via service"
            cmds[name] = [str(service.script), *what]       # it runs python3 -S itself
            envs[name] = service.env
    for name, argv in cmds.items():
        rc, wall, out, err, cpu = timed(argv, envs.get(name))
        if rc:
            raise RuntimeError(f"{name} failed ({rc}): {(err or out).strip()[-200:]}")
        r = res.setdefault(name, {"wall": [], "cpu": [], "imports": [], "heavy": "-"})
        r["wall"].append(wall)
        r["cpu"].append(cpu)
        importtime = ([PY, "-X", "importtime", *argv[1:]] if argv[:1] == [PY]
                      else [PY, "-S", "-X", "importtime", *argv] if service and argv[0] == str(service.script)
                      else None)
        if importtime and any(a.endswith("coldsnap") for a in argv):
            _, _, _, err, _ = timed(importtime, envs.get(name))
            ms, names = import_ms(err)
            r["imports"].append(ms)
            r["heavy"] = heavy(names)


def import_round(size: int, res: dict, installed: Tool) -> None:
    """An untimed cycle of INSTALLED (the script as installed) under -X importtime: the import
    cost of dump and restore."""
    c = cycle(coldsnap_tool([PY, "-S", "-X", "importtime", *installed.prefix], env=installed.env), size)
    if "error" in c:
        log(f"importtime cycle: {c['error']}")
        return
    for name, err in (("coldsnap dump", c["dump_err"]), ("coldsnap restore -d", c["restore_err"])):
        ms, names = import_ms(err)
        r = res.setdefault(name, {"wall": [], "cpu": [], "imports": [], "heavy": "-"})
        r["imports"].append(ms)
        r["heavy"] = heavy(names)


# ----------------------------------------------------------------------------- report

@dataclass
class SizeResult:
    size: int
    by_tool: dict = field(default_factory=dict)     # tool -> list of cycles
    errors: dict = field(default_factory=dict)      # tool -> list of messages


def _f(x: float) -> str:
    return f"{x:.0f}" if x >= 10 else f"{x:.1f}"


def report(results: list[SizeResult], startup: dict, criu_skip: str, meta: dict) -> str:
    L = [SECTION, "",
         f"Command: `{meta['cmd']}`  ",
         f"coldsnap: {meta['rev']}  ",
         f"Date: {meta['date']}; kernel `{meta['uname']}`; {meta['cpus']} CPUs; THP `{meta['thp']}`; "
         f"Python {sys.version.split()[0]} ({PY}); images on tmpfs (/dev/shm). CRIU: "
         + (f"**skipped: {criu_skip}**" if criu_skip else f"`{meta['criu']}`") + ".",
         "",
         "### Dump and restore -d",
         "",
         "| size | n | dump frozen ms: CRIU / coldsnap | coldsnap / CRIU | dump wall ms: CRIU / coldsnap "
         "| coldsnap / CRIU | restore -d wall ms: CRIU / coldsnap | coldsnap / CRIU |",
         "|---|---|---|---|---|---|---|---|"]
    for r in results:
        cs, cr = r.by_tool.get("coldsnap", []), r.by_tool.get("CRIU", [])
        row = [size_name(r.size), str(len(cs))]
        for key in ("frozen", "dump_wall", "restore_wall"):
            a = [x[key] for x in cs]
            b = [x[key] for x in cr]
            left = spread(b, _f) if b else "skipped"
            right = spread(a, _f) if a else "failed"
            row += [f"{left} / {right}", f"{median(a) / median(b):.2f}x" if a and b else "-"]
        L.append("| " + " | ".join(row) + " |")
    if any(r.by_tool.get(VIA) or r.errors.get(VIA) for r in results):
        L += ["", f"### {VIA}", "",
              "| size | n | dump wall ms: CRIU / coldsnap / via service | via service / CRIU "
              "| restore -d wall ms: CRIU / coldsnap / via service | via service / CRIU "
              "| dump frozen ms via service | CPU ms of the command via service: dump / restore -d |",
              "|---|---|---|---|---|---|---|---|"]
        for r in results:
            cs, cr, via = (r.by_tool.get(t, []) for t in ("coldsnap", "CRIU", VIA))
            row = [size_name(r.size), str(len(via))]
            for key in ("dump_wall", "restore_wall"):
                cols = [spread([x[key] for x in xs], _f) if xs else "-" for xs in (cr, cs, via)]
                ratio = (f"{median([x[key] for x in via]) / median([x[key] for x in cr]):.2f}x"
                         if via and cr else "-")
                row += [" / ".join(cols), ratio]
            row += [spread([x["frozen"] for x in via], _f) if via else "-",
                    " / ".join(spread([x[k] for x in via], _f) if via else "-" for k in ("dump_cpu", "restore_cpu"))]
            L.append("| " + " | ".join(row) + " |")
        L += ["", "Via service: the wall time of the `coldsnap` command as pip installs it (bin/coldsnap: "
              "a shell line that starts python3 -S, the client's imports, the request, the worker's "
              "fork and run, the exit status back); CPU is the client's alone (the worker is the "
              "service's child)."]
    L += ["", "| size | dump CPU ms: CRIU / coldsnap | restore -d CPU ms: CRIU / coldsnap |", "|---|---|---|"]
    for r in results:
        cs, cr = r.by_tool.get("coldsnap", []), r.by_tool.get("CRIU", [])
        L.append(f"| {size_name(r.size)} | " + " | ".join(
            f"{spread([x[k] for x in cr], _f) if cr else 'skipped'} / "
            f"{spread([x[k] for x in cs], _f) if cs else 'failed'}" for k in ("dump_cpu", "restore_cpu")) + " |")
    errs = [f"- {size_name(r.size)}, {t}: {len(m)} failed, e.g. `{m[0]}`"
            for r in results for t, m in r.errors.items() if m]
    L += [""] + (["Failures:", ""] + errs + [""] if errs else [])
    L += ["Median (min–max) over the rounds. Frozen ms = `frozen_time` of the dump's stats-dump "
          "(for both tools). Wall = the whole command as a user runs it, from exec to exit "
          "(for coldsnap including the interpreter's start-up and imports, see below). CPU = "
          "user + system time of the command's process (wait4), less sensitive than the wall "
          "to the other load of a shared machine.",
          "",
          "### Start-up of the coldsnap command",
          "",
          "| command | n | wall ms | CPU ms | import ms | large packages imported |",
          "|---|---|---|---|---|---|"]
    for name, r in startup.items():
        wall, cpu, imp = (spread(r[k], _f) if r[k] else "-" for k in ("wall", "cpu", "imports"))
        L.append(f"| `{name}` | {max(len(r['wall']), len(r['imports']))} | {wall} | {cpu} | {imp} "
                 f"| {r['heavy']} |")
    L += ["",
          "Import ms = the sum of the top-level `python3 -X importtime` entries after the "
          "interpreter's own start-up (`site` and what it imports are the floor, not ours), in a "
          "separate run of the same command (for dump and restore: an untimed cycle of the installed "
          f"script under python3 -S at {size_name(results[0].size) if results else 'the smallest size'}, "
          "so the standard library that `site` no longer loads first counts as theirs); importtime "
          "itself inflates it somewhat. `show DIR` shows an 8 MiB coldsnap dump. coldsnap's "
          f"sources were byte-compiled first ({BYTECODE}), as an installed package is.", ""]
    return "\n".join(L)


# ----------------------------------------------------------------------------- main

def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="8M,64M,256M")
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--criu", default=str(CRIU_DEFAULT), help="CRIU 4.2 binary")
    ap.add_argument("--out", default=str(BENCH / "RESULTS.md"))
    ap.add_argument("--no-service", action="store_true", help="leave out the column via coldsnap service")
    args = ap.parse_args(argv)
    os.environ["COLDSNAP_SERVICE"] = ""     # the coldsnap column runs in its own process
    sizes = [parse_size(s) for s in args.sizes.split(",") if s]

    unwind_on_signals()
    become_subreaper()
    build_restore_target()
    compile_sources()
    criu = Path(args.criu)
    criu_skip = criu_usable(criu)
    if criu_skip:
        log(f"CRIU columns skipped: {criu_skip}")
    results = [SizeResult(s) for s in sizes]
    startup: dict = {}
    t0 = time.monotonic()
    service = None
    try:
        with scratch_dir() as keep:
            script, env = install_script(keep / "installed")
            installed = coldsnap_tool([str(script)], env=env)
            tools = [installed] + ([] if criu_skip else [criu_tool(criu)])
            if not args.no_service:
                service = Service(keep)
                tools.insert(1, service_tool(service))
            show_dir = keep / "show"
            c = cycle(installed, 8 * MIB, keep=show_dir)
            if "error" in c:
                raise RuntimeError(f"the 8 MiB dump for `show` failed: {c['error']}")
            for rnd in range(args.runs):
                startup_round(show_dir, startup, service)
                import_round(sizes[0], startup, installed)
                for r in results:
                    for tool in (tools if rnd % 2 == 0 else tools[::-1]):
                        c = cycle(tool, r.size)
                        if "error" in c:
                            r.errors.setdefault(tool.name, []).append(c["error"])
                        else:
                            r.by_tool.setdefault(tool.name, []).append(c)
                log(f"round {rnd + 1}/{args.runs} done ({time.monotonic() - t0:.0f} s)")
    finally:
        if service:
            service.stop()
        for pid in list(LIVE):
            kill_reap(pid)
    meta = run_meta("small.py", argv, criu=str(criu))
    section = report(results, startup, criu_skip, meta)
    print(section)
    write_section(Path(args.out), section, SECTION)
    return 0


if __name__ == "__main__":
    sys.exit(main())
