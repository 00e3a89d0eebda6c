"""A series of pre-dumps base/1, base/2, ... each linked to the previous one by `parent`.

With track="uffd" the task is frozen once, only to arm the write tracker (two injected
system calls); every iteration then runs while the task runs:

    maps -> register new VMAs, collect written pages (re-protected atomically)
         -> scan present pages -> to_read = present & (dirty | not covered by the parent)
         -> drain to_read, write present - to_read as PE_PARENT runs

A page is always re-protected before it is read, so a write after the read shows up in the
next collect. Pages the drain could not read are absent from that image, hence not covered
by the parent, hence read again next time. With track="none" every iteration saves every
present page (still without freezing).
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable

from ..errors import CsError, TargetError
from ..kernel.libc import SYS
from ..kernel.procfs import alive
from ..images.directory import ImageDir
from ..kernel.features import probe
from ..memory.drain import DEFAULT_BUFFER
from ..memory.plan import PagePlan
from ..memory.scan import warm_up
from .plan import Planner, chain_parked_fds, check_track, default_track
from .stats import DumpStats, Times
from .sink import LOCAL, PageTarget
from ..seize.remote import frozen_calls
from ..seize.tree import list_tree
from .step import save_step


class PreDumpSeries:
    """Iterative pre-dumps of the tree under one task into base_dir/1, base_dir/2, ...

    Each process has its own planner (its own tracking); the tree is listed again at every
    step: a process that appeared gets a fresh planner (every page saved, no parent pages),
    one that is gone drops its planner."""

    def __init__(self, pid: int, base_dir: str | Path, *, track: str = "uffd",
                 buffer_size: int = DEFAULT_BUFFER, park: bool = False, freeze_plan: bool = False,
                 scan: str = "auto", freeze_cgroup: str | None = None, pages: PageTarget = LOCAL):
        check_track(track)
        self.freeze_cgroup = freeze_cgroup          # live mode: hold the tree through it
        self.pages = pages              # where each step's pages go
        self.pid = pid
        self.base = Path(base_dir)
        self.buffer_size = buffer_size
        self.track, self.park, self.scan = track, park, scan   # park: leave uffds for a later run
        self.planners: dict[int, Planner] = {}
        self.planner_of(pid)
        # freeze_plan: collect the written pages while the tree is held (the "live" mode
        # with tracking) instead of while it runs (nofreeze); soft-dirty always does
        self.mode = "live" if freeze_plan or track == "soft-dirty" else "nofreeze"
        self.n = 0
        self.prev: Path | None = None
        self.plan: PagePlan | None = None   # the root's last plan (tests, diagnostics)

    @property
    def planner(self) -> Planner:
        """The root's planner."""
        return self.planners[self.pid]

    def planner_of(self, pid: int) -> Planner:
        if pid not in self.planners:
            self.planners[pid] = Planner(pid, self.track, park=self.park, scan=self.scan)
        return self.planners[pid]

    def close(self) -> None:
        for planner in self.planners.values():
            planner.close()

    def unpark(self) -> None:
        """After a run that failed: close the userfaultfd each planner parks in its process.
        Its collect may have re-protected pages that no committed image holds, so a later
        run adopting it would skip them (silently stale pages in its chain); a run after this
        one finds nothing parked and saves every page. A process that is gone, or cannot be
        frozen now, is left as it is (the original error matters more)."""
        for pid, planner in self.planners.items():
            fd = planner.parked_fd
            if fd < 0:
                continue
            try:
                with frozen_calls(pid) as rc:
                    rc.call(SYS.close, fd)
            except (CsError, OSError):
                pass

    def __enter__(self) -> "PreDumpSeries":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _current(self, times: Times) -> dict[int, Planner]:
        """The planners of the processes in the tree now (parents first), armed."""
        pids = list_tree(self.pid)
        for gone in set(self.planners) - set(pids):
            self.planners.pop(gone).close()
        for pid in list(pids):
            planner = self.planner_of(pid)
            if planner.track == "uffd" and planner.uffd is None and planner.fresh:
                try:
                    planner.arm(times)
                except TargetError:
                    if pid == self.pid or alive(pid):
                        raise
                    self.planners.pop(pid).close()      # exited since the listing
                    pids.remove(pid)
        return {pid: self.planners[pid] for pid in pids}

    def step(self, path: Path | None = None) -> DumpStats:
        """One more pre-dump (into base_dir/N, or `path`); returns its stats."""
        times = Times()
        if self.n == 0 and path is None:
            self.base.mkdir(parents=True, exist_ok=True)
        path = path or self.base / str(self.n + 1)
        made = False
        try:
            # the images' place first: a refused -D (not empty, a file...) arms nothing in the tree
            with self.pages.session(path, self.prev) as pages, ImageDir.create(path, parent=self.prev) as imgdir:
                made = True
                planners = self._current(times)
                # soft-dirty's collect decodes the pagemap with numpy, imported before the
                # freeze; a first step (every planner fresh) collects nothing and goes without it
                warm_up(numpy=any(not p.fresh and p.track == "soft-dirty" for p in planners.values()))
                # what the parent chain holds, read before any freeze (only a tracked plan needs it)
                covered = {pid: pages.covered(pid) for pid, p in planners.items()
                           if not p.fresh and p.track != "none"}
                stats = save_step(planners, imgdir, self.mode, covered=covered,
                                  buffer_size=self.buffer_size, times=times,
                                  freeze_cgroup=self.freeze_cgroup, pages=pages)
                pages.finish()          # a target sending images too (migrate) sends them now
        except BaseException:
            if made:
                self.unpark()       # no committed image names it: nothing of this run stays
            raise
        self.plan = self.planner.last
        self.n += 1
        self.prev = path
        return stats


