"""`coldsnap restore` of a dumped process tree: every process back with its PID, parent,
session and group, its memory and counter; pipes across processes; `wait` in a parent."""
from __future__ import annotations

import os
import signal

import pytest

from procs import coldsnap
from restore_helpers import assert_one_line_error
from tree_helpers import ROLES, ids_now, kill_tree, reap_orphans, start_counter_tree, tids_now
from tree_helpers import wait_for_log as _wait_for


def test_tree_restored_whole(tmp_path):
    tree = start_counter_tree(tmp_path / "logs")
    restored = False
    try:
        tree.wait_ticks(2)
        before = {r: tree.ids[r] for r in ROLES}
        tids = {r: tids_now(tree.ids[r].pid) for r in ROLES}
        assert len(tids["b"]) == 2
        coldsnap("dump", "-t", tree.proc.pid, "-D", tmp_path / "img", check=True)
        assert tree.proc.wait(timeout=10) == -signal.SIGKILL
        reap_orphans(pids=tree.pids)
        last = {r: max(tree.ticks(r)) for r in ROLES}
        coldsnap("restore", "-D", tmp_path / "img", "-d", check=True)
        restored = True
        for r in ROLES:
            now = ids_now(before[r].pid)
            want = before[r]
            if r == "m":     # its parent is the test now (a subreaper), not the one it had
                assert (now.pgid, now.sid) == (want.pgid, want.sid), (r, now, want)
            else:
                assert now == want, (r, now, want)
            assert tids_now(want.pid) == tids[r]
        tree.wait_ticks(3)
        for r in ROLES:   # each counter goes on from where the dump left it, no restart
            ticks = tree.ticks(r)
            assert ticks == list(range(1, len(ticks) + 1)), (r, ticks[-10:])
            assert len(ticks) > last[r] + 2
        assert tree.fails() == []
    finally:
        tree.kill_all()
        if not restored:
            tree.proc.wait(timeout=10)
        reap_orphans(pids=tree.pids)


def test_tree_restore_refused_when_a_pid_is_taken(tmp_path):
    tree = start_counter_tree(tmp_path / "logs")
    try:
        tree.wait_ticks(1)
        coldsnap("dump", "-t", tree.proc.pid, "-D", tmp_path / "img", "--leave-running", check=True)
        run = coldsnap("restore", "-D", tmp_path / "img", "-d")
        assert_one_line_error(run)
        assert "in use" in run.stderr
    finally:
        tree.kill_all()
        tree.proc.wait(timeout=10)
        reap_orphans(pids=tree.pids)


def test_pipe_between_parent_and_child_and_wait(tmp_path):
    """Data in flight in the pipe and the shared log come back once; the parent's waitpid
    reaps the restored child."""
    import subprocess
    from procs import build_workload
    log, stop = tmp_path / "log", tmp_path / "stop"
    with open(log, "ab") as out:
        proc = subprocess.Popen([str(build_workload("tree_pipe")), str(stop)], stdin=subprocess.DEVNULL,
                                stdout=out, stderr=out)
    pids = [proc.pid]
    restored = False
    try:
        import re
        text = _wait_for(log, r"^c ok 2000$")
        pids = [int(x) for x in re.search(r"^p ready (\d+) (\d+)$", text, re.M).groups()]
        coldsnap("dump", "-t", proc.pid, "-D", tmp_path / "img", check=True)
        assert proc.wait(timeout=10) == -signal.SIGKILL
        reap_orphans(pids=pids)
        seen = len(re.findall(r"^c ok", log.read_text(), re.M))
        coldsnap("restore", "-D", tmp_path / "img", "-d", check=True)
        restored = True
        assert ids_now(pids[1]).ppid == pids[0]
        _wait_for(log, rf"^c ok {(seen + 2) * 1000}$")
        stop.touch()
        text = _wait_for(log, r"^p reaped")
        sent = int(re.search(r"^p reaped 7 sent (\d+)$", text, re.M).group(1))
        assert re.search(rf"^c done {sent}$", text, re.M), text[-300:]
        assert "FAIL" not in text, text
        oks = [int(n) for n in re.findall(r"^c ok (\d+)$", text, re.M)]
        assert oks == [1000 * i for i in range(1, len(oks) + 1)]     # none lost, none repeated
        reap_orphans(pids=pids)
        assert not [p for p in pids if os.path.exists(f"/proc/{p}")]
    finally:
        kill_tree(proc, pids[::-1], restored)     # children first


