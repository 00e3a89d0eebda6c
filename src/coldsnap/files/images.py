"""A registry to and from images: files.img, fdinfo-<files_id>.img, fs-<pid>.img, pipe data,
ghost files. The socket kinds' modules are imported only for a registry holding sockets."""
from __future__ import annotations

import os
import struct
from collections.abc import Collection, Mapping
from pathlib import Path
from typing import TYPE_CHECKING

from coldsnap.errors import ImageError
from coldsnap.images import framing
from coldsnap.images.directory import ImageDir
from coldsnap.images.pb import fdinfo_pb2, fs_pb2, pipe_pb2

from .ghost import read_ghost, read_remaps, write_ghosts
from .kinds import OPS, ops_to_restore
from .model import DEFAULT_PIPE_SIZE, FdEntry, FdType, FsState, PipeData, PipeFile, RegFile
from .registry import FileRegistry
from .tty import attach_tty_info, tty_info_entries

if TYPE_CHECKING:
    from .inet import InetSocket

FD_CLOEXEC = 1


def file_entries(reg: FileRegistry) -> list[fdinfo_pb2.file_entry]:
    """files.img: every file of the registry, in id order (a FIFO's path entry before it)."""
    out = []
    for f in reg.files.values():
        out += OPS[f.kind].to_image(f, lambda f=f: reg.extra_id(f.id))
    if bool(reg.of_kind(FdType.UNIXSK)):
        from .unix import extern_entries
        out += extern_entries(reg.files, reg.new_id)
    return out


def fdinfo_entries(reg: FileRegistry, files_id: int) -> list[fdinfo_pb2.fdinfo_entry]:
    return [fdinfo_pb2.fdinfo_entry(id=e.file_id, flags=FD_CLOEXEC if e.cloexec else 0,
                                    type=int(reg.files[e.file_id].kind), fd=e.fd) for e in reg.tables[files_id]]


def write_images(reg: FileRegistry, imgdir: ImageDir, *, ext_unix_sk: bool = False) -> None:
    """files.img, fdinfo-<files_id>.img per table, fs-<pid>.img per task, pipes-data.img
    and fifo-data.img; sk-queues.img if a unix socket has queued data; tcp-stream-INODE.img
    per established TCP connection whose stream was saved. Refuses first what
    only the whole tree shows: a unix socket connected outside it (ext_unix_sk: a datagram one
    to a named socket is let go, files/unix.py)."""
    unix = bool(reg.of_kind(FdType.UNIXSK))
    if unix:
        from .unix import link_peers
        link_peers(reg.files, reg.where, ext_unix_sk=ext_unix_sk)
    imgdir.write("files.img", file_entries(reg))
    for files_id in reg.tables:
        imgdir.write(f"fdinfo-{files_id}.img", fdinfo_entries(reg, files_id))
    for pid, fs in reg.fs.items():
        imgdir.write(f"fs-{pid}.img", [fs_pb2.fs_entry(cwd_id=fs.cwd_id, root_id=fs.root_id, umask=fs.umask)])
    fifos = {f.pipe_id for f in reg.files.values() if isinstance(f, PipeFile) and f.fifo_path}
    for name, want_fifo in (("pipes-data.img", False), ("fifo-data.img", True)):
        # Only pipes with something to restore: an absent entry means empty, default size.
        imgdir.write(name, [
            (pipe_pb2.pipe_data_entry(pipe_id=pd.pipe_id, bytes=len(pd.data), size=pd.size, cs_bufs=pd.bufs),
             pd.data)
            for pd in reg.pipe_data.values()
            if (pd.pipe_id in fifos) == want_fifo and (pd.data or pd.size != DEFAULT_PIPE_SIZE)])
    ttys = tty_info_entries(reg.files.values())
    if ttys:
        imgdir.write("tty-info.img", ttys)
    if unix:
        from .unix import queue_entries
        queued = queue_entries(reg.files)
        if queued:
            imgdir.write("sk-queues.img", queued)
    for f in reg.files.values():
        if f.kind is FdType.INETSK and f.stream is not None:
            from .inet import stream_entry, stream_image_name
            imgdir.write(stream_image_name(f.inode), [stream_entry(f.stream)])
    write_ghosts(reg.ghosts, reg.remaps(), imgdir)


