"""The images directory as a page sink (memory/sink.py): pagemap-<id>.img + pages-<N>.img
per pagemap, a PagemapWriter each. Present data is written before present() returns; a
reserved area is the pages file itself at the next present offset (pwrite, sendfile)."""
from __future__ import annotations

import numpy as np

from ..images.directory import ImageDir
from ..images.pages import FileArea, PagemapWriter
from ..memory.sink import PagemapKey


class ImageSink:
    def __init__(self, imgdir: ImageDir):
        self.imgdir = imgdir
        self._writer: PagemapWriter | None = None

    def _current(self) -> PagemapWriter:
        if self._writer is None:
            raise RuntimeError("page sink: no pagemap begun")
        return self._writer

    def begin(self, pagemap: PagemapKey) -> None:
        if self._writer is not None:
            raise RuntimeError(f"page sink: pagemap {self._writer.pid} is not ended")
        self._writer = PagemapWriter(self.imgdir, pagemap.id, shmem=pagemap.shmem)

    def present(self, vaddrs: np.ndarray, lengths: np.ndarray, data: memoryview) -> None:
        self._current().add_runs(vaddrs, lengths, data)

    def parent(self, vaddr: int, nr_pages: int) -> None:
        self._current().add_parent(vaddr, nr_pages)

    def skipped(self, vaddr: int, nr_pages: int) -> None:
        self._current().add_skipped(vaddr, nr_pages)

    def reserve(self, nbytes: int) -> FileArea:
        return self._current().reserve(nbytes)

    def placed(self, vaddrs: np.ndarray, lengths: np.ndarray) -> None:
        self._current().add_copied(vaddrs, lengths)

    def end(self) -> None:
        writer, self._writer = self._current(), None
        writer.close()

    def close(self) -> None:
        """Drop a pagemap begun and not ended (an error on the way): nothing is written."""
        if self._writer is not None:
            self._writer.abort()
            self._writer = None

    def __enter__(self) -> "ImageSink":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
