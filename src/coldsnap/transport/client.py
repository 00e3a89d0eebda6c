"""The client side of a page server: a coldsnap server or stock CRIU's `criu page-server`.

    with PageServerClient(Endpoint.parse("host:port"), ClientOptions(), session="2", parent="1") as c:
        c.open(PagemapKey(pid)); c.present(vaddrs, lengths, data); c.parent(v, n); c.close()

A reading session (lazy restore, tests) fetches pages of a committed session by address:

    with PageServerClient(ep, opts, session="3", reading=True) as c:
        data = c.read_pages(pid, vaddr, nr_pages)

Extensions (token, zstd, crc32) are used only with a coldsnap server (protocol.py says how
they are negotiated); a client that needs one refuses a plain CRIU server in one line.
"""
from __future__ import annotations

import json
import socket
import ssl
import zlib
from dataclasses import dataclass

import numpy as np

from ..errors import TransportError
from ..images.pages import PE_LAZY
from ..kernel.page import PAGE_SHIFT
from ..memory.ranges import Ranges
from ..memory.sink import PagemapKey
from . import protocol as P
from .wire import Endpoint, TlsFiles, liveness, recv_exact, recv_into_exact

DEFAULT_TIMEOUT = 60.0


@dataclass(frozen=True)
class ClientOptions:
    token: bytes | None = None
    tls: TlsFiles | None = None
    compress: bool = False          # zstd over the wire (a coldsnap server only)
    checksum: bool = True           # crc32 of every batch, when the server speaks coldsnap
    timeout: float = DEFAULT_TIMEOUT
    # a reading session (a lazy restore): seconds a silent server may keep us waiting (an
    # answer with no byte coming, data sent and not acknowledged, a peer gone without a
    # reset) before that is an error; None: `timeout` alone (wire.py liveness())
    silence: float | None = None


