"""Shared memory objects of a dumped tree, each saved once whoever maps or holds it.

  - shared anonymous memory (MAP_SHARED|MAP_ANONYMOUS, inherited across fork): key = its
    shmem inode, the pages of every window a process maps (save_shmem);
  - memfd: key = its inode; memfd.img holds its name, size, mode, owner and seals, and its
    bytes [0, size) go to pagemap-shmem-INODE; every mapping of one gets a MEMFD entry in
    files.img that its VMA names (memfd_mappings), as every fd holding one does
    (files/memfd.py); reached through /proc/PID/fd or /proc/PID/map_files (save_memfds).
Only pages that hold data are saved (SEEK_DATA: resident or swapped), copied in the kernel
from the object into the sink's area (sendfile).
"""
from __future__ import annotations

import errno
import os
import stat as st_
from functools import partial
from typing import Callable


from ..errors import TargetError
from ..files.memfd import MemfdFile, memfd_name, seals_of
from ..files.registry import FileRegistry
from ..images.directory import ImageDir
from ..images.pb import memfd_pb2
from ..kernel.page import PAGE_SIZE
from ..kernel.procfs import fd_path, map_file_link_mode, open_map_file
from ..memory.ranges import Ranges
from ..memory.sink import PageSink, PagemapKey, PlanFeed, SinkCounts
from ..memory.vma import Kind, Vma


def save_shmem(sink: PageSink, views: list[tuple[int, list[Vma]]]) -> tuple[SinkCounts, int]:
    """pagemap-shmem-SHMID, once per shared anonymous object of the tree: its pages holding
    data inside the windows any process maps, read from the object itself through
    /proc/PID/map_files of one process mapping it. views: (pid, its VMAs) of every process.
    Returns (pages handed to the sink, pages mapped)."""
    objects: dict[int, list[tuple[int, Vma]]] = {}
    for pid, vmas in views:
        for v in vmas:
            if v.kind is Kind.ANON_SHARED and not (v.is_sysv or v.is_memfd):
                objects.setdefault(v.inode, []).append((pid, v))
    counts, mapped = SinkCounts(), 0
    for shmid, areas in sorted(objects.items()):
        windows = Ranges.covering([(v.pgoff, v.pgoff + v.size) for _, v in areas])
        mapped += windows.nr_pages
        pid, v0 = areas[0]
        try:
            fd = open_map_file(pid, v0.start, v0.end, os.O_RDONLY)
        except OSError as e:
            raise TargetError(f"process {pid}: shared memory at {v0.start:#x}: cannot open it: "
                              f"{e.strerror}") from None
        try:
            counts.add(save_object(sink, shmid, fd, windows.pairs()))
        finally:
            os.close(fd)
    return counts, mapped


def memfd_mappings(pid: int, vmas: list[Vma], files: FileRegistry) -> dict[tuple[int, int], int]:
    """(start, end) of each memfd VMA -> the id of a MEMFD file (made here, one per inode and
    access mode) that mm-PID.img names; the mode is the mapped file's (map_files link)."""
    ids: dict[tuple[int, int], int] = {}
    made: dict[tuple[int, int], int] = {}
    for v in vmas:
        if not v.is_memfd:
            continue
        try:
            writable = bool(map_file_link_mode(pid, v.start, v.end) & st_.S_IWUSR)
        except OSError as e:
            raise TargetError(f"process {pid}: memfd mapping {v.start:#x}: {e.strerror}") from None
        key = (v.inode, os.O_RDWR if writable else os.O_RDONLY)
        if key not in made:
            made[key] = files.add(MemfdFile(files.new_id(), v.inode, key[1], name=memfd_name(v.path)))
        ids[(v.start, v.end)] = made[key]
    return ids


def save_memfds(imgdir: ImageDir, sink: PageSink, files: FileRegistry,
                views: list[tuple[int, list[Vma]]]) -> SinkCounts:
    """memfd.img and pagemap-shmem-INODE of every memfd the tree holds or maps."""
    where: dict[int, tuple[str, Callable[[], int]]] = {}     # inode -> (name, how to open it)
    for pid, files_id in files.tasks.items():
        for e in files.tables.get(files_id, []):
            f = files.files[e.file_id]
            if isinstance(f, MemfdFile) and f.inode not in where:
                where[f.inode] = (f.name, partial(os.open, fd_path(pid, e.fd), os.O_RDONLY | os.O_CLOEXEC))
    for pid, vmas in views:
        for v in vmas:
            if v.is_memfd and v.inode not in where:
                where[v.inode] = (memfd_name(v.path), partial(open_map_file, pid, v.start, v.end, os.O_RDONLY))
    counts, entries = SinkCounts(), []
    for inode, (name, opener) in sorted(where.items()):
        try:
            fd = opener()
        except OSError as e:
            raise TargetError(f"memfd {name}: cannot open it: {e.strerror}") from None
        try:
            st = os.fstat(fd)
            entries.append(memfd_pb2.memfd_inode_entry(
                name=name, uid=st.st_uid, gid=st.st_gid, size=st.st_size, shmid=inode,
                seals=seals_of(fd), inode_id=inode, mode=st.st_mode))
            counts.add(save_object(sink, inode, fd, [(0, (st.st_size + PAGE_SIZE - 1) & ~(PAGE_SIZE - 1))]))
        finally:
            os.close(fd)
    imgdir.write("memfd.img", entries)
    return counts


def save_object(sink: PageSink, key: int, fd: int, windows) -> SinkCounts:
    """pagemap-shmem-KEY: the pages of object FD inside WINDOWS ((lo, hi) byte offsets,
    ascending) that hold data."""
    sink.begin(PagemapKey(key, shmem=True))
    feed = PlanFeed(sink)
    for lo, hi in windows:
        for d, h in _data_runs(fd, lo, hi):
            area = feed.reserve(h - d)
            n = area.sendfile(fd, d, 0, h - d)      # fewer where the object ends
            if n % PAGE_SIZE:                       # inside a page: the rest of it reads as zeros
                area.pwrite(memoryview(bytes(PAGE_SIZE - n % PAGE_SIZE)), n)
                n += PAGE_SIZE - n % PAGE_SIZE
            if n:
                feed.placed((d,), (n,))
    counts = feed.finish()
    sink.end()
    return counts


def _data_runs(fd: int, lo: int, hi: int):
    """Page-aligned [start, end) runs of [lo, hi) that hold data (SEEK_DATA / SEEK_HOLE)."""
    pos = lo
    while pos < hi:
        try:
            d = os.lseek(fd, pos, os.SEEK_DATA)
        except OSError as e:
            if e.errno == errno.ENXIO:
                return
            raise
        if d >= hi:
            return
        h = min(os.lseek(fd, d, os.SEEK_HOLE), hi)
        d = d & ~(PAGE_SIZE - 1)
        h = (h + PAGE_SIZE - 1) & ~(PAGE_SIZE - 1)
        yield max(d, pos), min(h, hi)
        pos = h
