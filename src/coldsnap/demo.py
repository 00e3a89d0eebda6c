"""`coldsnap demo`: the whole story on a built-in workload, runnable on a fresh machine.

A Python process holding SIZE bytes of private memory writes on and logs a counter to a
file. coldsnap pre-dumps it twice (write-tracked, so the second run never freezes it),
dumps it on top of that chain (only the pages written since go into the dump), restores it
with the same PID, and shows the counter carrying on.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from .dump.dump import dump
from .errors import CsError
from .dump.iterate import pre_dump_tracked
from .restore.restore import restore

# Logs "tick N sum S" every 0.2 s; S checks the memory pattern survived.
WORKLOAD = r"""
import os, sys, time
size = int(sys.argv[1])
block = bytes(range(256)) * 16
mem = bytearray(block * (size // len(block)))
os.write(1, b"ready\n")
i = tick = 0
last = time.monotonic()
while True:
    mem[(i * 4096) % size] = i & 255
    i += 1
    if i % 64 == 0:
        time.sleep(0.01)   # about 6400 pages (25 MB) a second
    if time.monotonic() - last > 0.2:
        last = time.monotonic()
        tick += 1
        os.write(1, f"tick {tick} pages-touched {i} check {mem[1]:d}\n".encode())
"""


def start_workload(size: int, log: Path) -> subprocess.Popen:
    with open(log, "ab") as out:
        proc = subprocess.Popen([sys.executable, "-c", WORKLOAD, str(size)], stdout=out,
                                stdin=subprocess.DEVNULL)
    deadline = time.monotonic() + 30
    while b"ready" not in log.read_bytes():
        if proc.poll() is not None or time.monotonic() > deadline:
            raise CsError("the demo workload did not start")
        time.sleep(0.05)
    return proc


def _last_tick(log: Path) -> str:
    lines = [ln for ln in log.read_text().splitlines() if ln.startswith("tick")]
    return lines[-1] if lines else "(no tick yet)"


def demo(size: int, images_dir: str | None) -> int:
    with tempfile.TemporaryDirectory(prefix="coldsnap-demo-") as tmp:
        base = Path(images_dir) if images_dir else Path(tmp)
        base.mkdir(parents=True, exist_ok=True)
        log = base / "workload.log"
        proc = start_workload(size, log)
        try:
            print(f"workload: pid {proc.pid}, {size >> 20} MiB of private memory, writing ~25 MB/s, log {log}")
            time.sleep(0.5)
            rows = []
            s = pre_dump_tracked(proc.pid, base / "1")
            rows.append(("pre-dump 1", s))
            time.sleep(0.5)
            s = pre_dump_tracked(proc.pid, base / "2", prev_images_dir=base / "1")
            rows.append(("pre-dump 2", s))
            time.sleep(0.5)
            before = _last_tick(log)
            s = dump(proc.pid, base / "3", prev_images_dir=base / "2")
            rows.append(("dump", s))
            proc.wait()
            print(f"{'step':10} {'frozen ms':>10} {'written':>9} {'in parent':>10}  images")
            for (name, st), d in zip(rows, ("1", "2", "3")):
                print(f"{name:10} {st.frozen_time / 1000:10.2f} {st.pages_written:9} "
                      f"{st.pages_skipped_parent:10}  {base / d}")
            print(f"dumped and killed; last log line: {before}")
            res = restore(base / "3", detach=True)
            print(f"restored pid {res.pid} in {res.total_ns / 1e6:.0f} ms "
                  f"(memory {res.stats.memory_ns / 1e6:.0f} ms)")
            time.sleep(1.0)
            print(f"it carries on;  last log line: {_last_tick(log)}")
        finally:
            try:                        # the original, or the restored process with its PID
                os.kill(proc.pid, signal.SIGKILL)
                os.waitpid(proc.pid, 0)
            except (ProcessLookupError, ChildProcessError):
                pass
    return 0
