"""Page ranges as two arrays of [start, end) byte addresses (array('Q')): the currency of
plans, scans and pagemaps (the one interval library of coldsnap: no per-page work anywhere).

Plain Python over the ranges, not numpy: a dump or a restore of an ordinary process sees a
few dozen ranges, and importing numpy would cost more (about 60 ms of every command) than
all their arithmetic. Past BIG ranges (a fragmented address space of gigabytes) the set
operations hand over to the vectorised versions of ranges_np, which import numpy then.
"""
from __future__ import annotations

import sys
from array import array
from bisect import bisect_left, bisect_right
from heapq import merge
from itertools import compress, islice
from operator import eq
from typing import Iterable, Sequence

from ..kernel.page import PAGE_SHIFT

# From this many ranges on (both operands together), numpy's passes win even counting
# its import; from BIG_LOADED on when numpy is loaded already (a tracked pre-dump's collect
# uses it): 8192 ranges take 18 ms in the plain loops, 5 ms in numpy's.
BIG = 20000
BIG_LOADED = 2000
# A union with this many ranges or fewer on one side (the vDSO, an empty scan) inserts them
# into a copy of the other side's arrays instead of walking every range in Python
FEW = 16
_FLIP = bytes.maketrans(b"\x00\x01", b"\x01\x00")


def u64(values) -> array:
    """An array('Q') of VALUES: an array('Q') as it is, a numpy array through its bytes,
    any other iterable of ints element by element."""
    if isinstance(values, array) and values.typecode == "Q":
        return values
    if type(values).__module__ == "numpy":
        return array("Q", values.astype("<u8", copy=False).tobytes())
    return array("Q", values)


class Ranges:
    """Sorted, non-overlapping, page-aligned [start, end) ranges."""
    __slots__ = ("starts", "ends")

    def __init__(self, starts, ends):
        self.starts: array = u64(starts)
        self.ends: array = u64(ends)

    def __repr__(self) -> str:
        return f"Ranges({[(hex(s), hex(e)) for s, e in self.pairs()]})"

    def __eq__(self, other) -> bool:
        return isinstance(other, Ranges) and self.starts == other.starts and self.ends == other.ends

    @staticmethod
    def empty() -> "Ranges":
        return Ranges(array("Q"), array("Q"))

    @staticmethod
    def of(pairs: Iterable[Sequence[int]]) -> "Ranges":
        starts, ends = array("Q"), array("Q")
        for s, e in pairs:
            starts.append(s)
            ends.append(e)
        return Ranges(starts, ends)

    @staticmethod
    def covering(pairs: Iterable[Sequence[int]]) -> "Ranges":
        """Ranges covering any [start, end) pairs (unsorted, overlapping): sorted, joined."""
        return _join_sorted(sorted((int(s), int(e)) for s, e in pairs if e > s))

    def __len__(self) -> int:
        return len(self.starts)

    @property
    def nr_pages(self) -> int:
        return (sum(self.ends) - sum(self.starts)) >> PAGE_SHIFT

    @property
    def lengths(self) -> array:
        """Bytes of each range."""
        return array("Q", map(int.__sub__, self.ends, self.starts))

    def pairs(self) -> list[tuple[int, int]]:
        return list(zip(self.starts, self.ends))

    def as_numpy(self):
        """(starts, ends) as numpy uint64 arrays sharing this object's memory (imports numpy)."""
        import numpy as np
        return np.frombuffer(self.starts, np.uint64), np.frombuffer(self.ends, np.uint64)

    def merged(self) -> "Ranges":
        """Join ranges that touch (found and dropped by C loops: map, compress)."""
        if len(self) < 2:
            return self
        touch = bytes(map(eq, self.ends, islice(self.starts, 1, None)))   # 1: range i+1 starts at i's end
        if 1 not in touch:
            return self
        apart = touch.translate(_FLIP)
        return Ranges(array("Q", compress(self.starts, b"\x01" + apart)),
                      array("Q", compress(self.ends, apart + b"\x01")))

    def chunked(self, size: int) -> "Ranges":
        """The same bytes in pieces of at most SIZE bytes."""
        if not len(self) or max(self.lengths) <= size:
            return self
        starts, ends = array("Q"), array("Q")
        for s, e in zip(self.starts, self.ends):
            if e - s <= size:
                starts.append(s)
                ends.append(e)
                continue
            for a in range(s, e, size):
                starts.append(a)
                ends.append(min(a + size, e))
        return Ranges(starts, ends)

    def split_at(self, cuts: Sequence[int]) -> "Ranges":
        """Split ranges at the given sorted addresses (e.g. VMA boundaries) so none crosses a
        cut. Work per cut (a few hundred VMA bounds), not per range (maybe 100000s)."""
        cuts = cuts.tolist() if hasattr(cuts, "tolist") else cuts
        starts, ends = self.starts, self.ends
        inner = []                      # (range index, cut strictly inside it), ascending
        for c in cuts:
            i = bisect_right(starts, c) - 1
            if i >= 0 and c < ends[i] and starts[i] < c:
                inner.append((i, c))
        if not inner:
            return self
        out_s, out_e = array("Q"), array("Q")
        pos, open_i = 0, -1             # next range to copy whole; the range being cut
        for i, c in inner:
            if i != open_i:
                if open_i >= 0:
                    out_e.append(ends[open_i])
                out_s.extend(starts[pos:i])
                out_e.extend(ends[pos:i])
                out_s.append(starts[i])
                pos, open_i = i + 1, i
            out_e.append(c)
            out_s.append(c)
        out_e.append(ends[open_i])
        out_s.extend(starts[pos:])
        out_e.extend(ends[pos:])
        return Ranges(out_s, out_e)

    def pieces_in(self, other: "Ranges") -> tuple[array, array, array]:
        """(starts, ends, index): the parts of each range of self that lie in other, not
        joined, with the index of the range of self each part comes from."""
        ps, pe, idx = array("Q"), array("Q"), array("q")
        os_, oe, m, j = other.starts, other.ends, len(other), 0
        for i, (s, e) in enumerate(zip(self.starts, self.ends)):
            while j < m and oe[j] <= s:
                j += 1
            k = j
            while k < m and os_[k] < e:
                a, b = max(s, os_[k]), min(e, oe[k])
                if a < b:
                    ps.append(a)
                    pe.append(b)
                    idx.append(i)
                k += 1
        return ps, pe, idx

    def intersect(self, other: "Ranges") -> "Ranges":
        if not len(self) or not len(other):
            return Ranges.empty()
        if _big(len(self) + len(other)):
            return _vectorised(self, other, "and")
        out = Joined()
        a_s, a_e, b_s, b_e = self.starts, self.ends, other.starts, other.ends
        i = j = 0
        na, nb = len(a_s), len(b_s)
        while i < na and j < nb:
            lo, hi = max(a_s[i], b_s[j]), min(a_e[i], b_e[j])
            if lo < hi:
                out.add(lo, hi)
            if a_e[i] < b_e[j]:
                i += 1
            else:
                j += 1
        return out.ranges()

    def subtract(self, other: "Ranges") -> "Ranges":
        if not len(other):
            return self.merged()
        if _big(len(self) + len(other)):
            return _vectorised(self, other, "sub")
        out = Joined()
        b_s, b_e, nb, j = other.starts, other.ends, len(other), 0
        for s, e in zip(self.starts, self.ends):
            while j < nb and b_e[j] <= s:
                j += 1
            k, cur = j, s
            while k < nb and b_s[k] < e:
                if b_s[k] > cur:
                    out.add(cur, b_s[k])
                cur = max(cur, b_e[k])
                k += 1
            if cur < e:
                out.add(cur, e)
        return out.ranges()

    def union(self, other: "Ranges") -> "Ranges":
        if len(other) <= FEW or len(self) <= FEW:
            many, few = (self, other) if len(other) <= len(self) else (other, self)
            return _inserted(many, few)
        if _big(len(self) + len(other)):
            return _vectorised(self, other, "or")
        return _join_sorted(merge(zip(self.starts, self.ends), zip(other.starts, other.ends)))


