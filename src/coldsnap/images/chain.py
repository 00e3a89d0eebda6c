"""Pages across a parent chain (pre-dump iterations), dedup of superseded copies, disk usage.

Every step works per pagemap entry (run), splitting runs where a parent's entries are
shorter, never per page.
"""
from __future__ import annotations

import errno
import os
from bisect import bisect_right
from pathlib import Path
from typing import Optional, Union

from ..errors import ImageError
from ..kernel.falloc import punch_hole
from .directory import ImageDir
from ..kernel.page import PAGE_SHIFT
from ..memory.ranges import Joined, Ranges
from .pages import PE_LAZY, PE_PARENT, PE_PRESENT, PagemapReader, pagemap_name, pages_name

def _as_dir(d: Union[ImageDir, str, os.PathLike]) -> ImageDir:
    return d if isinstance(d, ImageDir) else ImageDir.open(d)


class PageChain:
    """Resolves pages of one pagemap id through an images directory and its ancestors."""

    def __init__(self, imgdir: Union[ImageDir, str, os.PathLike], pid: int, shmem: bool = False):
        self.top = _as_dir(imgdir)
        self.pid = pid
        self.shmem = shmem
        self.dirs = self.top.chain()
        self._readers: dict[int, PagemapReader] = {}
        self.lazy_level: int | None = None   # set: PE_LAZY runs are located at this level
        self.reader(0)  # the top directory must have this pagemap

    def reader(self, level: int) -> Optional[PagemapReader]:
        """The pagemap at chain depth `level`, or None if that directory has none / no such level."""
        if level >= len(self.dirs):
            return None
        if level not in self._readers:
            d = self.dirs[level]
            if level and not d.exists(pagemap_name(self.pid, self.shmem)):
                return None
            self._readers[level] = PagemapReader(d, self.pid, self.shmem)
        return self._readers[level]

    # ---- reading bytes ----------------------------------------------------------------

    def lookup(self, vaddr: int, nr_pages: int) -> bytes:
        """The bytes of nr_pages pages at vaddr, wherever in the chain they live."""
        buf = bytearray(nr_pages << PAGE_SHIFT)
        self.lookup_into(vaddr, memoryview(buf))
        return bytes(buf)

    def lookup_into(self, vaddr: int, buf: memoryview) -> None:
        if vaddr % (1 << PAGE_SHIFT) or buf.nbytes % (1 << PAGE_SHIFT):
            raise ValueError("lookups are in whole pages")
        found: list[tuple[int, int, int, int]] = []
        self._locate(0, vaddr, vaddr + buf.nbytes, found)
        for level, start, nbytes, offset in found:
            self.reader(level).pread_into(offset, buf[start - vaddr:start - vaddr + nbytes])

    def file_pieces(self, vaddr: int, nbytes: int) -> list[tuple[int, int, int]]:
        """Where the bytes of [vaddr, vaddr + nbytes) are: (fd of a pages file, offset in
        it, length) pieces in order (a page server sends them straight from the files).
        The fds stay the chain's (closed with it)."""
        found: list[tuple[int, int, int, int]] = []
        self._locate(0, vaddr, vaddr + nbytes, found)
        return [(self.reader(level).fileno(), offset, n) for level, _, n, offset in found]

    def _uncovered(self, level: int, start: int, end: int) -> ImageError:
        if level == 0:
            return ImageError(f"{self.top.path(pagemap_name(self.pid, self.shmem))}: "
                              f"pages {start:#x}-{end:#x} are not in the pagemap")
        child = self.dirs[level - 1].root
        if level >= len(self.dirs):
            return ImageError(f"{child}: PE_PARENT run {start:#x}-{end:#x} but the directory "
                              f"has no parent")
        parent = self.dirs[level].root
        what = ("has no " + pagemap_name(self.pid, self.shmem)
                if self.reader(level) is None else "does not cover it")
        return ImageError(f"{child}: PE_PARENT run {start:#x}-{end:#x} not covered by parent "
                          f"{parent}: parent {what}")

    def sources(self) -> list[tuple[int, int, int, int]]:
        """Where the bytes of every page of the top pagemap live: (level, vaddr, nbytes,
        offset in that level's pages file), in address order, PE_PARENT runs resolved."""
        out: list[tuple[int, int, int, int]] = []
        top = self.reader(0)
        for start, end in zip(top.vaddr, top.ends):
            self._locate(0, start, end, out)
        return out

    def _locate(self, level: int, start: int, end: int, out: list) -> None:
        # a stack, not recursion: a PE_PARENT run may go down as many levels as the chain has
        todo = [(level, start, end)]
        while todo:
            level, start, end = todo.pop()
            r = self.reader(level)
            if r is None:
                raise self._uncovered(level, start, end)
            i = bisect_right(r.ends, start)
            pos = start
            while pos < end:
                if i >= len(r) or r.vaddr[i] > pos:
                    raise self._uncovered(level, pos, min(end, r.vaddr[i] if i < len(r) else end))
                stop = min(end, r.ends[i])
                flags = r.flags[i]
                if flags & PE_PRESENT:
                    out.append((level, pos, stop - pos, r.offset[i] + pos - r.vaddr[i]))
                elif flags & PE_PARENT:         # that piece below first, then the rest of this level
                    if stop < end:
                        todo.append((level, stop, end))
                    todo.append((level + 1, pos, stop))
                    break
                elif flags & PE_LAZY and self.lazy_level is not None:
                    out.append((self.lazy_level, pos, stop - pos, pos))     # kept elsewhere, by address
                else:
                    raise ImageError(f"{r.path}: pages {pos:#x}-{stop:#x} are lazy, not in the image")
                pos, i = stop, i + 1

    # ---- coverage ---------------------------------------------------------------------

    def _levels(self, level: int, to_the_end: bool = False) -> list[tuple[Ranges, Ranges]]:
        """(present, PE_PARENT) byte ranges of LEVEL and the levels below it, down to the first
        without PE_PARENT runs (what lies deeper cannot matter; TO_THE_END: on all the same)
        or without a pagemap."""
        out = []
        while (r := self.reader(level)) is not None:
            holes = r.spans(PE_PARENT)
            out.append((r.spans(PE_PRESENT), holes))
            if not len(holes) and not to_the_end:
                break
            level += 1
        return out

    @staticmethod
    def _cover(present: Ranges, holes: Ranges, below: Ranges) -> Ranges:
        return present.union(holes.intersect(below)) if len(holes) else present.merged()

    def covered_ranges(self, level: int = 0) -> Ranges:
        """Byte ranges [start, end) this directory can supply: data here or resolvable below
        (worked out from the bottom up: a chain may be deeper than Python's recursion)."""
        below = Ranges.empty()
        for present, holes in reversed(self._levels(level)):
            below = self._cover(present, holes, below)
        return below

    def check(self) -> None:
        """Raise ImageError unless every PE_PARENT run resolves to data somewhere below (the
        topmost level with a hole named)."""
        levels = self._levels(0, to_the_end=True)     # every level: a deeper one may be bad too
        below, missing_at = Ranges.empty(), None
        for level in reversed(range(len(levels))):
            present, holes = levels[level]
            missing = holes.subtract(below) if len(holes) else holes
            if len(missing):
                missing_at = (level, missing)
            below = self._cover(present, holes, below)
        if missing_at is not None:
            level, missing = missing_at
            raise self._uncovered(level + 1, missing.starts[0], missing.ends[0])

    def close(self) -> None:
        for r in self._readers.values():
            r.close()

    def __enter__(self) -> "PageChain":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _punch(d: ImageDir, name: str, offsets: list[int], lengths: list[int]) -> int:
    """One fallocate(PUNCH_HOLE|KEEP_SIZE) per contiguous run of image NAME of D; sizes (and
    offsets) stay."""
    joined = Joined()
    for off, n in zip(offsets, lengths):
        joined.add(off, off + n)
    runs = joined.ranges().pairs()
    if not runs:
        return 0
    path = d.path(name)
    fd = d.open_committed(name, os.O_WRONLY)
    try:
        for s, e in runs:
            try:
                punch_hole(fd, s, e - s)
            except OSError as err:
                if err.errno in (errno.EOPNOTSUPP, errno.ENOSYS):
                    raise ImageError(f"{path}: file system cannot punch holes (auto-dedup)") from None
                raise ImageError(f"{path}: fallocate punch failed: {os.strerror(err.errno)}") from None
    finally:
        os.close(fd)
    return sum(e - s for s, e in runs)


