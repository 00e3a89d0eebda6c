"""One byte stream for an images directory and its parent chain (`dump --stream`,
`restore --stream`): written front to back without seeking, read the same way.

Format, version 1 (every integer little-endian):

    stream := header entry* end
    header := b"CSSTREAM" u16 version (=1)
    entry  := u8 kind=1 | u16 level | u16 name_len | u64 size | name | data[size] | u32 crc
    end    := u8 kind=2 | u16 levels | u32 entries | u64 bytes | u32 crc

`level` 0 is the images directory itself, 1 its parent, 2 the parent's parent, ...: levels
come in order (0 first, each one the same as the entry before or the next), and the reader
links level N's `parent` to level N+1 itself (no link, path or other name travels). A
`name` is a plain image file name ([A-Za-z0-9][A-Za-z0-9._-]*, at most 255 bytes, not
`parent`), unique in its level. Every `crc` is the running CRC-32 of all the stream's bytes
before it (header included), so each entry checks its data and everything ahead of it;
`end` repeats the count of levels and entries and the data bytes, and nothing may follow it.

The writer reads each file in chunks (memory stays bounded whatever the images weigh); the
reader spools into a directory it is given and refuses, before writing anything more, a
name with a path, an entry larger than the free space left, a level out of order, and
fails on a wrong checksum, a missing end or trailing bytes: a caller restores only from a
stream read to its verified end.
"""
from __future__ import annotations

import fcntl
import os
import re
import stat
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path

from ..errors import ImageError
from ..kernel.fdio import write_all
from ..kernel.pipe import F_SETPIPE_SZ
from .directory import PARENT_LINK, ImageDir

MAGIC = b"CSSTREAM"
VERSION = 1
_HEADER = struct.Struct("<8sH")
_KIND = struct.Struct("<B")
_ENTRY = struct.Struct("<HHQ")          # after the kind: level, name length, size
_END = struct.Struct("<HIQ")            # after the kind: levels, entries, bytes
_CRC = struct.Struct("<I")
KIND_FILE, KIND_END = 1, 2
CHUNK = 1 << 20
MAX_LEVELS = 1024                       # parent chains deeper than this are refused
MAX_ENTRIES = 1 << 16                   # a dump of 100 processes has about 1500
NAME_MAX = 255
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


class StreamBroken(ImageError):
    """Writing the stream failed (the reader went away, a full disk downstream...)."""


@dataclass
class StreamCounts:
    levels: int = 0
    entries: int = 0
    data_bytes: int = 0     # file contents only
    stream_bytes: int = 0   # everything written or read


def valid_name(name: str) -> bool:
    return len(name.encode()) <= NAME_MAX and name != PARENT_LINK and _NAME.fullmatch(name) is not None


def widen_pipe(fd: int) -> None:
    """A pipe of CHUNK bytes instead of 64 KiB: a sixteenth of the wake-ups on either end.
    Anything else (a file, a socket), or a limit that refuses it, is left as it is."""
    try:
        if stat.S_ISFIFO(os.fstat(fd).st_mode):
            fcntl.fcntl(fd, F_SETPIPE_SZ, CHUNK)
    except OSError:
        pass


# ---- writing ---------------------------------------------------------------------------------

class _Out:
    """The stream's fd, with the running CRC and byte count."""

    def __init__(self, fd: int):
        self.fd, self.crc, self.written = fd, 0, 0

    def put(self, data: bytes | memoryview) -> None:
        self.crc = zlib.crc32(data, self.crc)
        try:
            write_all(self.fd, data)
        except OSError as e:
            why = "the reader went away" if e.errno == 32 else e.strerror
            raise StreamBroken(f"stream: cannot write after {self.written} bytes: {why}") from None
        self.written += memoryview(data).nbytes

    def put_crc(self) -> None:
        self.put(_CRC.pack(self.crc))


def _level_files(root: Path) -> list[tuple[str, int]]:
    """The image files of one directory, sorted by name (inventory first: a reader sees at
    once what it gets), with their sizes; anything but a regular file or the parent link
    is refused rather than silently left out."""
    files = []
    for entry in os.scandir(root):
        if entry.name == PARENT_LINK:
            continue
        if not entry.is_file(follow_symlinks=False) or not valid_name(entry.name):
            raise ImageError(f"{entry.path}: cannot go into a stream (not a plain image file)")
        files.append((entry.name, entry.stat(follow_symlinks=False).st_size))
    return sorted(files, key=lambda f: (f[0] != "inventory.img", f[0]))


