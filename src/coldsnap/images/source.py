"""The images directory and its parent chain as a page source (memory/source.py): one
pagemap's runs, PE_PARENT resolved down the chain, read from the mapped pages files."""
from __future__ import annotations

import bisect
import mmap
import os
from array import array
from typing import Iterator, Union

from ..errors import ImageError
from ..kernel.vm import address, new_iov_array, readv
from ..memory.source import PageSource
from .chain import PageChain
from .directory import ImageDir
from .framing import open_image
from .pages import pagemap_name

WARM_STEP = 32 << 20            # bytes of a pages file touched per system call
TOUCH = 64 << 10                # one byte read per this many: the kernel's fault-around maps 16 pages around it


def cut_runs(runs: list[tuple[int, int, int, int]], areas: list[tuple[int, int]]) -> list[tuple[int, int, int, int]]:
    """(level, vaddr, nbytes, offset) runs without what lies inside AREAS ([start, end))."""
    for lo, hi in areas:
        kept = []
        for level, vaddr, nbytes, offset in runs:
            end = vaddr + nbytes
            if end <= lo or vaddr >= hi:
                kept.append((level, vaddr, nbytes, offset))
                continue
            if vaddr < lo:
                kept.append((level, vaddr, lo - vaddr, offset))
            if end > hi:
                kept.append((level, hi, end - hi, offset + hi - vaddr))
        runs = kept
    return runs


class LocalPages:
    """Where a restore reads pages by default: each pagemap's chain in the images directory
    (the other origin: transport/source.py RemotePages, a page server's session). LAZY: where
    the chain's PE_LAZY runs are (a post-copy migration's source), read by address."""

    def __init__(self, lazy=None):
        self.lazy = lazy

    def source(self, imgdir: ImageDir, key: int, shmem: bool = False) -> "ChainSource | None":
        """The pages of pagemap KEY, or None when the dump has no such pagemap."""
        if not imgdir.exists(pagemap_name(key, shmem)):
            return None
        return ChainSource(imgdir, key, shmem, lazy=self.lazy.by_address(key, shmem) if self.lazy else None)

    def start(self) -> None:
        """In the lazy-pages server, before it serves."""
        if self.lazy is not None:
            self.lazy.start()

    def forked(self) -> None:
        """In a process forked from the restore: let go of what was inherited."""
        if self.lazy is not None:
            self.lazy.forked()

    def close(self) -> None:
        if self.lazy is not None:
            self.lazy.close()


def _map_pages(fd: int) -> memoryview:
    """A pages file mapped read-only; the view holds the mapping (dropping the last view of
    it unmaps the file)."""
    size = os.fstat(fd).st_size
    return memoryview(mmap.mmap(fd, size, mmap.MAP_SHARED, mmap.PROT_READ)) if size else memoryview(b"")


