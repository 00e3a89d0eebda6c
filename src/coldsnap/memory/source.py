"""The page source: where a restore reads saved pages from (the mirror of memory/sink.py).

    src.runs()                  # [(vaddr, nbytes)]: every run that has data, ascending
    for vaddr, nbytes, buf, offset in src.mapped(): ...   # the bytes: buf[offset:offset + nbytes]
    src.read_into(vaddr, view)  # the bytes of any pages it has, copied into view
    src.close()

A run's "address" is a byte offset in the object for a shared memory pagemap.

Buffer lifetime: a buffer mapped() yields (a uint8 numpy array; its address goes straight to
process_vm_writev on worker threads) stays valid until close(), not longer: the caller stops
using it before closing the source. The images chain maps its pages files; a page server
or a lazy-restore server would fetch runs into memory it keeps until close(), and answer
read_into() (one faulting page at a time) from the network.

Implementations: the images directory and its parent chain (images/source.py ChainSource);
the restore's PageWriter reads through this interface only.
"""
from __future__ import annotations

from typing import Iterator, Protocol

import numpy as np


class PageSource(Protocol):
    def runs(self) -> list[tuple[int, int]]:
        """(vaddr, nbytes) of every run with data, in ascending address order."""

    def mapped(self) -> Iterator[tuple[int, int, np.ndarray, int]]:
        """Every run as (vaddr, nbytes, buffer, offset), ascending; valid until close()."""

    def read_into(self, vaddr: int, buf: memoryview) -> None:
        """Copy the pages [vaddr, vaddr + len(buf)) into buf (whole pages, all present)."""

    def close(self) -> None:
        """Release what the source holds; buffers it gave out are invalid from now on."""
