"""`coldsnap page-server`: receives pre-dumps and dumps sent with --page-server.

Each session (one connection, OPEN2 ... CLOSE) becomes one images directory under the
server's directory, written in a staging sibling and committed at CLOSE (a broken session
leaves nothing): a coldsnap client names it and its parent in its hello (a chain: `2`
with parent `1`); a plain CRIU client's session is `session-N`. Only pagemap-*.img,
pages-*.img, inventory.img and the parent link are written, as by `criu page-server`; the
other images of the dump stay where the client wrote them.

A client that breaks the protocol (garbage, lengths beyond the limits, runs out of order or
outside the address space, PE_PARENT runs its parent does not hold, a name that is not a
plain name, a wrong or missing token, a connection dropped mid-message) gets one log line
and a closed connection; the server keeps serving the others.
"""
from __future__ import annotations

import hmac
import json
import os
import re
import socket
import ssl
import sys
import threading
import time
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from ..errors import CsError, ImageError, TransportError
from ..images.chain import PageChain
from ..images.directory import INVENTORY, ImageDir, new_inventory
from ..images.pages import PE_LAZY, PE_PARENT, PE_PRESENT, PagemapWriter, pagemap_name, pages_name
from ..kernel.fdio import write_all
from ..kernel.page import PAGE_SHIFT, PAGE_SIZE
from ..kernel.tcp_repair import bytes_acked
from ..memory.ranges import Ranges
from . import protocol as P
from .wire import TlsFiles, recv_exact, recv_into_exact, send_file_range, tcp_liveness

_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]{0,63}")
_FILE = re.compile(r"[a-z][a-z0-9_-]{0,100}(\.img)?")
_CHUNK = 4 << 20


class Refused(Exception):
    """The client broke the protocol or was not allowed: log it, close the connection."""


@dataclass
class ServerOptions:
    token: bytes | None = None
    tls: TlsFiles | None = None
    idle_timeout: float | None = 60.0      # None: a connection may idle (silence bounds the peer)
    max_clients: int = 16
    log: Callable[[str], None] = field(default=lambda line: print(line, file=sys.stderr, flush=True))
    # migrate-receive: restores a stored session on this host as the request asks (post-copy:
    # {"lazy_from": "HOST:PORT", "session": ...}), returns {"pid": ...} or {"error": ...}
    restore: Callable[[Path, dict], dict] | None = None
    # a reading session (session name, its role) is "open", "closed" by the client, or "lost"
    reader_event: Callable[[str, str | None, str], None] | None = None
    durable: bool = True            # fsync each session at its commit (migrate-receive: no need)
    # migrate-receive: told of each session stored (before its client hears so)
    stored: Callable[[Path], None] | None = None
    read_only: bool = False         # reading sessions only (a post-copy source's server)
    # seconds: each connection's host or path gone is an error after about that long
    # (wire.py tcp_liveness); a stopped peer is its owner's to see (PageServer.quiet)
    silence: float = 0.0


def check_name(name: object, what: str) -> str:
    if not isinstance(name, str) or not _NAME.fullmatch(name) or name.endswith(".staging"):
        raise Refused(f"{what} {name!r} is not a plain name")
    return name


class _Pagemap:
    """One pagemap being received: its writer and what the parent session holds for it."""

    def __init__(self, imgdir: ImageDir, parent: ImageDir | None, pagemap_id: int, shmem: bool):
        self.writer = PagemapWriter(imgdir, pagemap_id, shmem=shmem)
        self.shmem = shmem
        self.in_parent = Ranges.empty()
        if parent is not None and parent.exists(pagemap_name(pagemap_id, shmem)):
            with PageChain(parent, pagemap_id, shmem) as chain:
                self.in_parent = chain.covered_ranges()

    def check_run(self, vaddr: int, nr_pages: int) -> None:
        if nr_pages <= 0 or vaddr % PAGE_SIZE or vaddr + (nr_pages << PAGE_SHIFT) > P.ADDR_LIMIT:
            raise Refused(f"run {vaddr:#x}+{nr_pages} pages is outside any address space")

    def add_parent(self, vaddr: int, nr_pages: int) -> None:
        self.check_run(vaddr, nr_pages)
        run = Ranges.of([(vaddr, vaddr + (nr_pages << PAGE_SHIFT))])
        if len(run.subtract(self.in_parent)):
            raise Refused(f"PE_PARENT run {vaddr:#x}+{nr_pages} pages is not held by the parent session")
        self.writer.add_parent(vaddr, nr_pages)


