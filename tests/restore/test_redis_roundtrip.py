"""Redis from Debian through dump and restore: every key back, new writes accepted, twice in a row."""
from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time

import pytest

from restore_helpers import alive, coldsnap, kill_and_reap, reap, wait_gone

REDIS = shutil.which("redis-server")
pytestmark = pytest.mark.skipif(REDIS is None, reason="redis-server not installed")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _resp(*args: str) -> bytes:
    out = [f"*{len(args)}\r\n".encode()]
    for a in args:
        b = a.encode()
        out.append(b"$%d\r\n%s\r\n" % (len(b), b))
    return b"".join(out)


def redis_cmds(port: int, cmds: list[tuple[str, ...]], timeout: float = 10) -> list[bytes]:
    """Send commands on one connection; returns the raw replies, one line each (+/-/:/$ bulk)."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as c:
        c.sendall(b"".join(_resp(*cmd) for cmd in cmds) + _resp("QUIT"))
        data = b""
        while chunk := c.recv(65536):
            data += chunk
    replies, lines = [], data.split(b"\r\n")
    i = 0
    while i < len(lines) and len(replies) < len(cmds):
        line = lines[i]
        if line.startswith(b"$") and line != b"$-1":
            replies.append(lines[i + 1])
            i += 2
        else:
            replies.append(line)
            i += 1
    return replies


def _wait_answering(port: int, alive_check) -> None:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        assert alive_check(), "redis-server is gone"
        try:
            if redis_cmds(port, [("PING",)], timeout=2) == [b"+PONG"]:
                return
        except OSError:
            time.sleep(0.05)
    raise AssertionError("redis-server did not answer")


def test_redis_dump_restore_twice(tmp_path):
    port = _free_port()
    proc = subprocess.Popen([REDIS, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                             "--appendonly", "no", "--daemonize", "no", "--dir", str(tmp_path)],
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            cwd=tmp_path)
    pid = proc.pid
    running = lambda: alive(pid)  # noqa: E731
    try:
        _wait_answering(port, running)
        keys = {f"key:{i}": f"value-{i}-" + "x" * (i % 300) for i in range(2000)}
        assert set(redis_cmds(port, [("SET", k, v) for k, v in keys.items()])) == {b"+OK"}
        tids = sorted(os.listdir(f"/proc/{pid}/task"))
        assert len(tids) > 1, "redis-server runs background threads"
        for cycle in range(2):
            images = tmp_path / f"img{cycle}"
            coldsnap("dump", "-t", pid, "-D", images).check()
            if cycle == 0:
                proc.wait(timeout=10)      # the original, our child
            else:
                reap(pid)                  # a restored one, reparented to us
            wait_gone(pid)
            coldsnap("restore", "-D", images, "-d").check()
            assert running(), "restored redis-server is not running"
            assert sorted(os.listdir(f"/proc/{pid}/task")) == tids
            _wait_answering(port, running)
            got = redis_cmds(port, [("GET", k) for k in keys] + [("DBSIZE",)])
            assert got[:-1] == [v.encode() for v in keys.values()]
            assert got[-1] == b":%d" % len(keys)
            new = f"after-restore-{cycle}"
            assert redis_cmds(port, [("SET", new, "yes"), ("GET", new)]) == [b"+OK", b"yes"]
            keys[new] = "yes"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
        kill_and_reap(pid)
