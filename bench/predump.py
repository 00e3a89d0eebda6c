#!/usr/bin/env python3
"""Benchmark of coldsnap's live pre-dump against the frozen baseline and a plain copy loop.

    python3 bench/predump.py [--sizes 256M,1G,4G] [--runs 5] [--out bench/RESULTS.md]

For each size a C target (bench/target.c, built into bench/out/) holds that much touched
private anonymous memory and sleeps in read(0). In each round, for each size, the variants run
back to back (interleaved, so drift of the shared machine hits them all alike):

  live / frozen    coldsnap.pre_dump into a fresh directory on tmpfs (removed afterwards)
  readv            a plain process_vm_readv loop over coldsnap's page plan, same buffer size
  readv+write      the same loop, writing each buffer to a new file on the same tmpfs, then a
                   second pass overwriting that file in place (its tmpfs pages already exist):
                   the difference is the cost of allocating fresh tmpfs pages
  scan ioctl/read  scan_saved_pages with PAGEMAP_SCAN and with a /proc/PID/pagemap read
  rss              (largest size only) `python3 -m coldsnap pre-dump` in a child; its peak RSS

Medians over the rounds are printed as a Markdown table and written to --out, in the section
"Live pre-dump (issue 2)" (other sections of the file are kept).
"""
from __future__ import annotations

import argparse
import mmap
import os
import platform
import subprocess
import sys
import time
from array import array
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

import coldsnap
from common import (BENCH, MIB, OUT_DIR, compile_c, median, parse_size, run_measured, run_meta,
                    scratch_dir, size_name, spread, stop_target, unwind_on_signals, write_section)
from coldsnap.kernel import vm
from coldsnap.kernel.procfs import read_maps
from coldsnap.memory.drain import DEFAULT_BUFFER
from coldsnap.memory.scan import scan_saved_pages, warm_up
from coldsnap.memory.vma import classify_all

TARGET_SRC = BENCH / "target.c"
TARGET_BIN = OUT_DIR / "target"
SECTION = "## Live pre-dump (issue 2)"
# CRIU 4.2 pre-dump frozen time (ms) on the reference machine: read mode, splice mode.
CRIU_REF = {256 * MIB: (12, 30), 1024 * MIB: (49, 101), 4096 * MIB: (170, 337)}


# ----------------------------------------------------------------------------- helpers

def build_target() -> Path:
    return compile_c(TARGET_SRC, TARGET_BIN)


def start_target(size: int) -> subprocess.Popen:
    p = subprocess.Popen([str(TARGET_BIN), str(size)], stdin=subprocess.PIPE,
                         stdout=subprocess.PIPE, text=True)
    line = p.stdout.readline()
    if not line.startswith("ready"):
        p.kill()
        p.wait()
        raise RuntimeError(f"target for {size_name(size)} did not start: {line!r}")
    return p


def page_plan(pid: int, method: str = "auto"):
    return scan_saved_pages(pid, classify_all(read_maps(pid)), method)


# ----------------------------------------------------------------------------- baseline

def batches(plan, bufsize: int):
    """Pack the plan's pieces (cut to the buffer size) into iovec arrays of at most IOV_MAX
    entries and bufsize bytes each, before any timing: the timed loop is only system calls."""
    cut = plan.chunked(bufsize)
    lens = cut.lengths.tolist()
    out, i, n = [], 0, len(lens)
    starts = cut.starts.tolist()
    while i < n:
        j, total = i, 0
        while j < n and j - i < vm.IOV_MAX and total + lens[j] <= bufsize:
            total += lens[j]
            j += 1
        iov = vm.new_iov_array(j - i)
        iov[0::2] = array("Q", starts[i:j])
        iov[1::2] = array("Q", lens[i:j])
        out.append((iov, j - i, total))
        i = j
    return out


