"""Write tracking of a running task with userfaultfd write-protect (WP_ASYNC), no soft-dirty.

Only two system calls run inside the target, in one short freeze: `userfaultfd()` and,
once coldsnap holds its own copy (pidfd_getfd), `close()` of the target's fd. Everything
else acts from coldsnap on that copy, because uffd ioctls act on the mm that created it:

    tracker = UffdTracker()
    tracker.arm(pid, inject)                 # freezes only for the two injected calls
    tracker.register_new(vmas)               # WP-register + reset; these count wholly dirty
    ... read pages ...
    dirty, untracked = tracker.collect(vmas) # written since the last reset; re-protected
    tracker.close()                          # registrations vanish with the last holder

The order that makes it exact: a page is reset (write-protected) *before* coldsnap reads
it, so any later write is reported by the next collect().

collect() scans one VMA per PAGEMAP_SCAN call with PM_SCAN_CHECK_WPASYNC: a range holding
an unregistered VMA fails with EPERM after the walk may already have re-protected pages
of the VMAs before it, and the results of such a call are lost. Per VMA, an EPERM makes
the whole VMA dirty (which covers anything lost) and it is registered again next time.

Blind spots (see the reference notes): pages changed without a write fault through the
target's page tables. Shared mappings are not registered (their pages are not saved yet);
a target with an io_uring instance is refused (TrackingRefused), the caller tracks none.

The injected calls come from whoever calls this module (dump/, which sits above seize/ and
memory/): `inject()` opens a session of remote system calls in the frozen target, ended
(registers restored, task resumed) when its `with` block ends. memory/ never imports seize/.
"""
from __future__ import annotations

import ctypes
import errno
import mmap
import os
from dataclasses import dataclass, field
from array import array
from itertools import islice
from operator import le
from typing import Callable, ContextManager, Protocol

from ..errors import CsError, NoSuchProcess, TargetError
from ..kernel import pagemap as pm
from ..kernel.page import PAGE_SHIFT, PAGE_SIZE
from ..kernel import uffd
from ..kernel.libc import SYS, syscall
from ..kernel.fdinfo import fdinfo_value, raw_fd_links
from ..kernel.pidfd import take_fd
from ..kernel.procfs import alive, read_status
from .ranges import Joined, Ranges
from .scan import PAGEMAP_BATCH_PAGES
from .vma import PROT_READ, Kind, Vma


O_NONBLOCK = 0o4000
O_CLOEXEC = 0o2000000
UFFD_FLAGS = O_CLOEXEC | O_NONBLOCK | uffd.UFFD_USER_MODE_ONLY
F_DUPFD_CLOEXEC = 1030
# A parked userfaultfd sits high in the target's fd table, so that the program's own fd
# numbering is unchanged: at PARK_FD_AT, or at the table's last slot when the table is
# smaller. Never above it: growing the table of a process whose threads share it waits for
# an RCU grace period (several ms, all of it frozen). Tables have at least 64 slots.
PARK_FD_AT = 900       # below the usual 1024 soft limit of RLIMIT_NOFILE
PARK_FD_MIN = 63       # the lowest fd a parked userfaultfd can have


def park_fd_at(pid: int) -> int:
    """Where to park a userfaultfd in PID without growing its fd table (FDSize of status)."""
    try:
        size = int(read_status(pid).get("FDSize", "0"))
    except (OSError, ValueError):
        size = 0
    return PARK_FD_AT if size > PARK_FD_AT else max(PARK_FD_MIN, size - 1)


FEATURES = uffd.UFFD_FEATURE_WP_ASYNC | uffd.UFFD_FEATURE_WP_UNPOPULATED

IO_URING_LINK = "anon_inode:[io_uring]"
UFFD_LINK = "anon_inode:[userfaultfd]"

# Written pages, re-protected in the same walk.
WRITTEN_RESET_QUERY = pm.ScanQuery(
    category_mask=pm.PAGE_IS_WRITTEN, return_mask=pm.PAGE_IS_WRITTEN,
    flags=pm.PM_SCAN_WP_MATCHING | pm.PM_SCAN_CHECK_WPASYNC)
# Written pages, left as they are (the last look before the tracking is released).
WRITTEN_QUERY = pm.ScanQuery(
    category_mask=pm.PAGE_IS_WRITTEN, return_mask=pm.PAGE_IS_WRITTEN,
    flags=pm.PM_SCAN_CHECK_WPASYNC)
