"""Sockets for the page server and its clients: endpoints, TLS contexts, exact reads."""
from __future__ import annotations

import os
import select
import socket
import ssl
from dataclasses import dataclass

from ..errors import CsError, TransportError


@dataclass(frozen=True)
class Endpoint:
    host: str
    port: int

    @classmethod
    def parse(cls, text: str) -> "Endpoint":
        """HOST:PORT, or [V6ADDR]:PORT."""
        host, sep, port = text.rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise CsError(f"{text!r}: expected HOST:PORT")
        return cls(host.strip("[]"), int(port))

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


@dataclass(frozen=True)
class TlsFiles:
    """PEM files of one end: the CA both ends trust, this end's certificate and key. As with
    CRIU's --tls, each end checks that the other's certificate is signed by the CA."""
    cacert: str
    cert: str
    key: str

    def context(self, server: bool) -> ssl.SSLContext:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER if server else ssl.PROTOCOL_TLS_CLIENT)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        try:
            ctx.load_verify_locations(self.cacert)
            ctx.load_cert_chain(self.cert, self.key)
        except (OSError, ssl.SSLError) as e:
            raise CsError(f"TLS files ({self.cacert}, {self.cert}, {self.key}): {e}") from None
        ctx.verify_mode = ssl.CERT_REQUIRED
        ctx.check_hostname = False      # the CA is the trust anchor (criu --tls-no-cn-verify)
        return ctx


def tls_files(cacert: str | None, cert: str | None, key: str | None) -> TlsFiles | None:
    """The TLS files given on a command line: all three or none."""
    given = [x for x in (cacert, cert, key) if x]
    if not given:
        return None
    if len(given) != 3:
        raise CsError("TLS needs --tls-cacert, --tls-cert and --tls-key together")
    return TlsFiles(cacert, cert, key)


def liveness(sock: socket.socket, silence: float) -> None:
    """Make a peer that goes silent an error after about SILENCE seconds, whether it stops
    answering (a stopped process: its kernel still acknowledges, so only the socket's own
    timeout sees it: no byte for SILENCE while we wait), its host or the path between us
    goes (data we sent unacknowledged for SILENCE: TCP_USER_TIMEOUT, ETIMEDOUT), or the
    connection is idle meanwhile (keepalive probes from SILENCE/2 on, one a second, given up
    within the same user timeout)."""
    sock.settimeout(silence)
    tcp_liveness(sock, silence)


def tcp_liveness(sock: socket.socket, silence: float) -> None:
    """liveness()'s TCP part alone: a peer whose host or path goes is an error after about
    SILENCE seconds, but an idle connection may stay idle (a post-copy source's server:
    the destination's fault connection idles while its push goes on; dump/postcopy.py
    judges the silence of the whole session)."""
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT, int(silence * 1000))
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, max(1, int(silence / 2)))
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL, 1)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT, max(1, int(silence)))


def send_file_range(sock: socket.socket, fd: int, offset: int, count: int) -> None:
    """COUNT bytes of file FD from OFFSET on the (plain) socket, with sendfile(2): no copy
    through user space. A file shorter than that is a TransportError."""
    timeout = sock.gettimeout()
    while count:
        try:
            n = os.sendfile(sock.fileno(), fd, offset, count)
        except BlockingIOError:         # a socket with a timeout is non-blocking underneath
            if not select.select([], [sock], [], timeout)[1]:
                raise TransportError(f"could not send for {timeout:g} s") from None
            continue
        except OSError as e:
            raise TransportError(f"connection lost while sending: {e.strerror}") from None
        if n == 0:
            raise TransportError(f"a pages file ends before byte {offset + count}")
        offset, count = offset + n, count - n


def recv_exact(sock: socket.socket, n: int, what: str) -> bytearray:
    """Exactly n bytes, or TransportError naming what was being read."""
    buf = bytearray(n)
    recv_into_exact(sock, memoryview(buf), what)
    return buf


def recv_into_exact(sock: socket.socket, view: memoryview, what: str, *, eof_ok: bool = False) -> bool:
    """Fill view from the socket; False only when eof_ok and the peer closed before the
    first byte (a clean end between messages)."""
    got = 0
    while got < view.nbytes:
        try:
            k = sock.recv_into(view[got:])
        except TimeoutError:
            raise TransportError(f"timed out: nothing came for {sock.gettimeout():g} s while reading {what} "
                                 f"({got} of {view.nbytes} bytes)") from None
        except (OSError, ssl.SSLError) as e:
            raise TransportError(f"connection lost while reading {what}: {e}") from None
        if k == 0:
            if eof_ok and got == 0:
                return False
            raise TransportError(f"connection closed in the middle of {what} ({got} of {view.nbytes} bytes)")
        got += k
    return True
