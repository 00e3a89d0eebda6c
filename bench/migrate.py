#!/usr/bin/env python3
"""Live migration downtime: `coldsnap migrate` and CRIU 4.2's page-server migration (issue 11).

    python3 bench/migrate.py [--sizes 256M,1G] [--rate 50] [--modes pre-copy,no-prebuild,post-copy,compressed] [--criu PATH] [--out FILE]

Two "hosts" as in the tests (tests/transport/twohosts.py): the destination is a network
namespace joined by a veth pair, with its own PID and mount namespaces. Target:
tests/workloads/mig_writer.c, SIZE of private memory rewritten at --rate MB/s and checked
(its log must show no FAIL after the move).

coldsnap: `coldsnap migrate-receive` over there, `coldsnap migrate --json` here: its
iterations, downtime_ms (the final dump's freeze to the destination's "running") and split.
Pre-copy: the receiver builds the memory ahead as the iterations arrive; `no-prebuild`: the
same with `migrate-receive --no-prebuild` (the whole memory restored at switchover), for
comparison; with `--post-copy` too (the destination restores lazily, the final delta fetched from the
source after it runs): how many pages came after "running", and how long they took.

CRIU 4.2 (its pre-dump needs soft-dirty bits, which this kernel lacks, so no pre-copy):
`criu page-server` over there, `criu dump --page-server` here (the target is killed after
its pages went over), the other images copied over, `criu restore -d` there. Its downtime is
the wall time from the dump's start to the restore's return (an upper bound: it includes
criu's own start, a few ms).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import tempfile
import sys
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))
sys.path.insert(0, str(BENCH.parent / "tests" / "transport"))
from common import OUT_DIR, become_subreaper, log, parse_size, run_meta, size_name, write_section  # noqa: E402
from small import CRIU_DEFAULT, criu_usable  # noqa: E402
from twohosts import TwoHosts  # noqa: E402

SECTION = "## Live migration: coldsnap vs CRIU 4.2 page server (issue 11)"
WRITER_SRC = BENCH.parent / "tests" / "workloads" / "mig_writer.c"
WRITER_BIN = OUT_DIR / "mig_writer"
COLDSNAP = [sys.executable, "-m", "coldsnap"]


def build_writer() -> Path:
    OUT_DIR.mkdir(exist_ok=True)
    if not WRITER_BIN.exists() or WRITER_BIN.stat().st_mtime < WRITER_SRC.stat().st_mtime:
        subprocess.run(["gcc", "-O2", "-I", str(WRITER_SRC.parent), "-o", str(WRITER_BIN), str(WRITER_SRC)], check=True)
    return WRITER_BIN


def start_writer(size: int, rate: int, logf: Path) -> subprocess.Popen:
    out = open(logf, "ab")
    p = subprocess.Popen([str(WRITER_BIN), str(size >> 20), str(rate)], stdin=subprocess.DEVNULL, stdout=out,
                         stderr=out, start_new_session=True)
    out.close()
    deadline = time.monotonic() + 60
    while "tick 3 ok" not in logf.read_text():
        if time.monotonic() > deadline or p.poll() is not None:
            p.kill()
            p.wait()
            raise RuntimeError(f"writer did not start: {logf.read_text()[-300:]}")
        time.sleep(0.05)
    return p


def healthy_after(logf: Path, before: int) -> bool:
    """More ticks after the move and no FAIL line."""
    time.sleep(1.0)
    text = logf.read_text()
    return "FAIL" not in text and text.count(" ok\n") > before + 5


def coldsnap_run(size: int, rate: int, tmp: Path, post_copy: bool = False, prebuild: bool = True,
                 compress: bool = False) -> dict:
    hosts = TwoHosts(tmp)
    writer = None
    try:
        hosts.start_destination("migrate-receive", "--address", hosts.dst_addr, "--port", 0,
                                *([] if prebuild else ["--no-prebuild"]), log=tmp / "dest.log")
        text = hosts.wait_log("listening on")
        to = f"{hosts.dst_addr}:{text.split('listening on ')[1].split()[0].rsplit(':', 1)[1]}"
        logf = tmp / "writer.log"
        writer = start_writer(size, rate, logf)
        with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
            p = subprocess.Popen(COLDSNAP + ["migrate", "-t", str(writer.pid), "--to", to, "--json"]
                                 + (["--post-copy"] if post_copy else []) + (["--compress"] if compress else []),
                                 stdout=out, stderr=err, text=True)
            _, status, usage = os.wait4(p.pid, 0)       # the source command's own peak memory
            p.returncode = os.waitstatus_to_exitcode(status)
            out.seek(0)
            err.seek(0)
            if p.returncode != 0:
                raise RuntimeError((err.read().strip().splitlines() or ["no error"])[-1])
            res = json.loads(out.read())
        res["source_maxrss_mib"] = round(usage.ru_maxrss / 1024, 1)
        res["bytes_on_wire"] = sum(i["bytes_sent"] for i in res.get("iterations", [])) + res.get("final_bytes", 0)
        writer.wait()
        res["healthy"] = healthy_after(logf, logf.read_text().count(" ok\n"))
        return res
    finally:
        if writer is not None and writer.poll() is None:
            writer.kill()
            writer.wait()
        hosts.close()


def criu_run(criu: Path, size: int, rate: int, tmp: Path) -> dict:
    hosts = TwoHosts(tmp)
    writer = None
    try:
        hosts.start_destination("check", log=tmp / "dest.log")      # only ns_init matters there
        time.sleep(1.0)
        init = int(Path(f"/proc/{hosts.dest.pid}/task/{hosts.dest.pid}/children").read_text().split()[0])
        dest, local = tmp / "dest", tmp / "local"
        dest.mkdir()
        local.mkdir()
        port = 27000 + os.getpid() % 1000
        subprocess.run(["ip", "netns", "exec", hosts.netns, str(criu), "page-server", "-D", str(dest), "--address",
                        hosts.dst_addr, "--port", str(port), "-d", "--pidfile", str(tmp / "ps.pid"), "-o", "ps.log"],
                       check=True, capture_output=True)
        logf = tmp / "writer.log"
        writer = start_writer(size, rate, logf)
        t0 = time.perf_counter()
        d = subprocess.run([str(criu), "dump", "-t", str(writer.pid), "-D", str(local), "-o", "dump.log",
                            "--page-server", "--address", hosts.dst_addr, "--port", str(port)],
                           capture_output=True, text=True)
        t_dump = time.perf_counter()
        if d.returncode != 0:
            raise RuntimeError(f"criu dump failed: {(local / 'dump.log').read_text()[-300:]}")
        writer.wait()
        for f in local.iterdir():
            if not f.name.startswith(("pagemap-", "pages-")) and f.suffix == ".img":
                shutil.copy2(f, dest / f.name)
        r = subprocess.run(["nsenter", "-t", str(init), "-p", "-m", "-n", str(criu), "restore", "-D", str(dest),
                            "-d", "-o", "restore.log"], capture_output=True, text=True)
        t1 = time.perf_counter()
        if r.returncode != 0:
            raise RuntimeError(f"criu restore failed: {(dest / 'restore.log').read_text()[-300:]}")
        return {"downtime_ms": round((t1 - t0) * 1000, 1), "dump_ms": round((t_dump - t0) * 1000, 1),
                "restore_ms": round((t1 - t_dump) * 1000, 1),
                "healthy": healthy_after(logf, logf.read_text().count(" ok\n"))}
    finally:
        if writer is not None and writer.poll() is None:
            writer.kill()
            writer.wait()
        hosts.close()


def report(rows: list[tuple[int, dict, dict | str]], rate: int, meta: dict, criu_note: str) -> str:
    out = [SECTION, "", f"Command: `{meta['cmd']}`  ", f"coldsnap: {meta['rev']}  ",
           f"Date: {meta['date']}; kernel `{meta['uname']}`; {meta['cpus']} CPUs; one run per size, the machine "
           f"shared with other work (load varies: read the numbers as a rough picture).  ",
           f"Target: tests/workloads/mig_writer.c rewriting {rate} MB/s of its memory round robin; link: a veth pair "
           f"into the destination's namespaces (tests/transport/twohosts.py). CRIU: {criu_note}", "",
           "| size | tool | iterations (pages each) | stop reason | downtime ms | split | final pages | total s | first copy s | memory whole after |",
           "|---|---|---|---|---|---|---|---|---|---|"]
    for size, runs, cr in rows:
        for name, cs in runs:
            its = cs.get("iterations", [])
            after = (f"; then {cs.get('post_copy_pages')} pages lazily in {cs.get('post_copy_ms')} ms"
                     if cs.get("post_copy") else "")
            if cs.get("prebuilt_bytes"):
                after += (f"; {cs['prebuilt_bytes'] / 2**20:.0f} MiB built ahead, the final delta written "
                          f"into it over there in {cs.get('final_apply_ms')} ms")
            sp = cs.get("final_split") or {}
            if sp:
                after += (f"; final dump = plan {sp.get('plan_ms')} + pages {sp.get('pages_ms')} + images, state and "
                          f"commits {sp.get('rest_ms')}")
            if cs.get("bytes_on_wire"):
                after += (f"; {cs['bytes_on_wire'] / 2**20:.0f} MiB on the wire, source command's peak RSS "
                          f"{cs.get('source_maxrss_mib')} MiB")
            after += f"; load {cs['load']}" if cs.get("load") else ""
            out.append(f"| {size_name(size)} | {name} | {len(its)} ({', '.join(str(i['pages']) for i in its)}) | "
                       f"{cs.get('stop_reason', cs.get('error', ''))} | **{cs.get('downtime_ms', '-')}** | "
                       f"final dump {cs.get('final_dump_ms', '-')}, restore {cs.get('restore_ms', '-')} "
                       f"(of which the restore itself {cs.get('restore_inner_ms', '-')}){after} | "
                       f"{cs.get('final_pages', '-')} | {cs.get('total_ms', 0) / 1000:.1f} | "
                       f"{its[0]['seconds'] if its else '-'} | {cs.get('healthy', '-')} |")
        if isinstance(cr, dict):
            out.append(f"| {size_name(size)} | CRIU 4.2 | 0 (no pre-dump here) | - | **{cr.get('downtime_ms', '-')}** | "
                       f"dump {cr.get('dump_ms', '-')}, copy + restore {cr.get('restore_ms', '-')} | all | "
                       f"{cr.get('downtime_ms', 0) / 1000:.1f} | - | {cr.get('healthy', '-')} |")
        else:
            out.append(f"| {size_name(size)} | CRIU 4.2 | {cr} | | | | | | | |")
    out += ["", "coldsnap's downtime: from the final dump's freeze to the destination's answer that the process "
            "runs; \"restore\" is that answer's wait as the source saw it, the restore itself as the destination "
            "timed it. Pre-copy: the receiver builds the root's private memory ahead as the iterations arrive, "
            "the switchover applies the final delta to it and restores the rest (task state, files, memory of "
            "other kinds); `--no-prebuild` on the receiver: the whole memory is restored from the received chain "
            "at switchover, so the restore of all of it is inside the downtime. The load is the 1-minute average "
            "before each run. `--post-copy`: the final dump keeps the private pages "
            "at the source, the destination restores lazily (its chain and the source's page server behind "
            "it), so neither the memory's size nor the final delta is in the downtime; the pages that come after "
            "are counted from \"running\" to the destination's lazy server closing its session."]
    return "\n".join(out) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="256M,1G")
    ap.add_argument("--rate", type=int, default=50, help="MB/s the target writes")
    ap.add_argument("--criu", default=str(CRIU_DEFAULT), help="CRIU binary ('' to skip it)")
    ap.add_argument("--modes", default="pre-copy,post-copy",
                    help="coldsnap's runs: pre-copy, no-prebuild (pre-copy, nothing built ahead), post-copy, "
                         "compressed (pre-copy with --compress)")
    ap.add_argument("--out", default=str(BENCH / "RESULTS.md"))
    args = ap.parse_args(argv)
    become_subreaper()
    build_writer()
    criu = Path(args.criu)
    skip = criu_usable(criu)
    rows = []
    import tempfile
    for size in map(parse_size, args.sizes.split(",")):
        runs = []
        for mode in args.modes.split(","):
            with tempfile.TemporaryDirectory(prefix="coldsnap-mig-") as d:
                log(f"coldsnap {mode} {size_name(size)}")
                load = round(os.getloadavg()[0], 1)
                try:
                    cs = coldsnap_run(size, args.rate, Path(d), post_copy=mode == "post-copy",
                                      prebuild=mode != "no-prebuild", compress=mode == "compressed")
                except (RuntimeError, subprocess.SubprocessError, OSError) as e:
                    cs = {"error": str(e)}
                cs["load"] = load
                log(f"  {cs}")
            runs.append(("coldsnap" + {"post-copy": " --post-copy", "no-prebuild": " (receiver --no-prebuild)",
                                       "compressed": " --compress"}
                         .get(mode, ""), cs))
        if skip:
            cr: dict | str = f"skipped: {skip}"
        else:
            with tempfile.TemporaryDirectory(prefix="coldsnap-mig-") as d:
                log(f"CRIU {size_name(size)}")
                try:
                    cr = criu_run(criu, size, args.rate, Path(d))
                except (RuntimeError, subprocess.SubprocessError, OSError) as e:
                    cr = f"failed: {e}"
                log(f"  {cr}")
        rows.append((size, runs, cr))
    meta = run_meta("migrate.py", argv)
    section = report(rows, args.rate, meta, f"`{criu}`" if not skip else f"skipped: {skip}")
    print(section)
    write_section(Path(args.out), section, SECTION)
    return 0


if __name__ == "__main__":
    sys.exit(main())
