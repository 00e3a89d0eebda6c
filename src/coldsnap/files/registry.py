"""One registry of open files for a whole dump or restore: dump and restore share it.

Every open file description gets one id however many fds (of however many processes)
refer to it: kcmp(KCMP_FILE) says whether two fds are the same description. Ids come from
one counter: fds, cwd/root, mapped files and the exe, image-only entries (a FIFO's path).
Fd tables are kept per files id (tasks sharing an fd table share it), cwd/root/umask per
pid; pipes pair by inode across every table of the registry.
"""
from __future__ import annotations

import errno
import os
import stat
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from coldsnap.errors import AccessDenied, NoSuchProcess, TargetError, Unsupported
from coldsnap.kernel import fdinfo as K
from coldsnap.kernel import kcmp
from coldsnap.kernel.pidfd import pidfd_getfd, pidfd_open
from coldsnap.kernel.procfs import read_path_link, read_umask

from .ghost import GhostTable
from .kinds import classify, ops_to_collect
from .model import FdEntry, FdType, FsState, PipeData, PipeFile, RegFile
from .ops import Probe

if TYPE_CHECKING:
    from coldsnap.connections.hold import TcpHold

    from .model import FileObj

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_LARGEFILE


@dataclass(eq=False, repr=False)
class FileRegistry:
    """Every open file of a tree, once, with the fd tables and fs state that use them."""
    files: dict[int, FileObj] = field(default_factory=dict)      # id -> object, in id order
    tables: dict[int, list[FdEntry]] = field(default_factory=dict)   # files_id -> its fds
    tasks: dict[int, int] = field(default_factory=dict)         # pid -> files_id
    fs: dict[int, FsState] = field(default_factory=dict)        # pid -> cwd, root, umask
    pipe_data: dict[int, PipeData] = field(default_factory=dict)   # pipe_id -> buffered bytes
    tcp: TcpHold | None = None    # a dump's hold of established TCP sockets (None: refused)
    ghosts: GhostTable = field(default_factory=GhostTable)       # deleted files' contents
    next_id: int = 1
    # (fd link, inode) -> [(pid, fd, id)]: the fds kcmp compares a new fd with
    _seen: dict[tuple[str, int], list[tuple[int, int, int]]] = field(default_factory=dict, repr=False)
    _extra_ids: dict[int, int] = field(default_factory=dict, repr=False)

    def new_id(self) -> int:
        fid = self.next_id
        self.next_id += 1
        return fid

    def extra_id(self, owner: int) -> int:
        """The id of an image entry that file `owner` needs besides its own (a FIFO's path):
        numbered once, after everything registered before the first ask."""
        if owner not in self._extra_ids:
            self._extra_ids[owner] = self.new_id()
        return self._extra_ids[owner]

    def add(self, obj: FileObj) -> int:
        self.files[obj.id] = obj
        return obj.id

    def of_kind(self, kind: FdType) -> list[FileObj]:
        """The files of KIND (asked by their kind: no kind's module needs importing)."""
        return [f for f in self.files.values() if f.kind is kind]

    # --- dump side ---------------------------------------------------------------------------

    def collect(self, pid: int, files_id: int, *, shell_job: bool = False) -> TaskFiles:
        """Register the fd table (unless a task sharing files_id did), cwd, root and umask
        of `pid`; Unsupported (one line naming the fd) for what cannot be dumped,
        NoSuchProcess/AccessDenied when the process is gone or out of reach."""
        self.tasks[pid] = files_id
        if files_id not in self.tables:
            self.tables[files_id] = self._collect_table(pid, shell_job)
        cwd, root = (self._collect_dir(pid, name) for name in ("cwd", "root"))
        self.fs[pid] = FsState(cwd, root, read_umask(pid))
        return self.task(pid)

    def _collect_table(self, pid: int, shell_job: bool) -> list[FdEntry]:
        # Dump only (a restore never reads fdinfo); dump/dump.py imported it before any freeze.
        from coldsnap.kernel.fdstate import read_fdinfo
        try:
            pidfd = pidfd_open(pid)
        except (NoSuchProcess, AccessDenied):
            raise
        except OSError as e:
            raise TargetError(f"cannot open files of {pid}: {e.strerror}") from e
        try:
            fd_numbers = K.list_fds(pid)
            open_fds = set(fd_numbers)
            entries: list[FdEntry] = []
            for fd in fd_numbers:
                try:
                    link = K.read_fd_link(pid, fd)
                    info = read_fdinfo(pid, fd)
                except FileNotFoundError:
                    continue    # closed since the listing: only a running target does that
                cloexec = bool(info.flags & os.O_CLOEXEC)
                group = self._seen.setdefault((link.raw, info.ino), [])
                same = next((fid for opid, ofd, fid in group if _same_file(pid, fd, opid, ofd)), None)
                if same is None:
                    try:
                        dup = pidfd_getfd(pidfd, fd)
                    except OSError as e:
                        if e.errno == errno.EBADF:
                            continue    # closed since the listing, as above
                        raise TargetError(f"fd {fd}: cannot duplicate it: {e.strerror}") from e
                    try:
                        p = Probe(pid, fd, link, info, dup, open_fds, shell_job, self.pipe_data, self.ghosts,
                                  tcp=self.tcp)
                        ops = ops_to_collect(classify(p), fd)
                        same = self.add(ops.collect(p, self.new_id()))
                    finally:
                        os.close(dup)
                    group.append((pid, fd, same))
                entries.append(FdEntry(fd, same, cloexec))
        finally:
            os.close(pidfd)
        return entries

    def _collect_dir(self, pid: int, name: str) -> int:
        link = read_path_link(pid, name)
        if link.path.endswith(" (deleted)"):
            raise Unsupported(f"{name}: directory {link.path[:-10]} was deleted; not supported")
        fid = self.new_id()
        return self.add(RegFile(fid, link.path, _DIR_FLAGS, 0, None, link.stat.st_mode))

    def add_mapped(self, mapped: dict[str, tuple[int, os.stat_result]],
                   ghosts: dict[str, int] | None = None) -> dict[str, int]:
        """A REG file (pos 0) for each file behind a memory mapping or the exe.

        `mapped`: path -> (open flags, its stat); `ghosts`: the ghost id of each of these
        paths that is a deleted file (its path ends with " (deleted)"); returns path -> id
        for mm-PID.img.
        """
        ids = {}
        ghosts = ghosts or {}
        for path, (flags, st) in mapped.items():
            size = st.st_size if stat.S_ISREG(st.st_mode) else None
            ghost = ghosts.get(path, 0)
            name = path.removesuffix(" (deleted)") if ghost else path
            ids[path] = self.add(RegFile(self.new_id(), name, flags, 0, size, st.st_mode, ghost=ghost))
        return ids

    def remaps(self) -> list[tuple[int, int]]:
        """(REG id, ghost id) of every file that was deleted: remap-fpath.img."""
        return [(fid, f.ghost) for fid, f in self.files.items() if isinstance(f, RegFile) and f.ghost]

    # --- queries -------------------------------------------------------------------------------

    def task(self, pid: int) -> TaskFiles:
        return TaskFiles(self, pid, self.tasks[pid])

    def pipe_ends(self) -> dict[int, list[tuple[int, FdEntry]]]:
        """pipe_id -> every (files_id, fd entry) of its ends, over all tables (pipes and FIFOs)."""
        out: dict[int, list[tuple[int, FdEntry]]] = {}
        for files_id, table in self.tables.items():
            for e in table:
                f = self.files[e.file_id]
                if isinstance(f, PipeFile):
                    out.setdefault(f.pipe_id, []).append((files_id, e))
        return out

    def shared_ids(self) -> list[int]:
        """Files that more than one fd table holds, directly or as an end of a pipe whose
        ends sit in different tables: a restore creates each once for every table."""
        tables: dict[int, set[int]] = {}
        for files_id, table in self.tables.items():
            for e in table:
                tables.setdefault(e.file_id, set()).add(files_id)
        out = {fid for fid, holders in tables.items() if len(holders) > 1}
        for ends in self.pipe_ends().values():
            if len({files_id for files_id, _ in ends}) > 1:
                out.update(e.file_id for _, e in ends)
        # the two ends of a connected unix pair are made together, like a pipe's
        by_inode = {f.inode: fid for fid, f in self.files.items() if f.kind is FdType.UNIXSK}
        for fid, holders in tables.items():
            f = self.files[fid]
            if f.kind is FdType.UNIXSK and f.peer in by_inode:
                peer = by_inode[f.peer]
                if tables.get(peer, set()) != holders or len(holders) > 1:
                    out.update((fid, peer))
        return sorted(out)

    def where(self, fid: int) -> str:
        """'pid P fd N' of the first fd that refers to file fid (for messages)."""
        for pid, files_id in self.tasks.items():
            for e in self.tables.get(files_id, []):
                if e.file_id == fid:
                    return f"pid {pid} fd {e.fd}"
        return f"file {fid}"

    def lone_pipe_ends(self) -> list[tuple[int, int]]:
        """(files_id, fd) of pipe ends whose other end is in no table of the registry: a
        restore recreates them without their peer (reads see the data then EOF)."""
        out = []
        for pipe_id, ends in self.pipe_ends().items():
            objs = [self.files[e.file_id] for _, e in ends]
            if objs[0].fifo_path:
                continue     # a FIFO is reopened by path: anyone may open the other side
            if len({f.flags & os.O_ACCMODE == os.O_RDONLY for f in objs}) == 1:
                out += [(files_id, e.fd) for files_id, e in ends]
        return sorted(out)


