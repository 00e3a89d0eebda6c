"""The images directory and its parent chain as a page source (memory/source.py): one
pagemap's runs, PE_PARENT resolved down the chain, read from the mapped pages files."""
from __future__ import annotations

import bisect
import mmap
import os
from typing import Iterator, Union

import numpy as np

from ..errors import ImageError
from .chain import PageChain
from .directory import ImageDir
from .framing import open_image
from .pages import pagemap_name


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
    (the other origin: transport/source.py RemotePages, a page server's session)."""

    def source(self, imgdir: ImageDir, key: int, shmem: bool = False) -> "ChainSource | None":
        """The pages of pagemap KEY, or None when the dump has no such pagemap."""
        return ChainSource(imgdir, key, shmem) if imgdir.exists(pagemap_name(key, shmem)) else None

    def start(self) -> None:
        """In the lazy-pages server, before it serves: nothing to open here."""

    def forked(self) -> None:
        """In a process forked from the restore: nothing inherited to let go."""

    def close(self) -> None:
        pass


class ChainSource:
    """The pages of pagemap KEY (a pid, or a shmid with shmem=True) as the chain holds them.

    The pagemaps are read (and checked) here; the pages files are mapped read-only on the
    first mapped() and unmapped by close()."""

    def __init__(self, imgdir: Union[ImageDir, str, os.PathLike], key: int, shmem: bool = False):
        with PageChain(imgdir, key, shmem=shmem) as chain:
            self._runs = chain.sources()          # (level, vaddr, nbytes, offset)
            self.files = [r.pages_path if r is not None else None
                          for r in (chain.reader(level) for level in range(len(chain.dirs)))]
            self.where = chain.top.path(pagemap_name(key, shmem))
        self._starts = [vaddr for _, vaddr, _, _ in self._runs]
        self._maps: dict[int, np.ndarray] = {}

    def drop(self, areas: list[tuple[int, int]]) -> None:
        """Forget the pages inside AREAS ([start, end) pairs): runs are cut around them."""
        self._runs = cut_runs(self._runs, areas)
        self._starts = [vaddr for _, vaddr, _, _ in self._runs]

    def runs(self) -> list[tuple[int, int]]:
        return [(vaddr, nbytes) for _, vaddr, nbytes, _ in self._runs]

    def _level(self, level: int) -> np.ndarray:
        arr = self._maps.get(level)
        if arr is None:
            path = self.files[level]
            if path is None:
                raise ImageError(f"{self.where}: chain level {level} has no pages file")
            fd = open_image(path)
            try:
                size = os.fstat(fd).st_size
                m = mmap.mmap(fd, size, mmap.MAP_SHARED, mmap.PROT_READ) if size else None
            finally:
                os.close(fd)
            # the array holds the mapping: dropping it unmaps the file
            arr = np.frombuffer(m, np.uint8) if m is not None else np.zeros(0, np.uint8)
            self._maps[level] = arr
        return arr

    def mapped(self) -> Iterator[tuple[int, int, np.ndarray, int]]:
        for level, vaddr, nbytes, offset in self._runs:
            yield vaddr, nbytes, self._level(level), offset

    def located(self) -> list[tuple[int, int, int, int]]:
        """(level, vaddr, nbytes, offset) of every run: level 0 is this dump, 1 its parent..."""
        return list(self._runs)

    def saved(self, level: int, offset: int, nbytes: int) -> np.ndarray:
        """The bytes at OFFSET of chain level LEVEL's pages file (a view of its mapping)."""
        return self._level(level)[offset:offset + nbytes]

    def read_into(self, vaddr: int, buf: memoryview) -> None:
        out = np.frombuffer(buf, np.uint8)
        end, pos = vaddr + len(out), vaddr
        i = max(0, bisect.bisect_right(self._starts, vaddr) - 1)
        for level, start, nbytes, offset in self._runs[i:]:
            if start + nbytes <= pos:
                continue
            if start > pos:
                break
            stop = min(end, start + nbytes)
            skip = offset + pos - start
            out[pos - vaddr:stop - vaddr] = self._level(level)[skip:skip + stop - pos]
            pos = stop
            if pos >= end:
                return
        raise ImageError(f"{self.where}: page {pos:#x} has no data")

    def close(self) -> None:
        self._maps.clear()

    def __enter__(self) -> "ChainSource":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
