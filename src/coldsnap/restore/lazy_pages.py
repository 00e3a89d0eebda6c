"""What a lazy-restore server still has to copy into one address space.

    pages = LazyPages.build(layout_runs, located_runs)
    pages.window(addr, ...)        # pending runs around a fault, the faulting page first
    pages.next_run(max_pages)      # the background order: top of the chain (newest) first
    pages.done(vaddr, n) / clear(start, end) / move(frm, to, length) / clone()

Per page: the chain level whose pages file holds it (-1: nothing to copy: already in, never
saved, or discarded by the process) and its offset in that file. Segments of numpy arrays
over address ranges, never one object per page; a remap moves the pending state with the
pages, a fork clones it (the child's missing pages are the parent's).
"""
from __future__ import annotations

import bisect
from dataclasses import dataclass

import numpy as np

from ..kernel.page import PAGE_SHIFT, PAGE_SIZE as PAGE
from .lazy_quick import QuickPages, Run

NONE = -1
SCAN = 1 << 14                  # pages looked at per step of the background's search


@dataclass
class Seg:
    start: int
    level: np.ndarray           # int16 per page
    off: np.ndarray             # int64 per page: byte offset in that level's pages file

    @property
    def end(self) -> int:
        return self.start + (len(self.level) << PAGE_SHIFT)


