"""What the kernel says about a task's open files: /proc/PID/fdinfo, /proc/net tables and
the sock_diag backlog (dump only; fd links are kernel/fdinfo.py's).

Typed facts only: deciding what is supported is the dumper's business. The patterns are
compiled at import, which the dump does before its freeze (they are used inside it). The
socket module is imported where a socket's facts are read: by then the dump has imported the
socket kinds (files/kinds.py, before the freeze), which import it; a dump of a process
without sockets does not pay for its enums.
"""
from __future__ import annotations

import re
import struct
from dataclasses import dataclass, field
from typing import NamedTuple


class EpollTfd(NamedTuple):
    """One `tfd:` line of an epoll fdinfo: a registration of target fd `tfd`."""
    tfd: int
    events: int
    data: int
    pos: int
    ino: int
    sdev: int


class InotifyMark(NamedTuple):
    """One `inotify wd:` line: a watch, the inode it is on and that inode's file handle."""
    wd: int
    ino: int
    sdev: int                # the kernel's dev_t (major << 20 | minor)
    mask: int
    ignored_mask: int
    handle_type: int
    handle: bytes


class TimerfdState(NamedTuple):
    """The timerfd lines of an fdinfo: it_value is the time left (relative)."""
    clockid: int
    ticks: int
    settime_flags: int
    value: tuple[int, int]
    interval: tuple[int, int]


@dataclass(slots=True)
class FdInfo:
    """The parsed content of /proc/PID/fdinfo/N."""
    pos: int = 0
    flags: int = 0           # f_flags (octal in the file), O_CLOEXEC added when the fd has it
    mnt_id: int = -1
    ino: int = 0
    eventfd_count: int | None = None
    eventfd_semaphore: bool | None = None
    tfds: list[EpollTfd] = field(default_factory=list)
    sigmask: int | None = None                   # signalfd
    timerfd: TimerfdState | None = None
    marks: list[InotifyMark] = field(default_factory=list)   # inotify
    other: dict[str, str] = field(default_factory=dict)  # keys we do not interpret


_TFD = re.compile(r"tfd:\s*(\d+)\s+events:\s*([0-9a-f]+)\s+data:\s*([0-9a-f]+)\s+"
                  r"pos:\s*(\d+)\s+ino:\s*([0-9a-f]+)\s+sdev:\s*([0-9a-f]+)")


_MARK = re.compile(r"inotify wd:(\d+) ino:([0-9a-f]+) sdev:([0-9a-f]+) mask:([0-9a-f]+) "
                   r"ignored_mask:([0-9a-f]+)(?: fhandle-bytes:([0-9a-f]+) fhandle-type:([0-9a-f]+) "
                   r"f_handle:([0-9a-f]*))?")
_PAIR = re.compile(r"\((-?\d+), (-?\d+)\)")


def _timerfd(keys: dict[str, str]) -> TimerfdState | None:
    if "clockid" not in keys:
        return None
    pairs = [tuple(int(x) for x in _PAIR.fullmatch(keys[k]).groups()) for k in ("it_value", "it_interval")]
    return TimerfdState(int(keys["clockid"]), int(keys["ticks"]), int(keys["settime flags"], 8),
                        pairs[0], pairs[1])    # type: ignore[arg-type]


def parse_fdinfo(text: str) -> FdInfo:
    info = FdInfo()
    for line in text.splitlines():
        if line.startswith("inotify wd:"):
            m = _MARK.match(line)
            if m is None:
                raise ValueError(f"unparsable inotify line {line!r}")
            wd, ino, sdev, mask, ign, nbytes, htype, handle = m.groups()
            raw = bytes.fromhex(handle or "")
            info.marks.append(InotifyMark(int(wd), int(ino, 16), int(sdev, 16), int(mask, 16), int(ign, 16),
                                          int(htype or "0", 16), raw[:int(nbytes or "0", 16)]))
            continue
        if line.startswith("tfd:"):
            m = _TFD.match(line)
            if m is None:
                raise ValueError(f"unparsable epoll line {line!r}")
            tfd, ev, data, pos, ino, sdev = m.groups()
            info.tfds.append(EpollTfd(int(tfd), int(ev, 16), int(data, 16), int(pos),
                                      int(ino, 16), int(sdev, 16)))
            continue
        key, sep, value = line.partition(":")
        if not sep:
            continue
        value = value.strip()
        if key == "pos":
            info.pos = int(value)
        elif key == "flags":
            info.flags = int(value, 8)
        elif key == "mnt_id":
            info.mnt_id = int(value)
        elif key == "ino":
            info.ino = int(value)
        elif key == "eventfd-count":
            info.eventfd_count = int(value, 16)   # printed with %llx
        elif key == "eventfd-semaphore":
            info.eventfd_semaphore = value == "1"
        elif key == "sigmask":
            info.sigmask = int(value, 16)
        else:
            info.other[key] = value
    info.timerfd = _timerfd(info.other)
    return info


