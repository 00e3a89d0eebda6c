"""Images directories: written into a private staging directory, committed by one rename.

A reader therefore sees either no directory or a complete one, never a half-written dump.
Every image file of a dump is created here (create_file, writer, write): the path inside
the staging directory, mode 0600, and the fsync of the commit are decided in one place.
"""
from __future__ import annotations

import errno
import functools
import os
import re
from pathlib import Path
from typing import Iterable, NamedTuple, Optional, Union

from google.protobuf.message import Message

from ..errors import ImageError, NoSuchProcess
from ..kernel.procfs import mount_points, ns_inode, read_stat
from .framing import EntryLike, ImageWriter, create_image_file, read_image, read_single, write_image
from .pb import inventory_pb2

INVENTORY = "inventory.img"
PARENT_LINK = "parent"
IMG_VERSION = 2  # "v1.1": images carry IMG_COMMON
PRE_DUMP_SPLICE, PRE_DUMP_READ = 1, 2
_PAGEMAP = r"pagemap-(\d+)\.img"              # patterns compiled on first use (re caches them)
_SHMEM_PAGEMAP = r"pagemap-shmem-(\d+)\.img"

PathLike = Union[str, os.PathLike]
# what a write of the images can meet from their file system, not from the target
_STORAGE_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)


def new_inventory(*, pre_dump_mode: Optional[int] = None, dump_uptime: Optional[int] = None,
                  lsmtype: int = inventory_pb2.NO_LSM) -> inventory_pb2.inventory_entry:
    """An inventory as current CRIU writes it; pre-dumps pass pre_dump_mode and dump_uptime."""
    inv = inventory_pb2.inventory_entry(img_version=IMG_VERSION, fdinfo_per_id=True,
                                        ns_per_id=True, lsmtype=lsmtype)
    if pre_dump_mode is not None:
        inv.pre_dump_mode = pre_dump_mode
    if dump_uptime is not None:
        inv.dump_uptime = dump_uptime
    return inv


# A staging directory's name says who made it: `.NAME.PID-START-NS.XXXXXXXX.staging`, the
# pid, start time (clock ticks since boot) and PID namespace (its inode) of the coldsnap
# process writing NAME. A process with that pid and start time still there is a live run;
# anything else left it behind. A pid of another PID namespace (a receiver in a container
# sharing the directory) cannot be checked from here: kept. (Names without NS: older runs.)
_CREATOR = r"(?P<pid>\d+)-(?P<start>\d+)(?:-(?P<ns>\d+))?"
_STAGING = rf"\.(?P<name>.+)\.{_CREATOR}\.[A-Za-z0-9_]+\.staging"


# A work directory in the temporary directory (`coldsnap migrate`'s images, `migrate-receive`'s
# sessions): `coldsnap-KIND-PID-START-NS.XXXXXXXX`, named after its creator in the same way.
WORK_KINDS = ("migrate", "receive")
_WORKDIR = rf"coldsnap-(?P<name>[a-z]+)-{_CREATOR}\.[A-Za-z0-9_]+"


class Staging(NamedTuple):
    """A staging or work directory a coldsnap run made."""
    path: Path
    name: str        # the images directory it was written for (a work directory: its kind)
    pid: int         # the coldsnap process that made it
    live: bool       # that process still runs: never touched


@functools.cache
def _creator_tag(pid: int) -> str:
    return f"{pid}-{read_stat(pid).starttime}-{_pid_ns()}"


@functools.cache
def _pid_ns() -> int:
    return ns_inode(os.getpid(), "pid") or 0


def _alive(pid: int, start: int, ns: Optional[str]) -> bool:
    if ns is not None and int(ns) != _pid_ns():
        return True                     # another namespace's pid: cannot tell
    try:
        return read_stat(pid).starttime == start
    except NoSuchProcess:
        return False
    except (OSError, ValueError):       # cannot tell: keep it
        return True


def _made_by_runs(where: PathLike, pattern: str, name: Optional[str] = None) -> list[Staging]:
    """The directories in WHERE whose name matches PATTERN (and names NAME, if given), each
    with whether its creator still runs."""
    out = []
    try:
        entries = list(os.scandir(where))
    except OSError as e:
        raise ImageError(f"{where}: cannot list: {e.strerror}") from None
    for e in entries:
        m = re.fullmatch(pattern, e.name)
        if m is None or (name is not None and m["name"] != name) or not e.is_dir(follow_symlinks=False):
            continue
        pid = int(m["pid"])
        out.append(Staging(Path(e.path), m["name"], pid, _alive(pid, int(m["start"]), m["ns"])))
    return sorted(out, key=lambda s: s.path)


