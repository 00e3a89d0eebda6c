"""Unix sockets: connected pairs inside the tree, listeners (path or abstract), unconnected.

Dump: sock_diag gives peer, shutdown state and backlog; the receive queue is read with
MSG_PEEK from an SO_PEEK_OFF offset on our pidfd_getfd copy, so nothing is consumed
(the socket's own peek offset is put back), one item per datagram/record. Restore: the
first end of a pair opened makes a socketpair and keeps the other end for its peer
(both ends are opened in one process: in one fd table, or shared by the tree); each queue
is sent back from the other end. Buffer sizes and shutdown come last (post_open).

A path name is re-bound where it was: a socket file left there is unlinked only if it is
a socket nobody listens on (the dumped process's own, typically); anything else refuses.

External peers (`--ext-unix-sk`, the part of CRIU's option that can work): a datagram socket
of the tree connected to a named datagram socket outside it (a logger's /dev/log) is dumped
with the peer as an extra entry flagged USK_EXTERN (its inode, type and name, as CRIU writes
it) and connects to that name again at restore, where the name must take a connection. A
stream or seqpacket socket whose peer is outside, or an unnamed outside peer, stays refused:
half a connection cannot be rebuilt.
"""
from __future__ import annotations

import array
import errno
import os
import socket
import stat
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from coldsnap.errors import ImageError, Unsupported
from coldsnap.images.pb import fdinfo_pb2, sk_packet_pb2, sk_unix_pb2
from coldsnap.kernel.unixdiag import socket_holders, unix_diag, unix_socket_paths

from .model import FdType, Fown
from .ops import FileOps, OpenCtx, Probe, fown_of, fown_pb, read_fown
from .sockopts import SockOpts, common_entry, common_of, read_common, set_timeouts

if TYPE_CHECKING:
    from .model import FileObj

ESTABLISHED, CLOSE, LISTEN = 1, 7, 10
SO_PEEK_OFF = 42
SO_SNDBUFFORCE, SO_RCVBUFFORCE = 32, 33
_TYPES = {socket.SOCK_STREAM: "stream", socket.SOCK_DGRAM: "datagram", socket.SOCK_SEQPACKET: "seqpacket"}
_SHUT = {1: socket.SHUT_RD, 2: socket.SHUT_WR, 3: socket.SHUT_RDWR}
_MAX_DGRAM = 1 << 26
_FILL_SNDBUF = 1 << 26       # while queues are written back; the dumped size is set after
USK_EXTERN = 1               # unix_sk_entry.uflags: a peer outside the dump (CRIU's flag)
SHUT_BOTH = 3                # sk_shutdown RCV | SEND: what a connected socket's peer leaves on it when closed


@dataclass(slots=True)
class UnixSocket:
    """An AF_UNIX socket: one end of a connected pair inside the tree, a listener, or an
    unconnected socket. Peers pair by inode; `queue` is what waits in its receive queue
    (peeked, not consumed), one item per datagram / seqpacket record."""
    id: int
    inode: int
    type: int                     # SOCK_STREAM / SOCK_DGRAM / SOCK_SEQPACKET
    state: int                    # 1 connected, 10 listening, 7 neither
    flags: int
    peer: int = 0                 # inode of the other end
    name: bytes = b""             # bound name; abstract names start with NUL
    backlog: int = 0
    shutdown: int = 0             # 1 receive, 2 send side shut down
    perms: tuple[int, int, int] | None = None   # mode, uid, gid of the bound socket file
    deleted: bool = False         # its socket file was unlinked since bind
    opts: SockOpts = field(default_factory=SockOpts)
    queue: list[bytes] = field(default_factory=list)
    fown: Fown = field(default_factory=Fown)
    connect_to: bytes = b""       # not in images: the peer's name, for a datagram socket
                                  # connected one-way to a named socket of the tree
    external: bool = False        # connect_to names a socket outside the tree (--ext-unix-sk)

    kind = FdType.UNIXSK

    @property
    def closed_peer(self) -> bool:
        """A stream/seqpacket socket still connected to a peer that was closed (a socketpair
        with one end closed: the JVM keeps one to dup2 over fds it closes): sock_diag shows
        no peer inode and both directions shut down. Restored as a socketpair whose other end
        sends the queue and is closed, as CRIU does (a peerless ESTABLISHED entry)."""
        return self.state == ESTABLISHED and not self.peer and self.type != socket.SOCK_DGRAM


