"""write_all: write(2)/pwrite(2) until every byte is out (the kernel may take fewer per call:
pipes, sockets, signals, large files)."""
from __future__ import annotations

import errno
import os


def write_all(fd: int, data, offset: int | None = None) -> None:
    """Every byte of DATA (bytes-like) to FD, at OFFSET with pwrite if given. A call that
    takes nothing raises OSError(EIO) instead of spinning; other errors are write(2)'s."""
    view = memoryview(data).cast("B")
    while view:
        n = os.write(fd, view) if offset is None else os.pwrite(fd, view, offset)
        if n <= 0:
            raise OSError(errno.EIO, "short write")
        view = view[n:]
        if offset is not None:
            offset += n
