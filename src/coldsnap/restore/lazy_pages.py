"""What a lazy-restore server still has to copy into one address space, in plain Python (the
server imports no numpy: its first faults never wait for an import).

    pages = LazyPages.build(areas, located, keep)
    pages.window(addr, ahead, behind)  # pending runs around a fault, the faulting page first
    pages.next_run(max_pages)          # the background order: top of the chain (newest) first
    pages.done(vaddr, n) / clear(start, end) / move(frm, to, length) / clone()

A sorted list of disjoint pending runs, each one chain level and contiguous in that level's
pages file: its size follows the dump's runs and the holes faults cut in them, never the
number of pages. A remap moves the pending runs with the pages, a fork clones the list (the
child's missing pages are the parent's).
"""
from __future__ import annotations

from bisect import bisect_left, bisect_right
from typing import NamedTuple

from ..kernel.page import PAGE_SHIFT


class Run(NamedTuple):
    """Pages to copy: npages from `off` of level `level`'s pages file to `vaddr`."""
    vaddr: int
    level: int
    off: int
    npages: int

    @property
    def end(self) -> int:
        return self.vaddr + (self.npages << PAGE_SHIFT)


def _clip(run: Run, lo: int, hi: int) -> Run | None:
    """The part of RUN inside [lo, hi) (page-aligned bounds), or None."""
    a, b = max(run.vaddr, lo), min(run.end, hi)
    if a >= b:
        return None
    return Run(a, run.level, run.off + (a - run.vaddr), (b - a) >> PAGE_SHIFT)