def show_name(name: bytes) -> str:
    if not name:
        return "unnamed"
    if name.startswith(b"\0"):
        return "@" + name[1:].decode(errors="backslashreplace")
    return name.decode(errors="backslashreplace")


def _is_path(name: bytes) -> bool:
    return bool(name) and not name.startswith(b"\0")


# --- dump ------------------------------------------------------------------------------------

def _peek_queue(s: socket.socket, fd: str, stype: int, total: int) -> list[bytes]:
    """Every message in s's receive queue, peeked from offset 0; SO_PEEK_OFF is restored.
    `total`: bytes queued (stream/seqpacket; for datagrams only the first one's size)."""
    if total == 0 and stype != socket.SOCK_DGRAM:
        return []
    # stream/seqpacket: `total` holds everything; datagrams: grown when one does not fit
    buf = bytearray(total if stype != socket.SOCK_DGRAM else max(total, 1 << 16))
    anc = socket.CMSG_SPACE(253 * 4)
    old = s.getsockopt(socket.SOL_SOCKET, SO_PEEK_OFF)
    s.setsockopt(socket.SOL_SOCKET, SO_PEEK_OFF, 0)
    out: list[bytes] = []
    got = 0
    try:
        while stype == socket.SOCK_DGRAM or got < total:
            try:
                n, ancdata, mflags, _ = s.recvmsg_into([buf], anc, socket.MSG_PEEK | socket.MSG_DONTWAIT)
            except BlockingIOError:
                break
            fds = [x for level, kind, data in ancdata if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS
                   for x in array.array("i", data[:len(data) - len(data) % 4])]
            for x in fds:
                os.close(x)
            if fds or mflags & socket.MSG_CTRUNC:
                raise Unsupported(f"{fd}: unix socket has file descriptors in flight (SCM_RIGHTS) "
                                  "in its receive queue; not supported")
            if mflags & socket.MSG_TRUNC:
                if len(buf) >= _MAX_DGRAM:
                    raise Unsupported(f"{fd}: unix socket holds a datagram larger than {len(buf)} bytes")
                buf = bytearray(len(buf) * 4)           # and peek that datagram again
                s.setsockopt(socket.SOL_SOCKET, SO_PEEK_OFF, got)
                continue
            if n == 0:
                # a zero-length message: the peek offset cannot pass it, so what is queued
                # behind it could only be read by consuming the queue. Refuse, lose nothing.
                if stype == socket.SOCK_DGRAM or got < total:
                    raise Unsupported(f"{fd}: unix socket has a zero-length message in its receive "
                                      "queue; not supported (what follows it cannot be read "
                                      "without consuming it)")
                break
            out.append(bytes(buf[:n]))
            got += n
    finally:
        s.setsockopt(socket.SOL_SOCKET, SO_PEEK_OFF, old)
    if stype == socket.SOCK_STREAM and out:
        out = [b"".join(out)]
    return out


def _read_opts(s: socket.socket) -> SockOpts:
    return SockOpts(passcred=bool(s.getsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED)), **read_common(s))


