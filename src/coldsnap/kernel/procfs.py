"""Parsers of /proc files: typed, cheap, and free of dump policy.

Readers of /proc/PID/... raise NoSuchProcess when the process is gone (see libc.on_process)."""
from __future__ import annotations

import functools
import os
import re
import struct
from typing import Iterable, Literal, NamedTuple

from ..errors import NoSuchProcess
from .libc import on_process

PF_EXITING = 0x4            # stat flags: the task is on its way out

# The records are NamedTuples: immutable and hashable like frozen dataclasses, but built at
# import without generating and compiling methods (a fifth of the instructions; issue 13).


class MapsLine(NamedTuple):
    """One line of /proc/PID/maps."""
    start: int
    end: int
    perms: str          # e.g. "rw-p"
    offset: int
    dev: str            # "fd:01"
    inode: int
    path: str           # "" for anonymous; "[heap]", "/usr/lib/...", "/dev/zero (deleted)"

    @property
    def readable(self) -> bool:
        return self.perms[0] == "r"

    @property
    def writable(self) -> bool:
        return self.perms[1] == "w"

    @property
    def executable(self) -> bool:
        return self.perms[2] == "x"

    @property
    def shared(self) -> bool:
        return self.perms[3] == "s"


def parse_maps(text: str) -> list[MapsLine]:
    out = []
    for line in text.splitlines():
        parts = line.split(None, 5)
        lo, hi = parts[0].split("-")
        out.append(MapsLine(int(lo, 16), int(hi, 16), parts[1], int(parts[2], 16), parts[3],
                            int(parts[4]), parts[5] if len(parts) > 5 else ""))
    return out


@on_process
def read_maps(pid: int, ending: tuple[str, ...] = ()) -> list[MapsLine]:
    """The task's mappings; 0.2 ms for a small process, unlike smaps (≈9 ms). ENDING: only
    those whose path ends with one of these ("[vdso]"...), the other lines left unparsed (a
    Python process has a couple of hundred: a third of a millisecond)."""
    with open(f"/proc/{pid}/maps", "rb") as f:
        text = f.read().decode("utf-8", "surrogateescape")
    if ending:
        text = "\n".join(line for line in text.splitlines() if line.endswith(ending))
    return parse_maps(text)


# a mapping's header line or its VmFlags line, each just after a newline (a path's own newlines
# are escaped as \012): the search jumps from newline to newline
_SMAPS_LINE = re.compile(rb"\n(?:([0-9a-f]+)-([0-9a-f]+) |VmFlags:([^\n]*))")


@on_process
def read_vm_flags(pid: int) -> dict[tuple[int, int], frozenset[str]]:
    """(start, end) of each mapping -> its VmFlags codes of /proc/PID/smaps ("dc", "lo"...).
    smaps walks the page tables (≈9 ms for a small process): read it outside a freeze. Only
    its header and VmFlags lines are looked at, found by one regular expression over the
    bytes (a Python process with numpy, 189 mappings in 4725 lines: 0.3 instead of 0.9 ms)."""
    with open(f"/proc/{pid}/smaps", "rb") as f:
        text = b"\n" + f.read()
    out: dict[tuple[int, int], frozenset[str]] = {}
    span = None
    for lo, hi, flags in _SMAPS_LINE.findall(text):
        if lo:
            span = (int(lo, 16), int(hi, 16))
        elif span is not None:
            out[span] = frozenset(flags.decode().split())
    return out


@on_process
def find_mapping(pid: int, path: str) -> MapsLine | None:
    """The first mapping of PATH (e.g. "[vdso]"), found in the raw text of /proc/PID/maps
    without parsing every line (a forked Python interpreter has hundreds)."""
    with open(f"/proc/{pid}/maps", "rb") as f:
        text = f.read()
    at = text.find(b" " + path.encode("utf-8", "surrogateescape") + b"\n")
    if at < 0:
        return None
    line = text[text.rfind(b"\n", 0, at) + 1:text.index(b"\n", at)]
    return parse_maps(line.decode("utf-8", "surrogateescape"))[0]


@on_process
def list_tids(pid: int) -> list[int]:
    return sorted(int(t) for t in os.listdir(f"/proc/{pid}/task"))