class Session:
    """One connection of the server."""

    def __init__(self, server: "PageServer", sock: socket.socket, peer: str):
        self.server, self.sock, self.peer = server, sock, peer
        self.opts = server.options
        self.greeted = False            # a hello was accepted
        self.features = 0
        self.name: str | None = None
        self.imgdir: ImageDir | None = None     # writing
        self.parent: ImageDir | None = None
        self.reading: ImageDir | None = None
        self.chains: dict[tuple[int, bool], PageChain] = {}     # reading: opened pagemaps
        self.role: str | None = None            # reading: what for, as the client says
        self.clean = False                      # reading: ended by the client's CLOSE
        self.pagemap: _Pagemap | None = None
        self.buf = bytearray(_CHUNK)
        self._dctx = None
        self.heard = time.monotonic()           # the last command came, or bytes of ours were acknowledged
        self.acked = 0                          # bytes of ours acknowledged, as PageServer.quiet saw it last

    # -- plumbing --------------------------------------------------------------------

    def recv(self, n: int, what: str) -> bytearray:
        return recv_exact(self.sock, n, what)

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def run(self) -> None:
        try:
            raw = bytearray(P.HEADER.size)
            while True:
                if not recv_into_exact(self.sock, memoryview(raw), "a command", eof_ok=True):
                    if self.imgdir is not None:
                        raise Refused("connection closed before the session was closed")
                    return
                self.heard = time.monotonic()
                done = self.command(P.Header.unpack(raw))
                self.heard = time.monotonic()
                if done:
                    return
        except (Refused, TransportError, ImageError, ValueError) as e:
            self.opts.log(f"page-server: client {self.peer}: {e}; connection closed")
        except (OSError, ssl.SSLError) as e:
            self.opts.log(f"page-server: client {self.peer}: {getattr(e, 'strerror', None) or e}; connection closed")
        finally:
            self.drop()

    def drop(self) -> None:
        for chain in self.chains.values():
            chain.close()
        self.chains.clear()
        if self.reading is not None and self.opts.reader_event is not None:
            reading, self.reading = self.reading, None
            self.opts.reader_event(reading.root.name, self.role, "closed" if self.clean else "lost")
        if self.pagemap is not None:
            self.pagemap.writer.abort()
            self.pagemap = None
        if self.imgdir is not None:
            self.imgdir.abort()
            self.imgdir = None
        if self.name is not None:
            self.server.release(self.name)
        try:
            self.sock.close()
        except OSError:
            pass

    # -- commands ----------------------------------------------------------------------

    def command(self, h: P.Header) -> bool:
        """Handle one command; True once the session is over."""
        if h.cmd == P.PS_IOV_PARENT and h.dst_id == P.encode_dst(P.PROBE_ID, shmem=True) and not self.greeted:
            self.send(P.STATUS.pack(P.SERVER_MAGIC))
            return False
        if h.cmd == P.CS_HELLO:
            self.hello(h)
            return False
        if self.opts.token is not None and not self.greeted:
            raise Refused("no token presented (a plain CRIU client cannot send one)")
        if self.opts.read_only and self.reading is None:
            raise Refused("this server only serves reading sessions (a plain CRIU client cannot read)")
        if self.reading is not None:
            return self.read_command(h)
        if h.cmd in (P.PS_IOV_CLOSE, P.PS_IOV_FORCE_CLOSE):
            self.close_session()
            return True
        self.start_plain()
        if h.cmd in (P.PS_IOV_OPEN, P.PS_IOV_OPEN2):
            self.open(h, answer=h.cmd == P.PS_IOV_OPEN2)
        elif h.cmd == P.PS_IOV_PARENT:
            key = self.decode(h.dst_id)
            self.send(P.STATUS.pack(int(self.parent is not None and self.parent.exists(pagemap_name(*key)))))
        elif h.cmd in (P.PS_IOV_ADD_F, P.PS_IOV_ADD, P.PS_IOV_HOLE):
            flags = h.flags if h.cmd == P.PS_IOV_ADD_F else PE_PRESENT if h.cmd == P.PS_IOV_ADD else PE_PARENT
            self.add(h, flags)
        elif h.cmd == P.CS_BATCH and self.greeted:
            self.batch(h)
        elif h.cmd == P.CS_COVERED and self.greeted:
            self.covered(self.parent, *self.decode(h.dst_id))
        elif h.cmd == P.CS_FILE and self.greeted:
            self.file(h)
        elif h.cmd == P.CS_DROP and self.greeted:
            self.current(h)
            self.drop_pagemap()
        elif h.cmd == P.CS_SKIP and self.greeted:
            pm = self.current(h)
            pm.check_run(h.vaddr, h.nr_pages)
            pm.writer.add_skipped(h.vaddr, h.nr_pages)
        else:
            raise Refused(f"unknown command {h.cmd:#x}")
        return False

    def hello(self, h: P.Header) -> None:
        if self.greeted or self.imgdir is not None:
            raise Refused("hello in the middle of a session")
        if h.nr_pages > P.HELLO_MAX:
            raise Refused(f"hello of {h.nr_pages} bytes is too long")
        try:
            msg = json.loads(bytes(self.recv(h.nr_pages, "the hello")))
            token = str(msg.get("token") or "").encode("latin-1")
        except (ValueError, AttributeError, UnicodeError):
            raise Refused("hello is not a JSON object") from None
        if self.opts.token is not None and not hmac.compare_digest(token, self.opts.token):
            self.send(P.HELLO_REPLY.pack(1, 0))
            raise Refused("wrong token" if token else "no token presented")
        try:
            name = check_name(msg.get("session"), "session")
            parent = msg.get("parent")
            if parent is not None:
                check_name(parent, "parent session")
        except Refused:
            self.send(P.HELLO_REPLY.pack(2, 0))
            raise
        root = self.server.images_dir
        if msg.get("reading"):
            self.role = msg.get("role") if isinstance(msg.get("role"), str) else None
            try:
                self.reading = ImageDir.open(root / name)
            except ImageError:
                self.send(P.HELLO_REPLY.pack(4, 0))
                raise Refused(f"no session {name!r} to read") from None
        elif self.opts.read_only:
            self.send(P.HELLO_REPLY.pack(2, 0))
            raise Refused(f"session {name!r}: this server only serves reading sessions")
        else:
            try:
                parent_dir = ImageDir.open(root / parent) if parent else None
            except ImageError:
                self.send(P.HELLO_REPLY.pack(3, 0))
                raise Refused(f"no parent session {parent!r}") from None
            self.begin(name, parent_dir)
        self.greeted = True
        self.features = int(msg.get("features") or 0) & (P.FEAT_ZSTD | P.FEAT_CRC)
        self.send(P.HELLO_REPLY.pack(0, self.features))
        if self.reading is not None and self.opts.reader_event is not None:
            self.opts.reader_event(self.reading.root.name, self.role, "open")

    def begin(self, name: str, parent: ImageDir | None) -> None:
        if not self.server.claim(name):
            self.send(P.HELLO_REPLY.pack(2, 0))
            raise Refused(f"session {name!r} exists or is being received")
        self.name, self.parent = name, parent
        self.imgdir = ImageDir.create(self.server.images_dir / name,
                                      parent=parent.root if parent is not None else None)

    def start_plain(self) -> None:
        """A session of a plain CRIU client starts with its first command: session-N."""
        if self.imgdir is None:
            self.begin(self.server.plain_name(), None)

    def decode(self, dst_id: int) -> tuple[int, bool]:
        key = P.decode_dst(dst_id)
        if key is None:
            raise Refused(f"unknown pagemap type in dst_id {dst_id:#x}")
        return key

    def open(self, h: P.Header, answer: bool) -> None:
        self.end_pagemap()
        pid, shmem = self.decode(h.dst_id)
        if self.imgdir.exists(pagemap_name(pid, shmem)):
            raise Refused(f"pagemap {pid} opened twice")
        self.pagemap = _Pagemap(self.imgdir, self.parent, pid, shmem)
        self.dst_id = h.dst_id
        if answer:
            self.send(bytes([int(self.parent is not None and self.parent.exists(pagemap_name(pid, shmem)))]))

    def current(self, h: P.Header) -> _Pagemap:
        if self.pagemap is None or h.dst_id != self.dst_id:
            raise Refused(f"pages for dst_id {h.dst_id:#x}, which is not the open pagemap")
        return self.pagemap

    def file(self, h: P.Header) -> None:
        if not 0 < h.nr_pages <= 255 or h.vaddr > P.FILE_MAX:
            raise Refused(f"image file of {h.nr_pages}-byte name, {h.vaddr} bytes is beyond the limits")
        name = bytes(self.recv(h.nr_pages, "an image file's name")).decode("ascii", "replace")
        if not _FILE.fullmatch(name) or name.startswith(("pagemap-", "pages-")) or name == INVENTORY \
                and self.imgdir.exists(INVENTORY):
            raise Refused(f"image file name {name!r} refused")
        data = self.recv(h.vaddr, f"image file {name}")
        self.end_pagemap()
        fd = self.imgdir.create_file(name)
        try:
            write_all(fd, data)
        finally:
            os.close(fd)

    def drop_pagemap(self) -> None:
        """Forget the open pagemap: no pagemap image, its pages file removed."""
        writer, self.pagemap = self.pagemap.writer, None
        writer.abort()
        try:
            os.unlink(self.imgdir.path(pages_name(writer.pages_id)))
        except FileNotFoundError:
            pass

    def end_pagemap(self) -> None:
        if self.pagemap is not None:
            self.pagemap.writer.close()
            self.pagemap = None

    def add(self, h: P.Header, flags: int) -> None:
        pm = self.current(h)
        lazy = flags == PE_LAZY                 # the bytes stay with the client (post-copy)
        if flags & ~(PE_PRESENT | PE_PARENT | PE_LAZY) \
                or not lazy and bool(flags & PE_PRESENT) == bool(flags & PE_PARENT):
            raise Refused(f"pagemap flags {flags:#x} make no sense")
        if lazy and pm.shmem:
            raise Refused("lazy pages of shared memory (a post-copy source sends their bytes)")
        pm.check_run(h.vaddr, h.nr_pages)
        if lazy:
            pm.writer.add_lazy(h.vaddr, h.nr_pages)
            return
        if flags & PE_PARENT:
            pm.add_parent(h.vaddr, h.nr_pages)
            return
        left, vaddr, view = h.nr_pages << PAGE_SHIFT, h.vaddr, memoryview(self.buf)
        while left:
            n = min(left, len(self.buf))
            recv_into_exact(self.sock, view[:n], f"pages at {vaddr:#x}")
            pm.writer.add_runs(np.array([vaddr], np.uint64), np.array([n], np.uint64), view[:n])
            vaddr, left = vaddr + n, left - n

    def batch(self, h: P.Header) -> None:
        pm = self.current(h)
        if not 0 < h.vaddr <= P.BATCH_MAX_RUNS or not 0 < h.nr_pages <= P.BATCH_MAX_PAGES:
            raise Refused(f"batch of {h.vaddr} runs, {h.nr_pages} pages is beyond the limits")
        runs = np.frombuffer(self.recv(16 * h.vaddr, "a batch's runs"), np.uint64).reshape(-1, 2)
        if int(runs[:, 1].sum()) != h.nr_pages or (runs[:, 1] == 0).any():
            raise Refused("a batch's runs do not add up to its page count")
        for v, n in runs.tolist():
            pm.check_run(v, n)
        t = P.BatchTrailer.unpack(self.recv(P.TRAILER.size, "a batch's trailer"))
        raw_len = h.nr_pages << PAGE_SHIFT
        if t.codec == P.CODEC_RAW and t.length == raw_len:
            data = memoryview(self.buf)[:raw_len] if raw_len <= len(self.buf) else memoryview(bytearray(raw_len))
            recv_into_exact(self.sock, data, "a batch's pages")
        elif t.codec == P.CODEC_ZSTD and self.features & P.FEAT_ZSTD and t.length <= P.zstd_bound(raw_len):
            packed = self.recv(t.length, "a batch's compressed pages")
            data = memoryview(self.unpack(packed, raw_len))
        else:
            raise Refused(f"batch payload (codec {t.codec}, {t.length} bytes for {h.nr_pages} pages) refused")
        if self.features & P.FEAT_CRC and zlib.crc32(data) != t.crc:
            raise Refused(f"checksum mismatch in the batch at {int(runs[0, 0]):#x}")
        pm.writer.add_runs(runs[:, 0], runs[:, 1] << np.uint64(PAGE_SHIFT), data)

    def unpack(self, packed: bytes, raw_len: int) -> bytes:
        import zstandard
        if self._dctx is None:
            self._dctx = zstandard.ZstdDecompressor()
        try:
            data = self._dctx.decompress(packed, max_output_size=raw_len)
        except zstandard.ZstdError as e:
            raise Refused(f"bad zstd data: {e}") from None
        if len(data) != raw_len:
            raise Refused(f"zstd data is {len(data)} bytes, not {raw_len}")
        return data

    def close_session(self) -> None:
        status = 0
        try:
            self.end_pagemap()
            if self.imgdir is not None:
                if not self.imgdir.exists(INVENTORY):
                    self.imgdir.write(INVENTORY, [new_inventory()])
                self.imgdir.commit(durable=self.opts.durable)
                self.opts.log(f"page-server: session {self.name} from {self.peer} stored")
                self.imgdir = None
                if self.opts.stored is not None:
                    self.opts.stored(self.server.images_dir / self.name)
        except (ImageError, OSError) as e:
            self.opts.log(f"page-server: session {self.name}: cannot store it: {e}")
            status = -1
        self.send(P.STATUS.pack(status))

    def covered(self, imgdir: ImageDir | None, pid: int, shmem: bool) -> None:
        """Answer CS_COVERED: what IMGDIR's chain holds of that pagemap (the parent of a
        writing session, the session itself when reading)."""
        ranges = Ranges.empty()
        if imgdir is not None and imgdir.exists(pagemap_name(pid, shmem)):
            with PageChain(imgdir, pid, shmem) as chain:
                ranges = chain.covered_ranges()
        pairs = np.stack([ranges.starts, ranges.ends], axis=1).astype(np.uint64)
        self.send(P.COUNT.pack(len(ranges)) + pairs.tobytes())

    # -- a reading session ------------------------------------------------------------

    def chain(self, pid: int, shmem: bool) -> PageChain:
        """The chain of one pagemap of the session read, opened once (a lazy restore asks
        for pages thousands of times)."""
        chain = self.chains.get((pid, shmem))
        if chain is None:
            chain = self.chains[(pid, shmem)] = PageChain(self.reading, pid, shmem)
        return chain

    def read_command(self, h: P.Header) -> bool:
        if h.cmd in (P.PS_IOV_CLOSE, P.PS_IOV_FORCE_CLOSE):
            self.clean = True
            self.send(P.STATUS.pack(0))
            return True
        if h.cmd == P.CS_RESTORE and self.opts.restore is None:
            raise Refused("restore asked of a page server (only migrate-receive restores)")
        if h.cmd == P.CS_RESTORE:
            if h.nr_pages > P.HELLO_MAX:
                raise Refused(f"restore request of {h.nr_pages} bytes is too long")
            try:
                request = json.loads(bytes(self.recv(h.nr_pages, "the restore request"))) if h.nr_pages else {}
            except ValueError:
                raise Refused("restore request is not JSON") from None
            if not isinstance(request, dict):
                raise Refused("restore request is not a JSON object")
            answer = json.dumps(self.opts.restore(self.reading.root, request)).encode()
            self.send(P.COUNT.pack(len(answer)) + answer)
            return False
        if h.cmd == P.CS_LIST:
            ids = [P.encode_dst(i) for i in self.reading.pagemap_ids()]
            ids += [P.encode_dst(i, shmem=True) for i in self.reading.shmem_pagemap_ids()]
            self.send(P.COUNT.pack(len(ids)) + np.array(ids, np.uint64).tobytes())
            return False
        pid, shmem = self.decode(h.dst_id)
        present = self.reading.exists(pagemap_name(pid, shmem))
        if h.cmd == P.CS_COVERED:
            self.covered(self.reading, pid, shmem)
        elif h.cmd == P.CS_GET:
            self.get(h, pid, shmem, present)
        else:
            raise Refused(f"command {h.cmd:#x} in a reading session")
        return False


    def get(self, h: P.Header, pid: int, shmem: bool, present: bool) -> None:
        """Answer CS_GET: a trailer and the pages, sent straight from the pages files (no copy
        here) unless TLS or a checksum needs the bytes in hand."""
        nbytes = h.nr_pages << PAGE_SHIFT
        if not 0 < h.nr_pages <= P.BATCH_MAX_PAGES or h.vaddr % PAGE_SIZE:
            raise Refused(f"get of {h.nr_pages} pages at {h.vaddr:#x} is beyond the limits")
        try:
            if not present:
                raise ImageError("no such pagemap")
            chain = self.chain(pid, shmem)
            if not isinstance(self.sock, ssl.SSLSocket) and not self.features & P.FEAT_CRC:
                pieces = chain.file_pieces(h.vaddr, nbytes)
                self.send(P.BatchTrailer(P.CODEC_RAW, nbytes, 0).pack())
                for fd, offset, n in pieces:
                    send_file_range(self.sock, fd, offset, n)
                return
            data = memoryview(self.buf)[:nbytes] if nbytes <= len(self.buf) else memoryview(bytearray(nbytes))
            chain.lookup_into(h.vaddr, data)
        except ImageError:
            self.send(P.BatchTrailer(P.CODEC_ERROR, 0, 0).pack())
            return
        crc = zlib.crc32(data) if self.features & P.FEAT_CRC else 0
        self.send(P.BatchTrailer(P.CODEC_RAW, data.nbytes, crc).pack())
        self.send(data)


