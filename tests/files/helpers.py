"""Comparison of two fd tables, independent of ids and inode numbers."""
from __future__ import annotations

from dataclasses import asdict

from coldsnap.files.images import read_images, write_images
from coldsnap.files.inet import STORED_EXTRA_OPTS
from coldsnap.files.inet import InetSocket
from coldsnap.files.model import PipeFile
from coldsnap.files.registry import FileRegistry, TaskFiles
from coldsnap.images.directory import ImageDir

from procs import crit_decode_each

_VOLATILE = {"id", "pipe_id", "inode", "mnt_id", "fown"}


def collect_files(pid: int, *, shell_job: bool = False) -> TaskFiles:
    """The fd table of one process, registered alone (files id 1) as dump does today."""
    return FileRegistry().collect(pid, 1, shell_job=shell_job)


def describe(snap: TaskFiles, fid: int) -> dict:
    f = snap.files[fid]
    d = {k: v for k, v in asdict(f).items() if k not in _VOLATILE}
    d["kind"] = f.kind.name
    if "targets" in d:          # epoll: the watched files' inodes are new after a rebuild
        d["targets"] = [{k: v for k, v in t.items() if k not in ("dev", "inode")} for t in d["targets"]]
    if isinstance(f, PipeFile):
        pd = snap.pipe_data[f.pipe_id]
        d["data"], d["pipe_size"] = pd.data, pd.size
    return d


def signature(snap: TaskFiles) -> dict:
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


def assert_same_table(a: TaskFiles, b: TaskFiles) -> None:
    sa, sb = signature(a), signature(b)
    assert sorted(sa["fds"]) == sorted(sb["fds"])
    for fd in sa["fds"]:
        assert sa["fds"][fd] == sb["fds"][fd], f"fd {fd}: {sa['fds'][fd]} != {sb['fds'][fd]}"
    assert sa == sb


def sockets(snap: TaskFiles) -> list[InetSocket]:
    return [f for f in snap.files.values() if isinstance(f, InetSocket)]


# Options the image schema cannot carry yet (see SockOpts): not compared after a round trip.
NOT_IN_IMAGES = {"broadcast"} - STORED_EXTRA_OPTS


def strip_unstored(snap: TaskFiles) -> TaskFiles:
    """A copy of snap without what the images drop, to compare with a read-back snapshot."""
    import copy
    out = copy.deepcopy(snap)
    for f in out.registry.files.values():
        if isinstance(f, InetSocket):
            for name in NOT_IN_IMAGES:
                setattr(f.opts, name, False)
    return out


def through_images(snap: TaskFiles, imgdir) -> TaskFiles:
    """Write the images, check crit decodes each of them, read them back."""
    with ImageDir.create(imgdir) as d:
        write_images(snap.registry, d)
    names = sorted(p.name for p in imgdir.iterdir())
    assert {"files.img", "fdinfo-1.img", f"fs-{snap.pid}.img"} <= set(names)
    crit_decode_each([imgdir / name for name in names])
    back = read_images(imgdir, {snap.pid: 1}).task(snap.pid)
    assert_same_table(strip_unstored(snap), back)
    return back
