"""Ghost files: regular files deleted while a process held them open or mapped.

Dump saves their contents (data stretches only, holes left out) into ghost-file-<id>.img
and ties each REG entry of files.img to its ghost in remap-fpath.img, as CRIU does, so that
CRIU and crit read them. `--ghost-limit` bounds the size of one (CRIU's default, 1 MiB).

Restore makes each ghost again as a file at its old path (or beside it when that path is
taken), everything opens it there, and it is unlinked before the restored processes run:
they hold a deleted file again, with the same contents, size, mode, owner and times.
"""
from __future__ import annotations

import errno
import os
import stat
from dataclasses import dataclass, field
from pathlib import Path

from coldsnap.errors import CsError, ImageError, Unsupported
from coldsnap.images import framing, pb      # its messages: only for images with ghosts
from coldsnap.kernel.fdinfo import reopen_fd
from coldsnap.kernel.fdio import write_all

from .model import Ghost

DEFAULT_GHOST_LIMIT = 1 << 20
_ST_UNIT = 512            # st_blocks counts these
_READ = 1 << 20


def ghost_image_name(gid: int) -> str:
    return f"ghost-file-{gid:x}.img"


@dataclass(eq=False, repr=False)
class GhostTable:
    """The ghosts of one dump: one per deleted inode, however many fds and mappings hold it."""
    limit: int = DEFAULT_GHOST_LIMIT
    ghosts: dict[int, Ghost] = field(default_factory=dict)
    _by_inode: dict[tuple[int, int], int] = field(default_factory=dict, repr=False)

    def add(self, fd: int, st: os.stat_result, what: str, path: str) -> int:
        """The ghost id of the deleted file behind `fd` (any access mode), saving its
        contents the first time; Unsupported naming `what` past the limit."""
        key = (st.st_dev, st.st_ino)
        if key in self._by_inode:
            return self._by_inode[key]
        used = st.st_blocks * _ST_UNIT
        if used > self.limit:
            raise Unsupported(f"{what}: deleted file {path} holds {used} bytes, more than the ghost "
                              f"limit {self.limit} (--ghost-limit)")
        gid = len(self.ghosts) + 1
        rd = reopen_fd(os.getpid(), fd, os.O_RDONLY)   # fd may be write-only
        try:
            chunks = _read_data(rd, st.st_size)
        finally:
            os.close(rd)
        self.ghosts[gid] = Ghost(gid, st.st_mode, st.st_uid, st.st_gid, st.st_size, chunks,
                                 st.st_dev, st.st_ino, st.st_atime_ns, st.st_mtime_ns)
        self._by_inode[key] = gid
        return gid


def _read_data(fd: int, size: int) -> list[tuple[int, bytes]]:
    """(offset, bytes) of every stretch of data up to `size` (SEEK_DATA/SEEK_HOLE)."""
    out, at = [], 0
    while at < size:
        try:
            start = os.lseek(fd, at, os.SEEK_DATA)
        except OSError as e:
            if e.errno == errno.ENXIO:
                break                       # only a hole up to the end
            start = at                      # no SEEK_DATA here: all of it
        end = min(os.lseek(fd, start, os.SEEK_HOLE), size)
        data = bytearray()
        while start + len(data) < end:
            piece = os.pread(fd, min(_READ, end - start - len(data)), start + len(data))
            if not piece:
                break                       # shrunk meanwhile: keep what is there
            data += piece
        if data:
            out.append((start, bytes(data)))
        at = end if end > start else size
    return out


# --- images -----------------------------------------------------------------------------------

