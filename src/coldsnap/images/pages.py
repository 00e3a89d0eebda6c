"""pagemap-<id>.img + pages-<N>.img: which pages a directory describes and their bytes.

Work is per run (entry), never per page: page bytes go to the pages file straight from
the caller's buffers, and the pagemap entries are encoded in one vectorised pass.
"""
from __future__ import annotations

import os
import stat
from array import array
from dataclasses import dataclass
from typing import Optional, Sequence, Union

import numpy as np

from ..errors import ImageError
from ..kernel.page import PAGE_SHIFT, PAGE_SIZE
from ..memory.ranges import Ranges
from .framing import _U32, check_header, entry_size, kind_for, open_image, parse_entries, read_image_bytes
from .pb import pagemap_pb2

PE_PARENT, PE_LAZY, PE_PRESENT = 1, 2, 4
_U32_MAX = 0xFFFFFFFF

BytesLike = Union[bytes, bytearray, memoryview, np.ndarray]


def pagemap_name(pid: int, shmem: bool = False) -> str:
    return f"pagemap-shmem-{pid}.img" if shmem else f"pagemap-{pid}.img"


def pages_name(pages_id: int) -> str:
    return f"pages-{pages_id}.img"


def _pwrite_all(fd: int, views: list[memoryview], offset: int) -> None:
    """pwritev at offset until every byte is out (the kernel may write less than asked)."""
    i = 0
    while i < len(views):
        n = os.pwritev(fd, views[i:i + 1024], offset)  # at most IOV_MAX buffers per call
        offset += n
        while i < len(views) and n >= views[i].nbytes:
            n -= views[i].nbytes
            i += 1
        if n:
            views[i] = views[i][n:]


class FileArea:
    """Room reserved in a pages file (PagemapWriter.reserve): positional writes at known
    offsets, from any thread; sendfile copies a file's bytes in without a buffer of ours."""

    def __init__(self, fd: int, base: int):
        self.fd, self.base = fd, base

    def pwrite(self, data, offset: int) -> int:
        return os.pwrite(self.fd, data, self.base + offset)

    def sendfile(self, fd: int, fd_offset: int, offset: int, nbytes: int) -> int:
        # sendfile writes at the file position; copy_file_range would refuse to cross
        # file systems (shared memory objects live on tmpfs)
        os.lseek(self.fd, self.base + offset, os.SEEK_SET)
        done = 0
        while done < nbytes:
            k = os.sendfile(self.fd, fd, fd_offset + done, nbytes - done)
            if k == 0:
                break                   # the file ends here
            done += k
        return done


_VARINT_LIMITS = np.array([1 << (7 * k) for k in range(1, 10)], dtype=np.uint64)


def _varints(values: np.ndarray, width: int) -> tuple[np.ndarray, np.ndarray]:
    """Protobuf varint bytes of each value as an (n, width) matrix plus a validity mask."""
    v = values.astype(np.uint64)
    shifts = np.arange(width, dtype=np.uint64) * np.uint64(7)
    groups = ((v[:, None] >> shifts) & np.uint64(0x7F)).astype(np.uint8)
    nbytes = 1 + (v[:, None] >= _VARINT_LIMITS[None, :width - 1]).sum(axis=1)
    cols = np.arange(width)
    mask = cols[None, :] < nbytes[:, None]
    groups |= (cols[None, :] < (nbytes[:, None] - 1)).astype(np.uint8) << 7
    return groups, mask


def encode_pagemap_entries(vaddr: np.ndarray, nr: np.ndarray, flags: np.ndarray) -> bytes:
    """Size-prefixed pagemap_entry messages, byte-identical to protobuf's own encoding."""
    n = len(vaddr)
    if n == 0:
        return b""
    compat = np.where(nr <= _U32_MAX, nr, 0)  # field 2 is u32; huge runs rely on field 5
    parts = [(np.full((n, 1), 0x08, np.uint8), np.ones((n, 1), bool)), _varints(vaddr, 10),
             (np.full((n, 1), 0x10, np.uint8), np.ones((n, 1), bool)), _varints(compat, 5),
             (np.full((n, 1), 0x20, np.uint8), np.ones((n, 1), bool)), _varints(flags, 5),
             (np.full((n, 1), 0x28, np.uint8), np.ones((n, 1), bool)), _varints(nr, 10)]
    body = np.concatenate([p[0] for p in parts], axis=1)
    mask = np.concatenate([p[1] for p in parts], axis=1)
    size = mask.sum(axis=1).astype("<u4")
    full = np.concatenate([size.view(np.uint8).reshape(n, 4), body], axis=1)
    fmask = np.concatenate([np.ones((n, 4), bool), mask], axis=1)
    return full[fmask].tobytes()


