"""`restore --lazy-pages --page-server`: the images come from -D, the pages from a page server
on another "host" (a network namespace): a workload checks all its memory while they come in;
the page server killed mid-way kills the workload; wrong answers are errors, never holes."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from ps_helpers import PageServerProc  # noqa: F401  (test helper paths)
from restore_helpers import LogWorkload, alive, assert_one_line_error, coldsnap, end_lazy_restore, reap, wait_gone
from twohosts import TwoHosts

sys.path.insert(0, str(Path(__file__).parents[1] / "restore"))
from test_lazy_restore import wait_served  # noqa: E402

SIZE_MB = 128


@pytest.fixture
def hosts(tmp_path):
    h = TwoHosts(tmp_path)
    yield h
    h.close()


def _page_server_there(hosts: TwoHosts, tmp_path: Path) -> str:
    store = tmp_path / "store"
    store.mkdir()
    hosts.start_destination("page-server", "-D", store, "--address", hosts.dst_addr, "--port", 0,
                            log=tmp_path / "ps.log")
    text = hosts.wait_log("listening on")
    return f"{hosts.dst_addr}:{text.split('listening on ')[1].split(',')[0].rsplit(':', 1)[1]}"


def _dumped_to(w: LogWorkload, images: Path, server: str) -> None:
    coldsnap("dump", "-t", w.pid, "-D", images, "--page-server", server).check()
    w.reap_dumped()
    assert not any(n.startswith(("pagemap-", "pages-")) for n in os.listdir(images)), "pages stayed local"


def _restored(workload_bin, tmp_path: Path, server: str, before=lambda: None):
    """lazy_check dumped to SERVER and restored lazily from it (BEFORE: just before the restore)."""
    go = tmp_path / "go"
    w = LogWorkload([workload_bin("lazy_check"), SIZE_MB, go], tmp_path / "log")
    w.wait_ready()
    _dumped_to(w, tmp_path / "img", server)
    before()
    run = coldsnap("restore", "-D", tmp_path / "img", "-d", "--lazy-pages", "--json", "--page-server", server,
                   "--lazy-log", tmp_path / "lazy.log").check()
    res = json.loads(run.stdout)
    w.adopt_restored()
    return w, res, go


def test_workload_checks_all_its_memory_from_a_remote_page_server(hosts, workload_bin, tmp_path):
    server = _page_server_there(hosts, tmp_path)
    w, res = None, None
    try:
        w, res, go = _restored(workload_bin, tmp_path, server)
        assert res["pid"] == w.pid and res["lazy_pages"] >= SIZE_MB << 8
        go.touch()
        w.wait_for("ok line", lambda: any(ln.startswith("ok") for ln in w.lines()), timeout=60)
        assert not w.failures(), w.tail()
        assert wait_served(res) == 0, (tmp_path / "lazy.log").read_text()
        assert alive(w.pid)
        assert "every page is in" in (tmp_path / "lazy.log").read_text()
    finally:
        end_lazy_restore(w, res)


def test_page_server_killed_midway_kills_the_process(hosts, workload_bin, tmp_path):
    server = _page_server_there(hosts, tmp_path)
    w, res = None, None
    try:
        w, res, go = _restored(workload_bin, tmp_path, server)
        go.touch()
        time.sleep(0.02)
        hosts.dest.kill()               # the page server's PID namespace goes, and every process there
        hosts.dest.wait()
        status = wait_served(res, timeout=30)
        assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 1
        st = reap(w.pid, 10)
        assert os.WIFSIGNALED(st) and os.WTERMSIG(st) == signal.SIGKILL
        wait_gone(w.pid)
        assert not w.failures(), w.tail()
        assert not any(ln.startswith("ok") for ln in w.lines()), "finished before the kill: make it bigger"
        # lost mid-way, or (on a loaded machine) gone before the server's first connect: "Connection refused"
        assert "connection" in (tmp_path / "lazy.log").read_text().lower()
    finally:
        end_lazy_restore(w, res)


def _descendants(pid: int) -> list[int]:
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        for task in Path(f"/proc/{p}/task").iterdir():
            kids = [int(k) for k in (task / "children").read_text().split()]
            out += kids
            todo += kids
    return out


def _page_server_pid(hosts: TwoHosts) -> int:
    """The destination's page server, as this PID namespace sees it."""
    for pid in _descendants(hosts.dest.pid):
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        if argv[1:4] == [b"-m", b"coldsnap", b"page-server"]:      # not ns_init, which names it
            return pid
    raise AssertionError("no page server over there")


def _in_netns(hosts: TwoHosts, *argv) -> None:
    subprocess.run(["ip", "netns", "exec", hosts.netns, *map(str, argv)], check=True, capture_output=True)