# Registration probe: EPERM when the VMA has no WP_ASYNC registration; a registered VMA
# (WPALLOWED) does not match, so the kernel skips it without walking its page tables.
PROBE_QUERY = pm.ScanQuery(
    category_mask=pm.PAGE_IS_WPALLOWED, category_inverted=pm.PAGE_IS_WPALLOWED,
    return_mask=pm.PAGE_IS_WPALLOWED, flags=pm.PM_SCAN_CHECK_WPASYNC, max_pages=1)


class TrackingRefused(CsError):
    """Write tracking cannot be trusted for this target; the caller must track none."""


class RemoteSyscalls(Protocol):
    """System calls run inside the target (seize.remote.RemoteCalls is one)."""

    def call(self, nr: int, *args: int) -> int:
        """The raw result: -errno on failure."""

    def checked(self, nr: int, *args: int, what: str = "") -> int:
        """The result, or OSError for -errno."""


# opens a session of remote calls in the frozen target; its end lets the target go
Inject = Callable[[], ContextManager[RemoteSyscalls]]


def fd_links(pid: int) -> dict[int, str]:
    """fd number -> raw link target; NoSuchProcess when the process is gone."""
    return raw_fd_links(pid)


def uffd_fds(pid: int) -> list[int]:
    """The target's fds that are userfaultfd instances."""
    return sorted(fd for fd, link in fd_links(pid).items() if link == UFFD_LINK)


def _coldsnap_uffd(pid: int, fd: int) -> bool:
    """Whether the target's userfaultfd FD carries coldsnap's feature set."""
    try:
        api = (fdinfo_value(pid, fd, "API") or "").split()[0]
        features = int(api.split(":")[1], 16)
    except (OSError, ValueError, KeyError, IndexError):
        return False
    return features & FEATURES == FEATURES


def parked_uffd_fds(pid: int) -> list[int]:
    """The target's userfaultfds that carry coldsnap's feature set (parked by `arm(park=True)`)."""
    return [fd for fd in uffd_fds(pid) if _coldsnap_uffd(pid, fd)]


def untrack(pid: int, inject: Inject) -> list[int]:
    """Close every userfaultfd coldsnap parked in the target; returns their fd numbers."""
    fds = parked_uffd_fds(pid)
    if fds:
        with inject() as rc:
            for fd in fds:
                rc.checked(SYS.close, fd, what=f"close({fd})")
    return fds


def refuse_blind_spots(pid: int) -> None:
    """Raise TrackingRefused when the target's memory can change without write faults."""
    rings = sorted(fd for fd, link in fd_links(pid).items() if link == IO_URING_LINK)
    if rings:
        raise TrackingRefused(f"process {pid} has an io_uring instance (fd {rings[0]}): "
                              f"kernel writes into its buffers are not tracked")


def tracked_vma(v: Vma) -> bool:
    """VMAs we write-protect: readable ones whose pages a pre-dump saves (never shared ones).

    Unreadable ones (PROT_NONE reservations, often huge) are left alone: their pages cannot
    be read anyway, and a reset would fill their page tables with markers. Made readable
    by mprotect they become a VMA of their own, found unregistered by the next probe.
    """
    return v.saves_pages and v.kind is not Kind.ANON_SHARED and bool(v.prot & PROT_READ)


# -- uffd-wp markers ------------------------------------------------------------------------
# With WP_UNPOPULATED a reset puts a marker in every unpopulated pte of a registered VMA.
# PAGEMAP_SCAN reports markers as SWAPPED (not PRESENT), so a scan for saved pages would take
# all unpopulated memory for swapped pages. /proc/PID/pagemap tells them apart: a marker's
# entry is a swap entry of the kernel's marker type, learned here from a marker of our own.
PM_ENTRY_MASK = pm.PM_PRESENT | pm.PM_SWAPPED | pm.PM_PFN_MASK
MARKER_QUERY = pm.ScanQuery(category_mask=pm.PAGE_IS_PRESENT | pm.PAGE_IS_SWAPPED,
                            category_inverted=pm.PAGE_IS_PRESENT, return_mask=pm.PAGE_IS_SWAPPED)
_marker: int | None = None


