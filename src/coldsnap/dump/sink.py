"""The page sink that writes image files: present runs from the drain, parent runs from the plan."""
from __future__ import annotations

import numpy as np

from ..kernel.pagemap import PAGE_SHIFT
from ..memory.ranges import Ranges


class ImageSink:
    """Feeds a PagemapWriter in ascending address order.

    The drain delivers present runs in ascending order; runs the parent already holds are
    known up front. Both go to the pagemap interleaved by address, as CRIU requires.
    """

    def __init__(self, writer, in_parent: Ranges | None = None, unreadable: Ranges | None = None):
        self.writer = writer
        # Runs known before the drain starts, written when the drain passes their address.
        known = [(s, e, writer.add_parent) for s, e in (in_parent or Ranges.empty()).pairs()]
        known += [(s, e, writer.add_skipped) for s, e in (unreadable or Ranges.empty()).pairs()]
        self._known = sorted(known, key=lambda run: run[0])
        self._next_known = 0

    def _flush_known_before(self, vaddr: int) -> None:
        runs, i = self._known, self._next_known
        while i < len(runs) and runs[i][0] < vaddr:
            s, e, add = runs[i]
            add(s, (e - s) >> PAGE_SHIFT)
            i += 1
        self._next_known = i

    def put(self, vaddrs: np.ndarray, lengths: np.ndarray, data: memoryview) -> None:
        off = 0
        for vaddr, length in zip(vaddrs.tolist(), lengths.tolist()):
            if self._next_known < len(self._known):
                self._flush_known_before(vaddr)
            self.writer.add_present(vaddr, data[off:off + length])
            off += length

    def skip(self, vaddr: int, nr_pages: int) -> None:
        if self._next_known < len(self._known):
            self._flush_known_before(vaddr)
        self.writer.add_skipped(vaddr, nr_pages)

    def close(self) -> None:
        self._flush_known_before(1 << 64)
        self.writer.close()
