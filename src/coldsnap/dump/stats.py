"""What one (pre-)dump did, in the units of CRIU's stats image (microseconds, pages)."""
from __future__ import annotations

from dataclasses import asdict, dataclass


@dataclass
class DumpStats:
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

    def as_dict(self) -> dict:
        return asdict(self)
