"""`coldsnap migrate --post-copy`: after the pre-copy the destination runs the process at once
and fetches the final delta from the source's page server; the writer's memory is whole."""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time

import pytest

from ps_helpers import PageServerProc  # noqa: F401  (test helper paths)
from restore_helpers import coldsnap, end_migration
from test_migrate import _migrate_in_background, _netns_inode, _pid_in_root_ns, _receiver, _wait_log, _writer, hosts  # noqa: F401

PG = 4096


def test_a_writer_migrates_post_copy_and_its_memory_is_whole(hosts, workload_bin, tmp_path):
    (tmp_path / "token").write_text("between us\n")
    to = _receiver(hosts, tmp_path, "--token-file", tmp_path / "token")
    w = _writer(workload_bin, tmp_path, 128, 50)
    try:
        r = coldsnap("migrate", "-t", w.pid, "--to", to, "--post-copy", "--json", "--token-file",
                     tmp_path / "token", timeout=300)
        assert r.returncode == 0, r.stderr + hosts.log.read_text()
        res = json.loads(r.stdout)
        print(r.stdout)
        assert res["destination_pid"] == w.pid and res["post_copy"] and res["downtime_ms"] > 0
        assert res["post_copy_pages"] > 0 and res["post_copy_ms"] >= 0
        # the memory built ahead over there is kept: only the final delta is left to fetch
        assert res["prebuilt_bytes"] >= 64 << 20, res
        assert res["post_copy_pages"] < (128 << 20) // PG // 2, res
        w.reap_dumped()
        there = _pid_in_root_ns(w.pid, _netns_inode(hosts))
        assert there is not None, "the migrated process is not in the destination's namespaces"
        ticks = len(w.ticks())
        _wait_log(w, lambda: len(w.ticks()) >= ticks + 5, "5 more ticks")
        os.kill(there, signal.SIGUSR1)
        _wait_log(w, lambda: f"full check ok {(128 << 20) // PG}" in w.lines(), "a full check")
        w.assert_healthy()
        hosts.wait_log("runs here")
        assert hosts.receiver_status() == "exit 0"
    finally:
        end_migration(w)



def _tc(*args: str) -> None:
    subprocess.run(["tc", *args], check=True, capture_output=True)


def test_source_killed_during_post_copy_kills_the_destination_process(hosts, workload_bin, tmp_path):
    """The link slowed down once the pre-copy is over (the final delta takes seconds to come),
    then the source's coldsnap SIGKILLed while it serves: the migrated process is killed over
    there by its guardian, never left running with holes."""
    to = _receiver(hosts, tmp_path)
    # rewriting its whole memory faster than the link: the final delta is all of it, so its
    # fetch cannot be over before the throttle (a small one could, on a quiet machine)
    w = _writer(workload_bin, tmp_path, 128, 2000)
    p = None
    try:
        p = _migrate_in_background(w, to, "--post-copy", tmp=tmp_path)
        _stderr_line(p, "final dump")
        _tc("qdisc", "add", "dev", hosts.veth_src, "root", "tbf", "rate", "1mbit", "burst", "32kbit", "latency", "2s")
        _stderr_line(p, "serving its last pages")
        p.kill()
        p.communicate(timeout=30)
        # its work directory stays; `coldsnap gc` removes it (the receiver's, of a live
        # process in another PID namespace, is kept)
        (work,) = tmp_path.glob("coldsnap-migrate-*")
        gc = json.loads(coldsnap("gc", "--json", env=dict(os.environ, TMPDIR=str(tmp_path)), check=True).stdout)
        assert gc["removed"] == [{"path": str(work), "pid": p.pid}] and not work.exists()
        # whatever it kept is the receiver's (which removes its own once its answer is out,
        # maybe already: so no comparison with a listing taken after the gc)
        assert all(re.fullmatch(r"coldsnap-receive-.*", os.path.basename(k["path"])) for k in gc["kept"]), gc
        w.reap_dumped()
        hosts.wait_log("runs here")
        _killed_over_there(hosts, w)
    finally:
        end_migration(w, p)