@dataclass(eq=False, repr=False)
class TaskFiles:
    """One task's view of a registry: its fd table, cwd, root and umask."""
    registry: FileRegistry
    pid: int
    files_id: int

    @property
    def fds(self) -> list[FdEntry]:
        return self.registry.tables.get(self.files_id, [])

    @property
    def fs_state(self) -> FsState:
        return self.registry.fs[self.pid]

    @property
    def cwd_id(self) -> int:
        return self.fs_state.cwd_id

    @property
    def root_id(self) -> int:
        return self.fs_state.root_id

    @property
    def umask(self) -> int:
        return self.fs_state.umask

    @property
    def files(self) -> dict[int, FileObj]:
        """The objects of the task's fds, cwd and root, by id."""
        ids = {e.file_id for e in self.fds} | {self.cwd_id, self.root_id}
        return {fid: self.registry.files[fid] for fid in sorted(ids)}

    @property
    def pipe_data(self) -> dict[int, PipeData]:
        return self.registry.pipe_data

    @property
    def cwd(self) -> str:
        return self.registry.files[self.cwd_id].path      # type: ignore[union-attr]

    @property
    def root(self) -> str:
        return self.registry.files[self.root_id].path     # type: ignore[union-attr]

    @property
    def terminal_fds(self) -> list[int]:
        return [e.fd for e in self.fds if getattr(self.registry.files[e.file_id], "terminal", False)]

    def file_of(self, fd: int) -> FileObj:
        return next(self.registry.files[e.file_id] for e in self.fds if e.fd == fd)

    def first_fds(self) -> dict[int, int]:
        """file id -> the lowest fd number that refers to it (to name it in messages)."""
        out: dict[int, int] = {}
        for e in sorted(self.fds, key=lambda e: e.fd):
            out.setdefault(e.file_id, e.fd)
        return out


def _same_file(pid1: int, fd1: int, pid2: int, fd2: int) -> bool:
    """Same open file description? Without kcmp (kernel without it, or refused), two fds
    count as two descriptions: restore then opens each alone, losing only a shared offset."""
    try:
        return kcmp.same_file(pid1, fd1, pid2, fd2)
    except OSError:
        return False
