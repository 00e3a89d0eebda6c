"""Comparison of two fd tables, independent of ids and inode numbers."""
from __future__ import annotations

from dataclasses import asdict

from coldsnap.dump.files import FilesSnapshot, InetSocket, PipeFile

_VOLATILE = {"id", "pipe_id", "inode", "mnt_id", "fown"}


def describe(snap: FilesSnapshot, fid: int) -> dict:
    f = snap.files[fid]
    d = {k: v for k, v in asdict(f).items() if k not in _VOLATILE}
    d["kind"] = f.kind.name
    if isinstance(f, PipeFile):
        pd = snap.pipe_data[f.pipe_id]
        d["data"], d["pipe_size"] = pd.data, pd.size
    return d


def signature(snap: FilesSnapshot) -> dict:
    """Everything a restore must reproduce: per-fd objects, sharing, pipe pairing, fs state."""
    fds = {e.fd: (e.cloexec, describe(snap, e.file_id)) for e in snap.fds}
    shared = sorted(sorted(e.fd for e in snap.fds if e.file_id == fid) for fid in {e.file_id for e in snap.fds})
    pipes: dict[int, list[int]] = {}
    for e in snap.fds:
        f = snap.files[e.file_id]
        if isinstance(f, PipeFile):
            pipes.setdefault(f.pipe_id, []).append(e.fd)
    return {"fds": fds, "shared": shared, "pipes": sorted(pipes.values()), "cwd": snap.cwd,
            "root": snap.root, "umask": snap.umask}


def assert_same_table(a: FilesSnapshot, b: FilesSnapshot) -> None:
    sa, sb = signature(a), signature(b)
    assert sorted(sa["fds"]) == sorted(sb["fds"])
    for fd in sa["fds"]:
        assert sa["fds"][fd] == sb["fds"][fd], f"fd {fd}: {sa['fds'][fd]} != {sb['fds'][fd]}"
    assert sa == sb


def sockets(snap: FilesSnapshot) -> list[InetSocket]:
    return [f for f in snap.files.values() if isinstance(f, InetSocket)]