@pytest.mark.parametrize("how", ["stopped", "dropped"])
def test_a_silent_page_server_kills_the_process_within_seconds(hosts, workload_bin, tmp_path, how):
    """The page server stops answering without a reset: SIGSTOPped (its kernel still
    acknowledges every byte), or every packet of its port dropped over there (nftables). The
    link is slowed down first, so that pages are still owed. Within the silence bound (5 s)
    the lazy server gives up, its guardian kills the process: not after the 60 s it took."""
    server = _page_server_there(hosts, tmp_path)
    port = server.rsplit(":", 1)[1]
    table = f"cslazy{os.getpid()}"
    ps, w, res = None, None, None
    try:
        w, res, go = _restored(workload_bin, tmp_path, server, before=lambda: _in_netns(
            hosts, "tc", "qdisc", "add", "dev", hosts.veth_dst, "root", "tbf", "rate", "16mbit", "burst", "32kbit",
            "latency", "1s"))
        go.touch()
        time.sleep(0.3)
        assert alive(w.pid) and not any(ln.startswith("ok") for ln in w.lines())
        if how == "stopped":
            ps = _page_server_pid(hosts)
            os.kill(ps, signal.SIGSTOP)
        else:
            _in_netns(hosts, "nft", f"add table inet {table}; "
                      f"add chain inet {table} i {{ type filter hook input priority 0; }}; "
                      f"add chain inet {table} o {{ type filter hook output priority 0; }}; "
                      f"add rule inet {table} i tcp dport {port} drop; add rule inet {table} o tcp sport {port} drop")
        t0 = time.monotonic()
        status = wait_served(res, timeout=40)
        took = time.monotonic() - t0
        assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 1
        st = reap(w.pid, 10)
        assert os.WIFSIGNALED(st) and os.WTERMSIG(st) == signal.SIGKILL
        assert took < 15, f"noticed after {took:.1f} s"
        log = (tmp_path / "lazy.log").read_text()
        assert "timed out" in log, log
        assert not any(ln.startswith("ok") for ln in w.lines()), "finished before the silence: slow it more"
        assert not w.failures(), w.tail()
    finally:
        if ps is not None:
            os.kill(ps, signal.SIGCONT)
        if how == "dropped":
            subprocess.run(["ip", "netns", "exec", hosts.netns, "nft", "delete", "table", "inet", table],
                           capture_output=True)
        end_lazy_restore(w, res)


def test_eager_restore_reads_every_page_from_the_page_server(workload_bin, tmp_path):
    """Without --lazy-pages the pages are all fetched before the process runs; a session
    named with --page-session (the images directory has another name)."""
    ps = PageServerProc(tmp_path / "store", tmp_path / "ps.log")
    go = tmp_path / "go"
    w = LogWorkload([workload_bin("lazy_check"), 64, go], tmp_path / "log")
    try:
        w.wait_ready()
        _dumped_to(w, tmp_path / "snap", ps.address)
        os.rename(tmp_path / "snap", tmp_path / "elsewhere")
        coldsnap("restore", "-D", tmp_path / "elsewhere", "-d", "--page-server", ps.address,
                 "--page-session", "snap").check()
        w.adopt_restored()
        go.touch()
        w.wait_for("ok line", lambda: any(ln.startswith("ok") for ln in w.lines()), timeout=60)
        assert not w.failures(), w.tail()
        run = coldsnap("restore", "-D", tmp_path / "elsewhere", "-d", "--page-server", ps.address)
        assert_one_line_error(run)
        assert "no such session" in run.stderr
    finally:
        w.stop()
        ps.stop()


# -- a page server that lies: in this process, its sessions patched -----------------------------

@pytest.fixture
def lying_server(tmp_path, monkeypatch):
    from coldsnap.transport import protocol as P
    from coldsnap.transport import server as S

    lie = {}

    class Lying(S.Session):
        def covered(self, imgdir, pid, shmem):
            if lie.get("covered") and self.reading is not None and not shmem:
                ranges = S.Ranges.of([(0x1000, 0x3000)])      # below any mapping
                pairs = np.stack([ranges.starts, ranges.ends], axis=1).astype(np.uint64)
                self.send(P.COUNT.pack(len(ranges)) + pairs.tobytes())
                return
            super().covered(imgdir, pid, shmem)

        def read_command(self, h):
            if lie.get("short") and h.cmd == P.CS_GET:
                data = bytes((h.nr_pages << 12) - 4096)
                self.send(P.BatchTrailer(P.CODEC_RAW, len(data), 0).pack() + data)
                return False
            return super().read_command(h)

    monkeypatch.setattr(S, "Session", Lying)
    store = tmp_path / "store"
    store.mkdir()
    server = S.PageServer(store, "127.0.0.1", 0, S.ServerOptions(log=lambda line: None)).start()
    yield f"127.0.0.1:{server.port}", lie
    server.stop()


@pytest.mark.parametrize("lie", ["covered", "short"])
def test_wrong_answers_are_errors_not_holes(lying_server, workload_bin, tmp_path, lie):
    server, lies = lying_server
    w = LogWorkload([workload_bin("lazy_check"), 64, tmp_path / "go"], tmp_path / "log")
    try:
        w.wait_ready()
        _dumped_to(w, tmp_path / "img", server)
        lies[lie] = True
        run = coldsnap("restore", "-D", tmp_path / "img", "-d", "--lazy-pages", "--page-server", server)
        assert_one_line_error(run)
        assert ("outside every VMA" if lie == "covered" else "answered") in run.stderr, run.stderr
        wait_gone(w.pid)
    finally:
        w.stop()


def test_a_read_only_server_refuses_writing_sessions(tmp_path):
    """A post-copy source's page server serves reading sessions only, to coldsnap and CRIU clients."""
    from coldsnap.errors import TransportError
    from coldsnap.transport import protocol as P
    from coldsnap.transport.client import PageServerClient
    from coldsnap.transport.server import PageServer, ServerOptions
    from coldsnap.transport.wire import Endpoint
    lines = []
    server = PageServer(tmp_path, "127.0.0.1", 0, ServerOptions(read_only=True, log=lines.append)).start()
    try:
        ep = Endpoint("127.0.0.1", server.port)
        with pytest.raises(TransportError, match="refused the session name"):
            PageServerClient(ep, session="mine")
        import socket
        with socket.create_connection(("127.0.0.1", server.port)) as s:     # CRIU's first command
            s.sendall(P.Header(P.PS_IOV_OPEN2, dst_id=P.encode_dst(1)).pack())
            assert s.recv(16) == b""
        deadline = time.monotonic() + 5
        while len(lines) < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert all("only serves reading sessions" in ln for ln in lines) and len(lines) == 2, lines
        assert os.listdir(tmp_path) == []
    finally:
        server.stop()