class Stat(NamedTuple):
    """The fields of /proc/PID/stat that a checkpoint needs (names as in proc(5))."""
    pid: int
    comm: str
    state: str
    ppid: int
    pgrp: int
    session: int
    flags: int
    num_threads: int
    starttime: int
    start_code: int
    end_code: int
    start_stack: int
    start_data: int
    end_data: int
    start_brk: int
    arg_start: int
    arg_end: int
    env_start: int
    env_end: int
    exit_code: int


@on_process
def read_stat(pid: int, tid: int | None = None) -> Stat:
    path = f"/proc/{pid}/stat" if tid is None else f"/proc/{pid}/task/{tid}/stat"
    with open(path, "rb") as f:
        raw = f.read().decode("utf-8", "surrogateescape")
    lpar, rpar = raw.index("("), raw.rindex(")")
    comm = raw[lpar + 1:rpar]
    f = [raw[:lpar].strip(), comm] + raw[rpar + 2:].split()
    n = lambda i: int(f[i - 1])  # noqa: E731 - proc(5) numbers fields from 1
    return Stat(pid=int(f[0]), comm=comm, state=f[2], ppid=n(4), pgrp=n(5), session=n(6),
                flags=n(9), num_threads=n(20), starttime=n(22), start_code=n(26), end_code=n(27),
                start_stack=n(28), start_data=n(45), end_data=n(46), start_brk=n(47),
                arg_start=n(48), arg_end=n(49), env_start=n(50), env_end=n(51), exit_code=n(52))


@on_process
def read_status(pid: int, tid: int | None = None) -> dict[str, str]:
    path = f"/proc/{pid}/status" if tid is None else f"/proc/{pid}/task/{tid}/status"
    out = {}
    with open(path) as f:
        for line in f:
            key, _, value = line.partition(":")
            out[key] = value.strip()
    return out


def read_umask(pid: int) -> int:
    """`Umask:` of /proc/PID/status (octal)."""
    umask = read_status(pid).get("Umask")
    if umask is None:
        raise ValueError(f"no Umask in the status of {pid}")
    return int(umask, 8)


def list_pids() -> list[int]:
    """Every process (thread group) the /proc of this namespace shows."""
    return sorted(int(e) for e in os.listdir("/proc") if e.isdigit())


def _children_files() -> bool:
    """CONFIG_PROC_CHILDREN: /proc/PID/task/TID/children exists."""
    return os.path.exists(f"/proc/self/task/{os.getpid()}/children")


def child_pids(pids: Iterable[int]) -> dict[int, list[int]]:
    """pid -> its children (of every thread of it), for each of PIDS; a process gone meanwhile
    has none. From /proc/PID/task/*/children where the kernel has them, else from one pass
    over every /proc/PID/stat."""
    pids = list(pids)
    out: dict[int, list[int]] = {pid: [] for pid in pids}
    if _children_files():
        for pid in pids:
            try:
                for tid in os.listdir(f"/proc/{pid}/task"):
                    with open(f"/proc/{pid}/task/{tid}/children") as f:
                        out[pid].extend(int(c) for c in f.read().split())
            except (FileNotFoundError, ProcessLookupError):
                continue
    else:
        for child in list_pids():
            try:
                ppid = read_stat(child).ppid
            except (ProcessLookupError, ValueError):
                continue
            if ppid in out:
                out[ppid].append(child)
    return {pid: sorted(set(kids)) for pid, kids in out.items()}


def ns_inode(pid: int, kind: str) -> int | None:
    """Inode of the process's namespace of KIND ("pid", "net", ...); None when this kernel
    has no such namespace."""
    try:
        return os.stat(f"/proc/{pid}/ns/{kind}").st_ino
    except (FileNotFoundError, PermissionError) as e:
        # an exiting process drops its namespaces: their links answer EACCES or ENOENT
        if not os.path.exists(f"/proc/{pid}/ns") or not alive(pid):
            raise NoSuchProcess(pid) from None
        if isinstance(e, PermissionError):
            raise
        return None


NAMESPACE_KINDS = ("mnt", "pid", "net", "ipc", "uts", "user", "cgroup")


