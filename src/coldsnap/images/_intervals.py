"""Vectorised operations on sorted, disjoint [start, end) lists held as two uint64 arrays."""
from __future__ import annotations

import numpy as np

Spans = tuple[np.ndarray, np.ndarray]
U64 = np.uint64


def empty() -> Spans:
    return np.zeros(0, U64), np.zeros(0, U64)


def as_spans(ranges) -> Spans:
    """Accept (starts, ends), an (n, 2) array or a list of pairs."""
    if isinstance(ranges, tuple) and len(ranges) == 2 and not np.isscalar(ranges[0]):
        return np.asarray(ranges[0], U64), np.asarray(ranges[1], U64)
    arr = np.asarray(ranges, U64).reshape(-1, 2)
    return arr[:, 0].copy(), arr[:, 1].copy()


def merge(starts: np.ndarray, ends: np.ndarray) -> Spans:
    """Sort and join overlapping or touching spans."""
    keep = ends > starts
    starts, ends = starts[keep], ends[keep]
    if len(starts) < 2:
        return starts.astype(U64), ends.astype(U64)
    order = np.argsort(starts, kind="stable")
    starts, ends = starts[order], ends[order]
    reach = np.maximum.accumulate(ends)
    new = np.empty(len(starts), bool)
    new[0] = True
    new[1:] = starts[1:] > reach[:-1]
    first = np.flatnonzero(new)
    last = np.append(first[1:], len(starts)) - 1
    return starts[first], reach[last]


def union(a: Spans, b: Spans) -> Spans:
    return merge(np.concatenate([a[0], b[0]]), np.concatenate([a[1], b[1]]))


def intersect(a: Spans, b: Spans) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pieces of a that lie in b, with the index of the a-span each piece came from."""
    (a_s, a_e), (b_s, b_e) = a, b
    if not len(a_s) or not len(b_s):
        z = np.zeros(0, U64)
        return z, z.copy(), np.zeros(0, np.int64)
    lo = np.searchsorted(b_e, a_s, side="right")   # first b ending after a starts
    hi = np.searchsorted(b_s, a_e, side="left")    # first b starting at/after a ends
    n = np.maximum(hi - lo, 0)
    ai = np.repeat(np.arange(len(a_s)), n)
    bi = np.repeat(lo, n) + (np.arange(len(ai)) - np.repeat(np.cumsum(n) - n, n))
    s = np.maximum(a_s[ai], b_s[bi])
    e = np.minimum(a_e[ai], b_e[bi])
    ok = s < e
    return s[ok], e[ok], ai[ok]


def subtract(a: Spans, b: Spans) -> Spans:
    """Parts of a not in b."""
    pts_s, pts_e, _ = intersect(a, merge(*b))
    if not len(pts_s):
        return a
    # Gaps between consecutive removed pieces, clipped to their a-spans.
    starts = np.concatenate([a[0], pts_e])
    ends = np.concatenate([a[1], pts_s])
    order_s, order_e = np.sort(starts), np.sort(ends)
    return merge(order_s, order_e)
