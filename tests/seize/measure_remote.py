"""Cost of one injected syscall, single-step versus syscall-stop mode, and in batches
(one round trip to the batch loop's int3 for 1 or 100 calls) (no asserts).

    python3 tests/seize/measure_remote.py [calls]

Interleaves the modes over several rounds against the seize_reader workload and prints
the median of each, in microseconds (tracer wall time per getpid()).
"""
from __future__ import annotations

import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "src"))

from procs import build_workload  # noqa: E402  (tests/procs.py)
from coldsnap.kernel.libc import SYS  # noqa: E402
from coldsnap.seize.freezer import freeze  # noqa: E402
from coldsnap.seize.remote import RemoteCalls, sys_call  # noqa: E402


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 2000
    p = subprocess.Popen([str(build_workload("seize_reader"))], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    p.stdout.readline()
    samples: dict[str, list[float]] = {"step": [], "syscall": [], "batch of 1": [], "batch of 100": []}
    try:
        for _ in range(5):
            for mode in samples:
                size = int(mode.split()[-1]) if mode.startswith("batch") else 0
                with freeze(p.pid) as task, RemoteCalls(task, mode="syscall" if mode == "syscall" else "step") as rc:
                    rc.batch([sys_call(SYS.getpid)] * 2)     # the mask learned, code page mapped
                    for _ in range(n // 5 // max(size, 1)):
                        t0 = time.perf_counter_ns()
                        if size:
                            rc.batch([sys_call(SYS.getpid)] * size)
                        else:
                            rc.call(SYS.getpid)
                        samples[mode].append((time.perf_counter_ns() - t0) / max(size, 1))
    finally:
        p.kill()
        p.wait()
    for mode, ts in samples.items():
        print(f"{mode:12s} median {statistics.median(ts) / 1000:6.1f} us  "
              f"p90 {sorted(ts)[len(ts) * 9 // 10] / 1000:6.1f} us  ({len(ts)} calls)")


if __name__ == "__main__":
    main()
