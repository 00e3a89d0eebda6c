"""The page planner of every pre-dump mode and of the final dump, and the choice of a
pre-dump's mode and write tracking from what the kernel offers.

    planner = Planner(pid, track)        # owns the tracking: arm() / adopt(), close()
    planned = planner.plan(covered, task=held, resume_after="collect")   # .plan: a PagePlan

One plan, four steps: maps -> the tracking's collect (pages written since the last plan)
-> page scan -> memory/plan.py decide (read present ∩ (written ∪ not covered by the parent
chain), the rest PE_PARENT). The parent chain's coverage is read before any freeze, and
the decision itself runs after the resume. How long the task is held is the mode's business:

    mode      tracking     held for
    frozen    none         the plan and the copy (the baseline)
    live      none         the maps and the scan
    live      soft-dirty   the collect (read and clear the bits) and the scan
    live      uffd         the collect (read and re-arm written pages)
    nofreeze  uffd, none   nothing (a first uffd plan freezes once, to arm)
    dump      parked uffd  everything (the dump's own freeze)
"""
from __future__ import annotations

import os
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from ..errors import CsError
from ..images.chain import PageChain
from ..images.directory import ImageDir
from ..kernel.fdinfo import fdinfo_value
from ..kernel.features import Features, probe
from ..kernel.libc import SYS
from ..kernel.pagemap import open_pagemap
from ..kernel.procfs import Stat, read_maps, read_stat
from ..memory.plan import PagePlan, decide
from ..memory.ranges import Ranges
from ..memory.scan import scan_saved_and_guards
from ..memory.softdirty import SoftDirtyTracker
from ..memory.tracking import PARK_FD_MIN, TrackingRefused, UffdTracker, drop_wp_markers, parked_uffd_fds
from ..memory.vma import Vma, classify_all
from ..seize.freezer import FrozenTask
from ..seize.remote import frozen_calls
from .stats import Times

TRACKS = ("uffd", "soft-dirty", "none")
MODES = ("nofreeze", "live", "frozen")
# the pre-dump modes each tracking goes with, its default first
FITS = {"uffd": ("nofreeze", "live"), "soft-dirty": ("live",), "none": ("live", "frozen")}


class ModeMismatch(CsError):
    """A pre-dump mode asked with a tracking it does not go with."""


def default_track(feats: Features) -> str:
    """The tracking used unless asked otherwise: userfaultfd where it works, else soft-dirty."""
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


def choose_pre_dump(mode: str | None, track: str | None,
                    feats: Features | None = None, held: bool = False) -> tuple[str, str]:
    """(mode, tracking) of a single pre-dump from what was asked (None: not asked).

    uffd goes with nofreeze (or live: planned in a short freeze), soft-dirty with live (its
    bits are read in a short freeze), none with live or frozen. Unset, both follow what
    this kernel offers; a mismatch is refused in one line. held (--freeze-cgroup): the tree
    is held, so not nofreeze."""
    if held and mode == "nofreeze":
        raise ModeMismatch("--freeze-cgroup holds the tree: it goes with --pre-dump-mode live or frozen")
    if mode is not None and mode not in MODES:
        raise ModeMismatch(f"unknown pre-dump mode {mode!r} (choose from {', '.join(MODES)})")
    if track is None:
        track = "uffd" if mode == "nofreeze" else "none" if mode else default_track(feats or probe())
    if track not in TRACKS:
        check_track(track, feats)
    fits = tuple(m for m in FITS[track] if not (held and m == "nofreeze"))
    if mode is None:
        mode = fits[0]
    elif mode not in fits:
        raise ModeMismatch(f"--pre-dump-mode {mode} does not go with --track-mem {track} "
                      f"(it goes with {' or '.join(fits)})")
    check_track(track, feats)
    return mode, track


def covered_by_chain(parent_dir: Path | None, pid: int) -> Ranges:
    """Pages the images chain at PARENT_DIR holds for PID (data, here or further up)."""
    if parent_dir is None or not ImageDir.open(parent_dir, follow_parent=False).exists(f"pagemap-{pid}.img"):
        return Ranges.empty()           # no parent, or PID was not there yet
    with PageChain(parent_dir, pid) as chain:
        return chain.covered_ranges()


