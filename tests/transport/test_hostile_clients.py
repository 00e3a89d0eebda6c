"""Clients that break the protocol: each gets one log line and a closed connection, the
server keeps serving, and nothing is written outside its directory (nor left inside)."""
from __future__ import annotations

import json
import os
import socket
import time

import pytest

from coldsnap.transport import protocol as P

from coldsnap.transport.server import PageServer, ServerOptions

import ps_helpers  # noqa: F401  (test helper paths)
from predump_helpers import wait_quiet
from restore_helpers import coldsnap

PG = 4096


def _hello(session: str, parent: str | None = None) -> bytes:
    body = json.dumps({"session": session, "parent": parent, "features": 0}).encode()
    return P.Header(P.CS_HELLO, nr_pages=len(body)).pack() + body


def _open(pid: int, shmem: bool = False) -> bytes:
    return P.Header(P.PS_IOV_OPEN2, dst_id=P.encode_dst(pid, shmem)).pack()


def _add(vaddr: int, nr: int, flags: int = 4, pid: int = 42, shmem: bool = False) -> bytes:
    return P.Header(P.PS_IOV_ADD_F, flags, nr, vaddr, P.encode_dst(pid, shmem)).pack()


ATTACKS = {
    "garbage": os.urandom(20) + b"\xff" * 60,
    "short header then gone": b"\x04\x00\x00\x00",
    "unknown command": P.Header(0x777).pack(),
    "huge hello": P.Header(P.CS_HELLO, nr_pages=1 << 40).pack(),
    "hello not json": P.Header(P.CS_HELLO, nr_pages=5).pack() + b"{{{{{",
    "session with a path": _hello("../../escape"),
    "session absolute": _hello("/tmp/escape"),
    "session with slash": _hello("a/b"),
    "parent with a path": _hello("x", parent="../.."),
    "pages without open": _add(0x10000, 1) + b"\0" * PG,
    "huge run": _open(42) + _add(0x10000, 1 << 60),
    "run above any address space": _open(42) + _add(1 << 58, 1),
    "unaligned run": _open(42) + _add(0x10001, 1),
    "runs out of order": _open(42) + _add(0x20000, 1) + b"\1" * PG + _add(0x10000, 1) + b"\2" * PG,
    "pages for another pagemap": _open(42) + _add(0x10000, 1, pid=43) + b"\0" * PG,
    "parent pages without a parent": _open(42) + _add(0x10000, 4, flags=1),
    "nonsense flags": _open(42) + _add(0x10000, 1, flags=5),
    "no flags": _open(42) + _add(0x10000, 1, flags=0),
    "lazy and unknown flags": _open(42) + _add(0x10000, 1, flags=2 | 0x10),
    "lazy, present and parent": _open(42) + _add(0x10000, 1, flags=7) + b"\0" * PG,
    "lazy pages of shared memory": _open(7, shmem=True) + _add(0x0, 1, flags=2, pid=7, shmem=True),
    "batch beyond the limits": _hello("b1") + _open(42) + P.Header(P.CS_BATCH, 0, 1 << 30, 1, P.encode_dst(42)).pack(),
    "batch lying about its size": _hello("b2") + _open(42) + P.Header(P.CS_BATCH, 0, 2, 1, P.encode_dst(42)).pack()
    + P.RUN.pack(0x10000, 2) + P.BatchTrailer(P.CODEC_RAW, 1 << 31, 0).pack(),
    "bad checksum": _hello("b3").replace(b'"features": 0', b'"features": 2') + _open(42)
    + P.Header(P.CS_BATCH, 0, 1, 1, P.encode_dst(42)).pack() + P.RUN.pack(0x10000, 1)
    + P.BatchTrailer(P.CODEC_RAW, PG, 12345).pack() + b"\7" * PG,
    "image file with a path": _hello("f1") + P.Header(P.CS_FILE, 0, 11, 4).pack() + b"../evil.img" + b"abcd",
    "image file named like pages": _hello("f2") + P.Header(P.CS_FILE, 0, 11, 4).pack() + b"pages-1.img" + b"abcd",
    "huge image file": _hello("f3") + P.Header(P.CS_FILE, 0, 8, 1 << 40).pack() + b"core.img",
    "dropped mid-pages": _open(42) + _add(0x10000, 8) + b"\0" * (3 * PG + 100),
    "dropped before close": _open(42) + _add(0x10000, 1) + b"\0" * PG,
}


