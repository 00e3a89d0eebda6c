"""Where a (pre-)dump's pages go: a page target opens a session per images directory, which
says what the parent chain holds and gives the page sink. LocalPages keeps them in the
images directory (ImageSink); transport/sink.py ServerPages sends them to a page server.

The images directory as a page sink (memory/sink.py): pagemap-<id>.img + pages-<N>.img
per pagemap, a PagemapWriter each. Present data is written before present() returns; a
reserved area is the pages file itself at the next present offset (pwrite, sendfile)."""
from __future__ import annotations

import os
from pathlib import Path
from typing import ContextManager, Protocol, Sequence

from ..images.directory import ImageDir
from ..images.pages import FileArea, PagemapWriter
from ..memory.ranges import Ranges
from ..memory.sink import PageSink, PagemapKey
from .plan import covered_by_chain


class ImageSink:
    def __init__(self, imgdir: ImageDir):
        self.imgdir = imgdir
        self._writer: PagemapWriter | None = None
        self._spares: dict[PagemapKey, tuple[int, str, int]] = {}   # prepared pages files

    def prepare(self, pagemap: PagemapKey, nbytes: int) -> None:
        """Allocate about NBYTES for the pages of PAGEMAP now, before a freeze: copying into
        allocated pages of a tmpfs file is cheaper than growing the file as it is written (a
        frozen copy of 8 MiB: 4.6 against 8.5 ms). Its writer takes the file over at begin()
        and cuts off what it did not fill."""
        name = f".spare-pages-{'shmem-' if pagemap.shmem else ''}{pagemap.id}"
        fd = self.imgdir.create_file(name)
        try:
            os.posix_fallocate(fd, 0, nbytes)
        except OSError:                 # e.g. a file system without fallocate: no matter
            self._drop(fd, name)
            return
        self._spares[pagemap] = (fd, name, nbytes)

    def _drop(self, fd: int, name: str) -> None:
        os.close(fd)
        os.unlink(self.imgdir.path(name))

    def _current(self) -> PagemapWriter:
        if self._writer is None:
            raise RuntimeError("page sink: no pagemap begun")
        return self._writer

    def begin(self, pagemap: PagemapKey) -> None:
        if self._writer is not None:
            raise RuntimeError(f"page sink: pagemap {self._writer.pid} is not ended")
        self._writer = PagemapWriter(self.imgdir, pagemap.id, shmem=pagemap.shmem)
        spare = self._spares.pop(pagemap, None)
        if spare is not None:
            self._writer.adopt_pages_file(*spare)

    def present(self, vaddrs: Sequence[int], lengths: Sequence[int], data: memoryview) -> None:
        self._current().add_runs(vaddrs, lengths, data)

    def parent(self, vaddr: int, nr_pages: int) -> None:
        self._current().add_parent(vaddr, nr_pages)

    def skipped(self, vaddr: int, nr_pages: int) -> None:
        self._current().add_skipped(vaddr, nr_pages)

    def reserve(self, nbytes: int) -> FileArea:
        return self._current().reserve(nbytes)

    def placed(self, vaddrs: Sequence[int], lengths: Sequence[int]) -> None:
        self._current().add_copied(vaddrs, lengths)

    def end(self) -> None:
        writer, self._writer = self._current(), None
        writer.close()

    def close(self) -> None:
        """Drop a pagemap begun and not ended (an error on the way): nothing is written."""
        if self._writer is not None:
            self._writer.abort()
            self._writer = None
        for fd, name, _ in self._spares.values():
            self._drop(fd, name)
        self._spares.clear()

    def __enter__(self) -> "ImageSink":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class PageSession(Protocol):
    """The pages of one images directory being written."""

    def covered(self, pid: int) -> Ranges:
        """Pages the parent chain holds for PID (asked before any freeze)."""

    def sink(self, imgdir: ImageDir) -> ContextManager[PageSink]:
        """The sink of the directory's pages; its clean exit makes them durable."""

    def finish(self) -> None:
        """Make the pages durable now (before the images are committed and the tree killed)."""

    def __enter__(self) -> "PageSession": ...

    def __exit__(self, *exc: object) -> None: ...


class PageTarget(Protocol):
    def session(self, path: str | Path, prev: str | Path | None) -> PageSession:
        """The session of the images directory PATH whose parent is PREV."""


class LocalSession:
    def __init__(self, prev: str | Path | None):
        self.prev = Path(prev) if prev is not None else None

    def covered(self, pid: int) -> Ranges:
        return covered_by_chain(self.prev, pid)

    def sink(self, imgdir: ImageDir) -> ImageSink:
        return ImageSink(imgdir)

    def finish(self) -> None:
        pass                            # each pagemap was complete at its end()

    def __enter__(self) -> "LocalSession":
        return self

    def __exit__(self, *exc: object) -> None:
        pass


class LocalPages:
    """Pages in the images directory itself (the default)."""

    def session(self, path: str | Path, prev: str | Path | None) -> LocalSession:
        return LocalSession(prev)


LOCAL = LocalPages()
