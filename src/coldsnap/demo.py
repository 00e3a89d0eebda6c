"""`coldsnap demo`: the main job on a built-in workload, runnable on a fresh machine."""
from __future__ import annotations

import subprocess
import sys
import tempfile
from pathlib import Path

from .dump.iterate import pre_dump_series
from .dump.predump import pre_dump

# A Python process holding SIZE bytes of private memory with a known pattern, writing on.
WORKLOAD = r"""
import sys, time
size = int(sys.argv[1])
block = bytes(range(256)) * 16
mem = bytearray(block * (size // len(block)))
print("ready", flush=True)
i = 0
while True:
    mem[(i * 4096) % size] = i & 255
    i += 1
    if i % 64 == 0:
        time.sleep(0.01)   # about 6400 pages (25 MB) a second
"""


def start_workload(size: int) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-c", WORKLOAD, str(size)], stdout=subprocess.PIPE)
    proc.stdout.readline()
    return proc


def demo(size: int, images_dir: str | None) -> int:
    proc = start_workload(size)
    try:
        with tempfile.TemporaryDirectory(prefix="coldsnap-demo-") as tmp:
            base = Path(images_dir) if images_dir else Path(tmp)
            print(f"workload: pid {proc.pid}, {size >> 20} MiB of private memory, writing ~25 MB/s")
            rows = []
            for mode in ("live", "frozen"):
                s = pre_dump(proc.pid, base / mode, mode=mode)
                rows.append((mode, s))
            print(f"{'mode':8} {'frozen ms':>10} {'scan ms':>8} {'drain ms':>9} {'pages':>8} {'skipped':>8}  images")
            for mode, s in rows:
                print(f"{mode:8} {s.frozen_time / 1000:10.2f} {s.scan_time / 1000:8.2f} "
                      f"{(s.memdump_time + s.memwrite_time) / 1000:9.1f} {s.pages_written:8} "
                      f"{s.pages_skipped:8}  {base / mode}")
            live, frozen = rows[0][1], rows[1][1]
            if live.frozen_time:
                print(f"live pre-dump kept the task frozen {frozen.frozen_time / live.frozen_time:.0f}x "
                      f"shorter than the frozen baseline")
            print("\niterative pre-dumps with userfaultfd write tracking (the task is never frozen after arming):")
            series = pre_dump_series(proc.pid, base / "series", 3, track="uffd",
                                     between=lambda i: __import__("time").sleep(0.2))
            print(f"{'iter':>4} {'frozen ms':>10} {'written':>8} {'in parent':>10}")
            for i, s in enumerate(series, 1):
                print(f"{i:4} {s.frozen_time / 1000:10.2f} {s.pages_written:8} {s.pages_skipped_parent:10}")
            print("workload still running:", proc.poll() is None)
    finally:
        proc.kill()
        proc.wait()
    return 0
