"""UFFDIO_COPY of one run by two threads at once, for the lazy-pages server.

    copier = Copier()
    for (dst, src, nbytes), (err, done) in copier.copy(fd, dst, src, nbytes): ...

The run is cut into pieces of PIECE bytes that the calling thread and one helper thread
take in turn: the ioctl releases the GIL, so the kernel copies on both CPUs (4 KiB pages
from a mapped pages file: ~3.5 GiB/s for one thread on a quiet machine, ~5.5 for two;
bench/uffd_copy.py). What the helper does not take, the caller copies itself, and the
caller waits for no more than the one piece the helper holds. The helper runs at the
server's priority: at nice 19 it was starved under load while it held a piece (and the
read lock of the target's area, against the process's own munmap or mprotect there), the
caller waiting for it: two threads then copied slower than one. Only the ioctls run on the
helper; the caller reads every result and keeps the state, so a uffd event is never read
while one of its copies is in flight.
"""
from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Callable

from ..kernel import uffd

PIECE = 512 << 10           # bytes: what the caller may have to wait for, at most


@dataclass
class _Job:
    fd: int
    pieces: list[tuple[int, int, int]]
    results: list = field(default_factory=list)
    next: int = 0

    def take(self) -> int | None:
        if self.next >= len(self.pieces):
            return None
        self.next += 1
        return self.next - 1


class Copier:
    def __init__(self, helper: bool = True):
        self._lock = threading.Lock()
        self._work = threading.Condition(self._lock)
        self._done = threading.Condition(self._lock)
        self._job: _Job | None = None
        self._busy = False          # the helper holds a piece
        self.helped = 0             # pieces the helper copied
        self.calls = 0              # pieces copied in all (UFFDIO_COPY calls)
        self._closing = False
        self._thread = threading.Thread(target=self._helper, name="coldsnap-copier", daemon=True) if helper else None
        if self._thread is not None:
            self._thread.start()

    def close(self) -> None:
        """Stop the helper (the server just exits; a test process must not keep a thread)."""
        if self._thread is not None:
            with self._lock:
                self._closing = True
                self._work.notify()
            self._thread.join()
            self._thread = None

    def copy(self, fd: int, dst: int, src: int, nbytes: int,
             stop: Callable[[], bool] | None = None) -> list[tuple[tuple[int, int, int], tuple[int, int]]]:
        """UFFDIO_COPY [src, src + nbytes) of ours to dst of fd's mm: ((dst, src, nbytes), (0 or
        -errno, bytes copied)) of each piece, in address order (uffd.copy). STOP, asked before
        each piece the caller takes: when true, no further piece is begun, and only the pieces
        copied (a prefix) are returned."""
        job = _Job(fd, [(dst + at, src + at, min(PIECE, nbytes - at)) for at in range(0, nbytes, PIECE)])
        job.results = [None] * len(job.pieces)
        with self._lock:
            if len(job.pieces) > 1:
                self._job = job
                self._work.notify()
        while True:
            cut = stop is not None and job.next and stop()
            with self._lock:
                if cut:
                    job.next = len(job.pieces)          # the helper takes none either
                i = job.take()
                if i is None:
                    self._job = None
                    while self._busy:
                        self._done.wait()
                    break
            job.results[i] = uffd.copy(fd, *job.pieces[i])
        done = [(p, r) for p, r in zip(job.pieces, job.results) if r is not None]
        self.calls += len(done)
        return done

    def _helper(self) -> None:
        while True:
            with self._lock:
                while not self._closing and (self._job is None or (i := self._job.take()) is None):
                    self._work.wait()
                if self._closing:
                    return
                job, self._busy = self._job, True
            try:
                job.results[i] = uffd.copy(job.fd, *job.pieces[i])
            finally:
                with self._lock:
                    self._busy = False
                    self.helped += 1
                    self._done.notify()
