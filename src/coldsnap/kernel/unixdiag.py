"""What unix_diag (sock_diag for AF_UNIX) says of one unix socket, looked up by inode.

Only sock_diag knows a unix socket's peer, its shutdown state, a listener's backlog and
pending connections. It sees the sockets of our network namespace only.
"""
from __future__ import annotations

import os
import socket
import struct
from dataclasses import dataclass, field

_NETLINK_SOCK_DIAG = 4
_SOCK_DIAG_BY_FAMILY = 20
_NLM_F_REQUEST = 1
_NLMSG_ERROR = 2
_NLMSG = struct.Struct("=IHHII")
_REQ = struct.Struct("=BBHIII8s")            # family, protocol, pad, states, ino, show, cookie
_MSG = struct.Struct("=BBBBI8s")             # family, type, state, pad, ino, cookie
_ATTR = struct.Struct("=HH")
_SHOW_NAME, _SHOW_VFS, _SHOW_PEER, _SHOW_ICONS, _SHOW_RQLEN = 1, 2, 4, 8, 0x10
_NAME, _VFS, _PEER, _ICONS, _RQLEN, _SHUTDOWN = 0, 1, 2, 3, 4, 6


@dataclass(slots=True)
class UnixDiag:
    ino: int
    type: int
    state: int                   # TCP_ESTABLISHED (1), TCP_CLOSE (7), TCP_LISTEN (10)
    name: bytes = b""            # as bound; an abstract name starts with NUL
    vfs_ino: int = 0             # inode of the bound socket file (0: abstract or unbound)
    peer: int = 0                # inode of the peer (0: none)
    pending: list[int] = field(default_factory=list)   # a listener's unaccepted connections
    rqueue: int = 0              # bytes queued (listener: connections waiting)
    wqueue: int = 0              # bytes in flight (listener: backlog)
    shutdown: int = 0            # RCV_SHUTDOWN 1 | SEND_SHUTDOWN 2


def unix_diag(ino: int) -> UnixDiag | None:
    """The facts of unix socket `ino`, or None if sock_diag does not find it."""
    with socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM, _NETLINK_SOCK_DIAG) as nl:
        body = _REQ.pack(socket.AF_UNIX, 0, 0, 0xFFFFFFFF, ino,
                         _SHOW_NAME | _SHOW_VFS | _SHOW_PEER | _SHOW_ICONS | _SHOW_RQLEN, b"\xff" * 8)
        nl.send(_NLMSG.pack(_NLMSG.size + len(body), _SOCK_DIAG_BY_FAMILY, _NLM_F_REQUEST, 1, 0) + body)
        buf = nl.recv(1 << 16)
    length, mtype = _NLMSG.unpack_from(buf, 0)[:2]
    if mtype == _NLMSG_ERROR or length < _NLMSG.size + _MSG.size:
        return None
    _, stype, state, _, got, _ = _MSG.unpack_from(buf, _NLMSG.size)
    if got != ino:
        return None
    d = UnixDiag(ino, stype, state)
    off, end = _NLMSG.size + _MSG.size, min(length, len(buf))
    while off + _ATTR.size <= end:
        alen, atype = _ATTR.unpack_from(buf, off)
        if alen < _ATTR.size:
            break
        data = buf[off + _ATTR.size:off + alen]
        if atype == _NAME:
            d.name = bytes(data)
        elif atype == _VFS:
            d.vfs_ino = struct.unpack_from("=I", data)[0]
        elif atype == _PEER:
            d.peer = struct.unpack_from("=I", data)[0]
        elif atype == _ICONS:
            d.pending = list(struct.unpack(f"={len(data) // 4}I", data))
        elif atype == _RQLEN:
            d.rqueue, d.wqueue = struct.unpack_from("=II", data)
        elif atype == _SHUTDOWN:
            d.shutdown = data[0]
        off += (alen + 3) & ~3
    return d


def unix_socket_paths() -> dict[int, str]:
    """inode -> bound name of every unix socket in /proc/net/unix (abstract ones as @name)."""
    out = {}
    with open("/proc/net/unix") as f:
        next(f)
        for line in f:
            parts = line.split()
            if len(parts) >= 8:
                out[int(parts[6])] = parts[7]
    return out


def socket_holders(ino: int) -> list[tuple[int, int]]:
    """(pid, fd) of every process of this machine with an fd on socket inode `ino`; reads
    every /proc/PID/fd (for messages only)."""
    link = f"socket:[{ino}]"
    out = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            for fd in os.listdir(f"/proc/{pid}/fd"):
                if os.readlink(f"/proc/{pid}/fd/{fd}") == link:
                    out.append((int(pid), int(fd)))
        except OSError:
            continue
    return out
