"""Interop with the stock CRIU 4.2 through the page-server protocol, both ways:
`criu dump --page-server` into `coldsnap page-server` (then `criu restore`), and
`coldsnap dump --page-server` into `criu page-server` (then `coldsnap restore`)."""
from __future__ import annotations

import os
import subprocess
import time

import pytest

from ps_helpers import CRIU, PageServerProc, criu_skip_reason, free_port, merge_images
from restore_helpers import coldsnap, reap, start_workload

SKIP = criu_skip_reason()
pytestmark = pytest.mark.skipif(bool(SKIP), reason=f"stock CRIU cannot run here: {SKIP}")


def _criu(*args, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([str(CRIU), *map(str, args)], stdin=subprocess.DEVNULL, capture_output=True,
                          text=True, timeout=timeout)


def _log(path) -> str:
    try:
        return "\n".join(path.read_text().splitlines()[-15:])
    except OSError:
        return "(no log)"


def _criu_dump_to(ps: PageServerProc, pid: int, local) -> subprocess.CompletedProcess:
    local.mkdir()
    return _criu("dump", "-t", pid, "-D", local, "-o", "dump.log", "--page-server",
                 "--address", "127.0.0.1", "--port", ps.port)


def test_criu_dump_into_coldsnap_page_server(workload_bin, python_exe, tmp_path):
    ps = PageServerProc(tmp_path / "srv", tmp_path / "srv.log")
    w = start_workload("rst_memory", workload_bin, python_exe, tmp_path)
    try:
        local = tmp_path / "local"
        r = _criu_dump_to(ps, w.pid, local)
        assert r.returncode == 0, _log(local / "dump.log")
        w.reap_dumped()
        ps.wait_line("session session-1 from")
        received = tmp_path / "srv" / "session-1"
        assert list(received.glob("pagemap-*.img")) and list(received.glob("pages-*.img"))
        assert not list(local.glob("pages-*.img"))          # CRIU sent them all over
        merged = merge_images(local, received)
        r = _criu("restore", "-D", merged, "-d", "-o", "restore.log")
        assert r.returncode == 0, _log(merged / "restore.log")
        w.adopt_restored()
        w.wait_ticks(4)
        w.assert_healthy()
    finally:
        w.stop()
        ps.stop()


def test_coldsnap_dump_into_criu_page_server(workload_bin, python_exe, tmp_path):
    received = tmp_path / "criu-srv"
    received.mkdir()
    port = free_port()
    r = _criu("page-server", "-D", received, "--address", "127.0.0.1", "--port", port, "-d",
              "--pidfile", tmp_path / "ps.pid", "-o", "ps.log")
    assert r.returncode == 0, _log(received / "ps.log")
    server_pid = int((tmp_path / "ps.pid").read_text())
    w = start_workload("rst_memory", workload_bin, python_exe, tmp_path)
    try:
        local = tmp_path / "local"
        coldsnap("dump", "-t", w.pid, "-D", local, "--page-server", f"127.0.0.1:{port}").check()
        w.reap_dumped()
        assert reap(server_pid, timeout=10) == 0, _log(received / "ps.log")   # one session, then it exits
        assert list(received.glob("pagemap-*.img")) and list(received.glob("pages-*.img"))
        coldsnap("restore", "-D", merge_images(local, received), "-d").check()
        w.adopt_restored()
        w.wait_ticks(4)
        w.assert_healthy()
    finally:
        w.stop()
        try:
            os.kill(server_pid, 9)
            reap(server_pid)
        except (ProcessLookupError, ChildProcessError, AssertionError):
            pass


def test_coldsnap_asking_for_a_token_refuses_a_criu_server(spawn, workload_bin, tmp_path):
    received = tmp_path / "criu-srv"
    received.mkdir()
    port = free_port()
    r = _criu("page-server", "-D", received, "--address", "127.0.0.1", "--port", port, "-d",
              "--pidfile", tmp_path / "ps.pid", "-o", "ps.log")
    assert r.returncode == 0
    server_pid = int((tmp_path / "ps.pid").read_text())
    (tmp_path / "token").write_text("x")
    w = spawn([workload_bin("mem_pattern"), 64, 8])
    try:
        run = coldsnap("pre-dump", "-t", w.pid, "-D", tmp_path / "l", "--track-mem", "none",
                       "--page-server", f"127.0.0.1:{port}", "--token-file", tmp_path / "token")
        assert run.returncode != 0 and "speaks only CRIU's protocol: it cannot take a token" in run.stderr
        assert not (tmp_path / "l").exists()
    finally:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                if os.waitpid(server_pid, os.WNOHANG)[0]:
                    break
            except ChildProcessError:
                break
            time.sleep(0.05)
        else:
            os.kill(server_pid, 9)
            reap(server_pid)


def test_a_criu_client_without_the_token_is_refused(workload_bin, python_exe, tmp_path):
    (tmp_path / "token").write_text("s3cret")
    ps = PageServerProc(tmp_path / "srv", tmp_path / "srv.log", "--token-file", tmp_path / "token")
    w = start_workload("rst_memory", workload_bin, python_exe, tmp_path)
    try:
        r = _criu_dump_to(ps, w.pid, tmp_path / "local")
        assert r.returncode != 0
        ps.wait_line("no token presented (a plain CRIU client cannot send one); connection closed")
        assert list((tmp_path / "srv").iterdir()) == []
        w.wait_ticks(3)                     # CRIU gave up and resumed it
        w.assert_healthy()
    finally:
        w.stop()
        ps.stop()
