"""The lazy server's first page state, in plain Python: it answers the first faults while
numpy (~60-130 ms of imports in the forked server) is not loaded yet, so that the restored
process's first steps never wait for it. Once the process is quiet (or does more than
fault), the server builds lazy_pages.py's LazyPages and replays what happened here.

    quick = QuickPages.build(areas, located, keep)   # same arguments as LazyPages.build
    quick.is_pending(addr) / window(addr, ahead, behind) / done(vaddr, n) / clear(start, end)
    quick.cleared                                    # every range cleared, in order

A sorted list of pending runs (each one level, contiguous in its file), pushed in the same
background order as LazyPages; no move, no clone (the server upgrades before those).
"""
from __future__ import annotations

import bisect
from dataclasses import dataclass

from ..kernel.page import PAGE_SHIFT


@dataclass(frozen=True)
class Run:
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


class QuickPages:
    def __init__(self, runs: list[Run]):
        self.runs = runs                # sorted, disjoint
        self._starts = [r.vaddr for r in runs]
        self.pending = sum(r.npages for r in runs)
        self.pending_newest = sum(r.npages for r in runs if r.level == 0)
        self.cleared: list[tuple[int, int]] = []
        self.cursor: int | None = None  # the last follow() or push
        self._pass = 0
        self.levels = 1 + max((r.level for r in runs), default=-1)

    @classmethod
    def build(cls, areas: list[tuple[int, int]], located: list[tuple[int, int, int, int]],
              keep: list[tuple[int, int]]) -> "QuickPages | None":
        """As LazyPages.build; None if the located runs overlap (LazyPages's later-wins rule
        is not worth repeating here: the server then waits for numpy)."""
        saved = sorted((vaddr, vaddr + nbytes, level, offset) for level, vaddr, nbytes, offset in located)
        if any(a[1] > b[0] for a, b in zip(saved, saved[1:])):
            return None
        starts = [s[0] for s in saved]
        runs: list[Run] = []
        for kv, kn in keep:
            for ar_lo, ar_hi in areas:
                lo, hi = max(kv, ar_lo), min(kv + kn, ar_hi)
                if lo >= hi:
                    continue
                for vaddr, end, level, offset in saved[max(0, bisect.bisect_right(starts, lo) - 1):]:
                    if vaddr >= hi:
                        break
                    run = _clip(Run(vaddr, level, offset, (end - vaddr) >> PAGE_SHIFT), lo, hi)
                    if run is not None:
                        runs.append(run)
        runs.sort(key=lambda r: r.vaddr)
        if any(a.end > b.vaddr for a, b in zip(runs, runs[1:])):
            return None
        return cls(runs)

    def _around(self, lo: int, hi: int) -> tuple[int, int]:
        """Index range of the runs that may meet [lo, hi)."""
        return max(0, bisect.bisect_right(self._starts, lo) - 1), bisect.bisect_left(self._starts, hi)

    def is_pending(self, addr: int) -> bool:
        i = bisect.bisect_right(self._starts, addr) - 1
        return i >= 0 and addr < self.runs[i].end

    def window(self, addr: int, ahead: int, behind: int) -> list[Run]:
        """Pending runs in [addr - behind pages, addr + ahead pages), the one at addr first."""
        lo, hi = addr - (behind << PAGE_SHIFT), addr + (ahead << PAGE_SHIFT)
        i, j = self._around(lo, hi)
        after, before = [], []
        for run in self.runs[i:j]:
            for part, out in ((_clip(run, addr, hi), after), (_clip(run, lo, addr), before)):
                if part is not None:
                    out.append(part)
        return after + before

    def follow(self, addr: int) -> None:
        self.cursor = addr

    def next_run(self, max_pages: int) -> Run | None:
        """As LazyPages.next_run: level 0 first from the cursor, then each parent, one more sweep."""
        for _ in range(2):
            while self._pass < self.levels:
                at = self.cursor or 0
                for run in self.runs[max(0, bisect.bisect_right(self._starts, at) - 1):]:
                    if run.level != self._pass or run.end <= at:
                        continue
                    part = _clip(run, max(run.vaddr, at), run.end)
                    part = Run(part.vaddr, part.level, part.off, min(part.npages, max_pages))
                    self.cursor = part.end
                    return part
                self._pass += 1
                self.cursor = 0
            if not self.pending:
                return None
            self._pass, self.cursor = 0, 0
        return None

    def recount(self) -> None:
        self.pending = sum(r.npages for r in self.runs)
        self.pending_newest = sum(r.npages for r in self.runs if r.level == 0)

    def done(self, vaddr: int, npages: int) -> None:
        self.clear(vaddr, vaddr + (npages << PAGE_SHIFT))

    def clear(self, start: int, end: int) -> None:
        """Nothing to copy in [start, end) any more (copied, discarded, unmapped)."""
        self.cleared.append((start, end))
        i, j = self._around(start, end)
        kept: list[Run] = []
        for run in self.runs[i:j]:
            if run.end <= start or run.vaddr >= end:
                kept.append(run)
                continue
            gone = _clip(run, start, end)
            self.pending -= gone.npages
            if run.level == 0:
                self.pending_newest -= gone.npages
            kept.extend(p for p in (_clip(run, run.vaddr, start), _clip(run, end, run.end)) if p is not None)
        self.runs[i:j] = kept
        self._starts[i:j] = [r.vaddr for r in kept]