def wp_marker_entry() -> int:
    """The masked pagemap entry of a uffd-wp marker on this kernel (0: cannot be told apart)."""
    global _marker
    if _marker is None:
        fd = syscall(SYS.userfaultfd, O_CLOEXEC | O_NONBLOCK | uffd.UFFD_USER_MODE_ONLY,
                     what="userfaultfd")
        probe = mmap.mmap(-1, PAGE_SIZE, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
        buf = (ctypes.c_char * PAGE_SIZE).from_buffer(probe)
        try:
            addr = ctypes.addressof(buf)
            uffd.api(fd, FEATURES)
            uffd.register(fd, addr, PAGE_SIZE)
            pmfd = pm.open_pagemap(os.getpid())
            try:
                pm.PagemapScanner(pmfd, 4).reset_written(addr, addr + PAGE_SIZE)
                entry = pm.read_entry(pmfd, addr) & PM_ENTRY_MASK
            finally:
                os.close(pmfd)
        finally:
            os.close(fd)
            del buf
            probe.close()
        # Without the frame (no CAP_SYS_ADMIN) a marker looks like any swap entry: keep all.
        real = entry & pm.PM_SWAPPED and not entry & pm.PM_PRESENT and entry & pm.PM_PFN_MASK
        _marker = entry if real else 0
    return _marker


def drop_wp_markers(pagemap_fd: int, pages: Ranges, scanner: pm.PagemapScanner | None = None) -> Ranges:
    """PAGES without the uffd-wp markers among them (only swapped-looking pages are read)."""
    marker = wp_marker_entry()
    if not marker or not len(pages):
        return pages
    scanner = scanner or pm.PagemapScanner(pagemap_fd)
    cand = array("Q")
    for s, e in pages.merged().pairs():
        cand.extend(scanner.scan_flat(s, e, MARKER_QUERY))
    if not cand:
        return pages
    markers = Joined()
    step = PAGEMAP_BATCH_PAGES << PAGE_SHIFT
    for lo, hi in zip(cand[0::3], cand[1::3]):      # swapped-looking pages only: few
        for a in range(lo, hi, step):
            entries = pm.read_entries_plain(pagemap_fd, a, min(hi, a + step))
            for k, e in enumerate(entries):
                if e & PM_ENTRY_MASK == marker:
                    page = a + (k << PAGE_SHIFT)
                    markers.add(page, page + PAGE_SIZE)
    drop = markers.ranges()
    return pages.subtract(drop).split_at(sorted({*pages.starts, *pages.ends})) if len(drop) else pages


def _dirty(found: array, whole: list[tuple[int, int]]) -> Ranges:
    """The written regions (flat triplets) joined, with the areas that count whole. VMAs
    walked in address order give them sorted already; anything else is sorted here."""
    starts, ends = found[0::3], found[1::3]
    if not all(map(le, ends, islice(starts, 1, None))):
        return Ranges.covering([*zip(starts, ends), *whole])
    dirty = Ranges(starts, ends).merged()
    return dirty.union(Ranges.covering(whole)) if whole else dirty


@dataclass(eq=False, repr=False)
class ArmStats:
    """What arming uffd write tracking left behind."""
    target_fd: int = -1      # the fd number the uffd had in the target (closed again)


@dataclass(eq=False, repr=False)
class UffdTracker:
    """Write tracking of one process through a userfaultfd held by coldsnap only."""
    pid: int = 0
    fd: int | None = None
    arm_stats: ArmStats = field(default_factory=ArmStats)
    untracked: dict[tuple[int, int], str] = field(default_factory=dict)  # (start, end) -> why
    registrations: int = 0
    _fresh: list[tuple[int, int]] = field(default_factory=list)  # registered, not yet collected
    _mine: Ranges = field(default_factory=Ranges.empty)  # every range we registered
    _scanner: pm.PagemapScanner | None = None
    _pagemap_fd: int | None = None

    # -- arming -----------------------------------------------------------------------

    def arm(self, pid: int, inject: Inject, park: bool = False) -> ArmStats:
        """Create a uffd in the target, keep only our copy of it, enable WP_ASYNC.

        `inject()` freezes the target for the two injected calls (or runs them in the
        caller's freeze). `park` leaves the target's copy open (at arm_stats.target_fd) so
        that tracking outlives this coldsnap: a later run adopts it.
        """
        if self.fd is not None:
            raise CsError("tracker is already armed")
        refuse_blind_spots(pid)
        self.pid = pid
        park_at = park_fd_at(pid) if park else 0    # read before the freeze
        with inject() as rc:            # the freeze, if any, is timed by whoever freezes
            self._inject(rc, pid, park_at)
        try:
            self._pagemap_fd = pm.open_pagemap(pid)
        except OSError as e:
            self.close()
            if isinstance(e, TargetError):      # NoSuchProcess, AccessDenied: they word themselves
                raise
            raise TargetError(f"cannot open the pagemap of {pid}: {e.strerror}") from None
        self._scanner = pm.PagemapScanner(self._pagemap_fd)
        return self.arm_stats

    def _inject(self, rc: RemoteSyscalls, pid: int, park_at: int = 0) -> None:
        """park_at: the lowest fd number to park the target's copy at (0: do not park)."""
        ours = None
        park = bool(park_at)
        try:
            tfd = rc.checked(SYS.userfaultfd, UFFD_FLAGS, what="userfaultfd")
        except OSError as e:
            raise TrackingRefused(f"userfaultfd() failed in {pid}: {e.strerror}") from None
        if park:
            # far above the fds the program opens, so its own numbering is unchanged
            high = rc.call(SYS.fcntl, tfd, F_DUPFD_CLOEXEC, park_at)
            if high >= 0:
                rc.call(SYS.close, tfd)
                tfd = high
        self.arm_stats.target_fd = tfd
        ready = False
        try:
            ours = take_fd(pid, tfd)
            uffd.api(ours, FEATURES)
            ready = True
        except OSError as e:
            if ours is not None:
                os.close(ours)
            raise TrackingRefused(f"cannot set up userfaultfd write tracking of "
                                  f"{pid}: {e.strerror}") from None
        finally:
            # unless parked, nothing of ours stays in the target while we hold the tracker
            err = 0 if park and ready else rc.call(SYS.close, tfd)
        if err < 0:
            os.close(ours)
            raise TargetError(f"cannot close the userfaultfd left in {pid}: "
                              f"{os.strerror(-err)}")
        self.fd = ours

    def adopt(self, pid: int, target_fd: int, vmas: list[Vma], *, final: bool = False) -> None:
        """Take over the tracking parked in the target at `target_fd` by an earlier run.
        final: only collect_final() follows (a final dump), which needs no map of ours."""
        if self.fd is not None:
            raise CsError("tracker is already armed")
        links = fd_links(pid)                # one listing for every check below
        rings = sorted(fd for fd, link in links.items() if link == IO_URING_LINK)
        if rings:
            raise TrackingRefused(f"process {pid} has an io_uring instance (fd {rings[0]}): "
                                  f"kernel writes into its buffers are not tracked")
        if links.get(target_fd) != UFFD_LINK or not _coldsnap_uffd(pid, target_fd):
            raise TrackingRefused(f"process {pid} has no coldsnap tracking at fd {target_fd}")
        if sum(link == UFFD_LINK for link in links.values()) > 1:
            raise TrackingRefused(f"process {pid} uses userfaultfd itself: cannot tell its "
                                  f"registrations from ours")
        self.fd = take_fd(pid, target_fd)
        self.pid, self.arm_stats.target_fd = pid, target_fd
        self._pagemap_fd = pm.open_pagemap(pid)
        self._scanner = pm.PagemapScanner(self._pagemap_fd)
        # Every WP_ASYNC registration is ours: the target has no other userfaultfd.
        if not final:
            self._mine = Ranges.covering([(v.start, v.end) for v in vmas if tracked_vma(v) and self._probe(v)])

    # -- registering ------------------------------------------------------------------

    def _probe(self, v: Vma) -> bool:
        """True when [v.start, v.end) is registered with WP_ASYNC (ours, in practice)."""
        try:
            self._scanner.scan_flat(v.start, v.end, PROBE_QUERY)
            return True
        except OSError as e:
            if e.errno == errno.EPERM:
                return False
            if e.errno in (errno.ESRCH, errno.ENOENT):
                raise NoSuchProcess(self.pid, during="write tracking") from None
            raise

    def register_new(self, vmas: list[Vma]) -> tuple[Ranges, dict[tuple[int, int], str]]:
        """WP-register every tracked VMA that is not registered yet, then reset it.

        Returns (newly registered ranges, failures {(start, end): reason}). New ones count
        wholly dirty at the next collect(); failures are remembered as untracked.
        """
        self._need_armed()
        live = {(v.start, v.end) for v in vmas}
        for key in [k for k in self.untracked if k not in live]:
            del self.untracked[key]  # gone: a new VMA at that place gets a fresh try
        new, failed = [], {}
        for v in vmas:
            key = (v.start, v.end)
            if not tracked_vma(v) or key in self.untracked:
                continue
            if self._probe(v):
                if not self._ours(v):
                    # WP_ASYNC-registered, but not by us: the target tracks writes itself;
                    # our resets would clear its protection
                    failed[key] = self.untracked[key] = "registered by the target's own userfaultfd"
                continue
            try:
                uffd.register(self.fd, v.start, v.size, uffd.UFFDIO_REGISTER_MODE_WP)
                # reset before anybody reads these pages: later writes are then reported
                self._scanner.reset_written(v.start, v.end)
            except OSError as e:
                if e.errno == errno.EBUSY:
                    why = "EBUSY: the target uses userfaultfd on it"
                else:
                    why = f"{errno.errorcode.get(e.errno, e.errno)}: {e.strerror}"
                if e.errno in (errno.ENOMEM, errno.EINVAL, errno.ENOENT) and not alive(self.pid):
                    raise NoSuchProcess(self.pid, during="write tracking") from None
                failed[key] = why
                self.untracked[key] = why
                continue
            self.registrations += 1
            self._mine = self._mine.union(Ranges.of([key]))
            new.append(key)
        self._fresh.extend(new)
        return Ranges.covering(new), failed

    def _ours(self, v: Vma) -> bool:
        """Whether the VMA lies inside ranges we registered (splits and shrinks keep ours)."""
        return Ranges.of([(v.start, v.end)]).subtract(self._mine).nr_pages == 0

    # -- collecting -------------------------------------------------------------------

    def collect(self, vmas: list[Vma]) -> tuple[Ranges, Ranges]:
        """(dirty, untracked) over the tracked VMAs, without freezing the task.

        dirty: pages written since their last reset (re-protected in the same walk), VMAs
        newly registered (now or since the last collect), untracked and unreadable VMAs, whole.
        untracked: the VMAs that cannot be registered, whole (they are in dirty too).
        """
        self._need_armed()
        if self.pid:
            refuse_blind_spots(self.pid)
        self.register_new(vmas)
        fresh = set(self._fresh)
        self._fresh = []
        whole: list[tuple[int, int]] = []
        untracked: list[tuple[int, int]] = []
        found = array("Q")
        for v in vmas:
            if not v.saves_pages or v.kind is Kind.ANON_SHARED:
                continue
            key = (v.start, v.end)
            if not tracked_vma(v):   # unreadable: its pages are skipped, and retried, anyway
                whole.append(key)
                continue
            if key in self.untracked:
                untracked.append(key)
                whole.append(key)
                continue
            if key in fresh:
                # no second reset: its pages are read after the registration's reset, and
                # writes since then are reported next time (a few pages too many, never too few)
                whole.append(key)
                continue
            if not self._scan_written(v, WRITTEN_RESET_QUERY, found):
                whole.append(key)   # replaced or moved since register_new: registered next time
        # fresh registrations whose VMA changed shape meanwhile: still dirty
        whole.extend(k for k in fresh if k not in {(v.start, v.end) for v in vmas})
        return _dirty(found, whole), Ranges.covering(untracked)

    def collect_final(self, vmas: list[Vma]) -> tuple[Ranges, Ranges]:
        """collect() for the last look of a final dump, the task frozen and the tracking
        released right after: the pages written since the last reset, nothing registered
        or re-protected. A tracked VMA without our registration (new since the last run,
        or reshaped) counts whole. untracked: always empty (nothing was refused now)."""
        self._need_armed()
        whole: list[tuple[int, int]] = []
        found = array("Q")
        for v in vmas:
            if not v.saves_pages or v.kind is Kind.ANON_SHARED:
                continue
            if not tracked_vma(v) or not self._scan_written(v, WRITTEN_QUERY, found):
                whole.append((v.start, v.end))
        return _dirty(found, whole), Ranges.empty()

    def _scan_written(self, v: Vma, query: pm.ScanQuery, found: array) -> bool:
        """Append the written regions of V (flat triplets) to FOUND; False when V is not
        registered (EPERM: what the walk found is lost, the caller counts V whole)."""
        try:
            found.extend(self._scanner.scan_flat(v.start, v.end, query))
            return True
        except OSError as e:
            if e.errno != errno.EPERM:
                if not alive(self.pid):
                    raise NoSuchProcess(self.pid, during="write tracking") from None
                raise
            return False

    def drop_markers(self, pages: Ranges) -> Ranges:
        """PAGES (from a saved-pages scan) without the unpopulated pages our resets marked."""
        self._need_armed()
        return drop_wp_markers(self._pagemap_fd, pages, self._scanner)

    # -- closing ----------------------------------------------------------------------

    def close(self) -> None:
        """Drop our copy: with the last holder gone every registration vanishes."""
        if self._pagemap_fd is not None:
            os.close(self._pagemap_fd)
            self._pagemap_fd = None
        self._scanner = None
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None

    def __enter__(self) -> "UffdTracker":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _need_armed(self) -> None:
        if self.fd is None or self._scanner is None:
            raise CsError("tracker is not armed")
