"""The page plan of one (pre-)dump: which pages to record, which to read, which the parent
chain keeps, which cannot be read. One rule for every mode; the images are not known here
(the chain's coverage comes in as ranges)."""
from __future__ import annotations

from dataclasses import dataclass, replace

from ..kernel.page import PAGE_SHIFT
from .ranges import Ranges
from .vma import PROT_READ, Kind, Vma


@dataclass(eq=False, repr=False)
class PagePlan:
    """Which pages of a process a (pre-)dump records, reads and leaves to the parent."""
    vmas: list[Vma]
    present: Ranges             # every page to record (present or swapped, no wp marker)
    to_read: Ranges             # present pages whose bytes go into this image
    in_parent: Ranges           # present pages the parent chain holds, unwritten since: PE_PARENT
    unreadable: Ranges          # planned pages of areas without PROT_READ: recorded as skipped
    scan_method: str            # "ioctl" or "read"
    track: str = "none"         # the write tracking behind `dirty`: "uffd", "soft-dirty", "none"
    dirty: Ranges | None = None  # what the tracking reported (None: every present page counts)

    @property
    def pages_scanned(self) -> int:
        """Pages of the areas whose pages are saved (CRIU's pages_scanned)."""
        return sum(v.size for v in self.vmas if v.saves_pages) >> PAGE_SHIFT


def with_vdso(plan: PagePlan) -> PagePlan:
    """The plan with every page of the [vdso] read and recorded, as CRIU's dumps have it (its
    restore compares the saved vDSO with the running one's before moving that into place);
    coldsnap's restore moves the running vDSO and never writes these pages."""
    pairs = [(v.start, v.end) for v in plan.vmas if v.kind is Kind.VDSO]
    if not pairs:
        return plan
    vdso = Ranges.of(pairs)
    return replace(plan, present=plan.present.union(vdso), to_read=plan.to_read.union(vdso))


def unreadable_ranges(vmas: list[Vma]) -> Ranges:
    pairs = [(v.start, v.end) for v in vmas if v.saves_pages and not v.prot & PROT_READ]
    return Ranges.of(pairs) if pairs else Ranges.empty()


def decide(vmas: list[Vma], present: Ranges, scan_method: str, *, dirty: Ranges | None = None,
           covered: Ranges | None = None, track: str = "none", skip_unreadable: bool = True) -> PagePlan:
    """The plan from a scan: read present ∩ (dirty ∪ not covered by the parent chain), leave
    the rest to the parent; without tracking (dirty None) read everything present.

    skip_unreadable: pages without PROT_READ are recorded as skipped (a pre-dump reads with
    process_vm_readv); a final dump reads them through /proc/PID/mem instead."""
    if dirty is None:
        to_read, in_parent = present, Ranges.empty()
    else:
        uncovered = present.subtract(covered if covered is not None else Ranges.empty())
        to_read = present.intersect(dirty.union(uncovered))
        in_parent = present.subtract(to_read)
    unreadable = Ranges.empty()
    if skip_unreadable:
        unreadable = to_read.intersect(unreadable_ranges(vmas))
        to_read = to_read.subtract(unreadable)   # also joins runs split at VMA bounds, as before
    return PagePlan(vmas, present, to_read, in_parent, unreadable, scan_method, track, dirty)