def _entry_bounds(view: memoryview, pos: int, where: str) -> tuple[np.ndarray, np.ndarray]:
    """Start and size of every entry body from pos on (the one serial step of reading)."""
    starts, sizes, end, unpack = array("q"), array("q"), len(view), _U32.unpack_from
    index = 1
    while pos < end:
        size = unpack(view, pos)[0] if pos + 4 <= end else entry_size(view, pos, index, where)
        if pos + 4 + size > end:
            entry_size(view, pos, index, where)  # raises the "truncated" error
        starts.append(pos + 4)
        sizes.append(size)
        pos += 4 + size
        index += 1
    return np.frombuffer(starts, np.int64), np.frombuffer(sizes, np.int64)


def decode_pagemap_entries(data: np.ndarray, starts: np.ndarray, sizes: np.ndarray
                           ) -> Optional[tuple[np.ndarray, ...]]:
    """Vectorised decode of pagemap_entry bodies into (vaddr, compat, in_parent, flags,
    has_flags, nr_pages, has_nr) arrays; None when an entry uses anything but varint
    fields (the caller then falls back to protobuf)."""
    n = len(starts)
    total = int(sizes.sum())
    if n == 0 or total == 0 or (sizes == 0).any():
        return None
    first = np.cumsum(sizes) - sizes                       # body offset of each entry
    body = data[np.repeat(starts - first, sizes) + np.arange(total)]
    term = body < 0x80                                      # last byte of a varint
    if not term[first + sizes - 1].all():
        return None
    tpos = np.flatnonzero(term)
    vstart = np.empty(len(tpos), np.int64)
    vstart[0] = 0
    vstart[1:] = tpos[:-1] + 1
    vlen = tpos - vstart + 1
    if (vlen > 10).any():
        return None
    k = (np.arange(total) - np.repeat(vstart, vlen)).astype(np.uint64) * np.uint64(7)
    vals = np.add.reduceat((body & 0x7F).astype(np.uint64) << k, vstart)
    ventry = np.repeat(np.arange(n), sizes)[vstart]
    counts = np.bincount(ventry, minlength=n)
    if (counts % 2).any():
        return None
    within = np.arange(len(vals)) - np.repeat(np.cumsum(counts) - counts, counts)
    tags, values, owner = vals[within % 2 == 0], vals[within % 2 == 1], ventry[within % 2 == 0]
    if (tags & np.uint64(7)).any():
        return None
    field = tags >> np.uint64(3)
    out = []
    for f in (1, 2, 3, 4, 5):
        sel = field == f
        col, has = np.zeros(n, np.uint64), np.zeros(n, bool)
        col[owner[sel]] = values[sel]
        has[owner[sel]] = True
        out.append((col, has))
    (vaddr, has_v), (compat, has_c), (in_parent, _), (flags, has_f), (nr, has_n) = out
    if not (has_v.all() and has_c.all()):
        return None   # let protobuf produce the "missing required field" error
    mask32 = np.uint64(_U32_MAX)
    return vaddr, compat & mask32, in_parent != 0, flags & mask32, has_f, nr, has_n


