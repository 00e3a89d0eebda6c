"""`coldsnap migrate` to a `coldsnap migrate-receive` on another "host" (namespaces joined by
a veth pair): a writer keeps its memory whole across the move; faults leave the source running."""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time
from pathlib import Path

import pytest

from ps_helpers import PageServerProc  # noqa: F401  (test helper paths)
from procs import coldsnap_argv
from restore_helpers import LogWorkload, coldsnap, end_migration
from twohosts import TwoHosts

PG = 4096


def _pid_in_root_ns(nspid: int, netns_inode: int) -> int | None:
    """The root namespace's pid of the process whose pid is NSPID in a nested PID namespace."""
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            status = Path(f"/proc/{entry}/status").read_text()
        except OSError:
            continue
        m = re.search(r"^NSpid:\s+(.*)$", status, re.M)
        if m and len(ids := m.group(1).split()) > 1 and int(ids[-1]) == nspid:
            try:
                if os.stat(f"/proc/{entry}/ns/net").st_ino == netns_inode:
                    return int(entry)
            except OSError:
                continue                # gone meanwhile (a test waiting for it to be killed)
    return None


def _wait_log(w: LogWorkload, pred, what: str, timeout: float = 10.0) -> None:
    """As LogWorkload.wait_for, for a process that now lives in another PID namespace."""
    deadline = time.monotonic() + timeout
    while not pred():
        assert time.monotonic() < deadline, f"no {what}; log:\n{w.tail()}"
        time.sleep(0.02)


@pytest.fixture
def hosts(tmp_path):
    h = TwoHosts(tmp_path)
    yield h
    h.close()


def _receiver(hosts: TwoHosts, tmp_path: Path, *extra) -> str:
    hosts.start_destination("migrate-receive", "--address", hosts.dst_addr, "--port", 0, *extra,
                            log=tmp_path / "dest.log")
    text = hosts.wait_log("listening on")
    return f"{hosts.dst_addr}:{text.split('listening on ')[1].split()[0].rsplit(':', 1)[1]}"


def _writer(workload_bin, tmp_path: Path, mib: int, rate: int) -> LogWorkload:
    w = LogWorkload([workload_bin("mig_writer"), mib, rate], tmp_path / "writer.log")
    w.wait_ready(timeout=30)
    w.wait_ticks(3)
    return w


def _migrate_in_background(w: LogWorkload, to: str, *args: str, tmp: Path) -> subprocess.Popen:
    """TMPDIR=tmp: a migrate the test kills leaves its work directory there, not in /tmp."""
    return subprocess.Popen(coldsnap_argv("migrate", "-t", w.pid, "--to", to, *args), stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=dict(os.environ, TMPDIR=str(tmp)))


def _receiver_exit(hosts: TwoHosts, timeout: float = 10.0) -> str | None:
    """The receiver's exit status once ns_init wrote it (its last log line comes a little
    before its exit)."""
    deadline = time.monotonic() + timeout
    while hosts.receiver_status() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    return hosts.receiver_status()


def _netns_inode(hosts: TwoHosts) -> int:
    return os.stat(f"/run/netns/{hosts.netns}").st_ino


def test_a_writer_migrates_and_its_memory_is_whole(hosts, workload_bin, tmp_path):
    to = _receiver(hosts, tmp_path)
    w = _writer(workload_bin, tmp_path, 256, 50)
    try:
        r = coldsnap("migrate", "-t", w.pid, "--to", to, "--json", timeout=300)
        assert r.returncode == 0, r.stderr + hosts.log.read_text()
        res = json.loads(r.stdout)
        assert res["destination_pid"] == w.pid and res["stop_reason"] and res["downtime_ms"] > 0
        assert len(res["iterations"]) >= 2 and res["iterations"][0]["pages"] >= (256 << 20) // PG
        w.reap_dumped()                                   # the source was killed, after the destination ran it
        there = _pid_in_root_ns(w.pid, _netns_inode(hosts))
        assert there is not None, "the migrated process is not in the destination's namespaces"
        ticks = len(w.ticks())
        _wait_log(w, lambda: len(w.ticks()) >= ticks + 5, "5 more ticks")
        os.kill(there, signal.SIGUSR1)
        _wait_log(w, lambda: f"full check ok {(256 << 20) // PG}" in w.lines(), "a full check")
        w.assert_healthy()
        hosts.wait_log("runs here")
        assert _receiver_exit(hosts) == "exit 0"          # one migration served, the process lives on
    finally:
        end_migration(w)


