"""Pages of a dump sent to a page server: a PageSink (memory/sink.py) over a client
connection, and the page target (dump/sink.py) that makes one per images directory.

The session on the server is named after the local images directory and its parent after
the local parent's, so that a chain of pre-dumps sent one by one is a chain there too. What
the parent chain holds (for tracked plans) is asked of the server."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from ..images.directory import ImageDir
from ..memory.ranges import Ranges
from ..memory.sink import PagemapKey
from .client import ClientOptions, PageServerClient
from .wire import Endpoint


class BufferArea:
    """A reserved area kept in memory until its runs are placed (then sent)."""

    def __init__(self, nbytes: int):
        self.buf = bytearray(nbytes)
        self.view = memoryview(self.buf)
        self.sent = 0               # bytes of the area already placed

    def pwrite(self, data, offset: int) -> int:
        data = memoryview(data).cast("B")
        n = min(data.nbytes, len(self.buf) - offset)
        self.view[offset:offset + n] = data[:n]
        return n

    def sendfile(self, fd: int, fd_offset: int, offset: int, nbytes: int) -> int:
        done = 0
        while done < nbytes:
            k = os.preadv(fd, [self.view[offset + done:offset + nbytes]], fd_offset + done)
            if k == 0:
                break
            done += k
        return done


class ServerSink:
    """PageSink writing one images directory's pages to a page server session."""

    def __init__(self, client: PageServerClient, close_at_end: bool = True):
        self.client = client
        self.close_at_end = close_at_end    # False: the session goes on (images follow, then finish())
        self._area: BufferArea | None = None
        self._open = False

    def begin(self, pagemap: PagemapKey) -> None:
        self._area = None
        self.client.open(pagemap)
        self._open = True

    def present(self, vaddrs: np.ndarray, lengths: np.ndarray, data: memoryview) -> None:
        self._area = None
        self.client.present(vaddrs, lengths, data)

    def parent(self, vaddr: int, nr_pages: int) -> None:
        self.client.parent(vaddr, nr_pages)

    def skipped(self, vaddr: int, nr_pages: int) -> None:
        self.client.skipped(vaddr, nr_pages)

    def reserve(self, nbytes: int) -> BufferArea:
        self._area = BufferArea(nbytes)
        return self._area

    def placed(self, vaddrs: np.ndarray, lengths: np.ndarray) -> None:
        area = self._area
        size = int(sum(lengths))
        self.client.present(vaddrs, lengths, area.view[area.sent:area.sent + size])
        area.sent += size

    def end(self) -> None:
        self._area = None
        self._open = False

    def close(self) -> None:
        """Drop a pagemap begun and not ended (its process exited meanwhile)."""
        if self._open:
            self.client.drop()
            self._open = False
        self._area = None

    def __enter__(self) -> "ServerSink":
        return self

    def __exit__(self, exc_type, *exc) -> None:
        if exc_type is None and self.close_at_end:
            self.client.close()         # the server commits the session, or this raises
        elif exc_type is None:
            pass                        # ServerSession.finish() sends the images and closes
        else:
            self.client.abort()


class ServerSession:
    """One images directory's pages on the server: the connection is opened at the first
    question (covered) or at sink(), and used for both."""
    KEEP_LOCAL: tuple[str, ...] = ()       # name prefixes send_images leaves out


    def __init__(self, target: "ServerPages", name: str, parent: str | None):
        self.target, self.name, self.parent = target, name, parent
        self.client: PageServerClient | None = None
        self.imgdir: ImageDir | None = None

    def _client(self) -> PageServerClient:
        if self.client is None:
            self.client = PageServerClient(self.target.endpoint, self.target.options,
                                           session=self.name, parent=self.parent)
        return self.client

    def covered(self, pid: int) -> Ranges:
        if self.parent is None:
            return Ranges.empty()
        return self._client().covered(PagemapKey(pid))

    def sink(self, imgdir: ImageDir) -> ServerSink:
        self.imgdir = imgdir
        return ServerSink(self._client(), close_at_end=not self.target.send_images)

    def finish(self) -> None:
        if self.client is None:
            return
        if self.target.send_images and self.imgdir is not None:
            self.send_images()
        self.client.close()

    def send_images(self) -> None:
        """Every image written so far in the local directory but KEEP_LOCAL's (migration:
        the destination restores from its session alone)."""
        for entry in sorted(os.scandir(self.imgdir.root), key=lambda e: e.name):
            if entry.is_file(follow_symlinks=False) and not entry.name.startswith(self.KEEP_LOCAL):
                with open(entry.path, "rb") as f:
                    self.client.send_file(entry.name, f.read())

    def __enter__(self) -> "ServerSession":
        return self

    def __exit__(self, *exc) -> None:
        if self.client is not None:
            self.target.bytes_sent += self.client.bytes_sent
            self.client.abort()         # closed already when the sink ended well


class ServerPages:
    """The page target of `--page-server HOST:PORT`: a session per images directory, named
    after it, its parent after the local parent."""

    def __init__(self, endpoint: Endpoint, options: ClientOptions = ClientOptions(), *,
                 send_images: bool = False):
        self.endpoint, self.options = endpoint, options
        self.send_images = send_images      # every image, not only the pages (a coldsnap server)
        self.bytes_sent = 0

    def session(self, path: str | Path, prev: str | Path | None) -> ServerSession:
        return ServerSession(self, Path(path).name, Path(prev).name if prev is not None else None)