def _bound_file(fd: str, name: bytes, vfs_ino: int) -> tuple[int, int, int] | None:
    """mode, uid, gid of the socket file the socket is bound to, None if it was unlinked;
    Unsupported if another file took its path."""
    path = name.decode(errors="surrogateescape")
    if not name.startswith(b"/"):
        raise Unsupported(f"{fd}: unix socket bound to relative path {path} is not supported yet")
    try:
        st = os.stat(name)
    except FileNotFoundError:
        return None
    if st.st_ino != vfs_ino or not stat.S_ISSOCK(st.st_mode):
        raise Unsupported(f"{fd}: unix socket bound to {path}, which another file replaced since; "
                          "not supported yet")
    return stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid


class UnixOps(FileOps):
    def collect(self, p: Probe, fid: int) -> UnixSocket:
        fd, ino = f"pid {p.pid} fd {p.fd}", p.link.inode
        d = unix_diag(ino)
        if d is None:
            raise Unsupported(f"{fd}: unix socket {ino} is not visible to sock_diag "
                              "(another network namespace?); not supported")
        if d.type not in _TYPES:
            raise Unsupported(f"{fd}: unix socket of type {d.type} is not supported")
        name = _diag_name(d.name)
        # A datagram socket that others connected to says ESTABLISHED without a peer: only
        # its peer tells whether it is connected itself.
        state = d.state if d.type != socket.SOCK_DGRAM else ESTABLISHED if d.peer else CLOSE
        # only what restore binds again needs its file (an accepted socket shows the
        # listener's name, whose file may be gone)
        rebound = _is_path(name) and state != ESTABLISHED
        perms = _bound_file(fd, name, d.vfs_ino) if rebound else None
        s = socket.socket(fileno=os.dup(p.dup))
        try:
            queue: list[bytes] = []
            backlog = 0
            if state == LISTEN:
                if d.pending:
                    raise Unsupported(f"{fd}: listening unix socket {show_name(name)} has {len(d.pending)} "
                                      "connection(s) not accepted yet; not supported")
                backlog = d.wqueue
            elif state == ESTABLISHED and not d.peer and d.shutdown != SHUT_BOTH:
                raise Unsupported(f"{fd}: unix socket connected to a connection its listener has "
                                  "not accepted yet; not supported")
            else:       # a peer gone (closed_peer) leaves what it sent readable: kept too
                queue = _peek_queue(s, fd, d.type, d.rqueue)
                if queue and state != ESTABLISHED and not name:
                    raise Unsupported(f"{fd}: unconnected unnamed unix socket with queued data is not supported")
            return UnixSocket(fid, ino, d.type, state if state in (ESTABLISHED, LISTEN) else CLOSE, p.flags,
                              d.peer, name, backlog, d.shutdown, perms, rebound and perms is None,
                              _read_opts(s), queue, read_fown(p.dup))
        finally:
            s.close()

    def to_image(self, f: UnixSocket, new_id) -> list[fdinfo_pb2.file_entry]:
        o = f.opts
        opts = common_entry(o, so_passcred=o.passcred)
        usk = sk_unix_pb2.unix_sk_entry(
            id=f.id, ino=f.inode, type=f.type, state=f.state, flags=f.flags, uflags=0, backlog=f.backlog,
            peer=f.peer, fown=fown_pb(f.fown), opts=opts, name=f.name, shutdown=f.shutdown)
        if f.deleted:
            usk.deleted = True
        if f.perms is not None:
            usk.file_perms.CopyFrom(sk_unix_pb2.file_perms_entry(mode=f.perms[0], uid=f.perms[1], gid=f.perms[2]))
        e = fdinfo_pb2.file_entry(type=fdinfo_pb2.UNIXSK, id=f.id)
        e.usk.CopyFrom(usk)
        return [e]

    def from_image(self, e, regs) -> UnixSocket:
        k, o = e.usk, e.usk.opts
        if k.type not in _TYPES or k.state not in (ESTABLISHED, LISTEN, CLOSE):
            raise ImageError(f"files.img: unix socket {k.id} has type {k.type}, state {k.state}")
        opts = SockOpts(passcred=o.so_passcred, **common_of(o))
        perms = (k.file_perms.mode, k.file_perms.uid, k.file_perms.gid) if k.HasField("file_perms") else None
        return UnixSocket(k.id, k.ino, k.type, k.state, k.flags, k.peer, k.name, k.backlog, k.shutdown,
                          perms, k.deleted, opts, [], fown_of(k.fown))

    def validate(self, f: UnixSocket, name: str, *, shell_job: bool) -> None:
        """Its name must be free: no listener on it now, no other kind of file at the path;
        an external peer must take a connection."""
        if f.external:
            with socket.socket(socket.AF_UNIX, f.type) as t:
                try:
                    t.connect(f.connect_to)
                except OSError as e:
                    raise ImageError(f"{name}: cannot connect to the external unix socket "
                                     f"{show_name(f.connect_to)}: {e.strerror}") from None
        if f.state == ESTABLISHED or not f.name:
            return
        if _is_path(f.name):
            if f.deleted and os.path.lexists(f.name):
                raise ImageError(f"{name}: unix socket {show_name(f.name)} was unlinked after bind, but "
                                 "something is at that path now")
            _stale_socket_file(f.name, name)
            return
        with socket.socket(socket.AF_UNIX, f.type) as t:
            try:
                t.bind(f.name)
            except OSError as e:
                raise ImageError(f"{name}: cannot bind unix socket {show_name(f.name)}: {e.strerror}") from None

    def open(self, f: UnixSocket, ctx: OpenCtx) -> int:
        if f.closed_peer:
            return _open_closed_peer(f, ctx)
        if f.state == ESTABLISHED and not f.connect_to:
            return _open_pair_end(f, ctx)
        s = socket.socket(socket.AF_UNIX, f.type)
        try:
            if f.name:
                if _is_path(f.name) and _stale_socket_file(f.name, ctx.name(f.id)):
                    os.unlink(f.name)
                try:
                    s.bind(f.name)
                except OSError as e:
                    raise ImageError(f"{ctx.name(f.id)}: cannot bind unix socket {show_name(f.name)}: "
                                     f"{e.strerror}") from None
                if f.perms is not None:
                    os.chown(f.name, f.perms[1], f.perms[2])
                    os.chmod(f.name, f.perms[0])
            if f.state == LISTEN:
                s.listen(f.backlog)
            elif f.queue:
                with socket.socket(socket.AF_UNIX, f.type) as sender:
                    sender.connect(f.name)
                    _send_queue(sender, f.queue, ctx.name(f.id))
            if f.deleted:
                os.unlink(f.name)      # bound by path, then unlinked, as it was
            fd = ctx.high(s.detach())
        finally:
            s.close()
        # one-way datagram clients connect once their server is bound, whichever comes first
        if f.connect_to:
            if f.external or ("unix-bound", f.peer) in ctx.shared:
                _connect(fd, f.connect_to, ctx.name(f.id))
            else:
                ctx.shared.setdefault(("unix-clients", f.peer), []).append((fd, ctx.name(f.id)))
        elif f.name:
            ctx.shared[("unix-bound", f.inode)] = fd
            for client, name in ctx.shared.pop(("unix-clients", f.inode), []):
                _connect(client, f.name, name)
        return fd

    def post_open(self, f: UnixSocket, fd: int, ctx: OpenCtx) -> None:
        super().post_open(f, fd, ctx)
        s = socket.socket(fileno=fd)
        try:
            o = f.opts
            for opt, force, val in ((socket.SO_SNDBUF, SO_SNDBUFFORCE, o.sndbuf),
                                    (socket.SO_RCVBUF, SO_RCVBUFFORCE, o.rcvbuf)):
                if val and s.getsockopt(socket.SOL_SOCKET, opt) != val:
                    s.setsockopt(socket.SOL_SOCKET, force, val // 2)     # the kernel doubles it
            set_timeouts(s, o)
            if o.passcred:
                s.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
            if f.shutdown in _SHUT:
                s.shutdown(_SHUT[f.shutdown])
        finally:
            s.detach()


def _connect(fd: int, name: bytes, what: str) -> None:
    s = socket.socket(fileno=fd)
    try:
        s.connect(name)
    except OSError as e:
        raise ImageError(f"{what}: cannot connect to unix socket {show_name(name)}: {e.strerror}") from None
    finally:
        s.detach()


def _stale_socket_file(path: bytes, name: str) -> bool:
    """True if a socket file nobody listens on sits at path (to unlink before binding);
    False if nothing does; ImageError for anything else."""
    shown = path.decode(errors="backslashreplace")
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return False
    if not stat.S_ISSOCK(st.st_mode):
        raise ImageError(f"{name}: {shown} exists and is not a socket; not removing it")
    for stype in _TYPES:
        with socket.socket(socket.AF_UNIX, stype) as t:
            try:
                t.connect(path)
            except OSError as e:
                if e.errno in (errno.ECONNREFUSED, errno.EPROTOTYPE, errno.ENOENT):
                    continue
                raise ImageError(f"{name}: cannot check socket file {shown}: {e.strerror}") from None
            raise ImageError(f"{name}: unix socket {shown} is in use by another process")
    return True


def _send_queue(sender: socket.socket, queue: list[bytes], name: str) -> None:
    for msg in queue:
        try:
            if sender.type == socket.SOCK_STREAM:
                view = memoryview(msg)
                while view:
                    view = view[sender.send(view, socket.MSG_DONTWAIT):]
            else:
                sender.send(msg, socket.MSG_DONTWAIT)
        except OSError as e:
            raise ImageError(f"{name}: cannot queue {len(msg)} bytes back into the unix socket: "
                             f"{e.strerror}") from None


def _open_pair_end(f: UnixSocket, ctx: OpenCtx) -> int:
    """One end of a connected pair: the first end makes the pair, the second takes the
    other socket; each end's queue is sent from the other end."""
    key = ("unix", min(f.inode, f.peer))
    other = ctx.shared.pop(key, None)
    if other is None:
        pair = socket.socketpair(socket.AF_UNIX, f.type)
        for s in pair:
            s.setsockopt(socket.SOL_SOCKET, SO_SNDBUFFORCE, _FILL_SNDBUF)
        mine, theirs = (ctx.high(s.detach()) for s in pair)
        _send_from(theirs, f.queue, ctx.name(f.id))
        ctx.shared[key] = (theirs, mine)
        return mine
    theirs, first = other
    _send_from(first, f.queue, ctx.name(f.id))
    return theirs


def _open_closed_peer(f: UnixSocket, ctx: OpenCtx) -> int:
    """A socket whose peer was closed: a socketpair, its queue sent from the other end, which
    is closed then (the kernel shuts both directions of ours down, as they were)."""
    mine, theirs = socket.socketpair(socket.AF_UNIX, f.type)
    try:
        theirs.setsockopt(socket.SOL_SOCKET, SO_SNDBUFFORCE, _FILL_SNDBUF)
        _send_queue(theirs, f.queue, ctx.name(f.id))
    finally:
        theirs.close()
    return ctx.high(mine.detach())


def _send_from(fd: int, queue: list[bytes], name: str) -> None:
    s = socket.socket(fileno=fd)
    try:
        _send_queue(s, queue, name)
    finally:
        s.detach()


# --- a dump's check over the whole tree ------------------------------------------------------

def _diag_name(name: bytes) -> bytes:
    """A sock_diag name as bind takes it (a path without its trailing NULs)."""
    return name.rstrip(b"\0") if _is_path(name) else name


def link_peers(files: dict[int, FileObj], where=None, *, ext_unix_sk: bool = False,
               externs: dict[int, bytes] | None = None) -> None:
    """Check that every connected unix socket's peer is a socket of `files` connected back
    to it, or (datagram) a bound unconnected one, which it will connect to by name (sets
    connect_to). Anything else: at dump (`where(file id)` names our end, 'pid P fd N')
    Unsupported, naming the peer and who holds it, unless ext_unix_sk lets a datagram socket
    go to a named peer outside (sets external); at restore (no `where`) ImageError unless
    `externs` (peer inode -> name: the USK_EXTERN entries of the images) holds the peer."""
    socks = {f.inode: f for f in files.values() if isinstance(f, UnixSocket)}
    for f in socks.values():
        if f.state != ESTABLISHED or f.closed_peer:
            continue
        if where is None and externs and f.peer in externs and f.peer not in socks:
            f.connect_to, f.external = externs[f.peer], True
            continue
        peer = socks.get(f.peer)
        if peer is not None and peer.peer == f.inode:
            continue
        if (peer is not None and f.type == peer.type == socket.SOCK_DGRAM and peer.state == CLOSE
                and peer.name and not peer.deleted and not peer.peer and not f.queue):
            f.connect_to = peer.name
            continue
        if where is None:
            raise ImageError(f"files.img: unix socket {f.id} is connected to ino {f.peer}, "
                             "which the images do not hold connected back")
        if peer is not None:
            why = "with datagrams queued" if f.queue else "which is not connected back"
            raise Unsupported(f"{where(f.id)}: unix {_TYPES[f.type]} socket connected to "
                              f"{show_name(peer.name)} (ino {f.peer}) of the tree, {why}; not supported yet")
        outside = unix_diag(f.peer)
        outside_name = _diag_name(outside.name) if outside is not None else b""
        if ext_unix_sk and f.type == socket.SOCK_DGRAM and outside_name and not f.queue:
            f.connect_to, f.external = outside_name, True
            continue
        names = unix_socket_paths()
        held = ", ".join(f"pid {pid} fd {fd}" for pid, fd in socket_holders(f.peer)) or "no process"
        if not ext_unix_sk:
            why = ("not supported (--ext-unix-sk lets a datagram socket connected to a named peer go: "
                   "restore connects it to that name again)")
        elif f.type != socket.SOCK_DGRAM:
            why = f"--ext-unix-sk cannot rebuild half of a {_TYPES[f.type]} connection"
        elif f.queue:
            why = "it has datagrams queued, which --ext-unix-sk cannot restore"
        else:
            why = "--ext-unix-sk cannot reconnect to an unnamed peer"
        raise Unsupported(f"{where(f.id)}: unix {_TYPES[f.type]} socket (ino {f.inode}) is connected to "
                          f"socket ino {f.peer} {names.get(f.peer, '')} held by {held}, outside the dumped "
                          f"tree; {why}".replace("  ", " "))


def extern_entries(files: dict[int, FileObj], new_id) -> list[fdinfo_pb2.file_entry]:
    """One USK_EXTERN entry per socket outside the tree that sockets of the tree are connected
    to (--ext-unix-sk): its inode, type and name, as CRIU writes them."""
    out, seen = [], set()
    for f in files.values():
        if isinstance(f, UnixSocket) and f.external and f.peer not in seen:
            seen.add(f.peer)
            e = fdinfo_pb2.file_entry(type=fdinfo_pb2.UNIXSK, id=new_id())
            e.usk.CopyFrom(sk_unix_pb2.unix_sk_entry(
                id=e.id, ino=f.peer, type=f.type, state=LISTEN, flags=0, uflags=USK_EXTERN, backlog=0,
                peer=0, fown=fown_pb(f.fown), opts=common_entry(SockOpts()), name=f.connect_to))
            out.append(e)
    return out


def queue_entries(files: dict[int, FileObj]) -> list[tuple[sk_packet_pb2.sk_packet_entry, bytes]]:
    """sk-queues.img: the queued messages of every unix socket, in order."""
    return [(sk_packet_pb2.sk_packet_entry(id_for=f.id, length=len(m)), m)
            for f in files.values() if isinstance(f, UnixSocket) for m in f.queue]
