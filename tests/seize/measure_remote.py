"""Cost of one injected syscall, single-step versus syscall-stop mode (no asserts).

    python3 tests/seize/measure_remote.py [calls]

Interleaves the two modes over several rounds against the seize_reader workload and
prints the median of each, in microseconds (tracer wall time per getpid()).
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
from coldsnap.seize.remote import RemoteCalls  # noqa: E402


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 2000
    p = subprocess.Popen([str(build_workload("seize_reader"))], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    p.stdout.readline()
    samples: dict[str, list[int]] = {"step": [], "syscall": []}
    try:
        for _ in range(5):
            for mode in samples:
                with freeze(p.pid) as task, RemoteCalls(task, mode=mode) as rc:
                    for _ in range(n // 5):
                        t0 = time.perf_counter_ns()
                        rc.call(SYS.getpid)
                        samples[mode].append(time.perf_counter_ns() - t0)
    finally:
        p.kill()
        p.wait()
    for mode, ts in samples.items():
        print(f"{mode:8s} median {statistics.median(ts) / 1000:6.1f} us  "
              f"p90 {sorted(ts)[len(ts) * 9 // 10] / 1000:6.1f} us  ({len(ts)} calls)")


if __name__ == "__main__":
    main()
