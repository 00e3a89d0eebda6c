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

import time
from pathlib import Path
from typing import Callable

from ..errors import CsError
from ..images.chain import PageChain
from ..images.directory import ImageDir
from ..images.pages import PagemapWriter
from ..kernel.procfs import read_maps, read_stat
from ..memory.drain import DEFAULT_BUFFER, Drain
from ..memory.ranges import Ranges
from ..memory.scan import scan_saved_pages, warm_up
from ..kernel.features import Features, probe
from ..memory.softdirty import SoftDirtyTracker
from ..memory.tracking import TrackingRefused, UffdTracker
from ..memory.vma import classify_all
from ..seize.freezer import freeze
from ..seize.remote import frozen_calls
from .predump import unreadable_ranges, write_metadata
from .sink import ImageSink
from .stats import DumpStats

TRACKS = ("uffd", "soft-dirty", "none")


def choose_track(feats: Features) -> str:
    """The tracking a series uses by default: userfaultfd where it works, else soft-dirty."""
    if feats.uffd_wp_async and feats.pidfd_getfd and feats.pagemap_scan:
        return "uffd"
    return "soft-dirty" if feats.soft_dirty else "none"


def check_track(track: str, feats: Features | None = None) -> None:
    """One-line refusal of a tracking this kernel cannot do (probed only when it matters)."""
    if track not in TRACKS:
        raise CsError(f"unknown tracking {track!r} (choose from {', '.join(TRACKS)})")
    if track == "soft-dirty" and not (feats or probe()).soft_dirty:
        raise CsError("this kernel has no soft-dirty bits (CONFIG_MEM_SOFT_DIRTY): "
                      "use --track-mem uffd or none")


def _us(ns: int) -> int:
    return ns // 1000


def covered_by_chain(parent_dir: Path | None, pid: int) -> Ranges:
    """Pages the images chain at PARENT_DIR holds for PID (data, here or further up)."""
    if parent_dir is None:
        return Ranges.empty()
    with PageChain(parent_dir, pid) as chain:
        s, e = chain.covered_ranges()
    return Ranges(s.copy(), e.copy()).merged()


