#!/usr/bin/env python3
"""`dump --stream` against `dump -D` (issue 11, streams): wall, frozen window, peak RSS.

    python3 bench/stream.py [--sizes 64M,256M] [--runs 3] [--out FILE]

Target: bench/restore_target.c with SIZE of private anonymous memory, idle. Per round and
size, two cycles, alternating which goes first:

  -D       `coldsnap dump -t PID -D DIR --json` (DIR on tmpfs), then `restore -D DIR -d`
  stream   `coldsnap dump -t PID --stream --json | coldsnap restore --stream -d`, one OS pipe,
           both started at once as a shell starts a pipeline (both spools under TMPDIR on the
           same tmpfs; the dumped PID is free again long before the restore, which reads the
           whole stream first, checks it)

Wall of the dump command (exec to exit; for the stream, until its last byte is in the pipe),
the dump's `frozen_time` (from its JSON), the dump's peak RSS (wait4), and the wall of the
whole dump+restore (for the stream: the pipeline, both commands at once). The restored
memory's first and last pages are checked, then it is killed and reaped.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (LIVE, SHM, become_subreaper, build_restore_target, kill_reap, log, parse_size,  # noqa: E402
                    reap, run_meta, scratch_dir, size_name, spread, start_restore_target,
                    unwind_on_signals, write_section)

SECTION = "## Image streams: dump --stream vs -D (issue 11)"
COLDSNAP = [sys.executable, "-m", "coldsnap"]
PAGE = 4096


def read_ends(pid: int, addr: int, size: int) -> bytes:
    fd = os.open(f"/proc/{pid}/mem", os.O_RDONLY)
    try:
        return os.pread(fd, PAGE, addr) + os.pread(fd, PAGE, addr + size - PAGE)
    finally:
        os.close(fd)


def _wait(p: subprocess.Popen) -> tuple[int, float, object]:
    _, status, ru = os.wait4(p.pid, 0)
    p.returncode = os.waitstatus_to_exitcode(status)
    return p.returncode, time.perf_counter_ns(), ru


def cycle(kind: str, size: int, scratch: Path) -> dict:
    pid, addr = start_restore_target(size)
    want = read_ends(pid, addr, size)
    env = {**os.environ, "TMPDIR": str(scratch)}
    images = scratch / "img"
    try:
        t0 = time.perf_counter_ns()
        if kind == "-D":
            dump = subprocess.Popen([*COLDSNAP, "dump", "-t", str(pid), "-D", str(images), "--json"],
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
            out = dump.stdout.read()
            rc, t1, ru = _wait(dump)
            assert rc == 0, dump.stderr.read()
            reap(pid)
            restore = subprocess.run([*COLDSNAP, "restore", "-D", str(images), "-d"], env=env,
                                     capture_output=True)
            result = json.loads(out)
        else:
            dump = subprocess.Popen([*COLDSNAP, "dump", "-t", str(pid), "--stream", "--json"],
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
            restore = subprocess.Popen([*COLDSNAP, "restore", "--stream", "-d"], stdin=dump.stdout,
                                       stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
            dump.stdout.close()
            reap(pid)       # killed before the stream begins: free long before the restore checks it
            rc, t1, ru = _wait(dump)
            err = dump.stderr.read().decode()
            assert rc == 0, err
            restore.communicate()
            result = json.loads(err.strip().splitlines()[-1])
        t2 = time.perf_counter_ns()
        assert restore.returncode == 0, restore.stderr
        LIVE.add(pid)
        assert read_ends(pid, addr, size) == want, "restored memory differs"
        return {"wall": (t1 - t0) / 1e6, "frozen": result["stats"]["frozen_time"] / 1e3,
                "rss": ru.ru_maxrss / 1024, "total": (t2 - t0) / 1e6}
    finally:
        kill_reap(pid)
        subprocess.run(["rm", "-rf", str(images)])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="64M,256M")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "RESULTS.md")
    args = ap.parse_args()
    unwind_on_signals()
    become_subreaper()
    build_restore_target()
    sizes = [parse_size(s) for s in args.sizes.split(",")]
    got: dict = {}
    try:
        with scratch_dir() as scratch:
            for r in range(args.runs):
                for size in sizes:
                    order = ("-D", "stream") if r % 2 == 0 else ("stream", "-D")
                    for kind in order:
                        res = cycle(kind, size, scratch)
                        log(f"{size_name(size)} {kind}: {res}")
                        for k, v in res.items():
                            got.setdefault((size, kind, k), []).append(v)
    finally:
        for pid in list(LIVE):
            kill_reap(pid)
    meta = run_meta("stream.py", None)
    lines = [SECTION, "", f"Command: `{meta['cmd']}`  ", f"coldsnap: {meta['rev']}  ",
             f"Date: {meta['date']}; kernel `{meta['uname']}`; {meta['cpus']} CPUs; images and "
             f"spools on tmpfs ({SHM}); load average at the end {os.getloadavg()[0]:.1f} (shared machine).", "",
             "| size | n | dump wall ms: -D / --stream | dump frozen ms: -D / --stream | dump peak RSS MiB: "
             "-D / --stream | dump + restore -d wall ms: -D / stream pipeline |", "|---|---|---|---|---|---|"]
    f0 = lambda x: f"{x:.0f}"       # noqa: E731
    for size in sizes:
        cols = [" / ".join(spread(got[(size, k, m)], f0) for k in ("-D", "stream"))
                for m in ("wall", "frozen", "rss", "total")]
        lines.append(f"| {size_name(size)} | {args.runs} | " + " | ".join(cols) + " |")
    lines += ["", "Median (min–max). Wall of the --stream dump = until its last byte is in the pipe "
              "(the restore reads it at once, so that is also until the reader has it all). Frozen = the "
              "dump's `frozen_time`: the stream is written from the spool after the target is killed, "
              "and the spool is committed without fsync (-D: with). The restore from a stream starts "
              "only once the whole stream is in and checked."]
    text = "\n".join(lines) + "\n"
    print(text)
    write_section(args.out, text, SECTION)
    return 0


if __name__ == "__main__":
    sys.exit(main())
