"""Find the pages a dump must save: present or swapped private pages, not file-backed, not zero.

Two interchangeable methods give the same page set: the PAGEMAP_SCAN ioctl (ranges straight
from the kernel, no numpy) and a batched read of /proc/PID/pagemap decoded with numpy (the
fallback of kernels without the ioctl: numpy is imported then).
"""
from __future__ import annotations

import os
from array import array
from typing import Iterable

from ..kernel import pagemap as pm
from ..kernel.page import PAGE_SHIFT
from .ranges import Ranges
from .vma import Kind, Vma

# Anything present or swapped that is neither a file page nor the zero page.
SAVE_QUERY = pm.ScanQuery(
    category_anyof_mask=pm.PAGE_IS_PRESENT | pm.PAGE_IS_SWAPPED,
    category_mask=pm.PAGE_IS_FILE | pm.PAGE_IS_PFNZERO,
    category_inverted=pm.PAGE_IS_FILE | pm.PAGE_IS_PFNZERO,
    # Measured here: returning PRESENT is 4x cheaper than returning FILE (which would merge
    # present and swapped neighbours); merged() joins those afterwards.
    return_mask=pm.PAGE_IS_PRESENT,
)
# Private anonymous areas hold no file pages: dropping the FILE test, which costs a folio
# lookup per page, makes their scan 3x cheaper (0.8 ms against 2.3 ms per 256 MiB here).
ANON_QUERY = pm.ScanQuery(
    category_anyof_mask=pm.PAGE_IS_PRESENT | pm.PAGE_IS_SWAPPED,
    category_mask=pm.PAGE_IS_PFNZERO,
    category_inverted=pm.PAGE_IS_PFNZERO,
    return_mask=pm.PAGE_IS_PRESENT,
)
PAGEMAP_BATCH_PAGES = 1 << 16   # 512 KiB of pagemap entries per pread


def spans(vmas: Iterable[Vma], kinds: tuple[Kind, ...] = (Kind.ANON_PRIVATE, Kind.FILE_PRIVATE)) -> Ranges:
    """Address spans covered by VMAs of the given kinds, adjacent VMAs joined."""
    pairs = [(v.start, v.end) for v in vmas if v.kind in kinds]
    return Ranges.of(pairs).merged() if pairs else Ranges.empty()


def vma_cuts(vmas: Iterable[Vma]) -> list[int]:
    return sorted({a for v in vmas for a in (v.start, v.end)})


def scan_with_ioctl(pagemap_fd: int, where: Ranges, scanner: pm.PagemapScanner | None = None,
                    query: pm.ScanQuery = SAVE_QUERY) -> Ranges:
    scanner = scanner or pm.PagemapScanner(pagemap_fd)
    return _split_guards(scan_regions(pagemap_fd, where, scanner, query), 0)[0]


def scan_with_read(pagemap_fd: int, where: Ranges, *, with_guards: bool = False):
    """The pages to save from /proc/PID/pagemap (guard-region pages left out); with
    with_guards, (pages, guard pages)."""
    import numpy as np
    zero = np.uint64(pm.zero_pfn() & 0xFFFFFFFFFFFFFFFF)
    out: dict[bool, tuple[list, list]] = {False: ([], []), True: ([], [])}
    step = PAGEMAP_BATCH_PAGES << PAGE_SHIFT
    for lo, hi in where.pairs():
        for a in range(lo, hi, step):
            e = pm.read_entries(pagemap_fd, a, min(hi, a + step))
            present = (e & np.uint64(pm.PM_PRESENT)) != 0
            guard = (e & np.uint64(pm.PM_GUARD_REGION)) != 0
            keep = (present | ((e & np.uint64(pm.PM_SWAPPED)) != 0)) \
                & ((e & np.uint64(pm.PM_FILE_OR_SHARED)) == 0) \
                & ~(present & ((e & np.uint64(pm.PM_PFN_MASK)) == zero)) & ~guard
            for which, mask in ((False, keep), (True, guard)):
                s, t = _runs(mask)
                out[which][0].append(a + (s.astype(np.uint64) << np.uint64(PAGE_SHIFT)))
                out[which][1].append(a + (t.astype(np.uint64) << np.uint64(PAGE_SHIFT)))
    found, guards = (Ranges(np.concatenate(out[w][0]), np.concatenate(out[w][1])).merged() if out[w][0]
                     else Ranges.empty() for w in (False, True))
    return (found, guards) if with_guards else found


