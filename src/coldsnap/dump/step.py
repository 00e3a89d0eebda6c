"""One pre-dump step of a process tree: plan which pages of each process to save (holding
the tree as the mode says, once for all of it), drain them into the images' page sink while
the processes run, write the small images and the stats. A single process is a tree of one."""
from __future__ import annotations

import time

from ..errors import TargetError
from ..images.directory import ImageDir
from ..kernel.procfs import alive, list_tids
from ..memory.drain import DEFAULT_BUFFER, Drain, DrainStats
from ..memory.plan import PagePlan
from ..memory.ranges import Ranges
from ..memory.sink import PageSink, PagemapKey, PlanFeed, SinkCounts
from ..seize.freezer import freeze_tree
from ..seize.tree import Tree, read_tree
from .metadata import write_inventory, write_mm, write_stats, write_tree_images
from .plan import Planned, Planner
from .sink import LocalSession, PageSession
from .stats import DumpStats, Times


def read_running_tree(root: int, pids: list[int]) -> Tree:
    """The model of PIDS (running) for pstree.img; a process below the root that exits
    meanwhile is left out."""
    while True:
        try:
            return read_tree(root, {pid: list_tids(pid) for pid in pids})
        except ProcessLookupError:
            gone = [p for p in pids if p != root and not alive(p)]
            if not gone:
                raise
            pids = [p for p in pids if p not in gone]


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


def save_step(planners: dict[int, Planner], imgdir: ImageDir, mode: str, *,
              covered: dict[int, Ranges] | None = None, buffer_size: int = DEFAULT_BUFFER,
              times: Times | None = None, freeze_cgroup: str | None = None,
              pages: PageSession | None = None) -> DumpStats:
    """One pre-dump of the planners' processes (the root first, parents before children)
    into IMGDIR (not committed): plan, drain, images. covered: pid -> pages its parent chain
    holds (tracked plans only).

    mode "nofreeze" never holds a process; "live" holds the tree once while planning (uffd:
    only for each process's collect; soft-dirty: collect and scan; none: the scan) and
    copies after; "frozen" copies before resuming (both through FREEZE_CGROUP's freezer
    first when given: seize/freezer.py). The stats count every process (their
    vmas and scan method are the root's); the root's parked fd is uffd_fd, and a tree of
    more than one lists every parked fd (cs_tree_uffd_fds). pages: where the pages go
    (default: IMGDIR itself)."""
    times, covered = times or Times(), covered or {}
    root = next(iter(planners))
    planned: dict[int, Planned] = {}
    drained: dict[int, tuple[DrainStats, SinkCounts]] = {}
    with (pages or LocalSession(None)).sink(imgdir) as sink:
        def drain_all() -> None:
            for pid, p in list(planned.items()):
                try:
                    drained[pid] = drain_plan(pid, p.plan, sink, buffer_size, times)
                except TargetError:
                    if pid == root or alive(pid):
                        raise
                    sink.close()        # exited since its plan: its pages are gone, none saved
                    del planned[pid]

        if mode == "nofreeze":
            for pid, planner in planners.items():
                try:
                    planned[pid] = planner.plan(covered.get(pid), times=times)
                except TargetError:
                    if pid == root or alive(pid):
                        raise           # one below the root exited since the listing: nothing to save
        else:
            with freeze_tree(root, cgroup=freeze_cgroup) as held:
                for pid, planner in planners.items():
                    if pid not in held.tasks:
                        continue        # gone since the tree was listed: nothing to save
                    resume = "" if mode == "frozen" else "collect" if planner.track == "uffd" else "scan"
                    planned[pid] = planner.plan(covered.get(pid), task=held.task(pid),
                                                resume_after=resume, times=times)
                if mode == "frozen":
                    drain_all()
            times.freezing += held.seize_ns
            times.frozen += max(0, (held.frozen_ns or 0) - held.seize_ns)
        if not drained:
            drain_all()
    counts = SinkCounts()
    for _, c in drained.values():
        counts.add(c)
    stats = DumpStats(mode=mode, uffd_fd=planners[root].parked_fd)
    plans = [planned[root].plan] + [p.plan for pid, p in planned.items() if pid != root]
    stats.record(plans, counts, times, syscalls=sum(d.syscalls for d, _ in drained.values()))
    tree = read_running_tree(root, list(planned))
    for gone in set(planned) - set(tree.tasks):
        del planned[gone]
    for pid, p in planned.items():
        write_mm(imgdir, pid, p.plan.vmas, p.stat)
    write_tree_images(tree, imgdir)
    write_inventory(imgdir, pre_dump=True)
    tree_fds = [(pid, planners[pid].parked_fd) for pid in planned
                if planners[pid].parked_fd >= 0] if len(planners) > 1 else []
    # which userfaultfd each is (its inode, one per instance): a later run adopts the fd only
    # if it is still this one, not another tracking parked at the same number since
    inos = [(pid, planners[pid].parked_ino) for pid in planned if planners[pid].parked_fd >= 0]
    write_stats(imgdir, stats, tree_uffd_fds=tree_fds, uffd_inos=inos)
    return stats