class LazyPages:
    def __init__(self, runs: list[Run]):
        self.runs = runs                # sorted, disjoint
        self._starts = [r.vaddr for r in runs]
        self._pass = 0
        self._cursor = 0
        self.levels = 0
        self.recount()

    @classmethod
    def build(cls, areas: list[tuple[int, int]], located: list[tuple[int, int, int, int]],
              keep: list[tuple[int, int]]) -> "LazyPages":
        """areas: the registered ranges; located: (level, vaddr, nbytes, offset) of every saved
        run (where two overlap, the later one holds the page); keep: the (vaddr, nbytes)
        pieces left to the server (the rest is in already)."""
        saved = _painted(located)
        starts = [r.vaddr for r in saved]
        runs: list[Run] = []
        for kv, kn in keep:
            for a_lo, a_hi in areas:
                lo, hi = max(kv, a_lo), min(kv + kn, a_hi)
                if lo >= hi:
                    continue
                for k in range(max(0, bisect_right(starts, lo) - 1), len(saved)):
                    if saved[k].vaddr >= hi:
                        break
                    part = _clip(saved[k], lo, hi)
                    if part is not None:
                        runs.append(part)
        runs.sort()
        return cls(_disjoint(runs))

    # -- questions -----------------------------------------------------------------------

    def _around(self, lo: int, hi: int) -> tuple[int, int]:
        """Index range of the runs that may meet [lo, hi)."""
        return max(0, bisect_right(self._starts, lo) - 1), bisect_left(self._starts, hi)

    def is_pending(self, addr: int) -> bool:
        i = bisect_right(self._starts, addr) - 1
        return i >= 0 and addr < self.runs[i].end

    def window(self, addr: int, ahead: int, behind: int) -> list[Run]:
        """Pending runs in [addr - behind pages, addr + ahead pages), the one at addr first."""
        lo, hi = addr - (behind << PAGE_SHIFT), addr + (ahead << PAGE_SHIFT)
        i, j = self._around(lo, hi)
        after, before = [], []
        for k in range(i, j):
            run = self.runs[k]
            for part, out in ((_clip(run, addr, hi), after), (_clip(run, lo, addr), before)):
                if part is not None:
                    out.append(part)
        return after + before

    def next_run(self, max_pages: int) -> Run | None:
        """The next pending run in background order: level 0 (the dump, written last) first,
        then each parent in turn; in address order within a level from the cursor, then one
        more sweep for what a jump of the cursor (follow) or a remap left behind. Within a
        pass the cursor only moves on: a pass looks at each run once."""
        runs = self.runs
        for _ in range(2):
            while self._pass < self.levels:
                at = self._cursor
                for k in range(max(0, bisect_right(self._starts, at) - 1), len(runs)):
                    run = runs[k]
                    if run.level != self._pass or run.end <= at:
                        continue
                    part = _clip(run, max(run.vaddr, at), run.end)
                    if part.npages > max_pages:
                        part = part._replace(npages=max_pages)
                    self._cursor = part.end
                    return part
                self._pass += 1
                self._cursor = 0
            if not self.pending:
                return None
            self._pass, self._cursor = 0, 0
        return None

    def follow(self, addr: int) -> None:
        """Go on from ADDR in the current pass (the process reads there now); what the jump
        skips is picked up by the final sweep."""
        self._cursor = addr

    # -- changes -------------------------------------------------------------------------

    def recount(self) -> None:
        self.pending = sum(r.npages for r in self.runs)
        self.pending_newest = sum(r.npages for r in self.runs if r.level == 0)
        self.levels = max(self.levels, 1 + max((r.level for r in self.runs), default=-1))

    def done(self, vaddr: int, npages: int) -> None:
        """These pages are in (or may never be copied): forget them."""
        self.clear(vaddr, vaddr + (npages << PAGE_SHIFT))

    def clear(self, start: int, end: int) -> None:
        """Nothing to copy in [start, end) any more (copied, discarded, unmapped)."""
        i, j = self._around(start, end)
        kept: list[Run] = []
        for run in self.runs[i:j]:
            if run.end <= start or run.vaddr >= end:
                kept.append(run)
                continue
            gone = _clip(run, start, end).npages
            self.pending -= gone
            if run.level == 0:
                self.pending_newest -= gone
            kept.extend(p for p in (_clip(run, run.vaddr, start), _clip(run, end, run.end)) if p is not None)
        self.runs[i:j] = kept
        self._starts[i:j] = [r.vaddr for r in kept]

    def move(self, frm: int, to: int, length: int) -> None:
        """mremap moved [frm, frm+length) to `to`: the pending state goes with the pages."""
        i, j = self._around(frm, frm + length)
        moved = [Run(p.vaddr - frm + to, p.level, p.off, p.npages)
                 for p in (_clip(r, frm, frm + length) for r in self.runs[i:j]) if p is not None]
        self.clear(frm, frm + length)
        self.clear(to, to + length)
        at = bisect_left(self._starts, to)
        self.runs[at:at] = moved
        self._starts[at:at] = [r.vaddr for r in moved]
        self.pending += sum(r.npages for r in moved)
        self.pending_newest += sum(r.npages for r in moved if r.level == 0)

    def clone(self) -> "LazyPages":
        """The state of a child made by fork: its missing pages are the parent's."""
        return LazyPages(list(self.runs))


def _painted(located: list[tuple[int, int, int, int]]) -> list[Run]:
    """The located runs as sorted disjoint Runs; where two overlap, the later one wins."""
    runs = [Run(vaddr, level, offset, nbytes >> PAGE_SHIFT) for level, vaddr, nbytes, offset in located]
    ordered = sorted(runs)
    if all(a.end <= b.vaddr for a, b in zip(ordered, ordered[1:])):
        return ordered
    out = LazyPages([])
    for run in runs:
        out.clear(run.vaddr, run.end)
        at = bisect_left(out._starts, run.vaddr)
        out.runs.insert(at, run)
        out._starts.insert(at, run.vaddr)
    return out.runs


def _disjoint(runs: list[Run]) -> list[Run]:
    """Sorted runs with any overlap cut off (keep pieces never overlap; a guard all the same)."""
    out: list[Run] = []
    for run in runs:
        if out and run.vaddr < out[-1].end:
            run = _clip(run, out[-1].end, run.end)
            if run is None:
                continue
        out.append(run)
    return out
