"""One pre-dump step: plan which pages to save (holding the task as its mode says), drain
them into the images' page sink while the task runs, write the small images and the stats."""
from __future__ import annotations

import time

from ..images.directory import ImageDir
from ..kernel.procfs import Stat
from ..memory.drain import DEFAULT_BUFFER, Drain, DrainStats
from ..memory.plan import PagePlan
from ..memory.sink import PageSink, PagemapKey, PlanFeed, SinkCounts
from ..memory.vma import Vma
from ..seize.freezer import freeze
from .metadata import write_inventory, write_mm, write_stats
from .plan import Planner
from .sink import ImageSink
from .stats import DumpStats, Times


def write_metadata(imgdir: ImageDir, pid: int, vmas: list[Vma], stat: Stat, stats: DumpStats) -> None:
    """The small images of a pre-dump besides the pages: mm, inventory, stats."""
    write_mm(imgdir, pid, vmas, stat)
    write_inventory(imgdir, pre_dump=True)
    write_stats(imgdir, stats)


def drain_plan(pid: int, plan: PagePlan, sink: PageSink, buffer_size: int,
               times: Times) -> tuple[DrainStats, SinkCounts]:
    """The plan's pages into the sink, as one pagemap of PID, copied from the running task."""
    sink.begin(PagemapKey(pid))
    feed = PlanFeed(sink, parent=plan.in_parent, skipped=plan.unreadable)
    t = time.perf_counter_ns()
    with Drain(pid, feed, buffer_size) as drain:
        dstats = drain.run(plan.to_read)
    counts = feed.finish()
    sink.end()
    times.copy += time.perf_counter_ns() - t
    times.sink += dstats.sink_ns
    return dstats, counts


def save_step(planner: Planner, imgdir: ImageDir, mode: str, *, covered=None,
              buffer_size: int = DEFAULT_BUFFER, times: Times | None = None) -> DumpStats:
    """One pre-dump of the planner's task into IMGDIR (not committed): plan, drain, images.

    mode "nofreeze" never holds the task; "live" holds it while planning (uffd: only for the
    collect; soft-dirty: collect and scan; none: the scan) and copies after; "frozen"
    copies before resuming."""
    pid, times = planner.pid, times or Times()
    sink = ImageSink(imgdir)
    with sink:
        if mode == "nofreeze":
            planned = planner.plan(covered, times=times)
            dstats, counts = drain_plan(pid, planned.plan, sink, buffer_size, times)
        else:
            with freeze(pid) as task:
                resume = "" if mode == "frozen" else "collect" if planner.track == "uffd" else "scan"
                planned = planner.plan(covered, task=task, resume_after=resume, times=times)
                if mode == "frozen":
                    dstats, counts = drain_plan(pid, planned.plan, sink, buffer_size, times)
            times.freezing += task.seize_ns
            times.frozen += task.held_ns or 0
            if mode != "frozen":
                dstats, counts = drain_plan(pid, planned.plan, sink, buffer_size, times)
    stats = DumpStats(mode=mode, uffd_fd=planner.parked_fd)
    stats.record(planned.plan, counts, times, syscalls=dstats.syscalls)
    write_metadata(imgdir, pid, planned.plan.vmas, planned.stat, stats)
    return stats