class Surroundings(NamedTuple):
    """What a process lives in, as far as work done on its behalf by another process
    depends on it: its namespaces, root directory, cgroup, effective capabilities and what
    confines it besides (no_new_privs, seccomp, its LSM label)."""
    namespaces: tuple[tuple[str, int, int], ...]    # (kind, st_dev, st_ino) per NAMESPACE_KINDS
    root: tuple[int, int]                           # (st_dev, st_ino) of /proc/PID/root
    cgroup: str                                     # /proc/PID/cgroup as it reads
    cap_eff: int                                    # CapEff of /proc/PID/status
    confinement: tuple[str, str, str]               # NoNewPrivs, Seccomp, /proc/PID/attr/current

    def difference(self, other: "Surroundings") -> str:
        """'' when both are the same, else the first thing that differs, in words."""
        for (kind, *a), (_, *b) in zip(self.namespaces, other.namespaces):
            if a != b:
                return f"{kind} namespace"
        for name, words in (("root", "root directory"), ("cgroup", "cgroup"), ("cap_eff", "capabilities"),
                            ("confinement", "confinement (no_new_privs, seccomp or LSM label)")):
            if getattr(self, name) != getattr(other, name):
                return words
        return ""


@on_process
def read_surroundings(pid: int) -> Surroundings:
    """Every file read through one fd on /proc/PID: no lookup of PID per file, and none of
    another process that took PID meanwhile (its entries then say ENOENT or ESRCH)."""
    proc = os.open(f"/proc/{pid}", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        def ident(path: str) -> tuple[int, int]:
            st = os.stat(path, dir_fd=proc)
            return st.st_dev, st.st_ino
        namespaces = []
        for kind in NAMESPACE_KINDS:
            try:
                namespaces.append((kind, *ident(f"ns/{kind}")))
            except FileNotFoundError:               # a kernel without that namespace
                if kind == NAMESPACE_KINDS[0]:      # or a process gone
                    raise
                namespaces.append((kind, 0, 0))
        status = _read_at(proc, "status")
        try:
            label = _read_at(proc, "attr/current")
        except OSError:                             # EINVAL: no LSM keeps a label
            label = ""
        return Surroundings(tuple(namespaces), ident("root"), _read_at(proc, "cgroup"),
                            int(_status_field(status, "CapEff") or "0", 16),
                            (_status_field(status, "NoNewPrivs") or "0", _status_field(status, "Seccomp") or "0",
                             label))
    finally:
        os.close(proc)


def _read_at(dir_fd: int, name: str) -> str:
    """The whole of file NAME below DIR_FD, as text."""
    fd = os.open(name, os.O_RDONLY | os.O_CLOEXEC, dir_fd=dir_fd)
    try:
        chunks = []
        while chunk := os.read(fd, 16384):
            chunks.append(chunk)
    finally:
        os.close(fd)
    return b"".join(chunks).decode(errors="surrogateescape")


def _status_field(status: str, key: str) -> str | None:
    """The value of KEY in the text of a status file (stripped), None without one."""
    at = status.find(f"\n{key}:")
    if at < 0:
        return None
    at += len(key) + 2
    end = status.find("\n", at)
    return status[at:end if end >= 0 else None].strip()


class CgroupFile:
    """/proc/PID/cgroup kept open and read again from its start at each read(): what it says
    then, without a lookup of PID (a fifth of the time of an open and a read)."""

    def __init__(self, pid: int) -> None:
        self.fd = os.open(f"/proc/{pid}/cgroup", os.O_RDONLY | os.O_CLOEXEC)

    def read(self) -> str:
        chunks, at = [], 0
        while chunk := os.pread(self.fd, 16384, at):
            chunks.append(chunk)
            at += len(chunk)
        return b"".join(chunks).decode(errors="surrogateescape")

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


def alive(pid: int, tid: int | None = None) -> bool:
    """The one liveness check: the process (or thread) exists and is neither a zombie, dead
    nor exiting."""
    try:
        st = read_stat(pid, tid)
    except (ProcessLookupError, ValueError):    # ValueError: stat cut short by the exit
        return False
    return st.state not in ("Z", "X") and not st.flags & PF_EXITING


@on_process
def open_mem(pid: int, flags: int = os.O_RDONLY) -> int:
    """An fd on /proc/PID/mem (O_CLOEXEC added); the caller closes it."""
    return os.open(f"/proc/{pid}/mem", flags | os.O_CLOEXEC)


class PathLink(NamedTuple):
    """A /proc/PID/{exe,cwd,root} link: its text and the object it leads to."""
    path: str               # readlink, " (deleted)" kept
    stat: os.stat_result    # of the object (the link followed)


@on_process
def read_path_link(pid: int, name: Literal["exe", "cwd", "root"]) -> PathLink:
    path = os.readlink(f"/proc/{pid}/{name}")
    return PathLink(path, os.stat(f"/proc/{pid}/{name}"))


@on_process
def open_path_link(pid: int, name: Literal["exe", "cwd", "root"], flags: int) -> int:
    """An fd on what the link points at, even when it was deleted (O_CLOEXEC added)."""
    return os.open(f"/proc/{pid}/{name}", flags | os.O_CLOEXEC)


# /proc/PID/map_files/START-END: the object behind a file mapping. Readers raise the plain
# OSError: ENOENT may mean the mapping is gone as well as the process.

def fd_path(pid: int, fd: int) -> str:
    """/proc/PID/fd/FD: opening it opens the file behind that fd anew (a new open file)."""
    return f"/proc/{pid}/fd/{fd}"


def _map_file(pid: int, start: int, end: int) -> str:
    return f"/proc/{pid}/map_files/{start:x}-{end:x}"


def stat_map_file(pid: int, start: int, end: int) -> os.stat_result:
    """The stat of the mapped object (the link followed)."""
    return os.stat(_map_file(pid, start, end))


def map_file_link_mode(pid: int, start: int, end: int) -> int:
    """The link's own mode: its rwx bits show the f_mode the file was opened with."""
    return os.lstat(_map_file(pid, start, end)).st_mode


def open_map_file(pid: int, start: int, end: int, flags: int) -> int:
    """An fd on the mapped object (O_CLOEXEC added)."""
    return os.open(_map_file(pid, start, end), flags | os.O_CLOEXEC)


@on_process
def mount_devices(pid: int, fstype: str) -> set[str]:
    """maps-style "maj:min" (hex, as the dev column of /proc/PID/maps) of every mount of
    FSTYPE that the process sees, from its mountinfo."""
    out = set()
    with open(f"/proc/{pid}/mountinfo") as f:
        for line in f:
            left, _, right = line.partition(" - ")
            if right.split()[:1] == [fstype]:
                major, minor = (int(x) for x in left.split()[2].split(":"))
                out.add(f"{major:02x}:{minor:02x}")
    return out


@on_process
def mount_points(pid: int) -> list[tuple[int, int, str]]:
    """(major, minor, mount point) of every mount the process sees, in mountinfo order."""
    out = []
    with open(f"/proc/{pid}/mountinfo") as f:
        for line in f:
            fields = line.split()
            major, minor = (int(x) for x in fields[2].split(":"))
            out.append((major, minor, fields[4].replace("\\040", " ")))
    return out


class CgroupMount(NamedTuple):
    """A cgroup file system as a process sees it mounted: v1 (its controllers, or name=X,
    among the options) or v2, and which cgroup of the hierarchy is at the mount point."""
    version: int                # 1 or 2
    options: frozenset[str]     # the super options (v1: "cpu", "name=systemd", "rw", ...)
    root: str                   # the cgroup at the mount point ("/" for the hierarchy's root)
    point: str


@on_process
def cgroup_mounts(pid: int) -> list[CgroupMount]:
    out = []
    with open(f"/proc/{pid}/mountinfo") as f:
        for line in f:
            left, _, right = line.partition(" - ")
            kind, _, opts = (right.split() + ["", "", ""])[:3]
            if kind in ("cgroup", "cgroup2"):
                fields = left.split()
                out.append(CgroupMount(2 if kind == "cgroup2" else 1, frozenset(opts.split(",")),
                                       fields[3].replace("\\040", " "), fields[4].replace("\\040", " ")))
    return out


class PosixTimerInfo(NamedTuple):
    """One timer of /proc/PID/timers: id, signal and value sent, sigev_notify (with
    SIGEV_THREAD_ID, 4, set when it notifies one thread: notify_id is then that tid), clock."""
    id: int
    signo: int
    sival: int
    notify: int
    notify_id: int
    clockid: int


_NOTIFY = {"signal": 0, "none": 1, "thread": 2}


@on_process
def read_posix_timers(pid: int) -> list[PosixTimerInfo]:
    """The POSIX timers of a process (timer_create), from /proc/PID/timers."""
    with open(f"/proc/{pid}/timers") as f:
        text = f.read()
    blocks: list[dict[str, str]] = []
    for line in text.splitlines():
        key, sep, value = line.partition(": ")
        if not sep:
            continue
        if key == "ID":
            blocks.append({})
        if blocks:
            blocks[-1][key] = value.strip()
    out = []
    for lines in blocks:
        signo, sival = lines["signal"].split("/")
        how, target = lines["notify"].split("/")
        kind, _, who = target.partition(".")
        notify = _NOTIFY[how] | (4 if kind == "tid" else 0)
        out.append(PosixTimerInfo(int(lines["ID"]), int(signo), int(sival, 16), notify, int(who),
                                  int(lines["ClockID"])))
    return out


RLIM_INFINITY = (1 << 64) - 1


@on_process
def read_limits(pid: int) -> list[tuple[int, int]]:
    """(soft, hard) of each row of /proc/PID/limits, in resource order; "unlimited" is
    RLIM_INFINITY."""
    # rows after a header: name, soft, hard, [units], columns at fixed offsets
    with open(f"/proc/{pid}/limits") as f:
        rows = f.read().splitlines()[1:]
    value = lambda text: RLIM_INFINITY if text == "unlimited" else int(text)  # noqa: E731
    return [(value(row[26:47].strip()), value(row[47:68].strip())) for row in rows if row]


@on_process
def read_personality(pid: int) -> int:
    with open(f"/proc/{pid}/personality") as f:
        return int(f.read().strip(), 16)


@on_process
def read_auxv(pid: int) -> list[int]:
    """The u64 words of /proc/PID/auxv (type, value pairs ending with AT_NULL)."""
    with open(f"/proc/{pid}/auxv", "rb") as f:
        raw = f.read()
    n = len(raw) // 8
    return list(struct.unpack(f"<{n}Q", raw[:n * 8]))


@on_process
def clear_soft_dirty(pid: int) -> None:
    """Clear the soft-dirty bits of every page of the process ("4" to /proc/PID/clear_refs)."""
    with open(f"/proc/{pid}/clear_refs", "wb", buffering=0) as f:
        f.write(b"4")


@functools.cache
def cpu_flags() -> frozenset[str]:
    """The `flags` of the first CPU in /proc/cpuinfo, read once (they do not change while
    coldsnap runs; a resident service reads them before it forks its workers)."""
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("flags"):
                return frozenset(line.split(":", 1)[1].split())
    return frozenset()


def effective_caps() -> int:
    """This process's effective capability set (CapEff), one bit per capability."""
    return int(read_status(os.getpid()).get("CapEff", "0"), 16)


def cap_last_cap() -> int:
    """The highest capability number this kernel knows."""
    with open("/proc/sys/kernel/cap_last_cap") as f:
        return int(f.read())


def uptime_us() -> int:
    with open("/proc/uptime") as f:
        return int(float(f.read().split()[0]) * 1_000_000)


# -- SysV IPC (/proc/sysvipc, /proc/sys/kernel/*_next_id) -------------------------------------

class SysvObject(NamedTuple):
    """One line of /proc/sysvipc/shm or /proc/sysvipc/sem (the IPC namespace of the reader)."""
    key: int
    id: int
    mode: int           # permission bits, with SHM_DEST/SHM_LOCKED for a segment
    size: int           # bytes of a segment, semaphores of a set
    uid: int
    gid: int
    cuid: int
    cgid: int
    cpid: int = 0       # segments only
    nattch: int = 0
    swap: int = 0       # bytes of the segment in swap


def read_sysvipc(kind: str) -> dict[int, SysvObject]:
    """id -> object, for kind "shm" or "sem"."""
    out = {}
    with open(f"/proc/sysvipc/{kind}") as f:
        next(f)
        for line in f:
            v = line.split()
            if kind == "shm":
                o = SysvObject(int(v[0]) & 0xFFFFFFFF, int(v[1]), int(v[2], 8), int(v[3]), int(v[7]),
                               int(v[8]), int(v[9]), int(v[10]), cpid=int(v[4]), nattch=int(v[6]),
                               swap=int(v[15]) if len(v) > 15 else 0)
            else:
                o = SysvObject(int(v[0]) & 0xFFFFFFFF, int(v[1]), int(v[2], 8), int(v[3]), int(v[4]),
                               int(v[5]), int(v[6]), int(v[7]))
            out[o.id] = o
    return out


def set_ipc_next_id(kind: str, ipc_id: int) -> None:
    """/proc/sys/kernel/{shm,sem}_next_id: the id the next shmget/semget of this IPC
    namespace takes (-1 again after it)."""
    with open(f"/proc/sys/kernel/{kind}_next_id", "w") as f:
        f.write(str(ipc_id))
