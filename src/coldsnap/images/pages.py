"""pagemap-<id>.img + pages-<N>.img: which pages a directory describes and their bytes.

Work is per run (entry), never per page: page bytes go to the pages file straight from
the caller's buffers, and the pagemap entries are encoded in one vectorised pass.
"""
from __future__ import annotations

import os
import stat
from array import array
from bisect import bisect_right
from itertools import accumulate
from typing import NamedTuple, Optional, Sequence, Union

from ..errors import ImageError
from ..kernel.fdio import write_all
from ..kernel.page import PAGE_SHIFT, PAGE_SIZE
from ..memory.ranges import Ranges
from .framing import _U32, check_header, entry_size, kind_for, open_image, parse_entries, read_image_bytes
from .pb import pagemap_pb2

PE_PARENT, PE_LAZY, PE_PRESENT = 1, 2, 4
_U32_MAX = 0xFFFFFFFF
# From this many entries on a pagemap is encoded and decoded with numpy (images/pages_np.py):
# its vectorised passes win even counting its import.
BIG_PAGEMAP = 20000

BytesLike = Union[bytes, bytearray, memoryview]


def pagemap_name(pid: int, shmem: bool = False) -> str:
    return f"pagemap-shmem-{pid}.img" if shmem else f"pagemap-{pid}.img"


def pages_name(pages_id: int) -> str:
    return f"pages-{pages_id}.img"


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


def _varint(v: int) -> bytes:
    out = bytearray()
    while v >= 0x80:
        out.append(v & 0x7F | 0x80)
        v >>= 7
    out.append(v)
    return bytes(out)


# The first three varint bytes of a page-aligned address of 2 MiB or more, by its bits 12-20
# (bits 0-11 are zero; more bytes follow, so each has its continuation bit)
_LOW_VARINT = [bytes((0x80, (x & 3) << 5 | 0x80, x >> 2 | 0x80)) for x in range(512)]


def encode_pagemap_entries(vaddr: Sequence[int], nr: Sequence[int], flags: Sequence[int]) -> bytes:
    """Size-prefixed pagemap_entry messages, byte-identical to protobuf's own encoding.

    Entries of one 2 MiB area with the same size and flags differ only in three bytes of the
    address: the rest of each (size prefix, upper address bytes, the other fields) is encoded
    once per area and reused (8192 one-page entries: about a tenth of the time)."""
    if len(vaddr) >= BIG_PAGEMAP:
        from .pages_np import encode_pagemap_entries as vectorised
        import numpy as np
        return vectorised(np.asarray(vaddr, np.uint64), np.asarray(nr, np.uint64), np.asarray(flags, np.uint32))
    if hasattr(vaddr, "tolist"):
        vaddr, nr, flags = vaddr.tolist(), nr.tolist(), flags.tolist()
    out, pack, low = bytearray(), _U32.pack, _LOW_VARINT
    parts: dict[tuple[int, int, int], tuple[bytes, bytes]] = {}
    for v, n, f in zip(vaddr, nr, flags):
        # field 2 is u32; huge runs rely on field 5
        rest = b"\x10" + _varint(n if n <= _U32_MAX else 0) + b"\x20" + _varint(f) + b"\x28" + _varint(n) \
            if (v & 0xFFF or v < 0x200000) else None
        if rest is not None:
            body = b"\x08" + _varint(v) + rest
            out += pack(len(body))
            out += body
            continue
        key = (v >> 21, n, f)
        head_tail = parts.get(key)
        if head_tail is None:
            tail = _varint(v >> 21) + b"\x10" + _varint(n if n <= _U32_MAX else 0) + b"\x20" + _varint(f) \
                + b"\x28" + _varint(n)
            head_tail = parts[key] = (pack(4 + len(tail)) + b"\x08", tail)
        out += head_tail[0]
        out += low[(v >> 12) & 0x1FF]
        out += head_tail[1]
    return bytes(out)


def _entry_bounds(view: memoryview, pos: int, where: str) -> tuple[array, array]:
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
    return starts, sizes


