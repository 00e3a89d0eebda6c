"""What one (pre-)dump did, in the units of CRIU's stats image (microseconds, pages).

Filled in one place, `DumpStats.record`, from the page plan, the pages the sink received and
the phase times; the only nanosecond-to-microsecond conversion is `us`.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

from ..memory.plan import PagePlan
from ..memory.sink import SinkCounts


def us(ns: int) -> int:
    return ns // 1000


@dataclass(eq=False, repr=False)
class Times:
    """Nanoseconds (time.perf_counter_ns) spent in the phases of one (pre-)dump."""
    freezing: int = 0             # seizing every thread
    frozen: int = 0               # the task held, once seized
    plan: int = 0                 # maps, tracking collect, page scan
    copy: int = 0                 # copying pages out of the task, the sink's share included
    sink: int = 0                 # of which inside the sink


@dataclass(eq=False, repr=False)
class DumpStats:
    """What a (pre-)dump did and how long it held the task (stats-dump)."""
    mode: str                     # "live", "frozen", "nofreeze", "dump"
    scan_method: str = ""         # "ioctl" or "read"
    track_backend: str = "none"   # "uffd", "soft-dirty", "none"
    freezing_time: int = 0        # µs to seize every thread
    frozen_time: int = 0          # µs the task stayed frozen
    scan_time: int = 0            # µs spent finding pages (inside the frozen window in live mode)
    memdump_time: int = 0         # µs spent copying pages out of the task
    memwrite_time: int = 0        # µs spent handing pages to the sink
    pages_scanned: int = 0        # pages in the VMAs whose pages we save
    pages_written: int = 0        # pages copied into this image
    pages_skipped_parent: int = 0 # pages left to the parent image
    pages_skipped: int = 0        # planned pages that could not be read (saved next time)
    vmas: int = 0
    read_syscalls: int = 0
    uffd_fd: int = -1             # userfaultfd parked in the target for the next run (-1: none)
    frozen_at_ns: int = 0         # perf_counter_ns when the seize began (a dump's; not reported)

    def record(self, plans: list[PagePlan], pages: SinkCounts, times: Times, *, syscalls: int,
               extra_scanned: int = 0) -> "DumpStats":
        """Everything but the mode (and a parked fd) from the plans of every process (the
        root's first: scan method, tracking and vmas are its own), the sink's page counts and
        the times; extra_scanned: pages scanned outside the plans (shared memory)."""
        root = plans[0]
        self.scan_method, self.track_backend, self.vmas = root.scan_method, root.track, len(root.vmas)
        self.pages_scanned = sum(p.pages_scanned for p in plans) + extra_scanned
        self.pages_written, self.pages_skipped_parent, self.pages_skipped = \
            pages.present, pages.parent, pages.skipped
        self.read_syscalls = syscalls
        self.set_times(times)
        return self

    def set_times(self, times: Times) -> None:
        self.freezing_time, self.frozen_time = us(times.freezing), us(times.frozen)
        self.scan_time = us(times.plan)
        self.memdump_time, self.memwrite_time = us(times.copy - times.sink), us(times.sink)

    def as_dict(self) -> dict:
        d = asdict(self)
        d.pop("frozen_at_ns")
        return d