def _timeval(ns: int) -> pb.time_pb2.timeval:
    return pb.time_pb2.timeval(tv_sec=ns // 10**9, tv_usec=ns % 10**9 // 1000)


def write_ghosts(table: GhostTable, remaps: list[tuple[int, int]], imgdir) -> None:
    """ghost-file-<id>.img per ghost (always chunked) and remap-fpath.img: (REG id, ghost id)."""
    for g in table.ghosts.values():
        head = pb.ghost_file_pb2.ghost_file_entry(uid=g.uid, gid=g.gid, mode=g.mode, dev=g.dev, ino=g.ino,
                                               atim=_timeval(g.atime_ns), mtim=_timeval(g.mtime_ns),
                                               chunks=True, size=g.size)
        imgdir.write(ghost_image_name(g.id), [head] + [
            (pb.ghost_file_pb2.ghost_chunk_entry(len=len(data), off=off), data) for off, data in g.chunks])
    imgdir.write("remap-fpath.img", [
        pb.remap_file_path_pb2.remap_file_path_entry(orig_id=fid, remap_id=gid, remap_type=pb.remap_file_path_pb2.GHOST)
        for fid, gid in remaps])


def read_remaps(d: Path) -> dict[int, int]:
    """REG id -> ghost id from remap-fpath.img; ImageError for remaps coldsnap cannot follow."""
    out = {}
    for m in framing.read_image(d / "remap-fpath.img", missing_ok=True):
        kind = m.remap_type if m.HasField("remap_type") else (
            pb.remap_file_path_pb2.GHOST if m.remap_id >> 31 else pb.remap_file_path_pb2.LINKED)
        if kind != pb.remap_file_path_pb2.GHOST:
            name = {pb.remap_file_path_pb2.LINKED: "LINKED", pb.remap_file_path_pb2.PROCFS: "PROCFS"}.get(kind, kind)
            raise ImageError(f"remap-fpath.img: file {m.orig_id} is remapped as {name}, "
                             "which coldsnap cannot restore")
        out[m.orig_id] = m.remap_id & 0x7FFFFFFF
    return out


def read_ghost(d: Path, gid: int) -> Ghost:
    """One ghost-file image, chunked (as coldsnap and CRIU write big ones) or raw to the end."""
    path = d / ghost_image_name(gid)
    kind = framing.kind_for(path)
    try:
        data = framing.read_image_bytes(path)
    except OSError as e:
        raise ImageError(f"{path}: cannot read image: {e.strerror}") from None
    view = memoryview(data)
    pos = framing.check_header(view, kind, str(path))
    n = framing.entry_size(view, pos, 0, str(path))
    head = pb.ghost_file_pb2.ghost_file_entry()
    try:
        head.ParseFromString(view[pos + 4:pos + 4 + n])
    except Exception as e:  # noqa: BLE001 - any decode failure is a bad image
        raise ImageError(f"{path}: entry 0 is not a valid ghost_file_entry: {e}") from None
    if not head.IsInitialized():
        raise ImageError(f"{path}: entry 0 lacks {', '.join(head.FindInitializationErrors())}")
    if not stat.S_ISREG(head.mode):
        raise ImageError(f"{path}: ghost of a {stat.filemode(head.mode)[0]}-type file; "
                         "coldsnap restores regular ones only")
    if head.chunks:
        chunks = [(m.off, p or b"") for m, p in list(framing.parse_entries(data, kind, str(path)))[1:]]
        size = head.size
    else:
        raw = bytes(view[pos + 4 + n:])
        chunks, size = [(0, raw)] if raw else [], len(raw)
    for off, piece in chunks:
        if off + len(piece) > size:
            raise ImageError(f"{path}: data at {off} runs past the file size {size}")
    ns = lambda tv: tv.tv_sec * 10**9 + tv.tv_usec * 1000   # noqa: E731
    return Ghost(gid, head.mode, head.uid, head.gid, size, chunks, head.dev, head.ino,
                 ns(head.atim), ns(head.mtim))


# --- restore ----------------------------------------------------------------------------------

class GhostFiles:
    """The ghosts of a restore made as files: `make` each, `remove` them all (idempotent)."""

    def __init__(self) -> None:
        self.paths: list[str] = []

    def make(self, g: Ghost, path: str) -> str:
        """Create ghost g at `path` (or beside it when taken); returns where it is."""
        for where in (path, f"{path}.coldsnap-ghost-{g.id}"):
            try:
                fd = os.open(where, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
                break
            except FileExistsError:
                continue
            except OSError as e:
                raise ImageError(f"cannot recreate the deleted file {path}: {e.strerror}") from None
        else:
            raise ImageError(f"cannot recreate the deleted file {path}: its name and "
                             f"{where} are both taken")
        self.paths.append(where)
        try:
            for off, data in g.chunks:
                write_all(fd, data, off)
            os.ftruncate(fd, g.size)
            os.fchown(fd, g.uid, g.gid)
            os.fchmod(fd, stat.S_IMODE(g.mode))
            os.utime(fd, ns=(g.atime_ns, g.mtime_ns))
        except OSError as e:
            raise CsError(f"cannot recreate the deleted file {path}: {e.strerror}") from None
        finally:
            os.close(fd)
        return where

    def remove(self) -> None:
        while self.paths:
            try:
                os.unlink(self.paths.pop())
            except FileNotFoundError:
                pass

    def __enter__(self) -> GhostFiles:
        return self

    def __exit__(self, *exc) -> None:
        self.remove()
