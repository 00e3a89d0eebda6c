"""TCP_REPAIR and its companions (linux/tcp.h): a socket put in repair mode sends nothing,
and its sequence numbers, queues, window and negotiated options can be read and set.

Thin and policy-free: each function is one setsockopt/getsockopt/ioctl on a socket object
(socket.socket(fileno=...) over a duplicate when the fd belongs to someone else).
Every call needs CAP_NET_ADMIN (root). Kernel facts: Documentation/networking and
net/ipv4/tcp.c (do_tcp_setsockopt / do_tcp_getsockopt).
"""
from __future__ import annotations

import fcntl
import socket
import struct
from dataclasses import dataclass

SOL_TCP = socket.IPPROTO_TCP
TCP_MAXSEG = 2
TCP_INFO = 11
TCP_REPAIR = 19
TCP_REPAIR_QUEUE = 20
TCP_QUEUE_SEQ = 21
TCP_REPAIR_OPTIONS = 22
TCP_TIMESTAMP = 24
TCP_REPAIR_WINDOW = 29

TCP_REPAIR_ON, TCP_REPAIR_OFF = 1, 0
TCP_NO_QUEUE, TCP_RECV_QUEUE, TCP_SEND_QUEUE = 0, 1, 2

# TCP_REPAIR_OPTIONS codes (the TCP option kinds) and TCP_INFO's tcpi_options bits
TCPOPT_MAXSEG, TCPOPT_WINDOW, TCPOPT_SACK_PERM, TCPOPT_TIMESTAMP = 2, 3, 4, 8
TCPI_OPT_TIMESTAMPS, TCPI_OPT_SACK, TCPI_OPT_WSCALE, TCPI_OPT_ECN = 1, 2, 4, 8

SIOCINQ = 0x541B          # FIONREAD: bytes in the receive queue not read yet
SIOCOUTQ = 0x5411         # TIOCOUTQ: bytes in the send queue, sent or not
SIOCOUTQNSD = 0x894B      # bytes in the send queue never sent

_U32 = struct.Struct("=I")
_INT = struct.Struct("=i")
_WINDOW = struct.Struct("=5I")      # struct tcp_repair_window
_OPT = struct.Struct("=II")         # struct tcp_repair_opt
_INFO_HEAD = struct.Struct("=8B")   # the first bytes of struct tcp_info


@dataclass(slots=True)
class TcpInfo:
    """What TCP_INFO's first bytes say: the state and the options the two ends agreed on."""
    state: int
    options: int              # TCPI_OPT_* bits
    snd_wscale: int
    rcv_wscale: int


@dataclass(slots=True)
class RepairWindow:
    """struct tcp_repair_window."""
    snd_wl1: int
    snd_wnd: int
    max_window: int
    rcv_wnd: int
    rcv_wup: int


def set_repair(s: socket.socket, on: bool) -> None:
    """Repair mode on (the socket sends nothing, close is silent) or off."""
    s.setsockopt(SOL_TCP, TCP_REPAIR, TCP_REPAIR_ON if on else TCP_REPAIR_OFF)


def select_queue(s: socket.socket, queue: int) -> None:
    """Which queue TCP_QUEUE_SEQ, recv(MSG_PEEK) and send() act on in repair mode."""
    s.setsockopt(SOL_TCP, TCP_REPAIR_QUEUE, queue)


def queue_seq(s: socket.socket) -> int:
    """The selected queue's sequence number: rcv_nxt (receive) or write_seq (send)."""
    return _U32.unpack(s.getsockopt(SOL_TCP, TCP_QUEUE_SEQ, 4))[0]


def set_queue_seq(s: socket.socket, seq: int) -> None:
    """The selected queue's first sequence number (a socket in repair mode, before connect)."""
    s.setsockopt(SOL_TCP, TCP_QUEUE_SEQ, _U32.pack(seq & 0xFFFFFFFF))


def tcp_info(s: socket.socket) -> TcpInfo:
    raw = s.getsockopt(SOL_TCP, TCP_INFO, 104)
    state, _ca, _retr, _probes, _backoff, options, wscale, _flags = _INFO_HEAD.unpack_from(raw)
    return TcpInfo(state, options, wscale & 0xF, wscale >> 4)


_BYTES_ACKED = struct.Struct("=120xQ")     # struct tcp_info up to tcpi_bytes_acked


def bytes_acked(s: socket.socket) -> int:
    """TCP_INFO's tcpi_bytes_acked: bytes of ours the peer's kernel acknowledged so far (its
    answers to keepalive or window probes do not count)."""
    return _BYTES_ACKED.unpack(s.getsockopt(SOL_TCP, TCP_INFO, _BYTES_ACKED.size))[0]


def queue_sizes(s: socket.socket) -> tuple[int, int, int]:
    """(bytes in the receive queue, bytes in the send queue, of which never sent)."""
    return tuple(_ioctl_int(s, req) for req in (SIOCINQ, SIOCOUTQ, SIOCOUTQNSD))  # type: ignore[return-value]


def mss(s: socket.socket) -> int:
    return s.getsockopt(SOL_TCP, TCP_MAXSEG)


def timestamp(s: socket.socket) -> int:
    """The socket's TCP timestamp clock now (with its offset)."""
    return _U32.unpack(s.getsockopt(SOL_TCP, TCP_TIMESTAMP, 4))[0]


def set_timestamp(s: socket.socket, value: int) -> None:
    """Offset the socket's timestamp clock so that it reads VALUE now (repair mode)."""
    s.setsockopt(SOL_TCP, TCP_TIMESTAMP, _U32.pack(value & 0xFFFFFFFF))


def repair_window(s: socket.socket) -> RepairWindow:
    return RepairWindow(*_WINDOW.unpack(s.getsockopt(SOL_TCP, TCP_REPAIR_WINDOW, _WINDOW.size)))


def set_repair_window(s: socket.socket, w: RepairWindow) -> None:
    s.setsockopt(SOL_TCP, TCP_REPAIR_WINDOW,
                         _WINDOW.pack(w.snd_wl1, w.snd_wnd, w.max_window, w.rcv_wnd, w.rcv_wup))


def set_repair_options(s: socket.socket, options: list[tuple[int, int]]) -> None:
    """Negotiated options, (TCPOPT_* code, value) each: MSS, window scales (snd | rcv << 16),
    SACK and timestamps permitted (value 0). A connected socket in repair mode."""
    s.setsockopt(SOL_TCP, TCP_REPAIR_OPTIONS, b"".join(_OPT.pack(c, v) for c, v in options))


def _ioctl_int(s: socket.socket, req: int) -> int:
    return _INT.unpack(fcntl.ioctl(s.fileno(), req, bytes(_INT.size)))[0]