class PageServerClient:
    def __init__(self, endpoint: Endpoint, options: ClientOptions = ClientOptions(), *,
                 session: str | None = None, parent: str | None = None, reading: bool = False,
                 role: str | None = None):
        self.endpoint, self.options = endpoint, options
        self.session, self.parent_session, self.reading = session, parent, reading
        self.role = role            # a reading session's purpose, told to the server ("lazy")
        self.extended = False
        self.features = 0
        self.has_parent = False
        self.bytes_sent = 0             # on the wire, after compression
        self.closed = False
        self._dst: int | None = None
        self._zstd = None
        self._sock = self._connect()
        try:
            self._negotiate()
        except BaseException:
            self.abort()
            raise

    # -- connection ------------------------------------------------------------------

    def _connect(self) -> socket.socket:
        try:
            sock = socket.create_connection((self.endpoint.host, self.endpoint.port),
                                            timeout=self.options.silence or self.options.timeout)
        except OSError as e:
            raise TransportError(f"page server {self.endpoint}: cannot connect: {e.strerror or e}") from None
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if self.options.silence:
            liveness(sock, self.options.silence)
        if self.options.tls is None:
            return sock
        try:
            return self.options.tls.context(server=False).wrap_socket(sock, server_hostname=self.endpoint.host)
        except (OSError, ssl.SSLError) as e:
            sock.close()
            raise TransportError(f"page server {self.endpoint}: TLS handshake failed: {e}") from None

    def _send(self, *parts: bytes | memoryview) -> None:
        try:
            if isinstance(self._sock, ssl.SSLSocket):
                for p in parts:
                    self._sock.sendall(p)
            else:
                views = [memoryview(p).cast("B") for p in parts]
                while views:
                    n = self._sock.sendmsg(views[:1024])
                    while views and n >= views[0].nbytes:
                        n -= views[0].nbytes
                        views.pop(0)
                    if n:
                        views[0] = views[0][n:]
        except OSError as e:
            raise TransportError(f"page server {self.endpoint}: connection lost while sending: "
                                 f"{e.strerror or e}") from None
        self.bytes_sent += sum(memoryview(p).nbytes for p in parts)

    def _recv(self, n: int, what: str) -> bytearray:
        try:
            return recv_exact(self._sock, n, what)
        except TransportError as e:
            raise TransportError(f"page server {self.endpoint}: {e}") from None

    def _negotiate(self) -> None:
        """Probe for a coldsnap server; say hello to one, refuse a plain one if we need more."""
        self._send(P.Header(P.PS_IOV_PARENT, dst_id=P.encode_dst(P.PROBE_ID, shmem=True)).pack())
        (answer,) = P.STATUS.unpack(self._recv(4, "the answer to the protocol probe"))
        if answer != P.SERVER_MAGIC:
            needs = [w for w, on in (("a token", self.options.token), ("zstd", self.options.compress),
                                     ("reading pages", self.reading)) if on]
            if needs:
                raise TransportError(f"page server {self.endpoint} speaks only CRIU's protocol: "
                                     f"it cannot take {', '.join(needs)}")
            return
        self.extended = True
        want = (P.FEAT_ZSTD if self.options.compress else 0) | (P.FEAT_CRC if self.options.checksum else 0)
        hello = json.dumps({"token": (self.options.token or b"").decode("latin-1"), "session": self.session,
                            "parent": self.parent_session, "reading": self.reading, "features": want,
                            **({"role": self.role} if self.role else {})}).encode()
        self._send(P.Header(P.CS_HELLO, nr_pages=len(hello)).pack(), hello)
        status, granted = P.HELLO_REPLY.unpack(self._recv(P.HELLO_REPLY.size, "the answer to hello"))
        if status != 0:
            words = {1: "refused the token", 2: "refused the session name", 3: "has no such parent session",
                     4: "has no such session"}.get(status, f"refused the session ({status})")
            raise TransportError(f"page server {self.endpoint} {words}")
        self.features = granted
        if granted & P.FEAT_ZSTD:
            import zstandard
            self._zstd = zstandard.ZstdCompressor(level=1)

    # -- writing a session -----------------------------------------------------------

    def open(self, key: PagemapKey) -> bool:
        """Start pagemap KEY; returns whether the server holds a parent pagemap for it."""
        self._dst = P.encode_dst(key.id, key.shmem)
        self._send(P.Header(P.PS_IOV_OPEN2, dst_id=self._dst).pack())
        self.has_parent = bool(self._recv(1, "the answer to open")[0])
        return self.has_parent

    def present(self, vaddrs: np.ndarray, lengths: np.ndarray, data: memoryview) -> None:
        """Runs whose bytes follow each other in data (valid only during the call)."""
        vaddrs, lengths = np.asarray(vaddrs, np.uint64), np.asarray(lengths, np.uint64)
        if not self.extended:
            off = 0
            for v, n in zip(vaddrs.tolist(), lengths.tolist()):
                self._send(P.Header(P.PS_IOV_ADD_F, 4, n >> PAGE_SHIFT, v, self._dst).pack(), data[off:off + n])
                off += n
            return
        # batches within the server's limits: at most BATCH_MAX_RUNS runs, BATCH_MAX_PAGES pages
        i, off, n_runs = 0, 0, len(vaddrs)
        cum = np.cumsum(lengths, dtype=np.uint64)
        while i < n_runs:
            limit = (int(cum[i - 1]) if i else 0) + (P.BATCH_MAX_PAGES << PAGE_SHIFT)
            j = min(n_runs, i + P.BATCH_MAX_RUNS, max(i + 1, int(np.searchsorted(cum, limit, side="right"))))
            if int(lengths[i]) > P.BATCH_MAX_PAGES << PAGE_SHIFT:     # one huge run: split it
                self._split_run(int(vaddrs[i]), data[off:off + int(lengths[i])])
                off += int(lengths[i])
                i += 1
                continue
            size = int(cum[j - 1]) - off
            self._batch(vaddrs[i:j], lengths[i:j], data[off:off + size])
            off += size
            i = j

    def _split_run(self, vaddr: int, data: memoryview) -> None:
        step = P.BATCH_MAX_PAGES << PAGE_SHIFT
        for o in range(0, data.nbytes, step):
            piece = data[o:o + step]
            self._batch(np.array([vaddr + o], np.uint64), np.array([piece.nbytes], np.uint64), piece)

    def _batch(self, vaddrs: np.ndarray, lengths: np.ndarray, data: memoryview) -> None:
        runs = np.empty((len(vaddrs), 2), np.uint64)
        runs[:, 0] = vaddrs
        runs[:, 1] = lengths.astype(np.uint64) >> np.uint64(PAGE_SHIFT)
        crc = zlib.crc32(data) if self.features & P.FEAT_CRC else 0
        payload, codec = (self._zstd.compress(data), P.CODEC_ZSTD) if self._zstd else (data, P.CODEC_RAW)
        self._send(P.Header(P.CS_BATCH, 0, data.nbytes >> PAGE_SHIFT, len(vaddrs), self._dst).pack(),
                   runs.tobytes(), P.BatchTrailer(codec, len(payload), crc).pack(), payload)

    def parent(self, vaddr: int, nr_pages: int) -> None:
        self._send(P.Header(P.PS_IOV_ADD_F, 1, nr_pages, vaddr, self._dst).pack())

    def lazy(self, vaddrs: np.ndarray, lengths: np.ndarray) -> None:
        """Runs the client keeps, to be fetched by a lazy restore (PE_LAZY, no bytes): one
        header each, sent together."""
        vaddrs, lengths = np.asarray(vaddrs, np.uint64), np.asarray(lengths, np.uint64)
        heads = np.zeros(len(vaddrs), dtype=[("cmd", "<u4"), ("pad", "<u4"), ("nr", "<u8"), ("vaddr", "<u8"),
                                             ("dst", "<u8")])
        heads["cmd"] = P.PS_IOV_ADD_F | (PE_LAZY << 16)
        heads["nr"] = lengths.astype(np.uint64) >> np.uint64(PAGE_SHIFT)
        heads["vaddr"] = vaddrs
        heads["dst"] = self._dst
        self._send(heads.tobytes())

    def skipped(self, vaddr: int, nr_pages: int) -> None:
        """Pages that could not be read: told to a coldsnap server, absent for CRIU's."""
        if self.extended:
            self._send(P.Header(P.CS_SKIP, 0, nr_pages, vaddr, self._dst).pack())

    def send_file(self, name: str, data: bytes) -> None:
        """One more image file of the session (a coldsnap server only)."""
        if not self.extended:
            raise TransportError(f"page server {self.endpoint} speaks only CRIU's protocol: it cannot take images")
        raw = name.encode()
        self._send(P.Header(P.CS_FILE, 0, len(raw), len(data)).pack(), raw, data)

    def restore(self, timeout: float = 60.0, request: dict | None = None) -> dict:
        """Have the server's host restore the session (a reading one); returns its answer:
        {"pid": ...} or {"error": "..."}. request: how (protocol.py CS_RESTORE)."""
        body = json.dumps(request).encode() if request else b""
        self._send(P.Header(P.CS_RESTORE, nr_pages=len(body)).pack(), body)
        self._sock.settimeout(timeout)
        (n,) = P.COUNT.unpack(self._recv(8, "the answer to restore"))
        if n > P.HELLO_MAX:
            raise TransportError(f"page server {self.endpoint}: a restore answer of {n} bytes")
        return json.loads(bytes(self._recv(n, "the answer to restore")))

    def drop(self) -> None:
        """Forget the open pagemap (a coldsnap server removes it; a CRIU server keeps what it
        got, which a restore ignores: the process is not in the tree)."""
        if self.extended and self._dst is not None:
            self._send(P.Header(P.CS_DROP, dst_id=self._dst).pack())
        self._dst = None

    def close(self) -> None:
        """End the session: the server commits it; raises unless it says all is stored."""
        if self.closed:
            return
        try:
            self._send(P.Header(P.PS_IOV_CLOSE).pack())
            (status,) = P.STATUS.unpack(self._recv(4, "the answer to close"))
            if status != 0:
                raise TransportError(f"page server {self.endpoint} could not store the images ({status})")
        finally:
            self.abort()

    def cut(self) -> None:
        """Shut the connection down both ways, without closing it: wakes a thread blocked
        reading it (abort() afterwards)."""
        try:
            self._sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    def abort(self) -> None:
        """Drop the connection: a server drops what it received of this session."""
        self.closed = True
        try:
            self._sock.close()
        except OSError:
            pass

    def __enter__(self) -> "PageServerClient":
        return self

    def __exit__(self, exc_type, *exc) -> None:
        if exc_type is None and not self.reading:
            self.close()
        else:
            self.abort()

    # -- reading a session -------------------------------------------------------------

    def covered(self, key: PagemapKey) -> Ranges:
        """Pages the chain holds for KEY: the parent's of a writing session, the session's
        own when reading. Nothing is known of a CRIU server's (every page is then sent)."""
        if not self.extended:
            return Ranges.empty()
        self._send(P.Header(P.CS_COVERED, dst_id=P.encode_dst(key.id, key.shmem)).pack())
        (count,) = P.COUNT.unpack(self._recv(8, "the count of covered ranges"))
        if count > 1 << 24:
            raise TransportError(f"page server {self.endpoint}: {count} covered ranges is not believable")
        pairs = np.frombuffer(self._recv(16 * count, "covered ranges"), np.uint64).reshape(-1, 2)
        return Ranges(pairs[:, 0].copy(), pairs[:, 1].copy())

    def pagemaps(self) -> list[PagemapKey]:
        """The pagemaps of the session (a reading one): its processes' and shared memory's."""
        self._send(P.Header(P.CS_LIST).pack())
        (count,) = P.COUNT.unpack(self._recv(8, "the count of pagemaps"))
        if count > 1 << 20:
            raise TransportError(f"page server {self.endpoint}: {count} pagemaps is not believable")
        ids = np.frombuffer(self._recv(8 * count, "pagemap ids"), np.uint64).tolist()
        return [PagemapKey(*P.decode_dst(i)) for i in ids]

    def read_pages(self, key: PagemapKey, vaddr: int, nr_pages: int) -> bytes:
        """The bytes of nr_pages pages at vaddr of pagemap KEY, wherever the chain keeps them."""
        buf = bytearray(nr_pages << PAGE_SHIFT)
        self.read_pages_into(key, vaddr, memoryview(buf))
        return bytes(buf)

    def read_pages_into(self, key: PagemapKey, vaddr: int, view: memoryview) -> None:
        """Fill VIEW (whole pages, at most BATCH_MAX_PAGES) with the pages at vaddr of KEY.
        An answer of any other length, a refusal or a bad checksum is a TransportError."""
        self.ask_pages([(key, vaddr, view.nbytes)])
        self.receive_pages_into(key, vaddr, view)

    def ask_pages(self, asks: list[tuple[PagemapKey, int, int]]) -> None:
        """Send CS_GET for every (key, vaddr, nbytes) at once, answers not read (pipelined:
        receive_pages_into() each, in the same order)."""
        heads = []
        for key, vaddr, nbytes in asks:
            nr_pages = nbytes >> PAGE_SHIFT
            if not 0 < nr_pages <= P.BATCH_MAX_PAGES or nbytes & ((1 << PAGE_SHIFT) - 1):
                raise ValueError(f"read {nbytes} bytes: whole pages, at most {P.BATCH_MAX_PAGES} at a time")
            heads.append(P.Header(P.CS_GET, 0, nr_pages, vaddr, P.encode_dst(key.id, key.shmem)).pack())
        self._send(b"".join(heads))

    def receive_pages_into(self, key: PagemapKey, vaddr: int, view: memoryview) -> None:
        """The answer to the oldest CS_GET not yet received: the pages at vaddr of KEY, into VIEW."""
        nr_pages = view.nbytes >> PAGE_SHIFT
        t = P.BatchTrailer.unpack(self._recv(P.TRAILER.size, "the answer to get"))
        if t.codec == P.CODEC_ERROR:
            raise TransportError(f"page server {self.endpoint}: pages {vaddr:#x}+{nr_pages} of "
                                 f"{key.id} are not in session {self.session}")
        if t.codec != P.CODEC_RAW or t.length != view.nbytes:
            raise TransportError(f"page server {self.endpoint}: answered {t.length} bytes (codec {t.codec}) "
                                 f"for {nr_pages} pages")
        try:
            recv_into_exact(self._sock, view, "pages")
        except TransportError as e:
            raise TransportError(f"page server {self.endpoint}: {e}") from None
        if self.features & P.FEAT_CRC and zlib.crc32(view) != t.crc:
            raise TransportError(f"page server {self.endpoint}: checksum mismatch in pages at {vaddr:#x}")