def punch_superseded(parent_dir: Union[ImageDir, str, os.PathLike], pid: int, ranges,
                     shmem: bool = False) -> int:
    """Free the page bytes of `ranges` in parent_dir and all its ancestors (--auto-dedup).

    `ranges` are the pages the new image writes again (Ranges, or [start, end) pairs);
    older copies of them can never be read through the new image. Returns bytes punched.
    """
    want = ranges.merged() if isinstance(ranges, Ranges) else Ranges.covering(ranges)
    total = 0
    for d in _as_dir(parent_dir).chain():
        if not d.exists(pagemap_name(pid, shmem)):
            break
        with PagemapReader(d, pid, shmem) as r:
            s, e, idx = r.spans(PE_PRESENT).pieces_in(want)
            if not len(s):
                continue
            present = [i for i, f in enumerate(r.flags) if f & PE_PRESENT]
            entry = [present[i] for i in idx]
            offsets = [r.offset[k] + a - r.vaddr[k] for k, a in zip(entry, s)]
            total += _punch(d, pages_name(r.pages_id), offsets, [b - a for a, b in zip(s, e)])
    return total


def disk_usage(path: Union[ImageDir, str, os.PathLike]) -> int:
    """Bytes really allocated by the files of one directory (st_blocks), parent not included."""
    root = path.root if isinstance(path, ImageDir) else Path(path)
    total = 0
    for entry in os.scandir(root):
        if entry.is_file(follow_symlinks=False):
            total += entry.stat(follow_symlinks=False).st_blocks * 512
    return total