@pytest.mark.parametrize("role", ["b", "a"])
def test_failed_tree_restore_leaves_nothing(tmp_path, role):
    """A file missing at restore: refused in one line before any process exists; gone after
    the checks (the blank process of ROLE fails on it), every blank process made is killed.
    b is made last; a says "done" to m once a1 exists and fails on its own table while m
    goes on (makes b, rebuilds its own)."""
    from coldsnap.errors import CsError
    from coldsnap.restore.blank import make_blank_tree
    from coldsnap.restore.images import load_tree
    tree = start_counter_tree(tmp_path / "logs")
    try:
        tree.wait_ticks(1)
        coldsnap("dump", "-t", tree.proc.pid, "-D", tmp_path / "img", check=True)
        assert tree.proc.wait(timeout=10) == -signal.SIGKILL
        reap_orphans(pids=tree.pids)
        images = load_tree(tmp_path / "img")
        (tmp_path / "logs" / f"{role}.log").unlink()       # its fd 1
        run = coldsnap("restore", "-D", tmp_path / "img", "-d")
        assert_one_line_error(run)
        assert f"{role}.log" in run.stderr, run.stderr
        with pytest.raises(CsError, match=f"{role}.log"):
            make_blank_tree(images, shell_job=False)     # m, a and a1 exist by then
        reap_orphans(pids=tree.pids)
        assert not [p for p in tree.pids if ids_now(p)], "a process of a failed restore is left"
    finally:
        tree.kill_all()
        reap_orphans(pids=tree.pids)


PIPELINE = r"""
exec 9<>"$1"
i=1
while :; do
    printf '%d\n' $i
    i=$((i + 1))
    if ((i % 50 == 0)); then read -t 0.01 -u 9; fi
done | cat | awk '{ if ($1 != n + 1 && n) print "FAIL", $1, n; n = $1; if (n % 1000 == 0) { print "ok", n; fflush() } }'
"""


def test_shell_pipeline(tmp_path):
    """bash -c 'producer | filter | consumer': the lines go on after restore, none lost or
    repeated (pipes between siblings, the log every process shares, bash waiting for all)."""
    import re
    import subprocess
    fifo, log = tmp_path / "sleep.fifo", tmp_path / "log"
    os.mkfifo(fifo)
    with open(log, "ab") as out:
        proc = subprocess.Popen(["bash", "-c", PIPELINE, "pipeline", str(fifo)], stdin=subprocess.DEVNULL,
                                stdout=out, stderr=out)
    pids = [proc.pid]
    restored = False
    try:
        _wait_for(log, r"^ok 3000$")
        pids += [int(c) for c in open(f"/proc/{proc.pid}/task/{proc.pid}/children").read().split()]
        assert len(pids) == 4, pids
        coldsnap("dump", "-t", proc.pid, "-D", tmp_path / "img", check=True)
        assert proc.wait(timeout=10) == -signal.SIGKILL
        reap_orphans(pids=pids)
        seen = len(re.findall(r"^ok", log.read_text(), re.M))
        coldsnap("restore", "-D", tmp_path / "img", "-d", check=True)
        restored = True
        text = _wait_for(log, rf"^ok {(seen + 3) * 1000}$")
        assert "FAIL" not in text, text[-300:]
        oks = [int(n) for n in re.findall(r"^ok (\d+)$", text, re.M)]
        assert oks[:seen + 3] == [1000 * i for i in range(1, seen + 4)]
    finally:
        kill_tree(proc, pids, restored)


def test_listening_socket_shared_by_workers(tmp_path, python_exe):
    """A master and two workers accepting on one inherited listening socket: after restore
    both workers serve on it, and the master's wait() reaps a worker that ends."""
    import re
    import socket
    import subprocess
    from pathlib import Path
    log = tmp_path / "log"
    script = Path(__file__).resolve().parent.parent / "workloads" / "tree_listen.py"
    with open(log, "ab") as out:
        proc = subprocess.Popen([python_exe, str(script)], stdin=subprocess.DEVNULL, stdout=out, stderr=out)
    pids = [proc.pid]
    restored = False
    try:
        port, *workers = map(int, re.search(r"^ready (\d+) (\d+) (\d+)$", _wait_for(log, r"^ready "), re.M).groups())
        pids += workers
        coldsnap("dump", "-t", proc.pid, "-D", tmp_path / "img", check=True)
        assert proc.wait(timeout=10) == -signal.SIGKILL
        reap_orphans(pids=pids)
        coldsnap("restore", "-D", tmp_path / "img", "-d", check=True)
        restored = True
        # the first connection keeps its worker busy, so the second must reach the other one
        # (20 connections in a row could all go to one worker on a loaded machine)
        with socket.create_connection(("127.0.0.1", port), timeout=10) as first, \
                socket.create_connection(("127.0.0.1", port), timeout=10) as second:
            seen = {c.makefile().readline().strip() for c in (first, second)}
        assert seen == {f"worker {w}" for w in workers}
        os.kill(workers[0], signal.SIGTERM)
        _wait_for(log, rf"^reaped {workers[0]} {signal.SIGTERM}$")
    finally:
        kill_tree(proc, pids, restored)