class ChainSource:
    """The pages of pagemap KEY (a pid, or a shmid with shmem=True) as the chain holds them.

    The pagemaps are read (and checked) here; the pages files are mapped read-only on the
    first mapped() and unmapped by close().

    LAZY: where the chain's PE_LAZY runs are read, by address (a post-copy migration's
    source: transport/source.py RemotePages.by_address(), told which runs with expect()).
    Its runs are level 0, and the chain's levels come after it: they are the
    newest pages (the final delta), and fetched first, the source is free the soonest."""

    def __init__(self, imgdir: Union[ImageDir, str, os.PathLike], key: int, shmem: bool = False,
                 lazy: "PageSource | None" = None):
        self.lazy = lazy
        self._shift = 1 if lazy is not None else 0     # levels of the chain, past the lazy one
        with PageChain(imgdir, key, shmem=shmem) as chain:
            if lazy is not None:
                chain.lazy_level = -1
            self._runs = [(level + self._shift, v, n, off) for level, v, n, off in chain.sources()]
            self.files = [None] * self._shift + [r.pages_path if r is not None else None
                                                 for r in (chain.reader(level) for level in range(len(chain.dirs)))]
            self.where = chain.top.path(pagemap_name(key, shmem))
        self._starts = [vaddr for _, vaddr, _, _ in self._runs]
        if lazy is not None:        # what it will be read by address, in order (it asks ahead)
            lazy.expect([(v, n) for level, v, n, _ in self._runs if level == 0])
        self._maps: dict[int, memoryview] = {}
        self._held: list = []                    # lazy runs fetched for mapped(), until close()

    def drop(self, areas: list[tuple[int, int]], keep_lazy: bool = False) -> None:
        """Forget the pages inside AREAS ([start, end) pairs): runs are cut around them.
        keep_lazy: but not those of the lazy source (a post-copy restore keeps the areas
        built ahead, and their final delta is still to come)."""
        if keep_lazy and self._shift:
            lazy = [r for r in self._runs if r[0] == 0]
            self._runs = sorted(lazy + cut_runs([r for r in self._runs if r[0] != 0], areas), key=lambda r: r[1])
        else:
            self._runs = cut_runs(self._runs, areas)
        self._starts = [vaddr for _, vaddr, _, _ in self._runs]

    def runs(self) -> list[tuple[int, int]]:
        return [(vaddr, nbytes) for _, vaddr, nbytes, _ in self._runs]

    @classmethod
    def from_files(cls, runs: list[tuple[int, int, int, int]], files: dict[int, int], where: str) -> "ChainSource":
        """The source another process read (a lazy restore's server started ahead:
        restore/lazy_seed.py): its runs (level, vaddr, nbytes, offset) and its pages files,
        level -> fd (taken over: mapped now, then closed)."""
        self = cls.__new__(cls)
        self.lazy, self._shift, self.where = None, 0, where
        self._runs = list(runs)
        self._starts = [vaddr for _, vaddr, _, _ in self._runs]
        self.files = [None] * (max(files, default=-1) + 1)
        self._maps, self._held = {}, []
        try:
            for level, fd in files.items():
                self._maps[level] = _map_pages(fd)
        finally:
            for fd in files.values():
                os.close(fd)
        return self

    def open_level(self, level: int) -> int:
        """An fd on chain level LEVEL's pages file (for another process: from_files)."""
        path = self.files[level]
        if path is None:
            raise ImageError(f"{self.where}: chain level {level} has no pages file")
        return open_image(path)

    def _level(self, level: int) -> memoryview:
        view = self._maps.get(level)
        if view is None:
            fd = self.open_level(level)
            try:
                view = _map_pages(fd)
            finally:
                os.close(fd)
            self._maps[level] = view
        return view

    def mapped(self) -> Iterator[tuple[int, int, memoryview, int]]:
        for level, vaddr, nbytes, offset in self._runs:
            if self._shift and level == 0:
                buf = self.saved(level, offset, nbytes)
                self._held.append(buf)      # read by the writer's threads after we yield
                yield vaddr, nbytes, buf, 0
            else:
                yield vaddr, nbytes, self._level(level), offset

    def located(self) -> list[tuple[int, int, int, int]]:
        """(level, vaddr, nbytes, offset) of every run: level 0 is this dump, 1 its parent...
        (with a lazy source: 0 is the lazy source, 1 this dump...)"""
        return list(self._runs)

    def pin(self) -> None:
        """Map every pages file now: the bytes stay reachable once the directory is gone (a
        lazy restore's server outlives it; migrate-receive removes its own at once)."""
        levels = {run[0] for run in self._runs} - ({0} if self._shift else set())
        for level in sorted(levels):
            self._level(level)

    def warm(self) -> None:
        """Fill our page tables for the mapped pages files now, newest level first (a lazy
        restore's server, on a thread of its own while the process runs): a UFFDIO_COPY
        from them then takes no page fault per 64 KiB, a third of its time. One byte read
        per 64 KiB, by process_vm_readv from ourselves (a system call: the GIL is let go,
        and a pages file on a disk is read meanwhile), each read fault mapping the 16 pages
        around it (fault-around): ~70 ms of CPU per GiB against ~90-135 for
        MADV_POPULATE_READ, which walks every page and marks it accessed (a kernel with a
        smaller fault-around leaves the copies more faults, nothing worse)."""
        n = WARM_STEP // TOUCH
        iov, sink = new_iov_array(n), bytearray(n)
        iov[1::2] = array("Q", [1]) * n
        me = os.getpid()
        for level in sorted(self._maps):
            view = self._maps[level]
            base = address(view)
            for at in range(0, len(view), WARM_STEP):
                k = min(n, (len(view) - at + TOUCH - 1) // TOUCH)
                iov[0:2 * k:2] = array("Q", range(base + at, base + at + k * TOUCH, TOUCH))
                try:
                    readv(me, address(sink), k, iov, k)
                except OSError:
                    return          # the copies fault them in

    def saved(self, level: int, offset: int, nbytes: int):
        """The bytes at OFFSET of chain level LEVEL's pages file (a view of its mapping), or
        of the lazy source (its level: OFFSET is the address)."""
        if self._shift and level == 0:
            return self.lazy.saved(0, offset, nbytes)
        return self._level(level)[offset:offset + nbytes]

    def read_into(self, vaddr: int, buf: memoryview) -> None:
        out = memoryview(buf).cast("B")
        end, pos = vaddr + len(out), vaddr
        i = max(0, bisect.bisect_right(self._starts, vaddr) - 1)
        for level, start, nbytes, offset in self._runs[i:]:
            if start + nbytes <= pos:
                continue
            if start > pos:
                break
            stop = min(end, start + nbytes)
            out[pos - vaddr:stop - vaddr] = self.saved(level, offset + pos - start, stop - pos)
            pos = stop
            if pos >= end:
                return
        raise ImageError(f"{self.where}: page {pos:#x} has no data")

    def close(self) -> None:
        self._maps.clear()
        self._held.clear()

    def __enter__(self) -> "ChainSource":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