def stagings(where: PathLike, name: Optional[str] = None) -> list[Staging]:
    """The staging directories in WHERE (those made for images directory NAME only, if
    given), each with whether its creator still runs."""
    return _made_by_runs(where, _STAGING, name)


def make_work_dir(kind: str) -> Path:
    """A new work directory of this process in the temporary directory (KIND: WORK_KINDS)."""
    assert kind in WORK_KINDS, kind
    import tempfile
    return Path(tempfile.mkdtemp(prefix=f"coldsnap-{kind}-{_creator_tag(os.getpid())}."))


def _new_dir(where: PathLike, prefix: str, suffix: str) -> Path:
    """A new directory (0700) PREFIX + a random part + SUFFIX in WHERE, as tempfile.mkdtemp
    makes it: tempfile (with shutil, random and the compressors: ~3 ms) is not imported for
    each dump's staging."""
    while True:
        path = os.path.abspath(os.path.join(where, f"{prefix}{os.urandom(6).hex()}{suffix}"))
        try:
            os.mkdir(path, 0o700)
            return Path(path)
        except FileExistsError:
            continue


def work_dirs() -> list[Staging]:
    """The work directories in the temporary directory, each with whether its creator runs."""
    import tempfile
    return [s for s in _made_by_runs(tempfile.gettempdir(), _WORKDIR) if s.name in WORK_KINDS]


def _remove_dead(found: list[Staging], strict: bool = False) -> tuple[list[Staging], list[Staging]]:
    """Remove those of FOUND whose creator is gone: (removed, kept). STRICT (gc): one that
    cannot be removed (an immutable file, a read-only mount) is an ImageError, after the
    others were removed; else it is left for gc to report."""
    failed: list[tuple[Staging, OSError]] = []
    for s in found:
        if not s.live:
            import shutil               # here only: every dump looks for stale stagings (test_imports)
            errors: list[OSError] = []
            shutil.rmtree(s.path, onerror=lambda _f, _p, info: errors.append(info[1]))
            if errors and os.path.lexists(s.path):
                failed.append((s, errors[0]))
    removed = [s for s in found if not s.live and all(s is not f for f, _ in failed)]
    if strict and failed:
        (s, e), more = failed[0], len(failed) - 1
        raise ImageError(f"{s.path}: cannot remove what coldsnap {s.pid} left: {e.strerror or e}"
                         + (f" (and {more} more)" if more else "")
                         + (f"; {len(removed)} others removed" if removed else ""))
    return removed, [s for s in found if s.live]


def remove_stale_stagings(where: PathLike, name: Optional[str] = None) -> list[Staging]:
    """Remove what killed coldsnap runs left in WHERE (for NAME only, if given); returns them."""
    return _remove_dead(stagings(where, name))[0]


def collect_garbage(path: Optional[PathLike] = None) -> tuple[list[Staging], list[Staging]]:
    """`coldsnap gc PATH`: (removed, kept) staging directories of images directory PATH
    (beside it) and, when PATH is a directory, of those inside it. `coldsnap gc` (no PATH):
    the work directories in the temporary directory."""
    if path is None:
        return _remove_dead(work_dirs(), strict=True)
    target = Path(os.path.abspath(path))
    if os.path.islink(target) and os.path.isdir(target):
        target = Path(os.path.realpath(target))     # where create() staged (beside the real directory)
    if not target.parent.is_dir():
        raise ImageError(f"{target.parent}: no such directory")
    found = stagings(target.parent, target.name)
    if target.is_dir() and not target.is_symlink():
        found += stagings(target)
    return _remove_dead(found, strict=True)


