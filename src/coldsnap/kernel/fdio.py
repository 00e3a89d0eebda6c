"""write_all: write(2)/pwrite(2) (writev/pwritev for several buffers) until every byte is
out: the kernel may take fewer per call (pipes, sockets, signals, large files)."""
from __future__ import annotations

import errno
import os

IOV_MAX = 1024                  # buffers per writev call


def write_all(fd: int, data, offset: int | None = None) -> None:
    """Every byte of DATA to FD, at OFFSET if given (positional: the file offset stays).
    DATA is a bytes-like, or a list of them written back to back. A call that takes nothing
    raises OSError(EIO) instead of spinning; other errors are write(2)'s."""
    if isinstance(data, (list, tuple)):
        _writev_all(fd, [v for v in (memoryview(b).cast("B") for b in data) if v.nbytes], offset)
        return
    view = memoryview(data).cast("B")
    while view:
        n = os.write(fd, view) if offset is None else os.pwrite(fd, view, offset)
        if n <= 0:
            raise OSError(errno.EIO, "short write")
        view = view[n:]
        if offset is not None:
            offset += n


def _writev_all(fd: int, views: list[memoryview], offset: int | None) -> None:
    i = 0
    while i < len(views):
        batch = views[i:i + IOV_MAX]
        n = os.writev(fd, batch) if offset is None else os.pwritev(fd, batch, offset)
        if n <= 0:
            raise OSError(errno.EIO, "short write")
        if offset is not None:
            offset += n
        while i < len(views) and n >= views[i].nbytes:
            n -= views[i].nbytes
            i += 1
        if n:
            views[i] = views[i][n:]
