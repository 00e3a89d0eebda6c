"""The page source: where a restore reads saved pages from (the mirror of memory/sink.py).

    src.runs()                  # [(vaddr, nbytes)]: every run that has data, ascending
    for vaddr, nbytes, buf, offset in src.mapped(): ...   # the bytes: buf[offset:offset + nbytes]
    src.read_into(vaddr, view)  # the bytes of any pages it has, copied into view
    src.located()               # [(level, vaddr, nbytes, offset)]: where each run's bytes are kept
    src.saved(level, offset, nbytes)   # those bytes (a lazy restore's server, EagerPart)
    src.close()

A run's "address" is a byte offset in the object for a shared memory pagemap.

Buffer lifetime: a buffer mapped() yields (any contiguous bytes buffer, e.g. a memoryview of
a mapped file; its address (kernel/vm.py address()) goes straight to
process_vm_writev on worker threads) stays valid until close(), not longer: the caller stops
using it before closing the source. The images chain maps its pages files; a page server
or a lazy-restore server would fetch runs into memory it keeps until close(), and answer
read_into() (one faulting page at a time) from the network.

A run's (level, offset) names where its bytes are kept, whatever address the run has now
(a lazily restored process may move its pages with mremap): for the chain, the level's
pages file and the offset in it; for a page server, level 0 and the run's saved address.
saved() returns a buffer valid until the next saved() call or close() (a view of a mapped
file, or pages just fetched): the caller keeps what it needs longer.

Implementations: the images directory and its parent chain (images/source.py ChainSource);
a page server's session (transport/source.py RemoteSource). The restore's PageWriter and
the lazy-pages server read through this interface only. Where a restore's sources come
from is a PageOrigin (images/source.py LocalPages, transport/source.py RemotePages).
"""
from __future__ import annotations

from typing import Iterator, Protocol


class PageSource(Protocol):
    def runs(self) -> list[tuple[int, int]]:
        """(vaddr, nbytes) of every run with data, in ascending address order."""

    def mapped(self) -> Iterator[tuple[int, int, memoryview, int]]:
        """Every run as (vaddr, nbytes, buffer, offset), ascending; valid until close()."""

    def read_into(self, vaddr: int, buf: memoryview) -> None:
        """Copy the pages [vaddr, vaddr + len(buf)) into buf (whole pages, all present)."""

    def located(self) -> list[tuple[int, int, int, int]]:
        """(level, vaddr, nbytes, offset) of every run, ascending."""

    def saved(self, level: int, offset: int, nbytes: int) -> memoryview:
        """The bytes kept at (level, offset) (module docstring: how long the buffer lives)."""

    def pin(self) -> None:
        """Hold every byte from now on, whatever becomes of the files' names (the lazy
        server reads after the restore returned, and its directory may be removed)."""

    def warm(self) -> None:
        """Make the saved bytes quick to read from now on (the lazy server calls it once, on
        a thread of its own, while it serves; the chain maps its files in; a page server's
        source does nothing there)."""

    def close(self) -> None:
        """Release what the source holds; buffers it gave out are invalid from now on."""


class PageOrigin(Protocol):
    """Where a restore's page sources come from: the images directory, or a page server."""

    def source(self, imgdir, key: int, shmem: bool = False) -> PageSource | None:
        """The pages of pagemap KEY (a pid, or a shmid with shmem), None if the dump has none."""

    def start(self) -> None:
        """In the lazy-pages server, before it serves (a remote one connects now)."""

    def forked(self) -> None:
        """In a process just forked from the restore: let go of what was inherited."""

    def close(self) -> None:
        """The restore is over: release connections (sources close on their own)."""