def check_parent_depth(prev_images_dir: str | os.PathLike) -> None:
    """Before a (pre-)dump --stream on top of PREV_IMAGES_DIR: ImageError if the chain with
    the new level would be too deep to stream (found only after the dump, it killed the
    target and left the images in a spool)."""
    n = len(ImageDir.open(prev_images_dir).chain()) + 1
    if n > MAX_LEVELS:
        raise ImageError(f"{prev_images_dir}: a dump on top of it makes a parent chain of {n} levels, "
                         f"at most {MAX_LEVELS} stream")


def write_stream(images_dir: str | os.PathLike, fd: int) -> StreamCounts:
    """Write images_dir and its whole parent chain to fd as one stream."""
    chain = [d.root for d in ImageDir.open(images_dir).chain()]
    if len(chain) > MAX_LEVELS:
        raise ImageError(f"{images_dir}: parent chain of {len(chain)} levels, at most {MAX_LEVELS} stream")
    out, counts = _Out(fd), StreamCounts(levels=len(chain))
    widen_pipe(fd)
    out.put(_HEADER.pack(MAGIC, VERSION))
    buf = bytearray(CHUNK)
    for level, root in enumerate(chain):
        for name, size in _level_files(root):
            raw = name.encode()
            out.put(_KIND.pack(KIND_FILE) + _ENTRY.pack(level, len(raw), size) + raw)
            _copy_file(root / name, size, out, buf)
            out.put_crc()
            counts.entries += 1
            counts.data_bytes += size
    out.put(_KIND.pack(KIND_END) + _END.pack(counts.levels, counts.entries, counts.data_bytes))
    out.put_crc()
    counts.stream_bytes = out.written
    return counts


def _copy_file(path: Path, size: int, out: _Out, buf: bytearray) -> None:
    """Exactly `size` bytes of the file (its size when listed: an image does not change)."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        left = size
        while left:
            n = os.readv(fd, [memoryview(buf)[:min(left, CHUNK)]])
            if n == 0:
                raise ImageError(f"{path}: shrank while it was streamed")
            out.put(memoryview(buf)[:n])
            left -= n
    finally:
        os.close(fd)


# ---- reading ---------------------------------------------------------------------------------

class _In:
    """The stream's fd, with the running CRC and byte count; EOF inside an item is an error."""

    def __init__(self, fd: int):
        self.fd, self.crc, self.read = fd, 0, 0

    def take(self, n: int, what: str) -> bytes:
        parts, left = [], n
        while left:
            try:
                chunk = os.read(self.fd, min(left, CHUNK))
            except OSError as e:
                raise ImageError(f"stream: cannot read after {self.read} bytes: {e.strerror}") from None
            if not chunk:
                raise ImageError(f"stream: truncated after {self.read} bytes (in {what})")
            parts.append(chunk)
            left -= len(chunk)
            self.read += len(chunk)
        data = parts[0] if len(parts) == 1 else b"".join(parts)
        self.crc = zlib.crc32(data, self.crc)
        return data

    def check_crc(self, what: str) -> None:
        want = self.crc
        (got,) = _CRC.unpack(self.take(_CRC.size, what))
        if got != want:
            raise ImageError(f"stream: corrupt (checksum mismatch at {what}, byte {self.read - _CRC.size})")

    def fill(self, view: memoryview, what: str) -> None:
        """Read exactly len(view) bytes into view (the data of an entry, chunk by chunk)."""
        got = 0
        while got < len(view):
            try:
                n = os.readv(self.fd, [view[got:]])
            except OSError as e:
                raise ImageError(f"stream: cannot read after {self.read} bytes: {e.strerror}") from None
            if n == 0:
                raise ImageError(f"stream: truncated after {self.read} bytes (in {what})")
            got += n
            self.read += n
        self.crc = zlib.crc32(view, self.crc)

    def at_eof(self) -> bool:
        try:
            return os.read(self.fd, 1) == b""
        except OSError as e:
            raise ImageError(f"stream: cannot read after {self.read} bytes: {e.strerror}") from None