def _killed_over_there(hosts, w, timeout: float = 30.0) -> None:
    """The migrated process is gone from the destination, never having seen a wrong word."""
    deadline = time.monotonic() + timeout
    while _pid_in_root_ns(w.pid, _netns_inode(hosts)) is not None:
        assert time.monotonic() < deadline, "the migrated process runs on without its source"
        time.sleep(0.05)
    assert not any(ln.startswith("FAIL") for ln in w.lines()), w.tail()


def _stderr_line(p: subprocess.Popen, what: str, timeout: float = 120.0) -> str:
    """Read p's stderr until a line holds WHAT (the migration's progress lines)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = p.stderr.readline()
        if what in line:
            return line
        if not line and p.poll() is not None:
            break
    raise AssertionError(f"migrate said no {what!r} (exit {p.poll()})")


@pytest.mark.parametrize("how", ["stopped", "dropped"])
def test_a_silent_destination_ends_the_source_within_seconds(hosts, workload_bin, tmp_path, how):
    """The destination goes silent while it still owes itself pages: its lazy server
    SIGSTOPped (its kernel still acknowledges), or every packet of the source's page server
    dropped over there (nftables). Within the silence bound (5 s, once the answers on their
    way are in) migrate exits non-zero in one line, its work directory gone; the process over
    there is killed by its guardian (once its lazy server runs again, or notices by itself)."""
    to = _receiver(hosts, tmp_path)
    w = _writer(workload_bin, tmp_path, 128, 2000)      # the final delta is all of its memory
    p, lazy, table = None, None, f"cspost{os.getpid()}"
    try:
        p = _migrate_in_background(w, to, "--post-copy", tmp=tmp_path)
        _stderr_line(p, "final dump")
        # 128 MiB at 16 Mbit/s: a minute of pages still owed; a stopped receiver's buffer fills in seconds
        _tc("qdisc", "add", "dev", hosts.veth_src, "root", "tbf", "rate", "16mbit", "burst", "32kbit", "latency", "1s")
        port = _stderr_line(p, "serving its last pages").strip().rsplit(":", 1)[1]
        lazy = _pid_in_root_ns(int(re.search(r"lazy server (\d+)", hosts.wait_log("lazy server ")).group(1)),
                               _netns_inode(hosts))
        assert lazy is not None
        time.sleep(0.5)
        if how == "stopped":
            os.kill(lazy, signal.SIGSTOP)
        else:
            subprocess.run(["ip", "netns", "exec", hosts.netns, "nft",
                            f"add table inet {table}; "
                            f"add chain inet {table} i {{ type filter hook input priority 0; }}; "
                            f"add chain inet {table} o {{ type filter hook output priority 0; }}; "
                            f"add rule inet {table} i tcp sport {port} drop; add rule inet {table} o tcp dport {port} drop"],
                           check=True, capture_output=True)
        t0 = time.monotonic()
        _, err = p.communicate(timeout=60)
        took = time.monotonic() - t0
        said = [ln for ln in err.splitlines() if ln.startswith("coldsnap:")]
        assert p.returncode != 0 and len(said) == 1, err
        assert f"post-copy migration of {w.pid}" in said[0], said
        assert took < 20, f"noticed after {took:.1f} s: {said[0]}"
        print(f"{how}: noticed after {took:.1f} s: {said[0]}")
        assert not list(tmp_path.glob("coldsnap-*")), "migrate left its work directory"
        w.reap_dumped()
        if how == "stopped":
            os.kill(lazy, signal.SIGCONT)           # it finds its connections gone
            lazy = None
        _killed_over_there(hosts, w)
    finally:
        if lazy is not None and how == "stopped":
            os.kill(lazy, signal.SIGCONT)
        if how == "dropped":
            subprocess.run(["ip", "netns", "exec", hosts.netns, "nft", "delete", "table", "inet", table],
                           capture_output=True)
        end_migration(w, p)
