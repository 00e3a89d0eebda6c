"""A task's fd table in /proc: its fd links, and reopening an fd (dump and restore).

What the kernel says about each open file (fdinfo, /proc/net, the sock_diag backlog) is
kernel/fdstate.py's: only a dump reads it.

Typed facts only: what kind of object an fd points at and what the kernel says about it.
Deciding what is supported is the dumper's business.
"""
from __future__ import annotations

import os
import re
from enum import Enum
from typing import NamedTuple

from .libc import on_process


class LinkKind(Enum):
    """What the target of /proc/PID/fd/N looks like."""
    PATH = "path"            # "/some/file", maybe with " (deleted)"
    PIPE = "pipe"            # "pipe:[INO]"
    SOCKET = "socket"        # "socket:[INO]"
    ANON = "anon"            # "anon_inode:[eventfd]" or "anon_inode:inotify"
    OTHER = "other"          # e.g. "net:[4026531840]", "mnt:[...]" (nsfs)


class FdLink(NamedTuple):
    """One parsed /proc/PID/fd/N link."""
    fd: int
    raw: str
    kind: LinkKind
    path: str = ""           # PATH: the path without the " (deleted)" mark
    deleted: bool = False    # PATH: the kernel marked the dentry as unlinked
    inode: int = 0           # PIPE/SOCKET: the inode from the brackets
    anon: str = ""           # ANON: "eventfd", "eventpoll", "inotify", "signalfd"...


_BRACKET = re.compile(r"^(\w+):\[(\d+)\]$")
_DELETED = " (deleted)"


def parse_fd_link(fd: int, raw: str) -> FdLink:
    if raw.startswith("/"):
        deleted = raw.endswith(_DELETED)
        return FdLink(fd, raw, LinkKind.PATH, path=raw[:-len(_DELETED)] if deleted else raw,
                      deleted=deleted)
    if raw.startswith("anon_inode:"):
        return FdLink(fd, raw, LinkKind.ANON, anon=raw[len("anon_inode:"):].strip("[]"))
    m = _BRACKET.match(raw)
    if m and m.group(1) == "pipe":
        return FdLink(fd, raw, LinkKind.PIPE, inode=int(m.group(2)))
    if m and m.group(1) == "socket":
        return FdLink(fd, raw, LinkKind.SOCKET, inode=int(m.group(2)))
    return FdLink(fd, raw, LinkKind.OTHER)


def read_fd_link(pid: int, fd: int) -> FdLink:
    return parse_fd_link(fd, os.readlink(f"/proc/{pid}/fd/{fd}"))


@on_process
def list_fds(pid: int) -> list[int]:
    """The open descriptor numbers of a task, sorted."""
    return sorted(int(n) for n in os.listdir(f"/proc/{pid}/fd"))


def own_fds() -> list[int]:
    """The open descriptor numbers of the calling process (the listing's own fd included)."""
    return sorted(int(n) for n in os.listdir("/proc/self/fd"))


@on_process
def fd_inode(pid: int, fd: int) -> int | None:
    """Inode of the object fd N of the task points at; None when the fd is not open."""
    try:
        return os.stat(f"/proc/{pid}/fd/{fd}").st_ino
    except FileNotFoundError:
        return None


@on_process
def reopen_fd(pid: int, fd: int, flags: int) -> int:
    """A new open file description of the object behind the task's fd N, opened through
    /proc/PID/fd/N with FLAGS (O_CLOEXEC added): e.g. a read end of a pipe seen as a write end."""
    return os.open(f"/proc/{pid}/fd/{fd}", flags | os.O_CLOEXEC)


@on_process
def raw_fd_links(pid: int) -> dict[int, str]:
    """fd number -> readlink of /proc/PID/fd/N; fds closed while listing are left out."""
    out = {}
    for fd in list_fds(pid):
        try:
            out[fd] = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            pass
    return out


def fdinfo_value(pid: int, fd: int, key: str) -> str | None:
    """The value of one `KEY: value` line of /proc/PID/fdinfo/FD (None without such a line),
    for a caller that needs no more than that of kernel/fdstate.py's parse (nor its import)."""
    with open(f"/proc/{pid}/fdinfo/{fd}") as f:
        for line in f:
            name, sep, value = line.partition(":")
            if sep and name == key:
                return value.strip()
    return None