def read_stream(fd: int, spool: str | os.PathLike) -> tuple[Path, StreamCounts]:
    """Read a whole stream from fd into the empty directory `spool` (levels as spool/0,
    spool/1, ... each linked to the next as its parent, committed once the end marker and
    every checksum were verified); returns spool/0. On an error the caller removes the spool."""
    spool = Path(spool)
    inp, counts = _In(fd), StreamCounts()
    widen_pipe(fd)
    buf = memoryview(bytearray(CHUNK))
    magic, version = _HEADER.unpack(inp.take(_HEADER.size, "the header"))
    if magic != MAGIC:
        raise ImageError("stream: not a coldsnap image stream (bad magic)")
    if version != VERSION:
        raise ImageError(f"stream: version {version} is not known (this coldsnap reads {VERSION})")
    dirs: list[ImageDir] = []           # each written through ImageDir, committed at the end
    level, seen = -1, set()
    while True:
        (kind,) = _KIND.unpack(inp.take(1, "the next entry or the end marker"))
        if kind == KIND_END:
            levels, entries, nbytes = _END.unpack(inp.take(_END.size, "the end marker"))
            inp.check_crc("the end marker")
            if (levels, entries, nbytes) != (level + 1, counts.entries, counts.data_bytes):
                raise ImageError(f"stream: end marker says {levels} levels, {entries} entries, {nbytes} "
                                 f"bytes; the stream had {level + 1}, {counts.entries}, {counts.data_bytes}")
            if level < 0:
                raise ImageError("stream: holds no images")
            if not inp.at_eof():
                raise ImageError(f"stream: data after its end marker (byte {inp.read})")
            _commit_levels(dirs)
            counts.levels, counts.stream_bytes = level + 1, inp.read
            return spool / "0", counts
        if kind != KIND_FILE:
            raise ImageError(f"stream: corrupt (unknown entry kind {kind} at byte {inp.read - 1})")
        at, name_len, size = _ENTRY.unpack(inp.take(_ENTRY.size, "an entry header"))
        if name_len == 0 or name_len > NAME_MAX:
            raise ImageError(f"stream: entry name of {name_len} bytes at byte {inp.read}")
        raw = inp.take(name_len, "an entry name")
        name = raw.decode("ascii", "replace")
        if not valid_name(name):
            raise ImageError(f"stream: refused entry name {raw[:64]!r} (not a plain image file name)")
        if at not in (level, level + 1) or at >= MAX_LEVELS:
            raise ImageError(f"stream: entry {name} at level {at} after level {max(level, 0)} (levels go 0, 1, ... "
                             f"in turn)")
        if at == level + 1:
            level = at
            dirs.append(ImageDir.create(spool / str(level)))
        if (level, name) in seen:
            raise ImageError(f"stream: entry {name} twice at level {level}")
        seen.add((level, name))
        if len(seen) > MAX_ENTRIES:
            raise ImageError(f"stream: more than {MAX_ENTRIES} entries")
        _check_room(spool, name, size)
        _spool_file(inp, dirs[level], size, name, buf)
        inp.check_crc(f"entry {name}")
        counts.entries += 1
        counts.data_bytes += size


def _commit_levels(levels: list[ImageDir]) -> None:
    """Every level in place (spool/N), then each linked to the next as its parent."""
    roots = [d.commit(durable=False) for d in levels]
    for child, parent in zip(roots, roots[1:]):
        os.symlink(f"../{parent.name}", child / PARENT_LINK)


def _check_room(spool: Path, name: str, size: int) -> None:
    st = os.statvfs(spool)
    free = st.f_bavail * st.f_frsize
    if size > free:
        raise ImageError(f"stream: entry {name} claims {size} bytes, more than the {free} free in {spool}")


def _spool_file(inp: _In, level: ImageDir, size: int, name: str, buf: memoryview) -> None:
    fd = level.create_file(name)
    try:
        left = size
        while left:
            chunk = buf[:min(left, CHUNK)]
            inp.fill(chunk, f"entry {name}")
            try:
                write_all(fd, chunk)
            except OSError as e:
                raise ImageError(f"stream: cannot spool entry {name} into {level.root}: {e.strerror}") from None
            left -= len(chunk)
    finally:
        os.close(fd)