class PageServer:
    """Listens on ADDRESS:PORT (port 0: the kernel's choice, see .port) and serves every
    client in a thread of its own, into IMAGES_DIR."""

    def __init__(self, images_dir: str | Path, address: str = "127.0.0.1", port: int = 0,
                 options: ServerOptions | None = None):
        self.images_dir = Path(os.path.abspath(images_dir))
        if not self.images_dir.is_dir():
            raise CsError(f"{images_dir}: no such directory")
        self.options = options or ServerOptions()
        self._tls = self.options.tls.context(server=True) if self.options.tls else None
        family = socket.AF_INET6 if ":" in address else socket.AF_INET
        self.sock = socket.socket(family, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            self.sock.bind((address, port))
        except OSError as e:
            self.sock.close()
            raise CsError(f"page server: cannot listen on {address}:{port}: {e.strerror}") from None
        self.sock.listen(16)
        self.address, self.port = address, self.sock.getsockname()[1]
        self._names: set[str] = set()
        self._lock = threading.Lock()
        self._slots = threading.Semaphore(self.options.max_clients)
        self._stopping = False
        self.sessions_done = 0
        self._sessions: set[Session] = set()     # being served

    def claim(self, name: str) -> bool:
        """Reserve a session name: False if it is being received or already stored."""
        with self._lock:
            if name in self._names or os.path.lexists(self.images_dir / name):
                return False
            self._names.add(name)
            return True

    def release(self, name: str) -> None:
        with self._lock:
            self._names.discard(name)

    def plain_name(self) -> str:
        with self._lock:
            k = 1
            while f"session-{k}" in self._names or os.path.lexists(self.images_dir / f"session-{k}"):
                k += 1
            return f"session-{k}"

    def serve_one(self, conn: socket.socket, peer: str) -> None:
        try:
            conn.settimeout(self.options.idle_timeout)
            # answers are a small trailer and the pages: no Nagle wait for the delayed ack
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if self.options.silence:
                tcp_liveness(conn, self.options.silence)
            if self._tls is not None:
                try:
                    conn = self._tls.wrap_socket(conn, server_side=True)
                except (OSError, ssl.SSLError) as e:
                    self.options.log(f"page-server: client {peer}: TLS handshake failed: {e}; connection closed")
                    conn.close()
                    return
            session = Session(self, conn, peer)
            with self._lock:
                self._sessions.add(session)
            try:
                session.run()
            finally:
                with self._lock:
                    self._sessions.discard(session)
        finally:
            self.sessions_done += 1
            self._slots.release()

    def serve_forever(self) -> None:
        while not self._stopping:
            try:
                conn, addr = self.sock.accept()
            except OSError:
                if self._stopping:
                    return
                raise
            peer = f"{addr[0]}:{addr[1]}"
            if not self._slots.acquire(blocking=False):
                self.options.log(f"page-server: client {peer}: too many clients; connection closed")
                conn.close()
                continue
            threading.Thread(target=self.serve_one, args=(conn, peer), daemon=True,
                             name=f"page-server {peer}").start()

    def _readers(self, name: str) -> list[Session]:
        with self._lock:
            return [s for s in self._sessions if s.reading is not None and s.reading.root.name == name]

    def quiet(self, name: str) -> float | None:
        """Seconds since any reading connection of session NAME asked something or had more
        bytes of ours acknowledged (answers crossing a slow link are no silence); None if
        none is open. Asked every fraction of a second by its owner."""
        readers = self._readers(name)
        if not readers:
            return None
        now = time.monotonic()
        for s in readers:
            try:
                acked = bytes_acked(s.sock)
            except OSError:
                continue            # closed meanwhile: its thread says so
            if acked != s.acked:
                s.acked, s.heard = acked, now
        return now - max(s.heard for s in readers)

    def cut(self, name: str | None = None) -> None:
        """Shut down the connections of session NAME (every connection: None): their threads
        end as if the peer had gone, and a peer that wakes up finds them gone."""
        with self._lock:
            victims = [s for s in self._sessions
                       if name is None or (s.reading is not None and s.reading.root.name == name)]
        for s in victims:
            try:
                s.sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def drain(self, timeout: float) -> None:
        """Wait (up to timeout) until no client is being served."""
        import time
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and any(
                t.name.startswith("page-server ") for t in threading.enumerate()):
            time.sleep(0.01)

    def start(self) -> "PageServer":
        """Serve in a background thread (tests, migrate-receive)."""
        threading.Thread(target=self.serve_forever, daemon=True, name="page-server").start()
        return self

    def stop(self) -> None:
        self._stopping = True
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.sock.close()