class LazyPages:
    def __init__(self, segs: list[Seg]):
        self.segs = sorted(segs, key=lambda s: s.start)
        self.pending = sum(int((s.level >= 0).sum()) for s in self.segs)
        self.pending_newest = sum(int((s.level == 0).sum()) for s in self.segs)   # level 0's
        self._pass = 0
        self._cursor = 0
        self.levels = 1 + max((int(s.level.max()) for s in self.segs if len(s.level)), default=-1)

    @classmethod
    def build(cls, areas: list[tuple[int, int]], located: list[tuple[int, int, int, int]],
              keep: list[tuple[int, int]]) -> "LazyPages":
        """areas: the registered ranges; located: (level, vaddr, nbytes, offset) of every saved
        run; keep: the (vaddr, nbytes) pieces left to the server (the rest is in already)."""
        segs = []
        for start, end in areas:
            n = (end - start) >> PAGE_SHIFT
            segs.append(Seg(start, np.full(n, NONE, np.int16), np.zeros(n, np.int64)))
        full = cls(segs)
        for level, vaddr, nbytes, offset in located:
            full._fill(level, vaddr, nbytes, offset)
        kept = {seg.start: np.full(len(seg.level), NONE, np.int16) for seg in full.segs}
        for vaddr, nbytes in keep:     # only the kept pieces stay pending
            for seg, i, j in full._slices(vaddr, vaddr + nbytes):
                kept[seg.start][i:j] = seg.level[i:j]
        return cls([Seg(seg.start, kept[seg.start], seg.off) for seg in full.segs])

    def _fill(self, level: int, vaddr: int, nbytes: int, offset: int) -> None:
        for seg, i, j in self._slices(vaddr, vaddr + nbytes):
            seg.level[i:j] = level
            first = offset + (seg.start + (i << PAGE_SHIFT) - vaddr)
            seg.off[i:j] = first + (np.arange(j - i, dtype=np.int64) << PAGE_SHIFT)

    def _slices(self, lo: int, hi: int):
        """(seg, i, j): page index ranges of segments inside [lo, hi)."""
        for seg in self.segs:
            if seg.end <= lo or seg.start >= hi:
                continue
            i = max(0, (lo - seg.start) >> PAGE_SHIFT)
            j = min(len(seg.level), (hi - seg.start + PAGE - 1) >> PAGE_SHIFT)
            if i < j:
                yield seg, i, j

    # -- questions -----------------------------------------------------------------------

    def is_pending(self, addr: int) -> bool:
        for seg, i, _ in self._slices(addr, addr + PAGE):
            return bool(seg.level[i] >= 0)
        return False

    def _run_from(self, seg: Seg, i: int, limit: int) -> Run:
        """The pending run starting at page i of seg: one level, contiguous in its file."""
        lvl, off = int(seg.level[i]), int(seg.off[i])
        j = min(len(seg.level), i + limit)
        ok = (seg.level[i:j] == lvl) & (seg.off[i:j] == off + (np.arange(j - i, dtype=np.int64) << PAGE_SHIFT))
        n = int(np.argmin(ok)) if not ok.all() else j - i
        return Run(seg.start + (i << PAGE_SHIFT), lvl, off, n)

    def window(self, addr: int, ahead: int, behind: int) -> list[Run]:
        """Pending runs in [addr - behind pages, addr + ahead pages), the one at addr first."""
        out: list[Run] = []
        for seg, i, j in self._slices(addr - behind * PAGE, addr + ahead * PAGE):
            at = min(max((addr - seg.start) >> PAGE_SHIFT, i), j)
            for lo, hi in ((at, j), (i, at)):
                k = lo
                while k < hi:
                    if seg.level[k] < 0:
                        k += 1
                        continue
                    run = self._run_from(seg, k, hi - k)
                    out.append(run)
                    k += run.npages
        return out

    def next_run(self, max_pages: int) -> Run | None:
        """The next pending run in background order: level 0 (the dump, written last) first,
        then each parent in turn; in address order within a level from the cursor, then one
        more sweep for what a jump of the cursor (follow) or a remap left behind."""
        for _ in range(2):
            while self._pass < self.levels:
                for seg in self.segs:
                    if seg.end <= self._cursor:
                        continue
                    i = max(0, (self._cursor - seg.start) >> PAGE_SHIFT)
                    while i < len(seg.level):      # in slices: each call costs what it skips, not the whole area
                        hit = np.flatnonzero(seg.level[i:i + SCAN] == self._pass)
                        if hit.size:
                            run = self._run_from(seg, i + int(hit[0]), max_pages)
                            self._cursor = run.vaddr + (run.npages << PAGE_SHIFT)
                            return run
                        i += SCAN
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

    def done(self, vaddr: int, npages: int) -> None:
        """These pages are in (or may never be copied): forget them."""
        self.clear(vaddr, vaddr + (npages << PAGE_SHIFT))

    def clear(self, start: int, end: int) -> None:
        """Nothing to copy in [start, end) any more (copied, discarded, unmapped)."""
        for seg, i, j in self._slices(start, end):
            self.pending -= int((seg.level[i:j] >= 0).sum())
            self.pending_newest -= int((seg.level[i:j] == 0).sum())
            seg.level[i:j] = NONE

    def move(self, frm: int, to: int, length: int) -> None:
        """mremap moved [frm, frm+length) to `to`: the pending state goes with the pages."""
        n = length >> PAGE_SHIFT
        level = np.full(n, NONE, np.int16)
        off = np.zeros(n, np.int64)
        for seg, i, j in self._slices(frm, frm + length):
            k = ((seg.start + (i << PAGE_SHIFT)) - frm) >> PAGE_SHIFT
            level[k:k + j - i] = seg.level[i:j]
            off[k:k + j - i] = seg.off[i:j]
        self.clear(frm, frm + length)
        self.clear(to, to + length)
        if (level >= 0).any():
            self._cut(to)
            self._cut(to + length)
            self.segs = [s for s in self.segs if not (to <= s.start and s.end <= to + length)]
            bisect.insort(self.segs, Seg(to, level, off), key=lambda s: s.start)
            self.pending += int((level >= 0).sum())
            self.pending_newest += int((level == 0).sum())
            self.levels = max(self.levels, 1 + int(level.max()))

    def _cut(self, addr: int) -> None:
        for k, seg in enumerate(self.segs):
            if seg.start < addr < seg.end:
                i = (addr - seg.start) >> PAGE_SHIFT
                self.segs[k:k + 1] = [Seg(seg.start, seg.level[:i].copy(), seg.off[:i].copy()),
                                      Seg(addr, seg.level[i:].copy(), seg.off[i:].copy())]
                return

    def recount(self) -> None:
        self.pending = sum(int((s.level >= 0).sum()) for s in self.segs)
        self.pending_newest = sum(int((s.level == 0).sum()) for s in self.segs)

    @classmethod
    def after(cls, quick: QuickPages, areas, located, keep) -> "LazyPages":
        """The full state of what QUICK (lazy_quick.py, built from the same arguments) served
        so far: every range it cleared is cleared here too, the background goes on from its
        last fault."""
        full = cls.build(areas, located, keep)
        for start, end in quick.cleared:
            full.clear(start, end)
        if quick.cursor is not None:
            full.follow(quick.cursor)
        return full

    def clone(self) -> "LazyPages":
        """The state of a child made by fork: its missing pages are the parent's."""
        twin = LazyPages([Seg(s.start, s.level.copy(), s.off.copy()) for s in self.segs])
        return twin