def chain_parked_fds(prev: ImageDir) -> dict[int, int]:
    """pid -> the userfaultfd a tracked pre-dump parked in that process, as PREV's stats name
    them: every process of a tree (cs_tree_uffd_fds: pid, fd, ...), or the one process of a
    single pre-dump (cs_uffd_fd)."""
    s = prev.read("stats-dump", missing_ok=True)
    if not s:
        return {}
    d = s[0].dump
    pairs = list(d.cs_tree_uffd_fds)
    if pairs:
        fds = dict(zip(pairs[::2], pairs[1::2]))
    else:
        # the one process: its pagemap's, or the pstree root's when the pages went to a page server
        ids = prev.pagemap_ids() or [e.pid for e in prev.read("pstree.img", missing_ok=True)[:1]]
        fds = {ids[0]: d.cs_uffd_fd} if d.HasField("cs_uffd_fd") and len(ids) == 1 else {}
    inos = list(d.cs_uffd_inos)
    if not inos:
        return fds              # images of an older coldsnap: the number alone
    # the same number may hold another tracking since (an untrack, a dump with --leave-running
    # or a fresh pre-dump closed this one and parked its own there): its pages were reset
    # after this chain's images were made, adopting it would skip pages written meanwhile
    want = dict(zip(inos[::2], inos[1::2]))
    return {pid: fd for pid, fd in fds.items() if want.get(pid) and _fd_inode(pid, fd) == want[pid]}


def _fd_inode(pid: int, fd: int) -> int | None:
    """The inode of PID's file at FD, as its fdinfo says (None: no such fd or process)."""
    try:
        ino = fdinfo_value(pid, fd, "ino")
    except OSError:
        return None
    return int(ino) if ino and ino.isdigit() else None


def parked_uffd_fd(prev: ImageDir, pid: int) -> int | None:
    """The userfaultfd a tracked pre-dump of PID parked in it, if PREV's stats name one."""
    return chain_parked_fds(prev).get(pid)


@dataclass(eq=False, repr=False)
class Planned:
    """A plan and what was read with it for the other images."""
    plan: PagePlan
    stat: Stat                  # the task's mm fields, read with the maps


