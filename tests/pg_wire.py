"""A minimal PostgreSQL client (protocol 3.0, simple queries, trust authentication): enough
to hold one session open over TCP across a dump and restore of the server."""
from __future__ import annotations

import socket
import struct


class PgError(Exception):
    pass


class PgSession:
    def __init__(self, port: int, user: str = "postgres", database: str = "postgres", timeout: float = 20):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        params = f"user\0{user}\0database\0{database}\0\0".encode()
        self.sock.sendall(struct.pack("!ii", 8 + len(params), 196608) + params)
        self.status = ""
        self._until_ready()

    def query(self, sql: str) -> list[tuple[str | None, ...]]:
        """Rows of the last result of SQL (text values); PgError on an error."""
        body = sql.encode() + b"\0"
        self.sock.sendall(b"Q" + struct.pack("!i", 4 + len(body)) + body)
        return self._until_ready()

    def close(self) -> None:
        try:
            self.sock.sendall(b"X" + struct.pack("!i", 4))
        except OSError:
            pass
        self.sock.close()

    def _until_ready(self) -> list[tuple[str | None, ...]]:
        rows, error = [], None
        while True:
            kind, body = self._message()
            if kind == b"R" and struct.unpack_from("!i", body)[0] != 0:
                raise PgError("the server asks for a password; the test cluster trusts local users")
            if kind == b"T":
                rows = []
            elif kind == b"D":
                rows.append(_row(body))
            elif kind == b"E":
                error = body.decode(errors="replace")
            elif kind == b"Z":
                self.status = body.decode()      # I idle, T in a transaction, E failed one
                if error:
                    raise PgError(error)
                return rows

    def _message(self) -> tuple[bytes, bytes]:
        head = self._exact(5)
        n = struct.unpack_from("!i", head, 1)[0]
        return head[:1], self._exact(n - 4)

    def _exact(self, n: int) -> bytes:
        buf = b""
        while len(buf) < n:
            chunk = self.sock.recv(n - len(buf))
            if not chunk:
                raise PgError("the server closed the connection")
            buf += chunk
        return buf


def _row(body: bytes) -> tuple[str | None, ...]:
    (n,), at, out = struct.unpack_from("!h", body), 2, []
    for _ in range(n):
        (size,) = struct.unpack_from("!i", body, at)
        at += 4
        if size < 0:
            out.append(None)
        else:
            out.append(body[at:at + size].decode())
            at += size
    return tuple(out)
