"""Real servers from Debian with clients connected through dump and restore: the client's
own connection goes on after the restore (TCP_REPAIR), as issue 9 asks."""
from __future__ import annotations

import os
import shutil
import socket
import subprocess
import threading
import time

import pytest

from restore_helpers import alive, coldsnap, kill_and_reap, wait_gone
from tcp_helpers import assert_no_table, dump_lock, run_coldsnap, tables_of
from test_redis_roundtrip import _free_port, _resp, _wait_answering

REDIS = shutil.which("redis-server")


class RedisCounter:
    """One connection issuing INCR after INCR (each waits for its reply) from a thread:
    the replies must be 1, 2, 3, ... with no gap, repeat or error, whatever happens meanwhile."""

    def __init__(self, port: int):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=30)
        self.local = self.sock.getsockname()
        self.replies: list[bytes] = []
        self.error: BaseException | None = None
        self.max_wait = 0.0
        self._stop = threading.Event()
        self._buf = b""
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _line(self) -> bytes:
        while b"\r\n" not in self._buf:
            data = self.sock.recv(4096)
            if not data:
                raise ConnectionError("redis closed the connection")
            self._buf += data
        line, self._buf = self._buf.split(b"\r\n", 1)
        return line

    def _run(self) -> None:
        try:
            while not self._stop.is_set():
                t = time.monotonic()
                self.sock.sendall(_resp("INCR", "counter"))
                self.replies.append(self._line())
                self.max_wait = max(self.max_wait, time.monotonic() - t)
        except BaseException as e:      # noqa: BLE001 - checked by stop()
            self.error = e

    def wait_for(self, n: int, timeout: float = 20) -> None:
        deadline = time.monotonic() + timeout
        while len(self.replies) < n:
            assert self.error is None, f"client error: {self.error!r}"
            assert time.monotonic() < deadline, f"only {len(self.replies)} replies"
            time.sleep(0.01)

    def stop(self) -> int:
        """End the loop; check the replies; returns how many commands went through."""
        self._stop.set()
        self._thread.join(30)
        assert self.error is None, f"client error: {self.error!r}"
        assert self.replies == [b":%d" % i for i in range(1, len(self.replies) + 1)]
        return len(self.replies)

    def command(self, *args: str) -> bytes:
        self.sock.sendall(_resp(*args))
        return self._line()


@pytest.mark.skipif(REDIS is None, reason="redis-server not installed")
def test_redis_client_carries_on_on_its_connection(tmp_path):
    port = _free_port()
    proc = subprocess.Popen([REDIS, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                             "--appendonly", "no", "--daemonize", "no", "--dir", str(tmp_path)],
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            cwd=tmp_path, start_new_session=True)
    pid = proc.pid
    client = None
    try:
        _wait_answering(port, lambda: alive(pid))
        client = RedisCounter(port)
        client.wait_for(200)
        images = tmp_path / "img"
        coldsnap("dump", "-t", pid, "-D", images).check()      # the client keeps asking meanwhile
        proc.wait(timeout=10)
        wait_gone(pid)
        at_dump = len(client.replies)
        lock = dump_lock(images)
        run, rpid = run_coldsnap("restore", "-D", images, "-d")
        run.check()
        assert_no_table(lock, *tables_of(rpid))
        client.wait_for(at_dump + 500)
        n = client.stop()
        assert client.sock.getsockname() == client.local
        assert client.command("GET", "counter") == b"$%d" % len(str(n))
        assert client._line() == str(n).encode()
        _wait_answering(port, lambda: alive(pid))          # new connections are served too
    finally:
        if client is not None:
            client.sock.close()
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
        kill_and_reap(pid)
