"""One pre-dump: freeze to learn which pages to save, resume, drain them into images."""
from __future__ import annotations

import time
from pathlib import Path

from ..errors import CsError
from ..kernel.procfs import read_maps, read_stat
from ..memory.drain import DEFAULT_BUFFER, Drain
from ..memory.ranges import Ranges
from ..memory.scan import scan_saved_pages, warm_up
from ..memory.vma import PROT_READ, Vma, classify_all
from ..seize.freezer import freeze
from ..images.directory import ImageDir
from ..images.pages import PagemapWriter
from .metadata import write_inventory, write_mm, write_stats
from .sink import ImageSink
from .stats import DumpStats

MODES = ("live", "frozen")


def _us(ns: int) -> int:
    return ns // 1000


def unreadable_ranges(vmas: list[Vma]) -> Ranges:
    pairs = [(v.start, v.end) for v in vmas if v.saves_pages and not v.prot & PROT_READ]
    return Ranges.of(pairs) if pairs else Ranges.empty()


def write_metadata(imgdir: ImageDir, pid: int, vmas: list[Vma], stat, stats: DumpStats) -> None:
    """The small images of a pre-dump besides the pages: mm, inventory, stats."""
    write_mm(imgdir, pid, vmas, stat)
    write_inventory(imgdir, pre_dump=True)
    write_stats(imgdir, stats)


def pre_dump(pid: int, images_dir: str | Path, *, mode: str = "live",
             buffer_size: int = DEFAULT_BUFFER, scan: str = "auto",
             prev_images_dir: str | Path | None = None) -> DumpStats:
    """Save the memory of process `pid` into a new images directory; returns the stats.

    mode "live" resumes the task as soon as the page plan is known and copies pages while it
    runs; "frozen" copies them before resuming (the baseline the live mode must beat).
    """
    if mode not in MODES:
        raise CsError(f"unknown pre-dump mode {mode!r} (choose from {', '.join(MODES)})")
    stats = DumpStats(mode=mode)
    warm_up()
    with ImageDir.create(images_dir, parent=prev_images_dir) as imgdir:
        t0 = time.perf_counter_ns()
        with freeze(pid) as task:
            t_frozen = time.perf_counter_ns()
            vmas = classify_all(read_maps(pid))
            stat = read_stat(pid)
            plan, stats.scan_method = scan_saved_pages(pid, vmas, scan)
            t_scanned = time.perf_counter_ns()
            unreadable = plan.intersect(unreadable_ranges(vmas))
            plan = plan.subtract(unreadable)
            sink = ImageSink(PagemapWriter(imgdir, pid), unreadable=unreadable)
            drain = Drain(pid, sink, buffer_size)
            t_resumed = 0
            try:
                if mode == "live":
                    task.resume()
                    t_resumed = time.perf_counter_ns()
                t_drain = time.perf_counter_ns()
                dstats = drain.run(plan)
                t_drained = time.perf_counter_ns()
            finally:
                drain.close()
        t_resumed = t_resumed or time.perf_counter_ns()
        sink.close()
        stats.freezing_time = _us(t_frozen - t0)
        stats.frozen_time = _us(t_resumed - t_frozen)
        stats.scan_time = _us(t_scanned - t_frozen)
        stats.memdump_time = _us(t_drained - t_drain - dstats.sink_ns)
        stats.memwrite_time = _us(dstats.sink_ns)
        stats.pages_scanned = sum(v.size for v in vmas if v.saves_pages) >> 12
        stats.pages_written = dstats.pages_read
        stats.pages_skipped = dstats.pages_skipped + unreadable.nr_pages
        stats.vmas = len(vmas)
        stats.read_syscalls = dstats.syscalls
        write_metadata(imgdir, pid, vmas, stat, stats)
    return stats