def pre_dump_series(pid: int, base_dir: str | Path, iterations: int, *, track: str | None = None,
                    buffer_size: int = DEFAULT_BUFFER,
                    between: Callable[[int], None] | None = None, pages: PageTarget = LOCAL) -> list[DumpStats]:
    """Write base_dir/1 .. base_dir/ITERATIONS, each a full images dir whose `parent` is the
    previous one; returns their stats. `between(i)`, if given, runs after iteration i
    (1-based) and before the next one (tests use it to make the target write). track None:
    the tracking this kernel offers (dump/plan.py default_track)."""
    if iterations < 1:
        raise CsError("a pre-dump series needs at least one iteration")
    out: list[DumpStats] = []
    with PreDumpSeries(pid, base_dir, track=track or default_track(probe()), buffer_size=buffer_size,
                       pages=pages) as series:
        for i in range(1, iterations + 1):
            out.append(series.step())
            if between is not None and i < iterations:
                between(i)
    return out


def pre_dump_tracked(pid: int, images_dir: str | Path, *, prev_images_dir: str | Path | None = None,
                     buffer_size: int = DEFAULT_BUFFER, track: str = "uffd",
                     freeze_plan: bool = False, scan: str = "auto",
                     freeze_cgroup: str | None = None, pages: PageTarget = LOCAL) -> DumpStats:
    """One pre-dump whose write tracking outlives this coldsnap process.

    The first run freezes the task only to create a userfaultfd in it and leaves that fd
    parked there (its number is recorded in the stats image); a run given the previous
    images as parent takes the parked fd back with pidfd_getfd and never freezes the task.
    `coldsnap untrack PID` closes it. Without parked tracking it starts afresh.

    With track="soft-dirty" nothing is parked: the bits cleared by the previous run say what
    was written since (a freeze per run reads and clears them).
    """
    images_dir = Path(images_dir)
    prev = Path(prev_images_dir) if prev_images_dir is not None else None
    soft = track == "soft-dirty"
    with PreDumpSeries(pid, images_dir.parent, track="soft-dirty" if soft else "uffd",
                       buffer_size=buffer_size, freeze_plan=freeze_plan, park=not soft, scan=scan,
                       freeze_cgroup=freeze_cgroup, pages=pages) as series:
        if prev is not None:
            prev_dir = ImageDir.open(prev, follow_parent=False)
            parked = chain_parked_fds(prev_dir)
            for p in list_tree(pid):       # each process adopts its own tracking
                if soft:
                    if prev_dir.exists(f"pagemap-{p}.img"):
                        series.planner_of(p).fresh = False
                elif p in parked:
                    series.planner_of(p).adopt(parked[p])
            series.n = 0 if series.planner.fresh else 1
            series.prev = prev
        return series.step(images_dir)
