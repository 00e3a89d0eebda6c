"""Dirty tracking with the soft-dirty bit, for kernels built with CONFIG_MEM_SOFT_DIRTY.

Reading the bits (PAGEMAP_SCAN category PAGE_IS_SOFT_DIRTY, or bit 55 of /proc/PID/pagemap)
and clearing them (writing "4" to /proc/PID/clear_refs) are two separate steps, so unlike
userfaultfd tracking both must happen while the task is frozen: a page written between them
would be lost. Nothing is left in the target: the bits live in its page tables, and new or
moved VMAs start with every page soft-dirty, so they are saved whole without special care.
Shared memory written by another process and io_uring kernel writes are blind spots here
too (see memory/tracking.py).

The development machine's kernel has no soft-dirty: this backend is selected only where
`kernel.features.probe().soft_dirty` is true, and is not exercised by the test suite there.
"""
from __future__ import annotations

import os


from ..errors import AccessDenied, CsError, NoSuchProcess
from ..kernel import pagemap as pm
from ..kernel.page import PAGE_SHIFT, PAGE_SIZE
from ..kernel.procfs import clear_soft_dirty
from .ranges import Ranges
from .scan import scan_with_ioctl, spans
from .vma import Vma

DIRTY_QUERY = pm.ScanQuery(category_anyof_mask=pm.PAGE_IS_SOFT_DIRTY, return_mask=pm.PAGE_IS_SOFT_DIRTY)


class SoftDirtyTracker:
    """collect() = the pages written since the last reset, then reset (task frozen)."""

    def __init__(self, pid: int):
        self.pid = pid
        self._fd = pm.open_pagemap(pid)
        self._scanner = pm.PagemapScanner(self._fd) if pm.has_pagemap_scan() else None

    def reset(self) -> None:
        try:
            clear_soft_dirty(self.pid)
        except (NoSuchProcess, AccessDenied):
            raise
        except OSError as e:
            raise CsError(f"cannot clear the soft-dirty bits of {self.pid}: {e.strerror}") from None

    def collect(self, vmas: list[Vma]) -> Ranges:
        where = spans(vmas)
        if self._scanner is not None:
            dirty = scan_with_ioctl(self._fd, where, self._scanner, DIRTY_QUERY)
        else:
            dirty = self._read_bits(where)
        self.reset()
        return dirty

    def _read_bits(self, where: Ranges) -> Ranges:
        """The soft-dirty pages from /proc/PID/pagemap (kernels without PAGEMAP_SCAN; numpy)."""
        import numpy as np
        starts, ends = [], []
        for lo, hi in where.pairs():
            entries = pm.read_entries(self._fd, lo, hi)
            pages = np.flatnonzero(entries & np.uint64(pm.PM_SOFT_DIRTY)).astype(np.uint64)
            addrs = np.uint64(lo) + (pages << np.uint64(PAGE_SHIFT))
            starts.append(addrs)
            ends.append(addrs + np.uint64(PAGE_SIZE))
        if not starts:
            return Ranges.empty()
        return Ranges(np.concatenate(starts), np.concatenate(ends)).merged()

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