def _fsync_path(path: Path, flags: int = os.O_RDONLY) -> None:
    fd = os.open(path, flags | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _check_target(target: Path, own: Optional[Path] = None) -> None:
    """Refuse a target that exists and is not an empty directory (but for OWN: the staging
    directory of this run, inside a target that is a mount point)."""
    if not os.path.lexists(target):
        return
    if os.path.islink(target):
        raise ImageError(f"{target}: a symbolic link to {os.readlink(target)!r}, which is no directory")
    if not os.path.isdir(target):
        raise ImageError(f"{target}: exists and is not a directory")
    if any(e.name != getattr(own, "name", None) for e in os.scandir(target)):
        raise ImageError(f"{target}: exists and is not empty; refusing to overwrite images")


def _mounted_on(target: Path) -> bool:
    """Whether the directory TARGET is a mount point (a bind mount included): nothing can
    be renamed onto it (EBUSY), and a sibling would lie on another file system."""
    if not os.path.isdir(target):
        return False
    real = os.path.realpath(target)
    return any(point == real for _, _, point in mount_points(os.getpid()))


def _move_into(staging: Path, target: Path) -> None:
    """The commit into a target that is a mount point: every file moved from the staging
    directory inside it into it, the inventory last (until it is there the directory is no
    images directory to a reader), then the staging directory removed."""
    moved = []
    try:
        for entry in sorted(os.scandir(staging), key=lambda e: e.name == INVENTORY):
            os.rename(entry.path, target / entry.name)
            moved.append(entry.name)
        os.rmdir(staging)
    except BaseException:
        for name in moved:          # back where abort() removes them: the target stays empty
            os.rename(target / name, staging / name)
        raise


class ImageDir:
    """One images directory, either being written (create) or read (open)."""

    def __init__(self, root: Path, *, target: Optional[Path] = None,
                 parent: Optional["ImageDir"] = None):
        self.root = root              # where files are right now (staging while writing)
        self.target = target          # final location while writing; None once readable
        self.parent = parent          # opened parent images directory, if any
        self._pages_id = 0
        self._inventory: Optional[inventory_pb2.inventory_entry] = None

    # ---- creating -------------------------------------------------------------------

    @classmethod
    def create(cls, path: PathLike, parent: Optional[PathLike] = None) -> "ImageDir":
        """Start a new images directory; files go to a 0700 sibling until commit().

        `parent` (a path as usual, relative to the cwd) becomes a relative symlink
        named `parent`, resolved against the images directory as CRIU does.
        """
        target = Path(os.path.abspath(path))
        if os.path.islink(target) and os.path.isdir(target):
            # -D a symlink to a directory (as CRIU takes it): the images go into that directory,
            # the link is kept (renaming the staging directory onto it would replace the link)
            target = Path(os.path.realpath(target))
        where = target.parent
        if not where.is_dir():
            raise ImageError(f"{where}: no such directory to create images in")
        # an empty mount point (a tmpfs mounted for the images) is staged inside, on its own
        # file system, and committed by moving the files in (_move_into)
        inside = _mounted_on(target)
        if inside:
            remove_stale_stagings(target, target.name)
        _check_target(target)
        parent_dir = cls.open(parent) if parent is not None else None
        remove_stale_stagings(where, target.name)
        try:
            staging = _new_dir(target if inside else where, f".{target.name}.{_creator_tag(os.getpid())}.",
                               ".staging")
        except OSError as e:
            raise ImageError(f"{target if inside else where}: cannot create images here: {e.strerror}") from e
        d = cls(staging, target=target, parent=parent_dir)
        if parent_dir is not None:
            # Relative to the real location of the target, so ".." means what the kernel means.
            link = os.path.relpath(os.path.realpath(parent_dir.root),
                                   os.path.join(os.path.realpath(where), target.name))
            os.symlink(link, staging / PARENT_LINK)
        return d

    @property
    def writing(self) -> bool:
        return self.target is not None

    def next_pages_id(self) -> int:
        """Next pages-N.img number of this directory (1, 2, ...)."""
        if not self.writing:
            raise ImageError(f"{self.root}: opened read-only")
        self._pages_id += 1
        return self._pages_id

    def create_file(self, name: str) -> int:
        """A new image file NAME (mode 0600) in the directory being written, open for
        writing; the caller closes the fd, the commit fsyncs the file."""
        if not self.writing:
            raise ImageError(f"{self.root}: opened read-only")
        return create_image_file(self.path(name))

    def writer(self, name: str) -> ImageWriter:
        """Entries streamed into image NAME; the file appears with the first entry."""
        return ImageWriter(self.path(name), create=lambda: self.create_file(name))

    def write(self, name: str, entries: Iterable[EntryLike]) -> int:
        """A whole image NAME; returns the entry count (0: no file was created)."""
        return write_image(self.path(name), None, entries, create=lambda: self.create_file(name))

    def open_committed(self, name: str, flags: int = os.O_RDONLY) -> int:
        """An fd on image NAME of a committed directory (O_CLOEXEC added); O_WRONLY only
        for auto-dedup, which punches holes in a parent's pages file in place."""
        try:
            return os.open(self.path(name), flags | os.O_CLOEXEC)
        except OSError as e:
            raise ImageError(f"{self.path(name)}: cannot open image: {e.strerror}") from e

    def commit(self, durable: bool = True) -> Path:
        """fsync everything, then rename the staging directory onto the target (move its files
        into a target that is a mount point). durable=False
        skips the fsyncs (images read back at once and thrown away: a migration's destination)."""
        if not self.writing:
            raise ImageError(f"{self.root}: nothing to commit")
        staging, target = self.root, self.target
        try:
            if durable:
                for entry in os.scandir(staging):
                    if entry.is_file(follow_symlinks=False):
                        _fsync_path(Path(entry.path))
                _fsync_path(staging, os.O_DIRECTORY)
            if staging.parent == target:        # a mount point: the files moved in
                _check_target(target, own=staging)
                _move_into(staging, target)
                changed = target
            else:
                _check_target(target)
                os.rename(staging, target)
                changed = target.parent
            if durable:
                _fsync_path(changed, os.O_DIRECTORY)
        except OSError as e:
            self.abort()
            raise ImageError(f"{target}: cannot commit images: {e.strerror}") from e
        except BaseException:       # ImageError, or a signal (Ctrl-C) in the long fsyncs
            self.abort()
            raise
        self.root, self.target = target, None
        return target

    def abort(self) -> None:
        """Drop a directory being written; the target is left untouched."""
        if self.writing:
            import shutil
            shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> "ImageDir":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if not self.writing:
            return
        if exc_type is None:
            self.commit()
        else:
            self.abort()
            if isinstance(exc, OSError) and exc.errno in _STORAGE_ERRNOS and exc.filename is None:
                # a write of the images failed (a full disk): say where, not only why
                raise ImageError(f"{self.target}: cannot write images: {exc.strerror}") from exc

    # ---- reading --------------------------------------------------------------------

    @classmethod
    def open(cls, path: PathLike, *, follow_parent: bool = True) -> "ImageDir":
        """Open an existing images directory and (by default) its whole parent chain, one
        level after the other (a chain of any depth: a series of pre-dumps grows one a run)."""
        seen: dict = {}
        top = d = cls._open_one(path, seen)
        while follow_parent and (parent := d._parent_path()) is not None:
            d.parent = cls._open_one(parent, seen)
            d = d.parent
        return top

    @classmethod
    def _open_one(cls, path: PathLike, seen: dict) -> "ImageDir":
        """One directory of a chain; SEEN (dev, ino) -> path of those opened before it."""
        root = Path(os.path.abspath(path))
        try:
            st = os.stat(root)
        except OSError as e:
            raise ImageError(f"{root}: cannot open images directory: {e.strerror}") from e
        if not os.path.isdir(root):
            raise ImageError(f"{root}: not a directory")
        key = (st.st_dev, st.st_ino)
        if key in seen:
            raise ImageError(f"{root}: parent chain loops back to {seen[key]}")
        seen[key] = root
        d = cls(root)
        if not (root / INVENTORY).exists():
            raise ImageError(f"{root}: not an images directory (no {INVENTORY})")
        d._inventory = read_single(root / INVENTORY)
        return d

    def _parent_path(self) -> Optional[Path]:
        """Where this directory's `parent` link leads, None without one."""
        link = self.root / PARENT_LINK
        if not os.path.lexists(link):
            return None
        resolved = self.root / os.readlink(link) if link.is_symlink() else link
        if not os.path.exists(resolved):
            raise ImageError(f"{link}: broken parent link -> {os.readlink(link)}")
        return resolved

    def path(self, name: str) -> Path:
        if "/" in name or name in ("", ".", ".."):
            raise ValueError(f"not an image file name: {name!r}")
        return self.root / name

    @property
    def inventory(self) -> inventory_pb2.inventory_entry:
        if self._inventory is None:
            self._inventory = read_single(self.path(INVENTORY))
        return self._inventory

    def read(self, name: str, missing_ok: bool = False) -> list[Message]:
        return read_image(self.path(name), None, missing_ok)

    def read_single(self, name: str) -> Message:
        return read_single(self.path(name))

    def exists(self, name: str) -> bool:
        return self.path(name).exists()

    def _ids(self, pattern: str) -> list[int]:
        return sorted(int(m.group(1)) for m in (re.fullmatch(pattern, n) for n in os.listdir(self.root)) if m)

    def pagemap_ids(self) -> list[int]:
        """Ids (pids) of the process pagemaps here."""
        return self._ids(_PAGEMAP)

    def shmem_pagemap_ids(self) -> list[int]:
        return self._ids(_SHMEM_PAGEMAP)

    def chain(self) -> list["ImageDir"]:
        """This directory followed by its parent, grandparent, ..."""
        out, d = [], self
        while d is not None:
            out.append(d)
            d = d.parent
        return out

    def __repr__(self) -> str:
        state = f" -> {self.target}" if self.writing else ""
        return f"ImageDir({str(self.root)!r}{state})"
