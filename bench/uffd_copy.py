#!/usr/bin/env python3
"""The lazy server's copy path alone (issue 12): MiB/s of UFFDIO_COPY from a pages file on
tmpfs against a plain copy of the same bytes.

    python3 bench/uffd_copy.py [--size 1G] [--runs 3] [--out FILE]

Each case fills a fresh private anonymous mapping of SIZE from a file of SIZE in /dev/shm
(in the page cache), the destination's own cost included (its page faults, or UFFDIO_COPY's
page allocation):

- memcpy: numpy's copy from the file's mapping
- process_vm_writev: 16 MiB a call, from the file's mapping (to ourselves)
- uffd 1 thread: UFFDIO_COPY 2 MiB a call, the file mapped (its page faults included)
- uffd 1 thread, warmed: the same after MADV_POPULATE_READ of the file's mapping (counted)
- uffd copier, warmed: restore/lazy_copier.py's Copier (the calling thread and its helper,
  512 KiB pieces), as the lazy server copies
- uffd 1 thread, hot source: UFFDIO_COPY of the same 2 MiB buffer again and again: the
  destination's own cost (a 4 KiB page allocated, charged, mapped and written per page)
- huge pages, hot source: the same 2 MiB buffer copied into an area advised MADV_HUGEPAGE
  (one 2 MiB page per step): what the destination costs in huge pages
- process_vm_writev, huge pages: from the file's mapping into an area advised MADV_HUGEPAGE,
  as an eager restore writes such areas (UFFDIO_COPY can only make 4 KiB pages)

The best of --runs (min) and the median, per case. Section "Lazy restore: the copy path
(issue 12)" of --out.
"""
from __future__ import annotations

import argparse
import ctypes
import mmap
import os
import statistics
import sys
import time
from array import array
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import BENCH, MIB, log, parse_size, run_meta, size_name, write_section  # noqa: E402

SECTION = "## Lazy restore: the copy path (issue 12)"
STEP = 2 << 20
HUGE = 2 << 20                  # a PMD's worth
MADV_HUGEPAGE = 14


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", default="1G")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--out", default=str(BENCH / "RESULTS.md"))
    args = ap.parse_args()
    import numpy as np
    from coldsnap.kernel import uffd, vm
    from coldsnap.kernel.libc import SYS, syscall
    from coldsnap.restore.lazy_copier import Copier

    size = parse_size(args.size)
    path = Path("/dev/shm") / f"cs-uffd-bench-{os.getpid()}"
    path.write_bytes(np.random.default_rng(1).integers(0, 256, size, np.uint8).tobytes())
    copier = Copier()

    def source(warm: bool) -> mmap.mmap:
        fd = os.open(path, os.O_RDONLY)
        try:
            m = mmap.mmap(fd, size, mmap.MAP_SHARED, mmap.PROT_READ)
        finally:
            os.close(fd)
        if warm:
            vm.madvise(vm.address(m), size, vm.MADV_POPULATE_READ)
        return m

    def registered() -> tuple[int, mmap.mmap]:
        area = mmap.mmap(-1, size, mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
        fd = syscall(SYS.userfaultfd, os.O_CLOEXEC | os.O_NONBLOCK, what="userfaultfd")
        uffd.api(fd, 0)
        uffd.register(fd, vm.address(area), size, uffd.UFFDIO_REGISTER_MODE_MISSING)
        return fd, area

    def memcpy() -> None:
        s, d = source(False), mmap.mmap(-1, size, mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
        np.frombuffer(d, np.uint8)[:] = np.frombuffer(s, np.uint8)

    def writev() -> None:
        s, d = source(False), mmap.mmap(-1, size, mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
        a, b = vm.address(s), vm.address(d)
        for at in range(0, size, 16 * MIB):
            vm.writev(os.getpid(), a + at, 16 * MIB, array("Q", [b + at, 16 * MIB]), 1)

    def huge_area() -> tuple[mmap.mmap, int]:
        d = mmap.mmap(-1, size + HUGE, mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
        at = (vm.address(d) + HUGE - 1) & ~(HUGE - 1)
        vm.madvise(at, size, MADV_HUGEPAGE)
        return d, at

    def hot() -> np.ndarray:
        return np.random.default_rng(2).integers(0, 256, STEP, np.uint8)

    def uffd_hot() -> None:
        buf = hot()
        fd, d = registered()
        try:
            for at in range(0, size, STEP):
                assert uffd.copy(fd, vm.address(d) + at, vm.address(buf), STEP) == (0, STEP)
        finally:
            os.close(fd)

    def huge_hot() -> None:
        buf, (d, base) = hot(), huge_area()
        for at in range(0, size, STEP):
            ctypes.memmove(base + at, vm.address(buf), STEP)

    def writev_huge() -> None:
        s, (d, base) = source(False), huge_area()
        a = vm.address(s)
        for at in range(0, size, 16 * MIB):
            vm.writev(os.getpid(), a + at, 16 * MIB, array("Q", [base + at, 16 * MIB]), 1)

    def one_thread(warm: bool):
        def run() -> None:
            s = source(warm)
            fd, d = registered()
            try:
                for at in range(0, size, STEP):
                    assert uffd.copy(fd, vm.address(d) + at, vm.address(s) + at, STEP) == (0, STEP)
            finally:
                os.close(fd)
        return run

    def two_threads() -> None:
        s = source(True)
        fd, d = registered()
        try:
            for at in range(0, size, STEP):
                assert all(r == (0, p[2]) for p, r in copier.copy(fd, vm.address(d) + at, vm.address(s) + at, STEP))
        finally:
            os.close(fd)

    cases = {"memcpy": memcpy, "process_vm_writev": writev, "uffd 1 thread": one_thread(False),
             "uffd 1 thread, warmed": one_thread(True), "uffd copier (2 threads), warmed": two_threads,
             "uffd 1 thread, hot source": uffd_hot, "huge pages, hot source": huge_hot,
             "process_vm_writev, huge pages": writev_huge}
    times: dict[str, list[float]] = {k: [] for k in cases}
    try:
        for rnd in range(args.runs):
            for name, fn in cases.items():
                t0 = time.perf_counter()
                fn()
                times[name].append(time.perf_counter() - t0)
            log(f"round {rnd + 1}: " + ", ".join(f"{k} {v[-1] * 1e3:.0f} ms" for k, v in times.items()))
    finally:
        copier.close()
        path.unlink()
    meta = run_meta("uffd_copy.py", None)
    load = os.getloadavg()
    lines = [SECTION, "", f"Command: `{meta['cmd']}`  ", f"coldsnap: {meta['rev']}  ",
             f"Date: {meta['date']}; kernel `{meta['uname']}`; {meta['cpus']} CPUs; load average "
             f"{load[0]:.1f}/{load[1]:.1f}/{load[2]:.1f} at the end.", "",
             f"{size_name(size)} from a pages file on tmpfs into fresh anonymous memory; best (median) of "
             f"{args.runs}.", "", "| case | ms | MiB/s |", "|---|---|---|"]
    for name, ts in times.items():
        lines.append(f"| {name} | {min(ts) * 1e3:.0f} ({statistics.median(ts) * 1e3:.0f}) | "
                     f"{size / MIB / min(ts):.0f} |")
    text = "\n".join(lines) + "\n"
    print(text)
    write_section(Path(args.out), text, SECTION)
    return 0


if __name__ == "__main__":
    sys.exit(main())
