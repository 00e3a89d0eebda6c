"""Find the pages a dump must save: present or swapped private pages, not file-backed, not zero.

Two interchangeable methods give the same page set: the PAGEMAP_SCAN ioctl (ranges straight
from the kernel) and a batched read of /proc/PID/pagemap decoded with numpy.
"""
from __future__ import annotations

import os
from typing import Iterable

import numpy as np

from ..kernel import pagemap as pm
from .ranges import Ranges
from .vma import Vma

# Anything present or swapped that is neither a file page nor the zero page.
SAVE_QUERY = pm.ScanQuery(
    category_anyof_mask=pm.PAGE_IS_PRESENT | pm.PAGE_IS_SWAPPED,
    category_mask=pm.PAGE_IS_FILE | pm.PAGE_IS_PFNZERO,
    category_inverted=pm.PAGE_IS_FILE | pm.PAGE_IS_PFNZERO,
    # Asking only for a category that never matches makes the kernel merge all neighbours.
    return_mask=pm.PAGE_IS_FILE,
)
PAGEMAP_BATCH_PAGES = 1 << 16   # 512 KiB of pagemap entries per pread


def spans(vmas: Iterable[Vma]) -> Ranges:
    """Address spans covered by VMAs whose pages we save, adjacent VMAs joined."""
    pairs = [(v.start, v.end) for v in vmas if v.saves_pages]
    return Ranges.of(pairs).merged() if pairs else Ranges.empty()


def vma_cuts(vmas: Iterable[Vma]) -> np.ndarray:
    return np.unique(np.array([a for v in vmas for a in (v.start, v.end)], dtype=np.uint64))


def scan_with_ioctl(pagemap_fd: int, where: Ranges, scanner: pm.PagemapScanner | None = None) -> Ranges:
    scanner = scanner or pm.PagemapScanner(pagemap_fd)
    parts = [scanner.scan(s, e, SAVE_QUERY) for s, e in where.pairs()]
    regions = np.concatenate(parts) if parts else np.zeros(0, dtype=pm.REGION_DTYPE)
    return Ranges(regions["start"].copy(), regions["end"].copy()).merged()


def scan_with_read(pagemap_fd: int, where: Ranges) -> Ranges:
    zero = np.uint64(pm.zero_pfn() & 0xFFFFFFFFFFFFFFFF)
    starts, ends = [], []
    step = PAGEMAP_BATCH_PAGES << pm.PAGE_SHIFT
    for lo, hi in where.pairs():
        for a in range(lo, hi, step):
            e = pm.read_entries(pagemap_fd, a, min(hi, a + step))
            present = (e & np.uint64(pm.PM_PRESENT)) != 0
            keep = (present | ((e & np.uint64(pm.PM_SWAPPED)) != 0)) \
                & ((e & np.uint64(pm.PM_FILE_OR_SHARED)) == 0) \
                & ~(present & ((e & np.uint64(pm.PM_PFN_MASK)) == zero))
            s, t = _runs(keep)
            starts.append(a + (s.astype(np.uint64) << np.uint64(pm.PAGE_SHIFT)))
            ends.append(a + (t.astype(np.uint64) << np.uint64(pm.PAGE_SHIFT)))
    if not starts:
        return Ranges.empty()
    return Ranges(np.concatenate(starts), np.concatenate(ends)).merged()


def _runs(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Start and end indices of the runs of True in a boolean array."""
    d = np.diff(np.concatenate(([0], mask.view(np.int8), [0])))
    return np.flatnonzero(d == 1), np.flatnonzero(d == -1)


def scan_saved_pages(pid: int, vmas: list[Vma], method: str = "auto") -> tuple[Ranges, str]:
    """The page plan of a task: ranges to copy, split at VMA boundaries, and the method used."""
    if method == "auto":
        method = "ioctl" if pm.has_pagemap_scan() else "read"
    fd = pm.open_pagemap(pid)
    try:
        where = spans(vmas)
        found = scan_with_ioctl(fd, where) if method == "ioctl" else scan_with_read(fd, where)
    finally:
        os.close(fd)
    return found.split_at(vma_cuts(vmas)), method