def decode_pagemap_entries(data: bytes, starts: Sequence[int], sizes: Sequence[int]
                           ) -> Optional[tuple[list, ...]]:
    """Decode of pagemap_entry bodies into (vaddr, compat, in_parent, flags, has_flags,
    nr_pages, has_nr) lists; None when an entry uses anything but varint fields (the caller
    then falls back to protobuf)."""
    if len(starts) >= BIG_PAGEMAP:
        from .pages_np import decode_pagemap_entries as vectorised
        import numpy as np
        out = vectorised(np.frombuffer(data, np.uint8), np.asarray(starts, np.int64), np.asarray(sizes, np.int64))
        return None if out is None else tuple(x.tolist() for x in out)
    n = len(starts)
    if n == 0:
        return None
    cols = [[0] * n for _ in range(6)]          # fields 1..5 by number; [0] unused
    has = [[False] * n for _ in range(6)]
    read = _read_varint
    for k, (pos, size) in enumerate(zip(starts, sizes)):
        end = pos + size
        if size == 0:
            return None
        while pos < end:
            tag = data[pos]             # one byte for fields 1..15: read here, not called for
            if tag < 0x80:
                pos += 1
            else:
                tag, pos = read(data, pos, end)
                if tag is None:
                    return None
            if tag & 7:
                return None
            if pos < end and data[pos] < 0x80:      # a one-byte value (counts, flags)
                value = data[pos]
                pos += 1
            else:
                value, pos = read(data, pos, end)
                if value is None:
                    return None
            f = tag >> 3
            if 1 <= f <= 5:
                cols[f][k], has[f][k] = value, True
    if not (all(has[1]) and all(has[2])):
        return None   # let protobuf produce the "missing required field" error
    return (cols[1], [c & _U32_MAX for c in cols[2]], [x != 0 for x in cols[3]],
            [x & _U32_MAX for x in cols[4]], has[4], cols[5], has[5])


def _read_varint(data: bytes, pos: int, end: int) -> tuple[Optional[int], int]:
    """(value, position after it), or (None, pos) when it runs past END or over 10 bytes."""
    value = shift = 0
    for i in range(pos, min(end, pos + 10)):
        b = data[i]
        value |= (b & 0x7F) << shift
        if b < 0x80:
            return value & 0xFFFFFFFFFFFFFFFF, i + 1
        shift += 7
    return None, pos


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

    def _add_runs(self, vaddrs: Sequence[int], lengths: Sequence[int], flags: int) -> None:
        """Runs (vaddrs[i], lengths[i] bytes) with one flag, checked and recorded together
        (a batch of the drain, every run of a frozen copy); touching runs make one entry."""
        if self.closed:
            raise ImageError(f"pagemap {self.pid}: writer is closed")
        if hasattr(vaddrs, "tolist"):
            vaddrs, lengths = vaddrs.tolist(), lengths.tolist()
        va, nrs, fl, cursor = self._vaddr, self._nr, self._flags, self._cursor
        for v, size in zip(vaddrs, lengths):
            if v % PAGE_SIZE or size % PAGE_SIZE or not size:
                raise ValueError(f"bad run {v:#x}+{size} bytes: must be whole pages, non-empty")
            if v < cursor:
                raise ImageError(f"pagemap {self.pid}: run at {v:#x} is not above the previous "
                                 f"run's end {cursor:#x}; runs must be strictly ascending")
            if va and fl[-1] == flags and va[-1] + (nrs[-1] << PAGE_SHIFT) == v:
                nrs[-1] += size >> PAGE_SHIFT
            else:
                va.append(v)
                nrs.append(size >> PAGE_SHIFT)
                fl.append(flags)
            cursor = v + size
        self._cursor = cursor

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
        write_all(self._pages_fd(), views, self._data)
        self._data += size
        self._add(vaddr, nr, PE_PRESENT | (PE_LAZY if lazy else 0))
        self.nr_present += nr

    def add_runs(self, vaddrs: Sequence[int], lengths: Sequence[int], data: BytesLike) -> None:
        """Present runs (vaddrs[i], lengths[i] bytes) whose bytes follow each other in data:
        one write for all of them."""
        view = memoryview(data).cast("B")
        total = int(sum(lengths))
        if view.nbytes % PAGE_SIZE or total != view.nbytes:
            raise ValueError(f"{view.nbytes} bytes of data for runs of {total} bytes")
        self._add_runs(vaddrs, lengths, PE_PRESENT)
        write_all(self._pages_fd(), view, self._data)
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

    def add_copied(self, vaddrs: Sequence[int], lengths: Sequence[int]) -> None:
        """Present runs (vaddrs[i], lengths[i] bytes) whose data the caller wrote into the
        reserved area (after the present pages before them, back to back)."""
        self._add_runs(vaddrs, lengths, PE_PRESENT)
        size = int(sum(lengths))
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
        body = encode_pagemap_entries(self._vaddr, self._nr, self._flags)
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