def _runs(mask):
    """Start and end indices of the runs of True in a boolean numpy array."""
    import numpy as np
    d = np.diff(np.concatenate(([0], mask.view(np.int8), [0])))
    return np.flatnonzero(d == 1), np.flatnonzero(d == -1)


def warm_up(numpy: bool = False) -> None:
    """Before a freeze: with numpy (a command whose write tracking collects with it), import
    it and run its range paths once on tiny inputs: the import and their first calls cost
    milliseconds, which must not land inside a frozen window. The plain paths need nothing,
    unless this kernel has no PAGEMAP_SCAN: the page scan then decodes /proc/PID/pagemap
    with numpy, in the freeze."""
    if not numpy and pm.has_pagemap_scan():
        return
    import numpy as np
    from . import ranges_np
    a = Ranges.of([(0, 8192), (12288, 16384)])
    b = Ranges.of([(4096, 12288)])
    ranges_np.boolean(ranges_np.boolean(a, b, "or"), b, "sub")
    _runs(np.array([True, False, True]))


def scan_saved_pages(pid: int, vmas: list[Vma], method: str = "auto") -> tuple[Ranges, str]:
    """The page plan of a task: ranges to copy, split at VMA boundaries, and the method used."""
    found, _, method = scan_saved_and_guards(pid, vmas, method)
    return found, method


def scan_saved_and_guards(pid: int, vmas: list[Vma], method: str = "auto") -> tuple[Ranges, Ranges, str]:
    """scan_saved_pages, and the guard-region pages (MADV_GUARD_INSTALL) found by the same
    walk: the scan sees them as swapped entries, and reading one gives EIO, so they are
    kept out of the plan and returned for the images instead."""
    if method == "auto":
        method = "ioctl" if pm.has_pagemap_scan() else "read"
    fd = pm.open_pagemap(pid)
    try:
        if method == "ioctl":
            scanner = pm.PagemapScanner(fd)
            guard = pm.PAGE_IS_GUARD if pm.has_guard_category() else 0
            anon, anon_guards = _split_guards(scan_regions(fd, spans(vmas, (Kind.ANON_PRIVATE,)), scanner,
                                                           _returning(ANON_QUERY, guard)), guard)
            files, file_guards = _split_guards(scan_regions(fd, spans(vmas, (Kind.FILE_PRIVATE,)), scanner,
                                                            _returning(SAVE_QUERY, guard)), guard)
            found, guards = anon.union(files), anon_guards.union(file_guards)
        else:
            found, guards = scan_with_read(fd, spans(vmas), with_guards=True)
    finally:
        os.close(fd)
    return found.split_at(vma_cuts(vmas)), guards, method


def _returning(q: pm.ScanQuery, extra: int) -> pm.ScanQuery:
    return pm.ScanQuery(q.category_mask, q.category_inverted, q.category_anyof_mask, q.return_mask | extra,
                        q.flags, q.max_pages)


def scan_regions(pagemap_fd: int, where: Ranges, scanner: pm.PagemapScanner, query: pm.ScanQuery) -> array:
    """The regions of every range of WHERE, flat (start, end, categories) triplets."""
    out = array("Q")
    for s, e in where.pairs():
        out.extend(scanner.scan_flat(s, e, query))
    return out


def _split_guards(regions: array, guard: int) -> tuple[Ranges, Ranges]:
    """(pages, guard pages) of flat scan regions, each joined (guard 0: none asked for)."""
    if not guard or not any(c & guard for c in regions[2::3]):
        return Ranges(regions[0::3], regions[1::3]).merged(), Ranges.empty()
    keep, g = Ranges.empty(), Ranges.empty()
    for s, e, c in zip(regions[0::3], regions[1::3], regions[2::3]):
        r = g if c & guard else keep
        r.starts.append(s)
        r.ends.append(e)
    return keep.merged(), g.merged()