class PagemapWriter:
    """Writes pagemap-<pid>.img and its pages-<N>.img in one images directory.

    Runs must come in strictly ascending, non-overlapping address order across all
    add_* calls; adjacent runs with the same flags are merged into one entry. Page data
    goes to the pages file at explicit offsets: present pages back to back, in order.
    """

    def __init__(self, imgdir, pid: int, shmem: bool = False):
        self.imgdir = imgdir
        self.pid = pid
        self.shmem = shmem
        self.pages_id: int = imgdir.next_pages_id()
        self._fd: Optional[int] = None
        self._vaddr, self._nr, self._flags = array("Q"), array("Q"), array("I")
        self._skipped: list[tuple[int, int]] = []
        self._cursor = 0          # end of the last run added, in bytes
        self._data = 0            # bytes of present pages recorded (the pages file's end)
        self._reserved = 0        # end of the furthest reserved area in the pages file
        self._adopted = False     # the pages file came allocated (adopt_pages_file)
        self.nr_present = self.nr_parent = self.nr_skipped = self.nr_lazy = 0
        self.closed = False

    def _advance(self, vaddr: int, nr_pages: int) -> None:
        if self.closed:
            raise ImageError(f"pagemap {self.pid}: writer is closed")
        if vaddr % PAGE_SIZE or nr_pages <= 0:
            raise ValueError(f"bad run {vaddr:#x}+{nr_pages} pages: must be page aligned, non-empty")
        if vaddr < self._cursor:
            raise ImageError(f"pagemap {self.pid}: run at {vaddr:#x} is not above the previous "
                             f"run's end {self._cursor:#x}; runs must be strictly ascending")
        self._cursor = vaddr + (nr_pages << PAGE_SHIFT)

    def _add(self, vaddr: int, nr_pages: int, flags: int) -> None:
        if (self._vaddr and self._flags[-1] == flags
                and self._vaddr[-1] + (self._nr[-1] << PAGE_SHIFT) == vaddr):
            self._nr[-1] += nr_pages
        else:
            self._vaddr.append(vaddr)
            self._nr.append(nr_pages)
            self._flags.append(flags)

    def _add_runs(self, vaddrs: np.ndarray, lengths: np.ndarray, flags: int) -> None:
        """Runs (vaddrs[i], lengths[i] bytes) with one flag, checked and recorded together:
        per run in Python for a few, in numpy passes for many (a batch of the drain, every
        run of a frozen copy)."""
        if len(vaddrs) < 8:
            for vaddr, length in zip(vaddrs.tolist(), lengths.tolist()):
                self._advance(vaddr, length >> PAGE_SHIFT)
                self._add(vaddr, length >> PAGE_SHIFT, flags)
            return
        if self.closed:
            raise ImageError(f"pagemap {self.pid}: writer is closed")
        v = vaddrs.astype(np.uint64)
        size = lengths.astype(np.uint64)
        ends = v + size
        bad = (v % np.uint64(PAGE_SIZE) != 0) | (size % np.uint64(PAGE_SIZE) != 0) | (size == 0)
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            raise ValueError(f"bad run {int(v[i]):#x}+{int(size[i])} bytes: must be whole pages, non-empty")
        back = np.flatnonzero(v[1:] < ends[:-1])
        if int(v[0]) < self._cursor or len(back):
            at, prev = (int(v[0]), self._cursor) if int(v[0]) < self._cursor else \
                (int(v[back[0] + 1]), int(ends[back[0]]))
            raise ImageError(f"pagemap {self.pid}: run at {at:#x} is not above the previous "
                             f"run's end {prev:#x}; runs must be strictly ascending")
        # touching runs make one entry, as _add would have made them
        first = np.flatnonzero(np.concatenate(([True], v[1:] != ends[:-1])))
        last = np.append(first[1:], len(v)) - 1
        starts, nr = v[first], (ends[last] - v[first]) >> np.uint64(PAGE_SHIFT)
        if (self._vaddr and self._flags[-1] == flags
                and self._vaddr[-1] + (self._nr[-1] << PAGE_SHIFT) == int(starts[0])):
            self._nr[-1] += int(nr[0])
            starts, nr = starts[1:], nr[1:]
        self._vaddr.frombytes(starts.tobytes())
        self._nr.frombytes(nr.tobytes())
        self._flags.frombytes(np.full(len(starts), flags, np.uint32).tobytes())
        self._cursor = int(ends[-1])

    def add_present(self, vaddr: int, data: Union[BytesLike, Sequence[BytesLike]],
                    lazy: bool = False) -> None:
        """Pages with data: `data` is whole pages (or a list of buffers, back to back)."""
        bufs = data if isinstance(data, (list, tuple)) else [data]
        views = [memoryview(b).cast("B") for b in bufs]
        size = sum(v.nbytes for v in views)
        if size % PAGE_SIZE:
            raise ValueError(f"data at {vaddr:#x} is {size} bytes, not whole pages")
        nr = size >> PAGE_SHIFT
        self._advance(vaddr, nr)
        _pwrite_all(self._pages_fd(), views, self._data)
        self._data += size
        self._add(vaddr, nr, PE_PRESENT | (PE_LAZY if lazy else 0))
        self.nr_present += nr

    def add_runs(self, vaddrs: np.ndarray, lengths: np.ndarray, data: BytesLike) -> None:
        """Present runs (vaddrs[i], lengths[i] bytes) whose bytes follow each other in data:
        one write for all of them."""
        view = memoryview(data).cast("B")
        if view.nbytes % PAGE_SIZE or int(lengths.sum()) != view.nbytes:
            raise ValueError(f"{view.nbytes} bytes of data for runs of {int(lengths.sum())} bytes")
        self._add_runs(vaddrs, lengths, PE_PRESENT)
        _pwrite_all(self._pages_fd(), [view], self._data)
        self._data += view.nbytes
        self.nr_present += view.nbytes >> PAGE_SHIFT

    def _pages_fd(self) -> int:
        if self._fd is None:
            self._fd = self.imgdir.create_file(pages_name(self.pages_id))
        return self._fd

    def adopt_pages_file(self, fd: int, name: str, size: int) -> None:
        """Take NAME (open at FD, SIZE bytes already allocated, in the directory being written)
        as the pages file: renamed now, cut to the data written when the writer closes."""
        if self._fd is not None:
            raise ImageError(f"pagemap {self.pid}: the pages file is already open")
        os.rename(self.imgdir.path(name), self.imgdir.path(pages_name(self.pages_id)))
        self._fd, self._adopted = fd, True
        self._reserved = max(self._reserved, size)

    def reserve(self, nbytes: int) -> FileArea:
        """The pages file from the end of the present pages on, for the caller to fill (at
        offsets from the area's start) before it records them with add_copied."""
        self._reserved = max(self._reserved, self._data + nbytes)
        return FileArea(self._pages_fd(), self._data)

    def add_copied(self, vaddrs: np.ndarray, lengths: np.ndarray) -> None:
        """Present runs (vaddrs[i], lengths[i] bytes) whose data the caller wrote into the
        reserved area (after the present pages before them, back to back)."""
        self._add_runs(vaddrs, lengths, PE_PRESENT)
        size = int(lengths.sum())
        self._data += size
        self.nr_present += size >> PAGE_SHIFT

    def add_parent(self, vaddr: int, nr_pages: int) -> None:
        """Pages whose bytes the parent directory holds (PE_PARENT hole)."""
        self._advance(vaddr, nr_pages)
        self._add(vaddr, nr_pages, PE_PARENT)
        self.nr_parent += nr_pages

    def add_lazy(self, vaddr: int, nr_pages: int) -> None:
        """Pages whose bytes stay elsewhere, fetched by a lazy restore (PE_LAZY alone, as
        CRIU writes them for --lazy-pages): the source of a post-copy migration keeps them."""
        self._advance(vaddr, nr_pages)
        self._add(vaddr, nr_pages, PE_LAZY)
        self.nr_lazy += nr_pages

    def add_skipped(self, vaddr: int, nr_pages: int) -> None:
        """Pages planned but unreadable: recorded in the head, never trusted later."""
        self._advance(vaddr, nr_pages)
        last = self._skipped[-1] if self._skipped else None
        if last and last[0] + (last[1] << PAGE_SHIFT) == vaddr:
            self._skipped[-1] = (last[0], last[1] + nr_pages)
        else:
            self._skipped.append((vaddr, nr_pages))
        self.nr_skipped += nr_pages

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        if self._fd is not None:
            try:
                if self._reserved > self._data:     # reserved bytes never recorded
                    os.ftruncate(self._fd, self._data)
                if self._adopted and not self._data:    # no pages file without pages
                    os.unlink(self.imgdir.path(pages_name(self.pages_id)))
            finally:
                os.close(self._fd)
                self._fd = None
        head = pagemap_pb2.pagemap_head(pages_id=self.pages_id)
        for v, n in self._skipped:
            head.cs_skipped.add(vaddr=v, nr_pages=n)
        body = encode_pagemap_entries(np.frombuffer(self._vaddr, np.uint64),
                                      np.frombuffer(self._nr, np.uint64),
                                      np.frombuffer(self._flags, np.uint32))
        with self.imgdir.writer(pagemap_name(self.pid, self.shmem)) as w:
            w.write(head)
            w.write_encoded(body, len(self._vaddr))

    def __enter__(self) -> "PagemapWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()

    def abort(self) -> None:
        """Give up: close the pages file, write no pagemap."""
        self.closed = True
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


