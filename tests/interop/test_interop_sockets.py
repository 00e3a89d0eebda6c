"""Unix socketpairs across the two tools: stream, datagram and seqpacket pairs with messages
queued both ways, buffer sizes, shutdown state, and a parent and child talking over a stream
pair (tests/workloads/unix_pairs.py without its listeners): what one dumps, the other
restores, and every queued message is read once, in order, with its boundaries."""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from criu_peer import DIRECTIONS, dump_with, need_criu, restore_with
from test_unix_sockets import _children, _wait_for
from tree_helpers import reap_orphans

WORKLOAD = Path(__file__).resolve().parents[1] / "workloads" / "unix_pairs.py"


@pytest.mark.parametrize("direction", DIRECTIONS)
def test_socketpairs_with_queues_across_tools(direction, tmp_path):
    need_criu()
    proc = subprocess.Popen([sys.executable, WORKLOAD, tmp_path], start_new_session=True,
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    pids = [proc.pid]
    log = tmp_path / "log"
    restored = False
    try:
        _wait_for(log, "ready")
        _wait_for(log, "child 3")
        pids += _children(proc.pid)
        dump_with(direction, proc.pid, tmp_path / "img")
        assert proc.wait(timeout=10) == -signal.SIGKILL
        reap_orphans(pids=pids)
        before = sum(1 for x in log.read_text().splitlines() if x.startswith("child"))
        restore_with(direction, tmp_path / "img")
        restored = True
        (tmp_path / "go").touch()
        text = _wait_for(log, "done")
        lines = text.splitlines()
        ab, ba = [b"one", b"two-longer", b"3"], [b"back-1", b"back-two"]
        for name in ("stream", "dgram", "seqpacket"):
            join = (lambda ms: [b"".join(ms)]) if name == "stream" else (lambda ms: ms)
            assert f"{name} a<-b {join(ba)!r}" in lines, text
            assert f"{name} b<-a {join(ab)!r}" in lines, text
            assert f"{name} after b'ping' b'pong'" in lines, text
        assert "sndbuf 100000 100000" in lines, text
        assert "shutdown b'last words' b''" in lines, text
        assert "seqpacket shut b'before' b'' EPIPE" in lines, text
        _wait_for(log, f"child {before + 5}")                # the child talks on with its parent
        after = [int(x.split()[1]) for x in log.read_text().splitlines() if x.startswith("child")]
        assert after == list(range(1, len(after) + 1))     # no question lost or answered twice
    finally:
        for p in pids:
            try:
                os.kill(p, signal.SIGKILL)
            except ProcessLookupError:
                pass
        if not restored:
            proc.wait(timeout=10)
        reap_orphans(pids=pids)


@pytest.mark.parametrize("direction", DIRECTIONS)
def test_a_socket_whose_peer_was_closed_across_tools(direction, tmp_path):
    """A socketpair end whose other end was closed (a peerless connected entry, both ways shut
    down, its queue kept): what one tool dumps, the other restores, data then EOF then EPIPE."""
    from test_unix_sockets import _CLOSED_PEER
    need_criu()
    log = tmp_path / "log"
    proc = subprocess.Popen([sys.executable, "-c", _CLOSED_PEER, log], start_new_session=True,
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    restored = False
    try:
        _wait_for(log, "ready")
        dump_with(direction, proc.pid, tmp_path / "img")
        assert proc.wait(timeout=10) == -signal.SIGKILL
        reap_orphans(pids=[proc.pid])
        restore_with(direction, tmp_path / "img")
        restored = True
        os.kill(proc.pid, signal.SIGUSR1)
        lines = _wait_for(log, "checked").splitlines()
        assert lines[-3:-1] == [f"{int(k)} b'left by {int(k)}' b'' EPIPE"
                                for k in (socket.SOCK_STREAM, socket.SOCK_SEQPACKET)], lines
    finally:
        try:
            os.kill(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        if not restored:
            proc.wait(timeout=10)
        reap_orphans(pids=[proc.pid])
