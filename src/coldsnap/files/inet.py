"""IPv4/IPv6 sockets: listening or unbound/bound-only TCP, unconnected UDP."""
from __future__ import annotations

import errno
import os
import socket
import struct

from coldsnap.errors import ImageError, Unsupported
from coldsnap.images.pb import fdinfo_pb2, sk_inet_pb2, sk_opts_pb2
from coldsnap.kernel import fdinfo as K

from .model import InetSocket, SockOpts
from .ops import FileOps, OpenCtx, Probe, fown_of, fown_pb, read_fown
from .sockopts import common_entry, common_of, read_common, set_timeouts

TCP_CLOSE = 7
# SockOpts fields without a CRIU field in sk_opts_entry: written as coldsnap extension
# fields when the schema has them (field name in the schema -> SockOpts attribute).
EXTRA_OPTS = {"tcp_nodelay": "nodelay", "so_broadcast": "broadcast"}
_OPT_FIELDS = sk_opts_pb2.sk_opts_entry.DESCRIPTOR.fields_by_name
STORED_EXTRA_OPTS = {attr for name, attr in EXTRA_OPTS.items() if name in _OPT_FIELDS}


def _addr_words(family: int, addr: str) -> list[int]:
    # Raw in_addr/in6_addr memory read as host-order u32 words, as the format stores them.
    raw = socket.inet_pton(family, addr)
    return list(struct.unpack(f"={len(raw) // 4}I", raw))


def _addr_str(family: int, words: list[int]) -> str:
    return socket.inet_ntop(family, struct.pack(f"={len(words)}I", *words))


def _where(s: InetSocket) -> str:
    return f"[{s.addr}]:{s.port}" if s.family == socket.AF_INET6 else f"{s.addr}:{s.port}"


def _read_opts(s: socket.socket, family: int, tcp: bool) -> SockOpts:
    return SockOpts(
        reuseaddr=bool(s.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR)),
        reuseport=bool(s.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT)),
        keepalive=bool(s.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE)),
        broadcast=bool(s.getsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST)),
        nodelay=tcp and bool(s.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)),
        v6only=family == socket.AF_INET6 and bool(s.getsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY)),
        **read_common(s))


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
            kind = "TCP" if tcp else "UDP"
            listening = tcp and s.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN) == 1
            if not listening:
                try:
                    s.getpeername()
                    raise Unsupported(f"fd {fd}: connected {kind} socket is not supported yet")
                except OSError as e:
                    if e.errno != errno.ENOTCONN:
                        raise
                seen = K.find_net_socket(p.pid, p.link.inode)
                if tcp and seen is not None and seen.state not in (K.TCP_LISTEN, TCP_CLOSE):
                    state = K.TCP_STATES.get(seen.state, str(seen.state))
                    raise Unsupported(f"fd {fd}: TCP socket in state {state} is not supported yet")
            addr, port = s.getsockname()[:2]
            opts = _read_opts(s, family, tcp)
            backlog = 0
            if listening:
                # Only sock_diag knows the backlog; a task in another net namespace is not
                # visible to ours, so fall back to the kernel's usual default.
                backlog = K.listen_backlog(family, p.link.inode) or 128
            return InetSocket(fid, family, stype, proto, K.TCP_LISTEN if listening else TCP_CLOSE, addr, port,
                              p.flags, backlog, p.link.inode, opts, read_fown(p.dup))
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
            src_port=f.port, dst_port=0, flags=f.flags, backlog=f.backlog,
            src_addr=_addr_words(f.family, f.addr), fown=fown_pb(f.fown), opts=opts, v6only=o.v6only))
        return [e]

    def from_image(self, e, regs) -> InetSocket:
        k, o = e.isk, e.isk.opts
        opts = SockOpts(reuseaddr=o.reuseaddr, reuseport=o.so_reuseport, keepalive=o.keepalive,
                        v6only=k.v6only, **common_of(o))
        for name, attr in EXTRA_OPTS.items():
            if name in _OPT_FIELDS:
                setattr(opts, attr, getattr(o, name))
        return InetSocket(k.id, k.family, k.type, k.proto, k.state, _addr_str(k.family, list(k.src_addr)),
                          k.src_port, k.flags, k.backlog, k.ino, opts, fown_of(k.fown))

    def validate(self, f: InetSocket, name: str, *, shell_job: bool) -> None:
        """The port must be free (the original may still hold it)."""
        if f.port == 0:
            return
        with socket.socket(f.family, f.type, f.proto) as t:
            t.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, int(f.opts.reuseaddr))
            if f.family == socket.AF_INET6:
                t.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, int(f.opts.v6only))
            try:
                t.bind((f.addr, f.port))
            except OSError as e:
                raise ImageError(f"{name}: cannot bind {_where(f)}: {e.strerror}") from None

    def open(self, f: InetSocket, ctx: OpenCtx) -> int:
        s = socket.socket(f.family, f.type, f.proto)
        try:
            _apply_opts(s, f)
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