@dataclass(frozen=True)
class PageRun:
    """One pagemap entry; `offset` is its byte offset in pages-N.img (PE_PRESENT only)."""
    vaddr: int
    nr_pages: int
    flags: int
    offset: int

    @property
    def end(self) -> int:
        return self.vaddr + (self.nr_pages << PAGE_SHIFT)


class PagemapReader:
    """The entries of one pagemap as arrays, and reads from its pages file."""

    def __init__(self, imgdir, pid: int, shmem: bool = False):
        self.imgdir = imgdir
        self.pid = pid
        self.path = imgdir.path(pagemap_name(pid, shmem))
        head = self._load()
        self.pages_id: int = head.pages_id
        self.pages_path = imgdir.path(pages_name(self.pages_id))
        sk = [(r.vaddr, r.vaddr + (r.nr_pages << PAGE_SHIFT)) for r in head.cs_skipped]
        self.skipped = Ranges.of(sk)
        self.ends = self.vaddr + (self.nr_pages << np.uint64(PAGE_SHIFT))
        self._validate()
        present = (self.flags & PE_PRESENT) != 0
        sizes = np.where(present, self.nr_pages << np.uint64(PAGE_SHIFT), np.uint64(0))
        self.offset = np.cumsum(sizes, dtype=np.uint64) - sizes
        self.pages_bytes = int(sizes.sum())
        self._check_pages_file()
        self._fd: Optional[int] = None

    def _load(self):
        """Parse the head with protobuf and the entries with the vectorised decoder."""
        try:
            data = read_image_bytes(self.path)
        except FileNotFoundError:
            raise ImageError(f"{self.path}: cannot read pagemap: no such file") from None
        view, where, kind = memoryview(data), str(self.path), kind_for(self.path)
        pos = check_header(view, kind, where)
        if pos == len(view):
            raise ImageError(f"{where}: PAGEMAP lacks its head entry")
        size = entry_size(view, pos, 0, where)
        head = next(parse_entries(data[:pos + 4 + size], kind, where))[0]
        starts, sizes = _entry_bounds(view, pos + 4 + size, where)
        fast = decode_pagemap_entries(np.frombuffer(data, np.uint8), starts, sizes)
        if fast is not None:
            vaddr, compat, in_parent, flags, has_f, nr, has_n = fast
        else:  # unusual encodings (or errors): protobuf, one entry at a time
            entries = [m for m, _ in parse_entries(data, kind, where)][1:]
            n = len(entries)
            vaddr = np.fromiter((e.vaddr for e in entries), np.uint64, n)
            compat = np.fromiter((e.compat_nr_pages for e in entries), np.uint64, n)
            in_parent = np.fromiter((e.in_parent for e in entries), bool, n)
            flags = np.fromiter((e.flags for e in entries), np.uint64, n)
            has_f = np.fromiter((e.HasField("flags") for e in entries), bool, n)
            nr = np.fromiter((e.nr_pages for e in entries), np.uint64, n)
            has_n = np.fromiter((e.HasField("nr_pages") for e in entries), bool, n)
        self.vaddr = vaddr
        # Field 5 wins; field 2 is the old count. No flags: PE_PRESENT, or PE_PARENT if in_parent.
        self.nr_pages = np.where(has_n, nr, compat).astype(np.uint64)
        legacy = np.where(in_parent, PE_PARENT, PE_PRESENT).astype(np.uint64)
        self.flags = np.where(has_f, flags, legacy).astype(np.uint32)
        return head

    def _validate(self) -> None:
        bad = np.flatnonzero((self.vaddr % PAGE_SIZE != 0) | (self.nr_pages == 0))
        if len(bad):
            raise ImageError(f"{self.path}: entry {bad[0]} is not a page-aligned, non-empty run")
        if len(self.vaddr) > 1:
            bad = np.flatnonzero(self.vaddr[1:] < self.ends[:-1])
            if len(bad):
                raise ImageError(f"{self.path}: entry {bad[0] + 1} at {int(self.vaddr[bad[0] + 1]):#x} "
                                 f"overlaps or precedes the previous one")

    def _check_pages_file(self) -> None:
        try:
            st = os.stat(self.pages_path)
            if not stat.S_ISREG(st.st_mode):
                raise ImageError(f"{self.pages_path}: not a regular file")
            size = st.st_size
        except FileNotFoundError:
            size = None
        except OSError as e:
            raise ImageError(f"{self.pages_path}: {e.strerror}") from None
        if self.pages_bytes and size is None:
            raise ImageError(f"{self.pages_path}: missing, but {self.path.name} lists "
                             f"{self.pages_bytes >> PAGE_SHIFT} present pages")
        if size is not None and size < self.pages_bytes:
            raise ImageError(f"{self.pages_path}: truncated: {size} bytes, "
                             f"{self.path.name} needs {self.pages_bytes}")

    def __len__(self) -> int:
        return len(self.vaddr)

    def runs(self) -> list[PageRun]:
        return [PageRun(*t) for t in zip(self.vaddr.tolist(), self.nr_pages.tolist(),
                                         self.flags.tolist(), self.offset.tolist())]

    def spans(self, flag: Optional[int] = None) -> Ranges:
        """[start, end) byte ranges of all entries, or of those having `flag` (not joined)."""
        if flag is None:
            return Ranges(self.vaddr, self.ends)
        sel = (self.flags & flag) != 0
        return Ranges(self.vaddr[sel], self.ends[sel])

    def _fileno(self) -> int:
        if self._fd is None:
            self._fd = open_image(self.pages_path)
        return self._fd

    def pread_into(self, offset: int, buf: memoryview) -> None:
        """Fill buf from the pages file at offset."""
        fd, done = self._fileno(), 0
        while done < buf.nbytes:
            n = os.preadv(fd, [buf[done:]], offset + done)
            if n == 0:
                raise ImageError(f"{self.pages_path}: truncated at byte {offset + done}")
            done += n

    def read_pages_into(self, vaddr: int, buf: memoryview) -> None:
        """Fill buf with the pages at vaddr, which must all be PE_PRESENT here."""
        end = vaddr + buf.nbytes
        i = int(np.searchsorted(self.ends, np.uint64(vaddr), side="right"))
        pos = vaddr
        while pos < end:
            if i >= len(self.vaddr) or int(self.vaddr[i]) > pos or not self.flags[i] & PE_PRESENT:
                raise ImageError(f"{self.path}: page {pos:#x} has no data in {self.pages_path.name}")
            stop = min(end, int(self.ends[i]))
            self.pread_into(int(self.offset[i]) + pos - int(self.vaddr[i]),
                            buf[pos - vaddr:stop - vaddr])
            pos, i = stop, i + 1

    def read_pages(self, vaddr: int, nr_pages: int) -> bytes:
        buf = bytearray(nr_pages << PAGE_SHIFT)
        self.read_pages_into(vaddr, memoryview(buf))
        return bytes(buf)

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> "PagemapReader":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


__all__ = ["PAGE_SIZE", "PE_PARENT", "PE_LAZY", "PE_PRESENT", "PageRun", "PagemapReader",
           "PagemapWriter", "encode_pagemap_entries", "pagemap_name", "pages_name"]