def _inserted(many: Ranges, few: Ranges) -> Ranges:
    """many ∪ few, joined, for a short FEW: each of its ranges replaces the ranges of MANY it
    overlaps or touches (bisect, slice assignment), then touching ones are joined."""
    if not len(few):
        return many.merged()
    starts, ends = array("Q", many.starts), array("Q", many.ends)
    for s, e in zip(few.starts, few.ends):
        i = bisect_left(ends, s)            # the first range ending at or after s
        j = bisect_right(starts, e, i)      # past the last starting at or before e
        if i < j:
            s, e = min(s, starts[i]), max(e, ends[j - 1])
        starts[i:j] = array("Q", (s,))
        ends[i:j] = array("Q", (e,))
    return Ranges(starts, ends).merged()


def _join_sorted(pairs) -> Ranges:
    """Ranges of (start, end) pairs sorted by start: overlapping and touching ones joined."""
    starts, ends = array("Q"), array("Q")
    for s, e in pairs:
        if ends and s <= ends[-1]:
            if e > ends[-1]:
                ends[-1] = e
        else:
            starts.append(s)
            ends.append(e)
    return Ranges(starts, ends)


class Joined:
    """Ranges built in ascending order, touching ones joined (add, then ranges())."""
    __slots__ = ("starts", "ends")

    def __init__(self):
        self.starts, self.ends = array("Q"), array("Q")

    def add(self, s: int, e: int) -> None:
        if self.ends and self.ends[-1] == s:
            self.ends[-1] = e
        else:
            self.starts.append(s)
            self.ends.append(e)

    def ranges(self) -> Ranges:
        return Ranges(self.starts, self.ends)


def _big(n: int) -> bool:
    return n >= BIG or (n >= BIG_LOADED and "numpy" in sys.modules)


def _vectorised(a: Ranges, b: Ranges, op: str) -> Ranges:
    from . import ranges_np
    return ranges_np.boolean(a, b, op)
