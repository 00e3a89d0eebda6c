"""The set operations of memory/ranges.py vectorised with numpy, for range lists too long
for a Python loop (ranges.BIG and more: a fragmented address space of gigabytes). Imported
only then: numpy costs about 60 ms of a command's start-up."""
from __future__ import annotations

import numpy as np

from .ranges import Ranges


def sorted_unique(values: np.ndarray) -> np.ndarray:
    """np.unique of a 1-d array, done by hand: numpy 2's np.unique imports numpy.ma on its
    first call (~9 ms of a dump command)."""
    out = np.sort(values)
    if len(out) > 1:
        out = out[np.concatenate(([True], out[1:] != out[:-1]))]
    return out


_OPS = {"and": lambda x, y: x & y, "sub": lambda x, y: x & ~y, "or": lambda x, y: x | y}


def boolean(a: Ranges, b: Ranges, op: str) -> Ranges:
    """Ranges.intersect/subtract/union ("and", "sub", "or") by sweeping the sorted boundaries."""
    (a_s, a_e), (b_s, b_e) = a.as_numpy(), b.as_numpy()
    pts = sorted_unique(np.concatenate([a_s, a_e, b_s, b_e]))
    if len(pts) < 2:
        return Ranges.empty()
    mids = pts[:-1]
    sel = _OPS[op](_covers(a_s, a_e, mids), _covers(b_s, b_e, mids))
    starts, ends = mids[sel], pts[1:][sel]
    if len(starts) > 1:             # join what touches
        keep = np.ones(len(starts), dtype=bool)
        keep[1:] = starts[1:] != ends[:-1]
        last = np.flatnonzero(np.append(keep[1:], True))
        starts, ends = starts[keep], ends[last]
    return Ranges(starts, ends)


def _covers(starts: np.ndarray, ends: np.ndarray, points: np.ndarray) -> np.ndarray:
    if not len(starts):
        return np.zeros(len(points), dtype=bool)
    i = np.searchsorted(starts, points, side="right") - 1
    ok = i >= 0
    res = np.zeros(len(points), dtype=bool)
    res[ok] = points[ok] < ends[i[ok]]
    return res