def read_images(imgdir: str | os.PathLike, tasks: Mapping[int, int], *,
                mapped_ids: Collection[int] = (), entries: list | None = None) -> FileRegistry:
    """The registry of `tasks` (pid -> files_id) back from images: their fd tables, cwd,
    root and umask, the files these use, and the REG files of `mapped_ids` that exist.
    files.img may hold other files: only these are decoded. entries: files.img's, when the
    caller read it already."""
    d = Path(imgdir)
    entries = {e.id: e for e in (framing.read_image(d / "files.img") if entries is None else entries)}
    regs = {i: e.reg for i, e in entries.items() if e.type == fdinfo_pb2.REG}
    reg = FileRegistry(next_id=max(entries, default=0) + 1)
    wanted: list[int] = []
    for pid, files_id in tasks.items():
        reg.tasks[pid] = files_id
        if files_id not in reg.tables:
            reg.tables[files_id] = [FdEntry(fi.fd, fi.id, bool(fi.flags & FD_CLOEXEC)) for fi in
                                    framing.read_image(d / f"fdinfo-{files_id}.img", missing_ok=True)]
        fs = framing.read_single(d / f"fs-{pid}.img")
        reg.fs[pid] = FsState(fs.cwd_id, fs.root_id, fs.umask if fs.HasField("umask") else 0o22)
        wanted += [e.file_id for e in reg.tables[files_id]] + [fs.cwd_id, fs.root_id]
    files = {}
    for fid in wanted:
        if fid not in files:
            if fid not in entries:
                raise ImageError(f"files.img: no file with id {fid}")
            files[fid] = _from_image(entries[fid], regs)
    for fid in mapped_ids:
        if fid not in files and fid in regs:
            files[fid] = _from_image(entries[fid], regs, OPS[FdType.REG])
    attach_tty_info(files, entries, framing.read_image(d / "tty-info.img", missing_ok=True) or ())
    remaps = read_remaps(d)
    for fid in sorted(files):
        f = files[fid]
        if fid in remaps and isinstance(f, RegFile):
            f.ghost = remaps[fid]
            if f.ghost not in reg.ghosts.ghosts:
                reg.ghosts.ghosts[f.ghost] = read_ghost(d, f.ghost)
        reg.add(f)
    for name in ("pipes-data.img", "fifo-data.img"):
        for m, payload in framing.read_entries(d / name, missing_ok=True):
            reg.pipe_data[m.pipe_id] = PipeData(m.pipe_id, payload or b"",
                                                m.size if m.HasField("size") else DEFAULT_PIPE_SIZE,
                                                list(m.cs_bufs))
    for m, payload in framing.read_entries(d / "sk-queues.img", missing_ok=True):
        f = reg.files.get(m.id_for)
        if f is not None and f.kind is FdType.UNIXSK:
            f.queue.append(payload or b"")
    if bool(reg.of_kind(FdType.UNIXSK)):
        from .unix import USK_EXTERN, link_peers
        link_peers(reg.files, externs={e.usk.ino: e.usk.name for e in entries.values()
                                       if e.type == fdinfo_pb2.UNIXSK and e.usk.uflags & USK_EXTERN})
    _read_streams(d, reg)
    for f in reg.files.values():
        if isinstance(f, PipeFile) and f.pipe_id not in reg.pipe_data:
            reg.pipe_data[f.pipe_id] = PipeData(f.pipe_id, b"")
    return reg


def _from_image(e: fdinfo_pb2.file_entry, regs, ops=None):
    """The file of files.img entry E; the id its kind's part gives must be the entry's own
    (a mismatch would file it under another id than the fd tables name)."""
    try:
        f = (ops or ops_to_restore(e)).from_image(e, regs)
    except (ValueError, KeyError, IndexError, OverflowError, struct.error) as err:
        # a kind's reader trusts its own fields (address families, lengths): a hostile
        # entry breaks it in its own words
        raise ImageError(f"files.img: entry {e.id} is not a valid {fdinfo_pb2.fd_types.Name(e.type)} "
                         f"file: {err}") from None
    if f.id != e.id:
        raise ImageError(f"files.img: entry {e.id} describes file {f.id}")
    return f


def _read_streams(d: Path, reg: FileRegistry) -> None:
    """Each connected TCP socket's stream, from tcp-stream-INODE.img; a socket without one
    was dropped at dump (--tcp-close) and comes back closed."""
    for f in reg.files.values():
        if f.kind is FdType.INETSK and f.peer_port:
            import socket       # images with sockets only (~9 M instructions to import)
            if f.type != socket.SOCK_STREAM:
                continue
            from .inet import stream_image_name, stream_of
            path = d / stream_image_name(f.inode)
            for m, payload in framing.read_entries(path, missing_ok=True):
                f.stream = stream_of(m, payload or b"", f.state, str(path))


def drop_streams(reg: FileRegistry) -> None:
    """Forget every saved TCP stream: the connections come back closed (restore --tcp-close)."""
    for f in reg.files.values():
        if f.kind is FdType.INETSK:
            f.stream = None


def tcp_connections(reg: FileRegistry) -> list[tuple[int, int, InetSocket]]:
    """(pid, fd, socket) of every TCP connection a restore rebuilds, one fd per socket (the
    first process holding it): where repair mode is turned off once the tree is whole."""
    out, seen = [], set()
    for pid, files_id in reg.tasks.items():
        for e in reg.tables.get(files_id, []):
            f = reg.files[e.file_id]
            if f.kind is FdType.INETSK and f.stream is not None and f.id not in seen:
                seen.add(f.id)
                out.append((pid, e.fd, f))
    return out
