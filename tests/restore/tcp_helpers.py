"""A peer outside the dumped tree that keeps one TCP connection busy both ways, and what the
tests check of coldsnap's network lock."""
from __future__ import annotations

import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest

from coldsnap.connections.lock import TABLE_PREFIX, NetworkLock, our_tables
from coldsnap.images import framing

from procs import Run, coldsnap_argv

WORKLOADS_DIR = Path(__file__).resolve().parent.parent / "workloads"


class EchoPeer:
    """Sends numbered lines as fast as the connection takes them (from a thread) and reads
    the echo back; `finish` shuts its side and checks that every byte came back once, in order."""

    def __init__(self, family: int, port: int, *, rcvbuf: int = 4096):
        host = "::1" if family == socket.AF_INET6 else "127.0.0.1"
        self.sock = socket.socket(family)
        # a small window: what the server echoes waits in the server's send queue
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        self.sock.connect((host, port))
        self.sent = bytearray()
        self.got = bytearray()
        self.error: BaseException | None = None
        self.max_gap = 0.0
        self._shut = False
        self._stop = threading.Event()
        self._go = threading.Event()        # cleared: the writer pauses between lines
        self._go.set()
        self._reading = threading.Event()
        self._writer = threading.Thread(target=self._write, daemon=True)
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._writer.start()
        self._reader.start()

    def _write(self) -> None:
        n = 0
        try:
            while not self._stop.is_set():
                self._go.wait()
                line = b"%08d\n" % n
                self.sock.sendall(line)
                self.sent += line
                n += 1
                if n % 64 == 0:
                    time.sleep(0.001)
        except BaseException as e:       # noqa: BLE001 - reported by finish
            self._failed(e)

    def _read(self) -> None:
        self._reading.wait()
        last = time.monotonic()
        try:
            while data := self.sock.recv(65536):
                now = time.monotonic()
                self.max_gap = max(self.max_gap, now - last)
                last = now
                self.got += data
        except BaseException as e:       # noqa: BLE001
            self._failed(e)

    def _failed(self, e: BaseException) -> None:
        """Keep the connection's first error, but the reset over the broken pipe it causes:
        after a RST the first call to fail gets ECONNRESET and a send after it EPIPE, and which
        thread records its error first is up to the scheduler (a loaded run once saw the
        writer's EPIPE overwrite the reader's ECONNRESET)."""
        if self.error is None or (isinstance(self.error, BrokenPipeError) and isinstance(e, ConnectionResetError)):
            self.error = e

    def pause_sending(self) -> None:
        self._go.clear()
        time.sleep(0.2)             # the line being sent goes out, nothing after it

    def resume_sending(self) -> None:
        self._go.set()

    def start_reading(self) -> None:
        self._reading.set()

    def wait_until_sent(self, nbytes: int, timeout: float = 10) -> None:
        deadline = time.monotonic() + timeout
        while len(self.sent) < nbytes:
            assert self.error is None, self.error
            assert time.monotonic() < deadline, f"only {len(self.sent)} bytes sent"
            time.sleep(0.01)

    def close_sending(self, timeout: float = 20) -> None:
        """Stop sending and shut our side (the server's socket goes to CLOSE_WAIT)."""
        self._stop.set()
        self._go.set()
        self._writer.join(timeout)
        if not self._shut:
            self.sock.shutdown(socket.SHUT_WR)
            self._shut = True

    def finish(self, timeout: float = 20) -> None:
        """Stop sending, shut our side, read the rest: every byte echoed once, in order."""
        self.close_sending(timeout)
        self.start_reading()
        self._reader.join(timeout)
        self.sock.close()
        assert self.error is None, f"peer error: {self.error!r}"
        assert not self._reader.is_alive(), f"echo incomplete: {len(self.got)} of {len(self.sent)} bytes"
        assert len(self.got) == len(self.sent)
        assert bytes(self.got) == bytes(self.sent)

    def close(self) -> None:
        self._stop.set()
        self._go.set()
        self._reading.set()
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.sock.close()


def echo_server_argv(family: int, memory_mib: int = 0, unix_path=None) -> list[str]:
    argv = [sys.executable, str(WORKLOADS_DIR / "tcp_echo.py"), "6" if family == socket.AF_INET6 else "4",
            str(memory_mib)]
    return argv + ([str(unix_path)] if unix_path else [])


def run_coldsnap(*args, timeout: float = 60) -> tuple[Run, int]:
    """`coldsnap ARGS` to the end, and its pid: the lock tables it makes carry it
    (CRIU-PID-...), so that a test checks its own runs' tables only (other tests, of
    other people, may hold locks of their own meanwhile)."""
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        argv = coldsnap_argv(*args)
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=err)
        rc = proc.wait(timeout)
        out.seek(0)
        err.seek(0)
        return Run(argv, rc, out.read().decode(errors="replace"), err.read().decode(errors="replace")), proc.pid


def tables_of(pid: int) -> list[str]:
    """The lock tables present now that coldsnap process PID made."""
    return [t for t in our_tables() if t.startswith(f"{TABLE_PREFIX}{pid}-")]


def dump_lock(images) -> str:
    """The table of the lock a dump left, as its inventory names it ('' for none)."""
    inv = framing.read_single(Path(images) / "inventory.img")
    return NetworkLock(inv.dump_criu_run_id).table if inv.dump_criu_run_id else ""


@pytest.fixture(autouse=False)
def lift_left_locks(tmp_path):
    """After a test (passed or failed), lift the lock of any dump under tmp_path that no
    restore lifted (a test failing between dump and restore would leave it)."""
    yield
    for inv in tmp_path.glob("**/inventory.img"):
        try:
            run_id = framing.read_single(inv).dump_criu_run_id
        except Exception:       # noqa: BLE001 - a half-written dump: nothing to lift
            continue
        if run_id:
            NetworkLock(run_id).remove()


def assert_no_table(*names: str) -> None:
    left = set(our_tables()) & set(names)
    assert not left, f"coldsnap's nftables lock was left behind: {sorted(left)}"