def _take_pid_there(hosts: TwoHosts, pid: int) -> subprocess.Popen:
    """A sleeper holding PID in the destination's PID namespace."""
    init = int(Path(f"/proc/{hosts.dest.pid}/task/{hosts.dest.pid}/children").read_text().split()[0])
    p = subprocess.Popen(["nsenter", "-t", str(init), "-p", "-m", "sh", "-c",
                          f"echo {pid - 1} > /proc/sys/kernel/ns_last_pid; sleep 600 & echo $!; wait"],
                         stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, text=True)
    assert int(p.stdout.readline()) == pid
    return p


def test_destination_pid_taken_the_source_runs_on(hosts, workload_bin, tmp_path):
    to = _receiver(hosts, tmp_path)
    w = _writer(workload_bin, tmp_path, 32, 20)
    squatter = _take_pid_there(hosts, w.pid)
    try:
        r = coldsnap("migrate", "-t", w.pid, "--to", to, "--max-iterations", "2", timeout=300)
        errors = [line for line in r.stderr.splitlines() if line.startswith("coldsnap: ")]
        assert r.returncode != 0 and len(errors) == 1 and "runs on here" in errors[0], r.stderr
        assert f"PID {w.pid} is in use" in errors[0]
        w.wait_ticks(5)
        w.assert_healthy()
        hosts.wait_log("restore failed")
        assert _receiver_exit(hosts) == "exit 1"          # the receiver says so and goes
    finally:
        w.stop()
        hosts.close()
        squatter.kill()
        squatter.wait()


def test_link_cut_during_the_final_dump_the_source_runs_on(hosts, workload_bin, tmp_path):
    to = _receiver(hosts, tmp_path)
    w = _writer(workload_bin, tmp_path, 128, 50)
    try:
        p = _migrate_in_background(w, to, "--max-iterations", "1", "--timeout", "3", tmp=tmp_path)
        hosts.wait_log("-1 from", timeout=120)            # the only pre-copy is stored: the final dump begins
        hosts.link(False)
        out, err = p.communicate(timeout=120)
        assert p.returncode != 0 and "runs on here" in err, err
        assert "-final" not in hosts.log.read_text().split("-1 from")[1]   # nothing of it stored there
        w.wait_ticks(5)
        w.assert_healthy()
    finally:
        w.stop()


def test_destination_killed_mid_iteration_the_source_runs_on(hosts, workload_bin, tmp_path):
    to = _receiver(hosts, tmp_path)
    w = _writer(workload_bin, tmp_path, 128, 50)
    try:
        p = _migrate_in_background(w, to, "--max-downtime", "0.001", "--max-iterations", "50", tmp=tmp_path)
        hosts.wait_log("session m", timeout=60)          # an iteration arrived
        hosts.dest.kill()                                # the whole destination host goes
        hosts.dest.wait()
        out, err = p.communicate(timeout=120)
        assert p.returncode != 0 and "runs on here" in err, err
        w.wait_ticks(5)
        w.assert_healthy()
        uffds = [fd for fd in os.listdir(f"/proc/{w.pid}/fd") if "userfaultfd" in os.readlink(f"/proc/{w.pid}/fd/{fd}")]
        assert uffds == []                               # coldsnap's tracking taken out again
    finally:
        w.stop()


def test_a_source_without_the_token_is_refused(hosts, workload_bin, tmp_path):
    (tmp_path / "token").write_text("between us\n")
    to = _receiver(hosts, tmp_path, "--token-file", tmp_path / "token")
    w = _writer(workload_bin, tmp_path, 16, 10)
    try:
        r = coldsnap("migrate", "-t", w.pid, "--to", to, timeout=120)
        errors = [line for line in r.stderr.splitlines() if line.startswith("coldsnap: ")]
        assert r.returncode != 0 and len(errors) == 1 and "refused the token" in errors[0], r.stderr
        hosts.wait_log("no token presented")
        w.wait_ticks(5)
        w.assert_healthy()
        assert not [fd for fd in os.listdir(f"/proc/{w.pid}/fd") if "userfaultfd" in os.readlink(f"/proc/{w.pid}/fd/{fd}")]
    finally:
        w.stop()
