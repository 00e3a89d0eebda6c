"""IPv4/IPv6 sockets: TCP listening, unbound/bound-only or established (its stream saved and
rebuilt with TCP_REPAIR through coldsnap.connections), unconnected UDP.

An established socket is only noted by `collect` (the dump's TcpHold keeps a duplicate);
the dump then locks and repairs every held socket at once and attaches the streams. At
restore `open` rebuilds the stream in repair mode; coldsnap turns repair off once the
process is whole (connections.tcp.finish)."""
from __future__ import annotations

import errno
import os
import socket
import struct
from dataclasses import dataclass, field

from coldsnap.connections.lock import Conn
from coldsnap.connections.tcp import SUPPORTED_STATES, StreamError, TcpStream, restore_stream
from coldsnap.errors import ImageError, Unsupported
from coldsnap.images.pb import fdinfo_pb2, sk_inet_pb2, sk_opts_pb2, tcp_stream_pb2
from coldsnap.kernel import fdstate as K
from coldsnap.kernel import tcp_repair as R

from .model import FdType, Fown
from .ops import FileOps, OpenCtx, Probe, fown_of, fown_pb, read_fown
from .sockopts import SockOpts, common_entry, common_of, read_common, set_timeouts

TCP_CLOSE = 7
# SockOpts fields without a CRIU field in sk_opts_entry: written as coldsnap extension
# fields when the schema has them (field name in the schema -> SockOpts attribute).
EXTRA_OPTS = {"so_broadcast": "broadcast"}
_OPT_FIELDS = sk_opts_pb2.sk_opts_entry.DESCRIPTOR.fields_by_name
STORED_EXTRA_OPTS = {attr for name, attr in EXTRA_OPTS.items() if name in _OPT_FIELDS}


@dataclass(slots=True)
class InetSocket:
    """A TCP socket that listens, is not connected yet or is connected (an established stream:
    `stream` holds what TCP_REPAIR read, None when --tcp-close dropped it), or an unconnected
    UDP socket."""
    id: int
    family: int
    type: int                     # SOCK_STREAM / SOCK_DGRAM
    proto: int
    state: int                    # TCP_LISTEN, ESTABLISHED, CLOSE_WAIT, or 7 (CLOSE) for the rest
    addr: str
    port: int
    flags: int
    backlog: int = 0
    inode: int = 0
    opts: SockOpts = field(default_factory=SockOpts)
    fown: Fown = field(default_factory=Fown)
    peer_addr: str = ""           # a connected socket's peer
    peer_port: int = 0
    stream: TcpStream | None = None

    kind = FdType.INETSK


def _addr_words(family: int, addr: str) -> list[int]:
    # Raw in_addr/in6_addr memory read as host-order u32 words, as the format stores them.
    raw = socket.inet_pton(family, addr)
    return list(struct.unpack(f"={len(raw) // 4}I", raw))


def _addr_str(family: int, words: list[int]) -> str:
    return socket.inet_ntop(family, struct.pack(f"={len(words)}I", *words))


def _where(s: InetSocket) -> str:
    where = _endpoint(s.family, s.addr, s.port)
    return f"{where} <-> {_endpoint(s.family, s.peer_addr, s.peer_port)}" if s.peer_port else where


def _endpoint(family: int, addr: str, port: int) -> str:
    return f"[{addr}]:{port}" if family == socket.AF_INET6 else f"{addr}:{port}"


def conn_of(f: InetSocket) -> Conn:
    """The connection of an established socket, as the network lock names it."""
    return Conn(f.family, f.addr, f.port, f.peer_addr, f.peer_port)


def _read_opts(s: socket.socket, family: int, tcp: bool) -> SockOpts:
    more = {}
    if tcp:
        more = dict(cork=bool(s.getsockopt(socket.IPPROTO_TCP, socket.TCP_CORK)),
                    keepcnt=s.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT),
                    keepidle=s.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE),
                    keepintvl=s.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL))
    return SockOpts(
        reuseaddr=bool(s.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR)),
        reuseport=bool(s.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT)),
        keepalive=bool(s.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE)),
        broadcast=bool(s.getsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST)),
        nodelay=tcp and bool(s.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)),
        v6only=family == socket.AF_INET6 and bool(s.getsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY)),
        **read_common(s), **more)


def _apply_opts(s: socket.socket, f: InetSocket) -> None:
    o = f.opts
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, int(o.reuseaddr))
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, int(o.reuseport))
    s.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, int(o.keepalive))
    s.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, int(o.broadcast))
    set_timeouts(s, o)
    # Set buffer sizes only when they differ from the default: setting them locks
    # them and turns off the kernel's autotuning. The kernel doubles what is set.
    for opt, val in ((socket.SO_RCVBUF, o.rcvbuf), (socket.SO_SNDBUF, o.sndbuf)):
        if val and s.getsockopt(socket.SOL_SOCKET, opt) != val:
            s.setsockopt(socket.SOL_SOCKET, opt, val // 2)
    if f.type == socket.SOCK_STREAM:
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, int(o.nodelay))
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_CORK, int(o.cork))
        for opt, val in ((socket.TCP_KEEPCNT, o.keepcnt), (socket.TCP_KEEPIDLE, o.keepidle),
                         (socket.TCP_KEEPINTVL, o.keepintvl)):
            if val:
                s.setsockopt(socket.IPPROTO_TCP, opt, val)
    if f.family == socket.AF_INET6:
        s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, int(o.v6only))