def read_fdinfo(pid: int, fd: int) -> FdInfo:
    with open(f"/proc/{pid}/fdinfo/{fd}") as f:
        return parse_fdinfo(f.read())


# --- /proc/PID/net/{tcp,tcp6,udp,udp6} ----------------------------------------------

TCP_STATES = {1: "ESTABLISHED", 2: "SYN_SENT", 3: "SYN_RECV", 4: "FIN_WAIT1", 5: "FIN_WAIT2",
              6: "TIME_WAIT", 7: "CLOSE", 8: "CLOSE_WAIT", 9: "LAST_ACK", 10: "LISTEN",
              11: "CLOSING"}
TCP_LISTEN = 10


class NetSock(NamedTuple):
    """One line of /proc/net/{tcp,udp}[6]."""
    table: str               # "tcp", "tcp6", "udp", "udp6"
    local: tuple[str, int]
    remote: tuple[str, int]
    state: int
    tx_queue: int
    rx_queue: int
    inode: int


def _addr(hexaddr: str, v6: bool) -> tuple[str, int]:
    import socket
    host, port = hexaddr.split(":")
    raw = bytes.fromhex(host)
    # The kernel prints each 32-bit word in host order (little endian here).
    raw = b"".join(raw[i:i + 4][::-1] for i in range(0, len(raw), 4))
    return socket.inet_ntop(socket.AF_INET6 if v6 else socket.AF_INET, raw), int(port, 16)


def parse_net_table(table: str, text: str) -> list[NetSock]:
    v6 = table.endswith("6")
    out = []
    for line in text.splitlines()[1:]:
        p = line.split()
        if len(p) < 10:
            continue
        tx, rx = p[4].split(":")
        out.append(NetSock(table, _addr(p[1], v6), _addr(p[2], v6), int(p[3], 16),
                           int(tx, 16), int(rx, 16), int(p[9])))
    return out


def find_net_socket(pid: int, inode: int) -> NetSock | None:
    """The TCP/UDP socket with this inode in the task's network namespace, if any."""
    for table in ("tcp", "tcp6", "udp", "udp6"):
        try:
            with open(f"/proc/{pid}/net/{table}") as f:
                text = f.read()
        except FileNotFoundError:
            continue
        for s in parse_net_table(table, text):
            if s.inode == inode:
                return s
    return None


# --- sock_diag: the backlog of a listening socket --------------------------------------
# Neither getsockopt nor /proc/net shows sk_max_ack_backlog; inet_diag reports it as the
# "wqueue" of a listening socket (what `ss -l` prints as Send-Q).

_NETLINK_SOCK_DIAG = 4
_SOCK_DIAG_BY_FAMILY = 20
_NLM_F_REQUEST, _NLM_F_DUMP = 1, 0x300
_NLMSG_DONE, _NLMSG_ERROR = 3, 2
_NLMSG = struct.Struct("=IHHII")
_REQ = struct.Struct("=BBBBI")               # family, protocol, ext, pad, states
_SOCKID = struct.Struct(">HH16s16sI8s")       # sport, dport, src, dst, if, cookie
_MSG = struct.Struct("=BBBB")                # family, state, timer, retrans
_MSG_TAIL = struct.Struct("=IIIII")           # expires, rqueue, wqueue, uid, inode


def listen_backlog(family: int, inode: int) -> int | None:
    """sk_max_ack_backlog of the listening TCP socket `inode` (in our net namespace)."""
    import socket
    with socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM, _NETLINK_SOCK_DIAG) as nl:
        body = _REQ.pack(family, socket.IPPROTO_TCP, 0, 0, 1 << TCP_LISTEN) + \
            _SOCKID.pack(0, 0, b"", b"", 0, b"\xff" * 8)
        nl.send(_NLMSG.pack(_NLMSG.size + len(body), _SOCK_DIAG_BY_FAMILY,
                            _NLM_F_REQUEST | _NLM_F_DUMP, 1, 0) + body)
        while True:
            buf = nl.recv(65536)
            off = 0
            while off + _NLMSG.size <= len(buf):
                length, mtype, _, _, _ = _NLMSG.unpack_from(buf, off)
                if mtype in (_NLMSG_DONE, _NLMSG_ERROR) or length < _NLMSG.size:
                    return None
                p = off + _NLMSG.size + _MSG.size + _SOCKID.size
                _, _, wqueue, _, ino = _MSG_TAIL.unpack_from(buf, p)
                if ino == inode:
                    return wqueue
                off += (length + 3) & ~3


# --- reaching another task's descriptors -----------------------------------------------