class PreDumpSeries:
    """Iterative pre-dumps of one task into base_dir/1, base_dir/2, ..."""

    def __init__(self, pid: int, base_dir: str | Path, *, track: str = "uffd",
                 buffer_size: int = DEFAULT_BUFFER, park: bool = False, freeze_plan: bool = False):
        check_track(track)
        # freeze_plan: read the written pages and scan while the task is frozen (the "live"
        # mode with tracking) instead of while it runs (nofreeze)
        self.freeze_plan = freeze_plan
        self.pid = pid
        self.base = Path(base_dir)
        self.requested = track
        self.track = track
        self.buffer_size = buffer_size
        self.park = park                 # leave the uffd in the target for a later run
        self.tracker: UffdTracker | None = None
        self.soft: SoftDirtyTracker | None = None
        self.n = 0
        self.prev: Path | None = None
        self.refused: str = ""          # why tracking fell back to none, if it did
        self.untracked = Ranges.empty()  # VMAs of the last iteration that could not be tracked
        self.dirty = Ranges.empty()      # what the last collect reported (tests, diagnostics)

    def close(self) -> None:
        if self.tracker is not None:
            self.tracker.close()
            self.tracker = None
        if self.soft is not None:
            self.soft.close()
            self.soft = None

    def __enter__(self) -> "PreDumpSeries":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _fall_back(self, why: TrackingRefused) -> None:
        self.close()
        self.track, self.refused = "none", str(why)

    def _plan_running(self, stats: DumpStats) -> tuple:
        """(vmas, stat, dirty or None = all, present) while the task runs (uffd or none)."""
        vmas, stat, dirty = self._collect(stats)
        return vmas, stat, dirty, self._present(vmas, stats)

    def _collect(self, stats: DumpStats) -> tuple:
        """(vmas, stat, the pages written since the last collect, or None = all of them)."""
        vmas = classify_all(read_maps(self.pid))
        stat = read_stat(self.pid)
        dirty = None                      # None: everything present is to be read
        if self.tracker is not None:
            try:
                # the first collect registers (and resets) everything: all of it is dirty
                dirty, self.untracked = self.tracker.collect(vmas)
            except TrackingRefused as e:
                self._fall_back(e)
                dirty = None
            if self.n == 0:
                dirty = None
        stats.track_backend = self.track
        if self.park and self.tracker is not None:
            stats.uffd_fd = self.tracker.arm_stats.target_fd
        return vmas, stat, dirty

    def _present(self, vmas: list, stats: DumpStats) -> Ranges:
        present, stats.scan_method = scan_saved_pages(self.pid, vmas)
        if self.tracker is not None:
            present = self.tracker.drop_markers(present)
        return present

    def _plan_held(self, stats: DumpStats) -> tuple:
        """The collect (read and re-arm the written pages) inside one freeze; the page scan
        after the resume, as in nofreeze (a page written after the collect is read now or
        reported next time: the series is exact either way)."""
        armed_ns = stats.frozen_time * 1000             # the arming freeze of a first step
        with freeze(self.pid) as task:
            vmas, stat, dirty = self._collect(stats)
            task.resume()
        stats.mode = "live"
        stats.frozen_time = (armed_ns + (task.frozen_ns or 0)) // 1000
        return vmas, stat, dirty, self._present(vmas, stats)

    def _plan_frozen(self, stats: DumpStats) -> tuple:
        """The same with soft-dirty bits: read and cleared in one freeze, then resume."""
        stats.mode = "live"
        t0 = time.perf_counter_ns()
        with freeze(self.pid) as task:
            t_frozen = time.perf_counter_ns()
            vmas = classify_all(read_maps(self.pid))
            stat = read_stat(self.pid)
            if self.soft is None:
                self.soft = SoftDirtyTracker(self.pid)
            if self.n == 0:
                self.soft.reset()             # from now on the bits mean "written since"
                dirty = None
            else:
                dirty = self.soft.collect(vmas)
            present, stats.scan_method = scan_saved_pages(self.pid, vmas)
            task.resume()
        stats.track_backend = "soft-dirty"
        stats.freezing_time = _us(t_frozen - t0)
        stats.frozen_time = _us(task.frozen_ns or 0)
        return vmas, stat, dirty, present

    def step(self, path: Path | None = None) -> DumpStats:
        """One more pre-dump (into base_dir/N, or `path`); returns its stats."""
        stats = DumpStats(mode="nofreeze")
        warm_up()
        if self.n == 0 and path is None:
            self.base.mkdir(parents=True, exist_ok=True)
        if self.track == "uffd" and self.tracker is None and self.n == 0:
            tracker = UffdTracker()
            try:
                arm = tracker.arm(self.pid, lambda: frozen_calls(self.pid), park=self.park)
                self.tracker = tracker
                stats.freezing_time, stats.frozen_time = _us(arm.freezing_ns), _us(arm.frozen_ns)
            except TrackingRefused as e:
                self._fall_back(e)

        path = path or self.base / str(self.n + 1)
        with ImageDir.create(path, parent=self.prev) as imgdir:
            t0 = time.perf_counter_ns()
            if self.track == "soft-dirty":
                vmas, stat, dirty, present = self._plan_frozen(stats)
            else:
                vmas, stat, dirty, present = self._plan_held(stats) if self.freeze_plan \
                    else self._plan_running(stats)
            t_scanned = time.perf_counter_ns()
            if dirty is None:
                to_read = present
            else:
                self.dirty = dirty
                uncovered = present.subtract(covered_by_chain(self.prev, self.pid))
                to_read = present.intersect(dirty.union(uncovered))
            in_parent = present.subtract(to_read)
            unreadable = to_read.intersect(unreadable_ranges(vmas))
            to_read = to_read.subtract(unreadable)
            sink = ImageSink(PagemapWriter(imgdir, self.pid), in_parent=in_parent, unreadable=unreadable)
            with Drain(self.pid, sink, self.buffer_size) as drain:
                drain.stats.pages_skipped += unreadable.nr_pages
                t_drain = time.perf_counter_ns()
                dstats = drain.run(to_read)
                t_drained = time.perf_counter_ns()
            sink.close()
            stats.scan_time = _us(t_scanned - t0)
            stats.memdump_time = _us(t_drained - t_drain - dstats.sink_ns)
            stats.memwrite_time = _us(dstats.sink_ns)
            stats.pages_scanned = sum(v.size for v in vmas if v.saves_pages) >> 12
            stats.pages_written = dstats.pages_read
            stats.pages_skipped = dstats.pages_skipped
            stats.pages_skipped_parent = in_parent.nr_pages
            stats.vmas = len(vmas)
            stats.read_syscalls = dstats.syscalls
            write_metadata(imgdir, self.pid, vmas, stat, stats)
        self.n += 1
        self.prev = path
        return stats


