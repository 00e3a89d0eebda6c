"""Sockets for the page server and its clients: endpoints, TLS contexts, exact reads."""
from __future__ import annotations

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
        except (OSError, ssl.SSLError) as e:
            raise TransportError(f"connection lost while reading {what}: {e}") from None
        if k == 0:
            if eof_ok and got == 0:
                return False
            raise TransportError(f"connection closed in the middle of {what} ({got} of {view.nbytes} bytes)")
        got += k
    return True