class InetOps(FileOps):
    def collect(self, p: Probe, fid: int) -> InetSocket:
        fd = p.fd
        s = socket.socket(fileno=os.dup(p.dup))
        try:
            family = s.getsockopt(socket.SOL_SOCKET, socket.SO_DOMAIN)
            stype = s.getsockopt(socket.SOL_SOCKET, socket.SO_TYPE)
            proto = s.getsockopt(socket.SOL_SOCKET, socket.SO_PROTOCOL)
            if stype not in (socket.SOCK_STREAM, socket.SOCK_DGRAM):
                raise Unsupported(f"fd {fd}: raw/other inet socket (type {stype}) is not supported")
            tcp = stype == socket.SOCK_STREAM
            listening = tcp and s.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN) == 1
            peer: tuple = ("", 0)
            state = K.TCP_LISTEN if listening else TCP_CLOSE
            if not listening:
                try:
                    peer = s.getpeername()[:2]
                except OSError as e:
                    if e.errno != errno.ENOTCONN:
                        raise
                if tcp:
                    state = R.tcp_info(s).state
                if peer[1] and not tcp:
                    raise Unsupported(f"fd {fd}: connected UDP socket is not supported yet")
                if state != TCP_CLOSE and state not in SUPPORTED_STATES:
                    name = K.TCP_STATES.get(state, str(state))
                    raise Unsupported(f"fd {fd}: TCP socket in state {name} is not supported yet")
            addr, port = s.getsockname()[:2]
            if state in SUPPORTED_STATES and p.tcp is None:
                where = f"{_endpoint(family, addr, port)} <-> {_endpoint(family, *peer)}"
                raise Unsupported(f"fd {fd}: TCP connection {where}: established connections are not saved here")
            opts = _read_opts(s, family, tcp)
            backlog = 0
            if listening:
                # Only sock_diag knows the backlog; a task in another net namespace is not
                # visible to ours, so fall back to the kernel's usual default.
                backlog = K.listen_backlog(family, p.link.inode) or 128
            f = InetSocket(fid, family, stype, proto, state, addr, port, p.flags, backlog, p.link.inode,
                           opts, read_fown(p.dup), peer[0], peer[1])
            if state in SUPPORTED_STATES:
                p.tcp.add(p.dup, fid, conn_of(f), opts.reuseaddr, f"pid {p.pid} fd {fd}")   # locked, repaired, read later
            return f
        finally:
            s.close()

    def to_image(self, f: InetSocket, new_id) -> list[fdinfo_pb2.file_entry]:
        o = f.opts
        opts = common_entry(o, reuseaddr=o.reuseaddr, keepalive=o.keepalive, so_reuseport=o.reuseport)
        for name, attr in EXTRA_OPTS.items():
            if name in _OPT_FIELDS:
                setattr(opts, name, getattr(o, attr))
        e = fdinfo_pb2.file_entry(type=fdinfo_pb2.INETSK, id=f.id)
        e.isk.CopyFrom(sk_inet_pb2.inet_sk_entry(
            id=f.id, ino=f.inode, family=f.family, type=f.type, proto=f.proto, state=f.state,
            src_port=f.port, dst_port=f.peer_port, flags=f.flags, backlog=f.backlog,
            src_addr=_addr_words(f.family, f.addr), fown=fown_pb(f.fown), opts=opts, v6only=o.v6only))
        # no peer: the family's any-address, as CRIU writes it (its restore wants both addresses)
        e.isk.dst_addr.extend(_addr_words(f.family, f.peer_addr) if f.peer_port else
                              [0] * len(e.isk.src_addr))
        if f.type == socket.SOCK_STREAM:
            e.isk.tcp_opts.CopyFrom(tcp_stream_pb2.tcp_opts_entry(
                cork=o.cork, nodelay=o.nodelay, keepcnt=o.keepcnt, keepidle=o.keepidle, keepintvl=o.keepintvl))
        return [e]

    def from_image(self, e, regs) -> InetSocket:
        k, o = e.isk, e.isk.opts
        opts = SockOpts(reuseaddr=o.reuseaddr, reuseport=o.so_reuseport, keepalive=o.keepalive,
                        v6only=k.v6only, **common_of(o))
        for name, attr in EXTRA_OPTS.items():
            if name in _OPT_FIELDS:
                setattr(opts, attr, getattr(o, name))
        if k.HasField("tcp_opts"):
            t = k.tcp_opts
            opts.cork, opts.nodelay = t.cork, t.nodelay
            opts.keepcnt, opts.keepidle, opts.keepintvl = t.keepcnt, t.keepidle, t.keepintvl
        peer = _addr_str(k.family, list(k.dst_addr)) if k.dst_port else ""
        return InetSocket(k.id, k.family, k.type, k.proto, k.state, _addr_str(k.family, list(k.src_addr)),
                          k.src_port, k.flags, k.backlog, k.ino, opts, fown_of(k.fown), peer, k.dst_port)

    def validate(self, f: InetSocket, name: str, *, shell_job: bool) -> None:
        """The port must be free (the original may still hold it). A connection's port is
        shared with its listener: repair mode binds it anyway; connect says if it is taken."""
        if f.port == 0 or f.peer_port:
            return
        with socket.socket(f.family, f.type, f.proto) as t:
            t.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, int(f.opts.reuseaddr))
            if f.family == socket.AF_INET6:
                t.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, int(f.opts.v6only))
            try:
                t.bind((f.addr, f.port))
            except OSError as e:
                raise ImageError(f"{name}: cannot bind {_where(f)}: {e.strerror}") from None

    def open_order(self, f: InetSocket) -> int:
        """Connections after everything else: their ports are the listeners' too."""
        return 1 if f.peer_port else 0

    def open(self, f: InetSocket, ctx: OpenCtx) -> int:
        s = socket.socket(f.family, f.type, f.proto)
        try:
            _apply_opts(s, f)
            if f.stream is not None:
                R.set_repair(s, True)           # after SO_REUSEADDR: repair forces reuse
                try:
                    restore_stream(s, (f.addr, f.port), (f.peer_addr, f.peer_port), f.stream)
                except StreamError as e:
                    why = e.strerror + (" (in use: does the dumped process still run?)"
                                        if e.errno == errno.EADDRNOTAVAIL else "")
                    raise ImageError(f"{ctx.name(f.id)}: TCP connection {_where(f)}: {why}") from None
                return ctx.high(s.detach())
            if f.peer_port:
                return ctx.high(s.detach())     # dropped at dump (--tcp-close): a closed socket
            try:
                if f.port or f.state == K.TCP_LISTEN:
                    s.bind((f.addr, f.port))
                if f.state == K.TCP_LISTEN:
                    s.listen(f.backlog)
            except OSError as e:
                raise ImageError(f"{ctx.name(f.id)}: cannot bind/listen {_where(f)}: {e.strerror}") from None
            return ctx.high(s.detach())
        finally:
            s.close()