class Planner:
    """Plans the pages of one task, plan after plan, and owns its write tracking.

    track "uffd": a userfaultfd held by coldsnap (arm() creates it, adopt() takes one an
    earlier run parked in the target); "soft-dirty": the page-table bits, read and cleared
    while the task is held; "none": every present page is read. A tracking that cannot be
    trusted falls back to "none" (`refused` says why). The first plan of a tracking counts
    every page as written. close() releases coldsnap's side of the tracking.
    """

    def __init__(self, pid: int, track: str = "none", *, scan: str = "auto", park: bool = False,
                 drop_parked_markers: bool = False, final: bool = False):
        self.pid, self.track, self.scan = pid, track, scan
        self.final = final                 # one plan of a final dump: the tracking ends with it
        self.park = park                   # leave the userfaultfd in the target for a later run
        self.uffd: UffdTracker | None = None
        self.soft: SoftDirtyTracker | None = None
        self.fresh = True                  # no plan yet: every page counts as written
        self.refused = ""                  # why tracking fell back to none, if it did
        self.untracked = Ranges.empty()    # areas of the last plan that could not be tracked
        self.last: PagePlan | None = None  # the last plan made (tests, diagnostics)
        # markers of a parked tracking nobody adopted look like swapped pages: drop them
        self.drop_parked_markers = drop_parked_markers
        self.guards = Ranges.empty()       # guard-region pages the last scan found (not saved)

    # -- the tracking ---------------------------------------------------------------------

    def arm(self, times: Times | None = None) -> bool:
        """Create the userfaultfd (one short freeze, counted in times); False if refused."""
        tracker = UffdTracker()
        held: list[FrozenTask] = []
        # a parked tracking nobody adopts (a child's copy of its parent's, inherited with
        # fork) would keep adopt() from telling ours apart: closed in the same freeze
        stale = [fd for fd in parked_uffd_fds(self.pid) if fd >= PARK_FD_MIN] if self.park else []

        @contextmanager
        def calls():
            with frozen_calls(self.pid, released=held.append) as rc:
                for fd in stale:
                    rc.checked(SYS.close, fd, what=f"close({fd}) of a parked userfaultfd nobody adopts")
                yield rc

        try:
            tracker.arm(self.pid, calls, park=self.park)
        except TrackingRefused as e:
            tracker.close()
            self._fall_back(e)
            return False
        self.uffd = tracker
        if times is not None and held:
            times.freezing += held[0].seize_ns
            times.frozen += held[0].held_ns or 0
        return True

    def adopt(self, target_fd: int, vmas: list[Vma] | None = None) -> bool:
        """Take over the userfaultfd an earlier run parked in the target at target_fd."""
        tracker = UffdTracker()
        try:
            tracker.adopt(self.pid, target_fd, vmas if vmas is not None else classify_all(read_maps(self.pid)),
                          final=self.final)
        except TrackingRefused:
            tracker.close()
            return False
        self.uffd, self.track, self.fresh = tracker, "uffd", False
        return True

    @property
    def parked_fd(self) -> int:
        """The fd number of the tracking this planner leaves parked in the target (-1: none)."""
        return self.uffd.arm_stats.target_fd if self.park and self.uffd is not None else -1

    @property
    def parked_ino(self) -> int:
        """The inode of that userfaultfd (each instance has its own; 0: none parked)."""
        return os.fstat(self.uffd.fd).st_ino if self.parked_fd >= 0 else 0

    def _fall_back(self, why: TrackingRefused) -> None:
        self.close()
        self.track, self.refused = "none", str(why)

    def close(self) -> None:
        if self.uffd is not None:
            self.uffd.close()
            self.uffd = None
        if self.soft is not None:
            self.soft.close()
            self.soft = None

    def __enter__(self) -> "Planner":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- planning -------------------------------------------------------------------------

    def _collect(self, vmas: list[Vma]) -> Ranges | None:
        """The pages written since the last collect; None: count every page written."""
        dirty = None
        if self.track == "soft-dirty":
            if self.soft is None:
                self.soft = SoftDirtyTracker(self.pid)
            if self.fresh:
                self.soft.reset()            # from now on the bits mean "written since"
            else:
                dirty = self.soft.collect(vmas)
        elif self.uffd is not None:
            try:
                # the first collect registers (and resets) everything: all of it is dirty
                collect = self.uffd.collect_final if self.final else self.uffd.collect
                dirty, self.untracked = collect(vmas)
            except TrackingRefused as e:
                self._fall_back(e)
                return None
            if self.fresh:
                dirty = None
        return dirty

    def _present(self, vmas: list[Vma]) -> tuple[Ranges, str]:
        present, self.guards, method = scan_saved_and_guards(self.pid, vmas, self.scan)
        if self.uffd is not None:
            present = self.uffd.drop_markers(present)
        elif self.drop_parked_markers:
            fd = open_pagemap(self.pid)
            try:
                present = drop_wp_markers(fd, present)
            finally:
                os.close(fd)
        return present, method

    def plan(self, covered: Ranges | None = None, *, task: FrozenTask | None = None,
             resume_after: str = "", times: Times | None = None, vmas: list[Vma] | None = None,
             skip_unreadable: bool = True) -> Planned:
        """Plan the pages now. covered: pages the parent chain holds (tracked plans only).
        task: the freeze the caller holds, resumed here after "collect" or "scan" if asked.
        vmas: the areas, when the caller read them already (in its freeze)."""
        t0 = time.perf_counter_ns()
        if vmas is None:
            vmas = classify_all(read_maps(self.pid))
        stat = read_stat(self.pid)
        dirty = self._collect(vmas)
        if resume_after == "collect" and task is not None:
            task.resume()
        present, method = self._present(vmas)
        if resume_after == "scan" and task is not None:
            task.resume()
        self.fresh = False
        plan = decide(vmas, present, method, dirty=dirty, covered=covered, track=self.track,
                      skip_unreadable=skip_unreadable)
        if times is not None:
            times.plan += time.perf_counter_ns() - t0
        self.last = plan
        return Planned(plan, stat)
