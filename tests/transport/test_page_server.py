"""coldsnap → coldsnap through the page server: a pre-dump chain and the final dump received
into session directories, restored from there; token, TLS, zstd + checksums; the reading
API lazy restore uses."""
from __future__ import annotations

import pytest

from coldsnap.images.chain import PageChain
from coldsnap.memory.sink import PagemapKey
from coldsnap.transport.client import ClientOptions, PageServerClient
from coldsnap.transport.wire import Endpoint, TlsFiles

from ps_helpers import PageServerProc, make_certs, merge_images
from predump_helpers import mismatched_pages, wait_quiet
from restore_helpers import assert_one_line_error, coldsnap, start_workload


@pytest.fixture
def server(tmp_path):
    started = []

    def start(*extra, name="srv") -> PageServerProc:
        s = PageServerProc(tmp_path / name, tmp_path / f"{name}.log", *extra)
        started.append(s)
        return s

    yield start
    for s in started:
        s.stop()


def test_chain_through_the_page_server_restores(server, workload_bin, python_exe, tmp_path):
    ps = server()
    with start_workload("rst_memory", workload_bin, python_exe, tmp_path) as w:
        to = ["--page-server", ps.address]
        coldsnap("pre-dump", "-t", w.pid, "-D", tmp_path / "1", *to).check()
        w.wait_ticks(3)
        second = coldsnap("pre-dump", "-t", w.pid, "-D", tmp_path / "2", "--prev-images-dir", tmp_path / "1",
                          *to).check()
        assert " 0 in parent" not in second.stdout           # the server answered what its chain holds
        w.wait_ticks(3)
        coldsnap("dump", "-t", w.pid, "-D", tmp_path / "3", "--prev-images-dir", tmp_path / "2", *to).check()
        w.reap_dumped()
        # pages only on the server, the other images only here: as with CRIU
        assert not list((tmp_path / "3").glob("pages-*")) and not list((tmp_path / "3").glob("pagemap-*"))
        assert sorted(p.name for p in (tmp_path / "srv").iterdir()) == ["1", "2", "3"]
        assert (tmp_path / "srv" / "3" / "parent").readlink().as_posix() == "../2"
        ps.wait_line("session 3 from")
        coldsnap("restore", "-D", merge_images(tmp_path / "3", tmp_path / "srv" / "3"), "-d").check()
        w.adopt_restored()
        w.wait_ticks(4)
        w.assert_healthy()


def test_token_refuses_a_client_without_it_and_writes_nothing(server, spawn, workload_bin, tmp_path):
    (tmp_path / "token").write_text("s3cret\n")
    (tmp_path / "wrong").write_text("guess\n")
    ps = server("--token-file", tmp_path / "token")
    w = spawn([workload_bin("mem_pattern"), 256, 8])
    wait_quiet(w.pid)
    for i, extra in enumerate([[], ["--token-file", tmp_path / "wrong"]]):
        r = coldsnap("pre-dump", "-t", w.pid, "-D", tmp_path / f"no{i}", "--track-mem", "none",
                     "--page-server", ps.address, *extra)
        assert r.returncode != 0
        assert_one_line_error(r)
        assert "page server" in r.stderr and not (tmp_path / f"no{i}").exists()
    ps.wait_line("wrong token")
    ps.wait_line("no token presented")
    assert list((tmp_path / "srv").iterdir()) == []
    coldsnap("pre-dump", "-t", w.pid, "-D", tmp_path / "ok", "--track-mem", "none",
             "--page-server", ps.address, "--token-file", tmp_path / "token").check()
    assert mismatched_pages(tmp_path / "srv" / "ok", w.pid) == []


def test_compressed_and_checksummed_pages_arrive_whole(server, spawn, workload_bin, tmp_path):
    ps = server()
    w = spawn([workload_bin("mem_pattern"), 2048, 8])
    wait_quiet(w.pid)
    coldsnap("pre-dump", "-t", w.pid, "-D", tmp_path / "z", "--track-mem", "none", "--compress",
             "--page-server", ps.address).check()
    assert mismatched_pages(tmp_path / "srv" / "z", w.pid) == []
    pages = sum(f.stat().st_size for f in (tmp_path / "srv" / "z").glob("pages-*"))
    assert pages >= 2048 * 4096


def test_tls_both_ends_checked(server, spawn, workload_bin, tmp_path):
    c = make_certs(tmp_path / "pki")
    ps = server("--tls-cacert", c["ca"], "--tls-cert", c["server"], "--tls-key", c["server_key"])
    w = spawn([workload_bin("mem_pattern"), 128, 8])
    wait_quiet(w.pid)
    plain = coldsnap("pre-dump", "-t", w.pid, "-D", tmp_path / "plain", "--track-mem", "none",
                     "--page-server", ps.address)
    assert plain.returncode != 0
    assert_one_line_error(plain)
    stranger = coldsnap("pre-dump", "-t", w.pid, "-D", tmp_path / "stranger", "--track-mem", "none",
                        "--page-server", ps.address, "--tls-cacert", c["ca"], "--tls-cert", c["stranger"],
                        "--tls-key", c["stranger_key"])
    assert stranger.returncode != 0
    assert_one_line_error(stranger)
    ps.wait_line("TLS handshake failed", 1)
    coldsnap("pre-dump", "-t", w.pid, "-D", tmp_path / "ok", "--track-mem", "none", "--page-server", ps.address,
             "--tls-cacert", c["ca"], "--tls-cert", c["client"], "--tls-key", c["client_key"]).check()
    assert sorted(p.name for p in (tmp_path / "srv").iterdir()) == ["ok"]
    assert mismatched_pages(tmp_path / "srv" / "ok", w.pid) == []
    # the reading API over TLS too
    tls = TlsFiles(str(c["ca"]), str(c["client"]), str(c["client_key"]))
    with PageServerClient(Endpoint.parse(ps.address), ClientOptions(tls=tls), session="ok", reading=True) as r:
        assert r.covered(PagemapKey(w.pid)).nr_pages > 128


def test_reading_pages_by_address(server, spawn, workload_bin, tmp_path):
    """The client API lazy restore uses: pages of a session (through its chain) by address."""
    ps = server()
    w = spawn([workload_bin("mem_pattern"), 512, 8])
    wait_quiet(w.pid)
    to = ["--page-server", ps.address]
    coldsnap("pre-dump", "-t", w.pid, "-D", tmp_path / "a", *to).check()
    assert w.send("write 16 5") == "wrote 16"
    wait_quiet(w.pid)
    coldsnap("pre-dump", "-t", w.pid, "-D", tmp_path / "b", "--prev-images-dir", tmp_path / "a", *to).check()
    coldsnap("untrack", w.pid).check()
    key = PagemapKey(w.pid)
    with PageServerClient(Endpoint.parse(ps.address), session="b", reading=True) as r, \
            PageChain(tmp_path / "srv" / "b", w.pid) as chain:
        assert r.pagemaps() == [key]
        covered = r.covered(key)
        assert covered.pairs() == chain.covered_ranges().pairs()
        start, end = covered.pairs()[0]
        n = min(64, (end - start) >> 12)
        assert r.read_pages(key, start, n) == chain.lookup(start, n)
        with open(f"/proc/{w.pid}/mem", "rb", buffering=0) as mem:
            mem.seek(start)
            assert r.read_pages(key, start, n) == mem.read(n << 12)
        with pytest.raises(Exception, match="not in session"):
            r.read_pages(key, 0x1000, 1)
