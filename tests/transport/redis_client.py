"""A Redis client on ONE connection for the migration proof (tests/transport/test_migrate_redis.py).

    python3 redis_client.py HOST PORT POPULATE_KEYS POPULATE_SIZE

Connects once, fills the server with DEBUG POPULATE (keys key:0.. of POPULATE_SIZE-byte
values), prints "ready <INFO total_connections_received>", then issues SET c:N / GET of an
earlier c:K, each waiting for its answer, until a line arrives on stdin (or stdin closes).
Then, on the same connection: DBSIZE, every c:N it set read back, the first and last
populated keys, and INFO's connection count again; prints one JSON line and exits 0. Any
error (a reply it did not expect, a reset, a timeout) ends it at once with exit 1 and the
error in the JSON: it never reconnects.
"""
from __future__ import annotations

import json
import os
import select
import socket
import sys
import time

TIMEOUT = 60.0


class Conn:
    def __init__(self, host: str, port: int):
        self.sock = socket.create_connection((host, port), timeout=TIMEOUT)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buf = b""

    def send(self, *cmds: tuple[str, ...]) -> None:
        out = []
        for args in cmds:
            out.append(b"*%d\r\n" % len(args))
            for a in args:
                b = a.encode()
                out.append(b"$%d\r\n%s\r\n" % (len(b), b))
        self.sock.sendall(b"".join(out))

    def _line(self) -> bytes:
        while b"\r\n" not in self.buf:
            chunk = self.sock.recv(1 << 16)
            if not chunk:
                raise ConnectionError("the server closed the connection")
            self.buf += chunk
        line, self.buf = self.buf.split(b"\r\n", 1)
        return line

    def _exact(self, n: int) -> bytes:
        while len(self.buf) < n + 2:
            chunk = self.sock.recv(1 << 16)
            if not chunk:
                raise ConnectionError("the server closed the connection")
            self.buf += chunk
        data, self.buf = self.buf[:n], self.buf[n + 2:]
        return data

    def reply(self):
        line = self._line()
        kind, rest = line[:1], line[1:]
        if kind == b"+":
            return rest.decode()
        if kind == b"-":
            raise RuntimeError(f"server error: {rest.decode()}")
        if kind == b":":
            return int(rest)
        if kind == b"$":
            n = int(rest)
            return None if n < 0 else self._exact(n).decode()
        raise RuntimeError(f"unexpected reply {line[:80]!r}")

    def call(self, *args: str):
        self.send(args)
        return self.reply()


def connections(c: Conn) -> int:
    info = c.call("INFO", "stats")
    return int(next(ln.split(":")[1] for ln in info.splitlines() if ln.startswith("total_connections_received:")))


def main() -> int:
    host, port, nkeys, size = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
    out = {"ops": 0, "max_stall_ms": 0.0, "error": None}
    c = Conn(host, port)
    out["local"] = c.sock.getsockname()[1]
    if nkeys:
        c.call("DEBUG", "POPULATE", str(nkeys), "key", str(size))
    out["connections_before"] = connections(c)
    print(f"ready {out['connections_before']}", flush=True)
    n = 0
    try:
        while not select.select([sys.stdin], [], [], 0)[0]:
            n += 1
            t0 = time.monotonic()
            if c.call("SET", f"c:{n}", f"v{n}") != "OK":
                raise RuntimeError(f"SET c:{n} did not answer OK")
            k = (n + 1) // 2
            if c.call("GET", f"c:{k}") != f"v{k}":
                raise RuntimeError(f"GET c:{k} lost its value")
            out["max_stall_ms"] = max(out["max_stall_ms"], (time.monotonic() - t0) * 1000)
            out["ops"] = 2 * n
        out["dbsize"] = c.call("DBSIZE")
        c.send(*[("GET", f"c:{i}") for i in range(1, n + 1)])
        out["missing"] = [i for i in range(1, n + 1) if c.reply() != f"v{i}"][:20]
        if nkeys:
            for i in (0, nkeys - 1):
                v = c.call("GET", f"key:{i}")
                if v is None or not v.startswith(f"value:{i}"):
                    out["missing"].append(f"key:{i}")
        out["keys_set"] = n
        out["connections_after"] = connections(c)
        out["local_after"] = c.sock.getsockname()[1]
    except (OSError, RuntimeError, ConnectionError) as e:
        out["error"] = f"{type(e).__name__}: {e} (after {n} SETs)"
    print(json.dumps(out), flush=True)
    os._exit(0 if out["error"] is None else 1)


if __name__ == "__main__":
    sys.exit(main())