def _pick(has_nr: bool, nr: int, compat: int) -> int:
    return nr if has_nr else compat


class PageRun(NamedTuple):
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
        self._validate()
        sizes = [n << PAGE_SHIFT if f & PE_PRESENT else 0 for n, f in zip(self.nr_pages, self.flags)]
        self.offset = array("Q", accumulate(sizes, initial=0))
        self.pages_bytes = self.offset.pop()
        self._check_pages_file()
        self._fd: Optional[int] = None

    def _load(self):
        """Parse the head with protobuf and the entries with the plain (or, for very many,
        the vectorised) decoder."""
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
        fast = decode_pagemap_entries(data, starts, sizes)
        if fast is not None:
            vaddr, compat, in_parent, flags, has_f, nr, has_n = fast
        else:  # unusual encodings (or errors): protobuf, one entry at a time
            entries = [m for m, _ in parse_entries(data, kind, where)][1:]
            vaddr = [e.vaddr for e in entries]
            compat = [e.compat_nr_pages for e in entries]
            in_parent = [e.in_parent for e in entries]
            flags = [e.flags for e in entries]
            has_f = [e.HasField("flags") for e in entries]
            nr = [e.nr_pages for e in entries]
            has_n = [e.HasField("nr_pages") for e in entries]
        self.vaddr = array("Q", vaddr)
        # Field 5 wins; field 2 is the old count. No flags: PE_PRESENT, or PE_PARENT if in_parent.
        self.nr_pages = array("Q", map(_pick, has_n, nr, compat))
        self.flags = array("I", (f if h else PE_PARENT if p else PE_PRESENT
                                 for f, h, p in zip(flags, has_f, in_parent)))
        return head

    def _validate(self) -> None:
        ends, prev = array("Q"), 0
        for i, (v, n) in enumerate(zip(self.vaddr, self.nr_pages)):
            end = v + (n << PAGE_SHIFT)
            if v % PAGE_SIZE or not n or end >= 1 << 64:
                raise ImageError(f"{self.path}: entry {i} is not a page-aligned, non-empty run")
            if v < prev:
                raise ImageError(f"{self.path}: entry {i} at {v:#x} overlaps or precedes the previous one")
            ends.append(end & 0xFFFFFFFFFFFFFFFF)
            prev = end
        self.ends = ends

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
        return [PageRun(*t) for t in zip(self.vaddr, self.nr_pages, self.flags, self.offset)]

    def spans(self, flag: Optional[int] = None) -> Ranges:
        """[start, end) byte ranges of all entries, or of those having `flag` (not joined)."""
        if flag is None:
            return Ranges(self.vaddr, self.ends)
        sel = [i for i, f in enumerate(self.flags) if f & flag]
        return Ranges(array("Q", (self.vaddr[i] for i in sel)), array("Q", (self.ends[i] for i in sel)))

    def fileno(self) -> int:
        """The pages file, opened once (closed with the reader)."""
        if self._fd is None:
            self._fd = open_image(self.pages_path)
        return self._fd

    def pread_into(self, offset: int, buf: memoryview) -> None:
        """Fill buf from the pages file at offset."""
        fd, done = self.fileno(), 0
        while done < buf.nbytes:
            n = os.preadv(fd, [buf[done:]], offset + done)
            if n == 0:
                raise ImageError(f"{self.pages_path}: truncated at byte {offset + done}")
            done += n

    def read_pages_into(self, vaddr: int, buf: memoryview) -> None:
        """Fill buf with the pages at vaddr, which must all be PE_PRESENT here."""
        end = vaddr + buf.nbytes
        i = bisect_right(self.ends, vaddr)
        pos = vaddr
        while pos < end:
            if i >= len(self.vaddr) or self.vaddr[i] > pos or not self.flags[i] & PE_PRESENT:
                raise ImageError(f"{self.path}: page {pos:#x} has no data in {self.pages_path.name}")
            stop = min(end, self.ends[i])
            self.pread_into(self.offset[i] + pos - self.vaddr[i], buf[pos - vaddr:stop - vaddr])
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