def pre_dump_series(pid: int, base_dir: str | Path, iterations: int, *, track: str = "uffd",
                    buffer_size: int = DEFAULT_BUFFER,
                    between: Callable[[int], None] | None = None) -> list[DumpStats]:
    """Write base_dir/1 .. base_dir/ITERATIONS, each a full images dir whose `parent` is the
    previous one; returns their stats. `between(i)`, if given, runs after iteration i
    (1-based) and before the next one (tests use it to make the target write)."""
    if iterations < 1:
        raise CsError("a pre-dump series needs at least one iteration")
    out: list[DumpStats] = []
    with PreDumpSeries(pid, base_dir, track=track, buffer_size=buffer_size) as series:
        for i in range(1, iterations + 1):
            out.append(series.step())
            if between is not None and i < iterations:
                between(i)
    return out


def parked_uffd_fd(prev: ImageDir, pid: int) -> int | None:
    """The userfaultfd a tracked pre-dump of PID parked in it, if PREV's stats name one."""
    s = prev.read("stats-dump", missing_ok=True)
    if s and s[0].dump.HasField("cs_uffd_fd") and prev.pagemap_ids() == [pid]:
        return s[0].dump.cs_uffd_fd
    return None


def pre_dump_tracked(pid: int, images_dir: str | Path, *, prev_images_dir: str | Path | None = None,
                     buffer_size: int = DEFAULT_BUFFER, track: str = "uffd",
                     freeze_plan: bool = False) -> DumpStats:
    """One pre-dump whose write tracking outlives this coldsnap process.

    The first run freezes the task only to create a userfaultfd in it and leaves that fd
    parked there (its number is recorded in the stats image); a run given the previous
    images as parent takes the parked fd back with pidfd_getfd and never freezes the task.
    `coldsnap untrack PID` closes it. Without parked tracking it starts afresh.

    With track="soft-dirty" nothing is parked: the bits cleared by the previous run say what
    was written since (a freeze per run reads and clears them).
    """
    images_dir = Path(images_dir)
    if track == "soft-dirty":
        with PreDumpSeries(pid, images_dir.parent, track=track, buffer_size=buffer_size) as series:
            if prev_images_dir is not None:
                series.n, series.prev = 1, Path(prev_images_dir)
            return series.step(images_dir)
    with PreDumpSeries(pid, images_dir.parent, track="uffd", buffer_size=buffer_size, freeze_plan=freeze_plan,
                       park=True) as series:
        if prev_images_dir is not None:
            fd = parked_uffd_fd(ImageDir.open(prev_images_dir, follow_parent=False), pid)
            if fd is not None:
                tracker = UffdTracker()
                try:
                    tracker.adopt(pid, fd, classify_all(read_maps(pid)))
                    series.tracker, series.n = tracker, 1
                except TrackingRefused:
                    tracker.close()
            series.prev = Path(prev_images_dir)
        return series.step(images_dir)