def _attack(port: int, data: bytes) -> bytes:
    """Send DATA, half-close, and return what the server answered before closing."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        try:
            s.sendall(data)
            s.shutdown(socket.SHUT_WR)
        except OSError:
            return b"(reset)"
        got = b""
        try:
            while chunk := s.recv(65536):
                got += chunk
        except ConnectionResetError:
            pass
        return got


def _files_under(root) -> set[str]:
    return {os.path.join(d, f) for d, dirs, files in os.walk(root) for f in files + dirs}


class InProcessServer:
    """The server in a thread of the test (one for the module: no process to reap)."""

    def __init__(self, base):
        (base / "srv").mkdir()
        self.log: list[str] = []
        self.server = PageServer(base / "srv", options=ServerOptions(idle_timeout=5, log=self.log.append)).start()
        self.port = self.server.port
        self.address = f"127.0.0.1:{self.port}"

    def lines(self) -> list[str]:
        return list(self.log)

    def alive(self) -> bool:
        return not self.server._stopping

    def wait_line(self, what: str, count: int = 1, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while sum(what in line for line in self.log) < count:
            assert time.monotonic() < deadline, f"no {what!r} in {self.log}"
            time.sleep(0.02)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    base = tmp_path_factory.mktemp("hostile")
    ps = InProcessServer(base)
    yield ps, base
    ps.server.stop()


@pytest.mark.parametrize("name", list(ATTACKS))
def test_a_hostile_client_is_closed_with_one_line(server, name):
    ps, base = server
    before = _files_under(base)
    lines = len(ps.lines())
    _attack(ps.port, ATTACKS[name])        # returns once the server closed the connection
    deadline = time.monotonic() + 5
    while len(ps.lines()) == lines and time.monotonic() < deadline:
        time.sleep(0.01)
    new = ps.lines()[lines:]
    assert len(new) == 1 and new[0].startswith("page-server: client 127.0.0.1:") \
        and new[0].endswith("connection closed"), new
    assert ps.alive()
    after = _files_under(base)
    assert after == before, after - before          # nothing written, nothing left
    assert not any("escape" in p for p in _files_under("/tmp") if p.startswith("/tmp/escape"))


@pytest.mark.parametrize("name, words", [("lazy and unknown flags", "flags 0x12 make no sense"),
                                         ("lazy, present and parent", "flags 0x7 make no sense"),
                                         ("lazy pages of shared memory", "lazy pages of shared memory")])
def test_lazy_flags_are_checked_like_the_others(server, name, words):
    """PE_LAZY (a post-copy source's runs, no bytes) passes the same flag check as every run:
    with other flags, or for shared memory (whose bytes a source always sends), refused."""
    ps, _ = server
    lines = len(ps.lines())
    _attack(ps.port, ATTACKS[name])
    ps.wait_line("connection closed", sum("connection closed" in line for line in ps.lines()[:lines]) + 1)
    assert words in ps.lines()[-1], ps.lines()[lines:]


def test_the_server_still_serves_after_all_that(server, spawn, workload_bin):
    ps, base = server
    for name in ("garbage", "dropped mid-pages", "huge run"):
        _attack(ps.port, ATTACKS[name])
    w = spawn([workload_bin("mem_pattern"), 64, 8])
    wait_quiet(w.pid)
    coldsnap("pre-dump", "-t", w.pid, "-D", base / "good", "--track-mem", "none",
             "--page-server", ps.address).check()
    assert (base / "srv" / "good" / f"pagemap-{w.pid}.img").exists()


def test_a_silent_client_is_closed_after_the_idle_timeout(server):
    ps, _ = server
    lines = len(ps.lines())
    with socket.create_connection(("127.0.0.1", ps.port), timeout=15) as s:
        s.sendall(_open(42)[:10])
        t = time.monotonic()
        assert s.recv(1) == b""
        assert 4 < time.monotonic() - t < 12
    ps.wait_line("timed out", 1)
    assert len(ps.lines()) == lines + 1


def test_a_dropped_pagemap_leaves_nothing(server):
    """CS_DROP (a process of the tree exited while its pages were sent): no pagemap, no pages."""
    import numpy as np

    from coldsnap.memory.sink import PagemapKey
    from coldsnap.transport.client import PageServerClient
    from coldsnap.transport.wire import Endpoint
    ps, base = server
    with PageServerClient(Endpoint.parse(ps.address), session="dropped") as c:
        c.open(PagemapKey(42))
        c.present(np.array([0x10000], np.uint64), np.array([PG], np.uint64), memoryview(b"\1" * PG))
        c.drop()
        c.open(PagemapKey(43))
        c.present(np.array([0x10000], np.uint64), np.array([PG], np.uint64), memoryview(b"\2" * PG))
    got = sorted(p.name for p in (base / "srv" / "dropped").iterdir())
    assert got == ["inventory.img", "pagemap-43.img", "pages-2.img"], got


def test_a_page_server_does_not_restore(server):
    """CS_RESTORE is migrate-receive's: a page server refuses it like any unknown command."""
    from coldsnap.errors import TransportError
    from coldsnap.transport.client import PageServerClient
    from coldsnap.transport.wire import Endpoint
    ps, base = server
    with PageServerClient(Endpoint.parse(ps.address), session="r1"):
        pass                                        # an empty session, stored
    with PageServerClient(Endpoint.parse(ps.address), session="r1", reading=True) as r:
        with pytest.raises(TransportError):
            r.restore(timeout=5)
    ps.wait_line("restore asked of a page server (only migrate-receive restores); connection closed")
