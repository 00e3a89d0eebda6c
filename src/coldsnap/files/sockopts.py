"""The socket options every kind of socket keeps (buffer sizes, timeouts): read from a
socket, to and from CRIU's sk_opts_entry, and set again. Each kind adds its own."""
from __future__ import annotations

import socket
import struct
from dataclasses import dataclass

from coldsnap.images.pb import sk_opts_pb2

_TIMEVAL = struct.Struct("qq")


@dataclass(slots=True)
class SockOpts:
    """The socket options a dump keeps."""
    reuseaddr: bool = False
    reuseport: bool = False
    rcvbuf: int = 0               # as getsockopt reports it (twice what was set)
    sndbuf: int = 0
    keepalive: bool = False
    broadcast: bool = False       # likewise (see inet.EXTRA_OPTS)
    nodelay: bool = False         # TCP only (tcp_opts_entry), like the four below
    cork: bool = False
    keepcnt: int = 0
    keepidle: int = 0
    keepintvl: int = 0
    v6only: bool = False          # AF_INET6 only
    snd_tmo: tuple[int, int] = (0, 0)   # SO_SNDTIMEO (sec, usec)
    rcv_tmo: tuple[int, int] = (0, 0)   # SO_RCVTIMEO
    passcred: bool = False        # SO_PASSCRED, unix sockets only


def read_common(s: socket.socket) -> dict:
    """SockOpts fields every socket has, as keyword arguments."""
    return dict(
        rcvbuf=s.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF),
        sndbuf=s.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF),
        snd_tmo=_TIMEVAL.unpack(s.getsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, 16)),
        rcv_tmo=_TIMEVAL.unpack(s.getsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, 16)))


def common_entry(o: SockOpts, **more) -> sk_opts_pb2.sk_opts_entry:
    """The sk_opts_entry of O's common fields, plus MORE (fields of the entry)."""
    return sk_opts_pb2.sk_opts_entry(
        so_sndbuf=o.sndbuf, so_rcvbuf=o.rcvbuf, so_snd_tmo_sec=o.snd_tmo[0],
        so_snd_tmo_usec=o.snd_tmo[1], so_rcv_tmo_sec=o.rcv_tmo[0], so_rcv_tmo_usec=o.rcv_tmo[1], **more)


def common_of(e: sk_opts_pb2.sk_opts_entry) -> dict:
    """SockOpts fields every socket has, from an entry, as keyword arguments."""
    return dict(rcvbuf=e.so_rcvbuf, sndbuf=e.so_sndbuf, snd_tmo=(e.so_snd_tmo_sec, e.so_snd_tmo_usec),
                rcv_tmo=(e.so_rcv_tmo_sec, e.so_rcv_tmo_usec))


def set_timeouts(s: socket.socket, o: SockOpts) -> None:
    s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, _TIMEVAL.pack(*o.snd_tmo))
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, _TIMEVAL.pack(*o.rcv_tmo))
