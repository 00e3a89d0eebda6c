"""A lazy restore's page fetches from a page server (transport/fetch.py, transport/source.py):
pages asked ahead on a connection of their own, in the order the lazy server reads them; a
fault not asked ahead never waits behind them; a server that goes silent is an error within
the bound, on either connection. A real page server (in this process), a session written
through the protocol."""
from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from coldsnap.errors import TransportError
from coldsnap.memory.sink import PagemapKey
from coldsnap.transport import server as S
from coldsnap.transport.client import ClientOptions, PageServerClient
from coldsnap.transport.source import RemotePages
from coldsnap.transport.wire import Endpoint

MIB = 1 << 20
RUNS = [(0x10000000, 24 * MIB), (0x20000000, 8 * MIB + 5 * 4096)]
PID = 7


def _pattern(vaddr: int, nbytes: int) -> np.ndarray:
    """Each 8-byte word holds its own address: any misplaced byte shows."""
    return (np.arange(vaddr, vaddr + nbytes, 8, dtype=np.uint64)).view(np.uint8)


class _NoLocalImages:
    def exists(self, name: str) -> bool:
        return False


@pytest.fixture
def served(tmp_path, monkeypatch):
    """(endpoint, gets: role -> bytes answered, stall: role -> seconds each GET waits)."""
    gets: dict[str | None, int] = {}
    stall: dict[str | None, float] = {}
    lock = threading.Lock()

    class Counting(S.Session):
        def get(self, h, pid, shmem, present):
            time.sleep(stall.get(self.role, 0.0))
            with lock:
                gets[self.role] = gets.get(self.role, 0) + (h.nr_pages << 12)
            super().get(h, pid, shmem, present)

    monkeypatch.setattr(S, "Session", Counting)
    server = S.PageServer(tmp_path, "127.0.0.1", 0, S.ServerOptions(log=lambda line: None)).start()
    ep = Endpoint("127.0.0.1", server.port)
    with PageServerClient(ep, ClientOptions(), session="s") as c:
        c.open(PagemapKey(PID))
        for vaddr, nbytes in RUNS:
            c.present(np.array([vaddr]), np.array([nbytes]), memoryview(_pattern(vaddr, nbytes)))
    yield ep, gets, stall
    server.stop()


def _source(ep: Endpoint, silence: float | None = None):
    origin = RemotePages(ep, ClientOptions(silence=silence), session="s")
    src = origin.source(_NoLocalImages(), PID)
    assert src.runs() == RUNS
    origin.forked()             # as in the lazy-pages server: its own connection (role "lazy"),
    origin.start()              # and a second one, asking ahead
    return origin, src


def test_pages_read_in_push_order_come_from_the_connection_that_asks_ahead(served):
    ep, gets, _ = served
    origin, src = _source(ep)
    try:
        for vaddr, nbytes in RUNS:
            for at in range(vaddr, vaddr + nbytes, MIB):
                n = min(MIB, vaddr + nbytes - at)
                assert np.array_equal(src.saved(0, at, n), _pattern(at, n))
        # a fault's window: its own page first, then what lies behind it (lazy_server.py)
        at = RUNS[0][0] + 5 * MIB + 3 * 4096
        assert np.array_equal(src.saved(0, at, 64 * 4096), _pattern(at, 64 * 4096))
        assert np.array_equal(src.saved(0, at - 16 * 4096, 16 * 4096), _pattern(at - 16 * 4096, 16 * 4096))
    finally:
        origin.close()
    total = sum(n for _, n in RUNS)
    assert gets.get("lazy-ahead", 0) >= total - 2 * MIB, gets    # all but the first reads of each run
    assert gets.get("lazy", 0) <= 2 * MIB + 80 * 4096, gets


def test_a_fault_does_not_wait_behind_the_pages_asked_ahead(served):
    """The ahead connection answers slowly (0.4 s a request, 8 MiB asked: seconds of
    backlog); a fault elsewhere is answered on the other connection at once."""
    ep, gets, stall = served
    stall["lazy-ahead"] = 0.4
    origin, src = _source(ep)
    try:
        for k in range(4):          # a stream: the window grows to 8 MiB asked ahead
            at = RUNS[0][0] + k * MIB
            assert np.array_equal(src.saved(0, at, MIB), _pattern(at, MIB))
        assert origin.pipe.outstanding >= 4 * MIB
        at = RUNS[1][0] + 3 * MIB
        t0 = time.monotonic()
        got = src.saved(0, at, 64 * 4096)
        waited = time.monotonic() - t0
        assert np.array_equal(got, _pattern(at, 64 * 4096))
        assert waited < 0.35, f"the fault waited {waited:.2f} s"
    finally:
        stall["lazy-ahead"] = 0.0
        origin.close()


@pytest.mark.parametrize("which", ["lazy", "lazy-ahead"])
def test_a_silent_server_is_an_error_within_the_bound(served, which):
    """A page server that stops answering (its kernel still acknowledging: a stopped process)
    is a TransportError after `silence` seconds, on the fault connection as on the other."""
    ep, _, stall = served
    origin, src = _source(ep, silence=0.6)
    try:
        at = RUNS[0][0]
        src.saved(0, at, MIB)                       # a stream starts: pages asked ahead
        stall[which] = 3.0
        t0 = time.monotonic()
        with pytest.raises(TransportError, match="nothing came for 0.6 s"):
            if which == "lazy":
                src.saved(0, RUNS[1][0], 64 * 4096)     # not asked ahead: the fault connection
            else:
                for k in range(1, 24):
                    src.saved(0, at + k * MIB, MIB)
        assert time.monotonic() - t0 < 2.5
    finally:
        stall.clear()
        t0 = time.monotonic()
        origin.close()
        assert time.monotonic() - t0 < 3.0