def plain_readv(pid: int, plan_batches, bufsize: int, out_path: Path | None = None,
                overwrite: bool = False) -> dict:
    """Copy every planned byte with process_vm_readv into one reused buffer (freshly mapped,
    as coldsnap's drain does); optionally write each buffer to out_path (truncated first,
    or written over in place with `overwrite`)."""
    buf = mmap.mmap(-1, bufsize, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    view = memoryview(buf)
    addr = np.frombuffer(buf, dtype=np.uint8).ctypes.data
    flags = os.O_WRONLY | os.O_CREAT | (0 if overwrite else os.O_TRUNC)
    fd = os.open(out_path, flags, 0o600) if out_path else -1
    read_ns = write_ns = copied = 0
    try:
        t0 = time.perf_counter_ns()
        for iov, count, total in plan_batches:
            t = time.perf_counter_ns()
            got = vm.readv(pid, addr, total, iov, count)
            t1 = time.perf_counter_ns()
            read_ns += t1 - t
            if got != total:
                raise RuntimeError(f"short read {got} < {total}: target changed?")
            if fd >= 0:
                off = 0
                with view[:got] as mv:
                    while off < got:
                        with mv[off:] as rest:
                            off += os.write(fd, rest)
                write_ns += time.perf_counter_ns() - t1
            copied += got
        elapsed = time.perf_counter_ns() - t0
    finally:
        if fd >= 0:
            os.close(fd)
        view.release()
        buf.close()
    return {"bytes": copied, "ns": elapsed, "read_ns": read_ns, "write_ns": write_ns}


# ----------------------------------------------------------------------------- RSS

def child_predump_rss(pid: int) -> int:
    with scratch_dir() as d:
        rc, kib, out = run_measured([sys.executable, "-m", "coldsnap", "pre-dump",
                                     "-t", str(pid), "-D", str(d / "img")])
    if rc:
        raise RuntimeError(f"coldsnap pre-dump failed ({rc}): {out.strip()}")
    return kib


def interpreter_rss() -> int:
    rc, kib, out = run_measured([sys.executable, "-c", "import coldsnap.dump.predump"])
    if rc:
        raise RuntimeError(f"import failed: {out.strip()}")
    return kib


# ----------------------------------------------------------------------------- runs

@dataclass
class SizeResult:
    size: int
    runs: int
    pages_plan: int = 0
    plan_ranges: int = 0
    live: list = field(default_factory=list)     # DumpStats
    frozen: list = field(default_factory=list)   # DumpStats
    readv: list = field(default_factory=list)    # dicts from plain_readv
    readv_write: list = field(default_factory=list)
    readv_overwrite: list = field(default_factory=list)
    scan_ioctl: list = field(default_factory=list)   # ns
    scan_read: list = field(default_factory=list)    # ns
    rss_kib: list = field(default_factory=list)


def one_predump(pid: int, mode: str, bufsize: int):
    with scratch_dir() as d:
        return coldsnap.pre_dump(pid, d / "img", mode=mode, buffer_size=bufsize)


def timed_scan(pid: int, method: str) -> int:
    vmas = classify_all(read_maps(pid))
    t = time.perf_counter_ns()
    _, used = scan_saved_pages(pid, vmas, method)
    ns = time.perf_counter_ns() - t
    assert used == method, (used, method)
    return ns


def _write_passes(res: SizeResult, pid: int, plan_batches, bufsize: int) -> None:
    with scratch_dir() as d:
        res.readv_write.append(plain_readv(pid, plan_batches, bufsize, d / "pages.img"))
        res.readv_overwrite.append(plain_readv(pid, plan_batches, bufsize, d / "pages.img",
                                               overwrite=True))


def bench_size(res: SizeResult, pid: int, bufsize: int, with_rss: bool, rss_runs: int,
               log) -> None:
    plan, _ = page_plan(pid)
    res.pages_plan = plan.nr_pages
    res.plan_ranges = len(plan.starts)
    plan_batches = batches(plan, bufsize)
    # One unmeasured pass of each kind: first-call costs (imports, numpy paths, page tables
    # of the bench process, tmpfs first touch) stay out of the medians.
    one_predump(pid, "live", bufsize)
    plain_readv(pid, plan_batches, bufsize)
    for r in range(res.runs):
        # Alternate the order each round (ABBA) so no variant always follows the same one
        # (e.g. always lands right after 4 GiB of tmpfs was freed).
        steps = [
            lambda: res.live.append(one_predump(pid, "live", bufsize)),
            lambda: res.frozen.append(one_predump(pid, "frozen", bufsize)),
            lambda: res.readv.append(plain_readv(pid, plan_batches, bufsize)),
            lambda: _write_passes(res, pid, plan_batches, bufsize),
            lambda: res.scan_ioctl.append(timed_scan(pid, "ioctl")),
            lambda: res.scan_read.append(timed_scan(pid, "read")),
        ]
        for step in (steps if r % 2 == 0 else steps[::-1]):
            step()
        if with_rss and r < rss_runs:
            res.rss_kib.append(child_predump_rss(pid))
        lv, fz = res.live[-1], res.frozen[-1]
        log(f"  {size_name(res.size)} run {r + 1}/{res.runs}: frozen live {lv.frozen_time / 1e3:.2f} ms"
            f" / frozen {fz.frozen_time / 1e3:.1f} ms, drain live "
            f"{(lv.memdump_time + lv.memwrite_time) / 1e3:.0f} ms, readv "
            f"{res.readv[-1]['ns'] / 1e6:.0f} ms")


# ----------------------------------------------------------------------------- report

def gbps(nbytes: float, ns: float) -> float:
    return nbytes / ns if ns else float("nan")   # bytes per ns == GB/s


def drain_gbps(s) -> float:
    return gbps(s.pages_written * 4096, (s.memdump_time + s.memwrite_time) * 1e3)


def ms(us: float) -> str:
    return f"{us / 1e3:.2f}"


def report(results: list[SizeResult], py_rss_kib: int, meta: dict) -> str:
    L = []
    L.append(SECTION)
    L.append("")
    L.append(f"Command: `{meta['cmd']}`  ")
    L.append(f"coldsnap: {meta['rev']}  ")
    L.append(f"Date: {meta['date']}; kernel `{meta['uname']}`; {meta['cpus']} CPUs; "
             f"THP `{meta['thp']}`; Python {platform.python_version()}; drain buffer "
             f"{meta['bufsize'] >> 20} MiB; images on tmpfs (/dev/shm).  ")
    L.append("Target: C program (bench/target.c) with SIZE of private anonymous memory, one byte "
             "written per page, idle in read(0). Variants interleaved within each round; "
             "all figures are medians over the rounds (n per row).")
    L.append("")
    L.append("### Frozen window")
    L.append("")
    L.append("| size | n | pages | live frozen ms | live plan ms | "
             "frozen-mode frozen ms | frozen / live | seize ms (live) | CRIU 4.2 frozen ms read / splice |")
    L.append("|---|---|---|---|---|---|---|---|---|")
    for r in results:
        lf = median([s.frozen_time for s in r.live])
        ls = median([s.scan_time for s in r.live])
        ff = median([s.frozen_time for s in r.frozen])
        seize = median([s.freezing_time for s in r.live])
        ref = CRIU_REF.get(r.size)
        L.append(f"| {size_name(r.size)} | {r.runs} | {median([s.pages_written for s in r.live]):.0f} "
                 f"| {spread([s.frozen_time for s in r.live], ms)} | {ms(ls)} "
                 f"| {spread([s.frozen_time for s in r.frozen], ms)} | {ff / lf:.0f}x | {ms(seize)} | "
                 f"{f'{ref[0]} / {ref[1]}' if ref else '-'} |")
    L.append("")
    skipped = sum(s.pages_skipped for r in results for s in r.live + r.frozen)
    L.append("Frozen times: median (min–max). \"live plan\" is the planner's whole time "
             "(stats scan_time): maps and the page scan inside the freeze, then the resume and "
             "the plan's arithmetic after it, so it may exceed the frozen window. \"seize\" "
             f"(freezing_time) comes before the window. Pages skipped over all pre-dumps: {skipped}.")
    L.append("")
    L.append("### Drain throughput")
    L.append("")
    L.append("| size | live drain GB/s | live memdump ms / memwrite ms | frozen-mode drain GB/s "
             "| plain readv GB/s | **live / plain readv** | live memdump / plain readv "
             "| readv+write GB/s (read ms / write ms) | live / readv+write "
             "| readv+overwrite GB/s (read ms / write ms) |")
    L.append("|---|---|---|---|---|---|---|---|---|---|")
    for r in results:
        live_g = median([drain_gbps(s) for s in r.live])
        froz_g = median([drain_gbps(s) for s in r.frozen])
        plain_g = median([gbps(d["bytes"], d["ns"]) for d in r.readv])
        copy_g = median([gbps(s.pages_written * 4096, s.memdump_time * 1e3) for s in r.live])
        rw_g = median([gbps(d["bytes"], d["ns"]) for d in r.readv_write])
        ow_g = median([gbps(d["bytes"], d["ns"]) for d in r.readv_overwrite])

        def split(ds):
            return (f"({median([d['read_ns'] for d in ds]) / 1e6:.0f} / "
                    f"{median([d['write_ns'] for d in ds]) / 1e6:.0f})")
        g2 = lambda x: f"{x:.2f}"
        L.append(f"| {size_name(r.size)} | {spread([drain_gbps(s) for s in r.live], g2)} | "
                 f"{ms(median([s.memdump_time for s in r.live]))} / "
                 f"{ms(median([s.memwrite_time for s in r.live]))} | {froz_g:.2f} | "
                 f"{spread([gbps(d['bytes'], d['ns']) for d in r.readv], g2)} | "
                 f"**{100 * live_g / plain_g:.0f}%** | {100 * copy_g / plain_g:.0f}% | "
                 f"{rw_g:.2f} {split(r.readv_write)} | {100 * live_g / rw_g:.0f}% | "
                 f"{ow_g:.2f} {split(r.readv_overwrite)} |")
    L.append("")
    L.append("GB/s = 10^9 bytes/s. coldsnap's drain = pages_written*4096 / (memdump+memwrite); "
             "the plain loops copy the same plan, cut to the same buffer size, without Python "
             "work between calls (target: live >= 80% of plain readv). \"live memdump / plain "
             "readv\" compares the copying part alone (memdump_time). readv+write writes to a "
             "new tmpfs file as coldsnap does; readv+overwrite writes the same bytes again over "
             "that file, whose pages tmpfs already holds.")
    L.append("")
    L.append("### Scan: PAGEMAP_SCAN ioctl vs /proc/PID/pagemap read")
    L.append("")
    L.append("| size | ioctl ms | read ms | read / ioctl |")
    L.append("|---|---|---|---|")
    for r in results:
        si, sr = median(r.scan_ioctl), median(r.scan_read)
        L.append(f"| {size_name(r.size)} | {si / 1e6:.2f} | {sr / 1e6:.2f} | {sr / si:.1f}x |")
    L.append("")
    L.append("### Peak RSS of `python3 -m coldsnap pre-dump`")
    L.append("")
    for r in results:
        if r.rss_kib:
            L.append(f"- pre-dump of {size_name(r.size)} (live, default buffer): median "
                     f"{median(r.rss_kib) / 1024:.1f} MiB, max {max(r.rss_kib) / 1024:.1f} MiB "
                     f"over {len(r.rss_kib)} runs (target < 64 MiB)")
    L.append(f"- interpreter baseline `python3 -c 'import coldsnap.dump.predump'`: "
             f"{py_rss_kib / 1024:.1f} MiB")
    L.append("")
    L.append("Peak RSS is ru_maxrss of that child alone (wait4).")
    L.append("")
    return "\n".join(L)


# ----------------------------------------------------------------------------- main

def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="256M,1G,4G")
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--runs-large", type=int, default=None,
                    help="rounds for sizes of 4 GiB and more (default: --runs)")
    ap.add_argument("--rss-runs", type=int, default=3, help="RSS child runs (largest size)")
    ap.add_argument("--buffer-size", type=parse_size, default=DEFAULT_BUFFER)
    ap.add_argument("--out", default=str(BENCH / "RESULTS.md"))
    args = ap.parse_args(argv)
    sizes = [parse_size(s) for s in args.sizes.split(",") if s]
    log = lambda m: print(m, file=sys.stderr, flush=True)

    # A SIGTERM/SIGHUP must unwind through the finally below so the targets are reaped.
    unwind_on_signals()

    build_target()
    warm_up()
    targets: list[subprocess.Popen] = []
    results: list[SizeResult] = []
    t_start = time.monotonic()
    try:
        for size in sizes:
            t = time.monotonic()
            targets.append(start_target(size))
            log(f"target {size_name(size)}: pid {targets[-1].pid}, touched in "
                f"{time.monotonic() - t:.1f} s")
        py_rss = interpreter_rss()
        largest = max(sizes)
        for size, p in zip(sizes, targets):
            runs = args.runs_large if args.runs_large and size >= 4 << 30 else args.runs
            res = SizeResult(size, runs)
            bench_size(res, p.pid, args.buffer_size, size == largest, args.rss_runs, log)
            results.append(res)
            if p.poll() is not None:
                raise RuntimeError(f"target {p.pid} died during the benchmark")
    finally:
        for p in targets:
            stop_target(p)
    log(f"total {time.monotonic() - t_start:.0f} s")

    meta = run_meta("predump.py", argv, bufsize=args.buffer_size)
    section = report(results, py_rss, meta)
    print(section)
    write_section(Path(args.out), section, SECTION)
    return 0


if __name__ == "__main__":
    sys.exit(main())
