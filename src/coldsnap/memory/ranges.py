"""Page ranges as numpy arrays of [start, end) byte addresses: the currency of plans, scans
and pagemaps (the one interval library of coldsnap: no per-page work anywhere)."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..kernel.page import PAGE_SHIFT


@dataclass(frozen=True)
class Ranges:
    """Sorted, non-overlapping, page-aligned [start, end) ranges."""
    starts: np.ndarray
    ends: np.ndarray

    @staticmethod
    def empty() -> "Ranges":
        z = np.zeros(0, dtype=np.uint64)
        return Ranges(z, z.copy())

    @staticmethod
    def of(pairs) -> "Ranges":
        arr = np.asarray(list(pairs), dtype=np.uint64).reshape(-1, 2)
        return Ranges(arr[:, 0].copy(), arr[:, 1].copy())

    @staticmethod
    def covering(pairs) -> "Ranges":
        """Ranges covering any [start, end) pairs (unsorted, overlapping): sorted, joined."""
        arr = np.asarray(list(pairs), dtype=np.uint64).reshape(-1, 2)
        arr = arr[arr[:, 1] > arr[:, 0]]
        if not len(arr):
            return Ranges.empty()
        arr = arr[np.argsort(arr[:, 0], kind="stable")]
        reach = np.maximum.accumulate(arr[:, 1])
        new = np.ones(len(arr), dtype=bool)
        new[1:] = arr[1:, 0] > reach[:-1]
        first = np.flatnonzero(new)
        last = np.append(first[1:], len(arr)) - 1
        return Ranges(arr[first, 0].copy(), reach[last].copy())

    def __len__(self) -> int:
        return len(self.starts)

    @property
    def nr_pages(self) -> int:
        return int(((self.ends - self.starts) >> np.uint64(PAGE_SHIFT)).sum())

    def pairs(self) -> list[tuple[int, int]]:
        return list(zip(self.starts.tolist(), self.ends.tolist()))

    def merged(self) -> "Ranges":
        """Join ranges that touch."""
        if len(self) < 2:
            return self
        keep = np.ones(len(self), dtype=bool)
        keep[1:] = self.starts[1:] != self.ends[:-1]
        starts = self.starts[keep]
        last = np.flatnonzero(np.append(keep[1:], True))
        return Ranges(starts, self.ends[last])

    def chunked(self, size: int) -> "Ranges":
        """The same bytes in pieces of at most SIZE bytes (numpy, no per-page work)."""
        starts, ends = self.starts.astype(np.uint64), self.ends.astype(np.uint64)
        pieces = ((ends - starts + np.uint64(size - 1)) // np.uint64(size)).astype(np.int64)
        if not len(pieces) or pieces.max(initial=0) <= 1:
            return Ranges(starts, ends)
        idx = np.repeat(np.arange(len(starts)), pieces)
        k = np.arange(len(idx)) - np.repeat(np.cumsum(pieces) - pieces, pieces)
        s = starts[idx] + k.astype(np.uint64) * np.uint64(size)
        return Ranges(s, np.minimum(s + np.uint64(size), ends[idx]))

    def split_at(self, cuts: np.ndarray) -> "Ranges":
        """Split ranges at the given addresses (e.g. VMA boundaries) so none crosses a cut."""
        cuts = np.asarray(cuts, dtype=np.uint64)
        if not len(self) or not len(cuts):
            return self
        lo = np.searchsorted(cuts, self.starts, side="right")
        hi = np.searchsorted(cuts, self.ends, side="left")
        inner = hi - lo  # number of cuts strictly inside each range
        if not inner.any():
            return self
        idx = np.repeat(np.arange(len(self)), inner)
        offs = np.arange(len(idx)) - np.repeat(np.cumsum(inner) - inner, inner)
        cut_vals = cuts[lo[idx] + offs]
        starts = np.concatenate([self.starts, cut_vals])
        ends = np.concatenate([cut_vals, self.ends])
        return Ranges(np.sort(starts), np.sort(ends))

    def pieces_in(self, other: "Ranges") -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(starts, ends, index): the parts of each range of self that lie in other, not
        joined, with the index of the range of self each part comes from."""
        if not len(self) or not len(other):
            z = np.zeros(0, dtype=np.uint64)
            return z, z.copy(), np.zeros(0, dtype=np.int64)
        lo = np.searchsorted(other.ends, self.starts, side="right")   # first other ending after
        hi = np.searchsorted(other.starts, self.ends, side="left")    # first other starting at/after the end
        n = np.maximum(hi - lo, 0)
        idx = np.repeat(np.arange(len(self)), n)
        oth = np.repeat(lo, n) + (np.arange(len(idx)) - np.repeat(np.cumsum(n) - n, n))
        s = np.maximum(self.starts[idx], other.starts[oth])
        e = np.minimum(self.ends[idx], other.ends[oth])
        ok = s < e
        return s[ok], e[ok], idx[ok]

    def intersect(self, other: "Ranges") -> "Ranges":
        return _boolean(self, other, lambda a, b: a & b)

    def subtract(self, other: "Ranges") -> "Ranges":
        return _boolean(self, other, lambda a, b: a & ~b)

    def union(self, other: "Ranges") -> "Ranges":
        return _boolean(self, other, lambda a, b: a | b)


def sorted_unique(values: np.ndarray) -> np.ndarray:
    """np.unique of a 1-d array, done by hand: numpy 2's np.unique imports numpy.ma on its
    first call (~9 ms of a dump command)."""
    out = np.sort(values)
    if len(out) > 1:
        out = out[np.concatenate(([True], out[1:] != out[:-1]))]
    return out


def _boolean(a: Ranges, b: Ranges, op) -> Ranges:
    """Set operation on two range lists by sweeping their sorted boundaries."""
    pts = sorted_unique(np.concatenate([a.starts, a.ends, b.starts, b.ends]))
    if len(pts) < 2:
        return Ranges.empty()
    mids = pts[:-1]
    in_a = _covers(a, mids)
    in_b = _covers(b, mids)
    sel = op(in_a, in_b)
    return Ranges(mids[sel], pts[1:][sel]).merged()


def _covers(r: Ranges, points: np.ndarray) -> np.ndarray:
    if not len(r):
        return np.zeros(len(points), dtype=bool)
    i = np.searchsorted(r.starts, points, side="right") - 1
    ok = i >= 0
    res = np.zeros(len(points), dtype=bool)
    res[ok] = points[ok] < r.ends[i[ok]]
    return res