# --- tcp-stream-<inode>.img ----------------------------------------------------------------

def stream_image_name(inode: int) -> str:
    return f"tcp-stream-{inode:x}.img"


def stream_entry(st: TcpStream) -> tuple[tcp_stream_pb2.tcp_stream_entry, bytes]:
    """The entry of a stream and its payload (receive queue, then send queue)."""
    e = tcp_stream_pb2.tcp_stream_entry(
        inq_len=len(st.inq), inq_seq=st.inq_seq, outq_len=len(st.outq), outq_seq=st.outq_seq,
        opt_mask=st.opt_mask, snd_wscale=st.snd_wscale, mss_clamp=st.mss_clamp, unsq_len=st.unsent)
    if st.opt_mask & R.TCPI_OPT_WSCALE:
        e.rcv_wscale = st.rcv_wscale
    if st.opt_mask & R.TCPI_OPT_TIMESTAMPS:
        e.timestamp = st.timestamp
    if st.window is not None:
        w = st.window
        e.snd_wl1, e.snd_wnd, e.max_window, e.rcv_wnd, e.rcv_wup = (
            w.snd_wl1, w.snd_wnd, w.max_window, w.rcv_wnd, w.rcv_wup)
    return e, st.inq + st.outq


def stream_of(e: tcp_stream_pb2.tcp_stream_entry, payload: bytes, state: int, where: str) -> TcpStream:
    if not e.HasField("unsq_len"):
        raise ImageError(f"{where}: no unsq_len (unsent bytes of the send queue)")
    if e.opt_mask & R.TCPI_OPT_WSCALE and not e.HasField("rcv_wscale"):
        raise ImageError(f"{where}: window scaling without rcv_wscale")
    if e.opt_mask & R.TCPI_OPT_TIMESTAMPS and not e.HasField("timestamp"):
        raise ImageError(f"{where}: timestamps without a timestamp")
    if e.unsq_len > e.outq_len:
        raise ImageError(f"{where}: {e.unsq_len} unsent bytes in a send queue of {e.outq_len}")
    window = None
    if e.HasField("snd_wnd"):
        window = R.RepairWindow(e.snd_wl1, e.snd_wnd, e.max_window, e.rcv_wnd, e.rcv_wup)
    return TcpStream(state, e.inq_seq, e.outq_seq, payload[:e.inq_len], payload[e.inq_len:], e.unsq_len,
                     e.mss_clamp, e.opt_mask, e.snd_wscale, e.rcv_wscale, e.timestamp, window)
