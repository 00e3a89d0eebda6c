"""Trees and pre-dump chains across the two tools: what one dumps, the other restores.

- a tree of four (a child leading its own group, a grandchild its own session, a second
  thread), each process checking its memory pattern and counting on: both directions;
- a parent feeding its child through a pipe, data in flight, the parent's waitpid reaping
  the restored child: both directions;
- a family of three sharing anonymous memory, zombies with their exit status, a process
  stopped by SIGSTOP: both directions;
- a no-freeze pre-dump and a tracked pre-dump by coldsnap and a coldsnap dump on top, of one
  process and of the tree of four, restored by CRIU from the last directory (CRIU follows
  the `parent` links and reads every level's pages).

`criu pre-dump` is not tried: stock CRIU 4.2 insists on soft-dirty bits, which this kernel
lacks (shared/peers/criu-4.2/README).
"""
from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time

import pytest

from criu_peer import DIRECTIONS, criu_restore, dump_with, need_criu, restore_with
from procs import build_workload
from restore_helpers import coldsnap, start_workload
from tree_helpers import wait_for_log as _wait_for
from test_zombies import READY as ZREADY, REAPED as ZREAPED, TICK as ZTICK, _stat as _state, _until
from tree_helpers import ROLES, ids_now, kill_tree, reap_orphans, start_counter_tree, tids_now

@pytest.mark.parametrize("direction", DIRECTIONS)
def test_a_tree_of_four_across_tools(direction, tmp_path):
    need_criu()
    tree = start_counter_tree(tmp_path / "logs")
    restored = False
    try:
        tree.wait_ticks(2)
        before = {r: tree.ids[r] for r in ROLES}
        threads = {r: tids_now(tree.ids[r].pid) for r in ROLES}
        dump_with(direction, tree.proc.pid, tmp_path / "img")
        assert tree.proc.wait(timeout=10) == -signal.SIGKILL
        reap_orphans(pids=tree.pids)
        last = {r: max(tree.ticks(r)) for r in ROLES}
        restore_with(direction, tmp_path / "img")
        restored = True
        for r in ROLES:
            now, want = ids_now(before[r].pid), before[r]
            if r == "m":        # re-parented to the test (a subreaper)
                assert (now.pgid, now.sid) == (want.pgid, want.sid), (r, now, want)
            else:
                assert now == want, (r, now, want)
            assert tids_now(want.pid) == threads[r]
        tree.wait_ticks(3)
        for r in ROLES:
            ticks = tree.ticks(r)
            assert ticks == list(range(1, len(ticks) + 1)), (r, ticks[-10:])
            assert len(ticks) > last[r] + 2
        assert tree.fails() == []
    finally:
        tree.kill_all()
        if not restored:
            tree.proc.wait(timeout=10)
        reap_orphans(pids=tree.pids)


@pytest.mark.parametrize("direction", DIRECTIONS)
def test_a_pipe_between_parent_and_child_across_tools(direction, tmp_path):
    need_criu()
    log, stop = tmp_path / "log", tmp_path / "stop"
    with open(log, "ab") as out:
        proc = subprocess.Popen([str(build_workload("tree_pipe")), str(stop)], stdin=subprocess.DEVNULL,
                                stdout=out, stderr=out, start_new_session=True)
    pids = [proc.pid]
    restored = False
    try:
        text = _wait_for(log, r"^c ok 2000$")
        pids = [int(x) for x in re.search(r"^p ready (\d+) (\d+)$", text, re.M).groups()]
        dump_with(direction, proc.pid, tmp_path / "img")
        assert proc.wait(timeout=10) == -signal.SIGKILL
        reap_orphans(pids=pids)
        seen = len(re.findall(r"^c ok", log.read_text(), re.M))
        restore_with(direction, tmp_path / "img")
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
        kill_tree(proc, pids[::-1], restored)


def test_criu_restores_a_coldsnap_pre_dump_chain(workload_bin, python_exe, tmp_path):
    """nofreeze pre-dump, tracked pre-dump, dump on top: CRIU restores from the top."""
    need_criu()
    with start_workload("rst_memory", workload_bin, python_exe, tmp_path) as w:
        coldsnap("pre-dump", "-t", w.pid, "-D", tmp_path / "1", "--pre-dump-mode", "nofreeze").check()
        w.wait_ticks(2)
        coldsnap("pre-dump", "-t", w.pid, "-D", tmp_path / "2", "--prev-images-dir", tmp_path / "1").check()
        w.wait_ticks(2)
        dump = coldsnap("dump", "-t", w.pid, "-D", tmp_path / "3", "--prev-images-dir", tmp_path / "2",
                        "--json").check()
        assert '"pages_skipped_parent": 0' not in dump.stdout     # the chain is used
        w.reap_dumped()
        at_dump = len(w.ticks())
        assert criu_restore(tmp_path / "3") == w.pid
        w.adopt_restored()
        w.wait_ticks(5)
        w.assert_healthy()
        assert w.ticks()[at_dump] == at_dump + 1


@pytest.mark.parametrize("direction", DIRECTIONS)
def test_shared_anonymous_memory_of_a_family_across_tools(direction, tmp_path):
    """A parent and two children sharing MAP_SHARED|MAP_ANONYMOUS memory (CRIU 4.2 dumps it
    as a memfd named /dev/zero): after the restore they still see each other's writes."""
    from shm_helpers import ROLES, start_family
    need_criu()
    fam = start_family(tmp_path / "logs", "anon")
    restored = False
    try:
        fam.wait_ticks(2)
        dump_with(direction, fam.proc.pid, tmp_path / "img")
        fam.proc.wait(timeout=10)
        reap_orphans(pids=list(fam.pids.values()))
        before = {r: fam.ticks(r)[-1][0] for r in ROLES}
        restore_with(direction, tmp_path / "img")
        restored = True
        fam.wait_ticks(4)
        assert fam.fails() == []
        for r in ROLES:
            ticks = fam.ticks(r)
            assert [n for n, _ in ticks] == list(range(1, len(ticks) + 1)), (r, ticks[-3:])
            last_n, views = ticks[-1]
            slots = views["anon"]
            assert slots[ROLES.index(r)] == last_n > before[r] + 2
            for other in ROLES:       # every process saw the others' writes after the restore
                assert slots[ROLES.index(other)] > before[other], (r, other, slots, before)
    finally:
        fam.cleanup(restored)


@pytest.mark.parametrize("direction", DIRECTIONS)
def test_zombies_across_tools(direction, tmp_path):
    """Two unreaped children (exit 7, SIGTERM) come back as zombies of their parent, whose
    later waitpid gets each one's status (CRIU and coldsnap both write TASK_DEAD + status)."""
    need_criu()
    log = tmp_path / "parent.log"
    proc = subprocess.Popen([str(build_workload("tree_zombies")), str(tmp_path)], stdin=subprocess.DEVNULL,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    pids: list[int] = [proc.pid]
    restored = False
    try:
        m = _until(lambda: ZREADY.search(log.read_text()) if log.exists() else None, "ready")
        parent, z7, zterm = map(int, m.groups())
        pids += [z7, zterm]
        _until(lambda: all(_state(z) == ("Z", parent) for z in (z7, zterm)), "two zombies")
        dump_with(direction, parent, tmp_path / "img")
        assert proc.wait(timeout=10) == -signal.SIGKILL
        reap_orphans(pids=pids)
        last = max(int(n) for n in ZTICK.findall(log.read_text()))
        restore_with(direction, tmp_path / "img")
        restored = True
        assert _state(z7) == ("Z", parent) and _state(zterm) == ("Z", parent)
        _until(lambda: max(int(n) for n in ZTICK.findall(log.read_text())) > last + 3, "ticks")
        ticks = [int(n) for n in ZTICK.findall(log.read_text())]
        assert ticks == list(range(1, len(ticks) + 1))
        os.kill(parent, signal.SIGUSR1)
        reaped = _until(lambda: ZREAPED.findall(log.read_text())
                        if len(ZREAPED.findall(log.read_text())) == 2 else None, "the parent's waitpid")
        got = {int(p): int(s) for p, s in reaped}
        assert os.WIFEXITED(got[z7]) and os.WEXITSTATUS(got[z7]) == 7, got
        assert os.WIFSIGNALED(got[zterm]) and os.WTERMSIG(got[zterm]) == signal.SIGTERM, got
    finally:
        kill_tree(proc, pids, restored)


def test_criu_restores_a_coldsnap_pre_dump_chain_of_a_tree(tmp_path):
    """The tree of four pre-dumped twice by coldsnap (each process tracked on its own) and
    dumped on top: CRIU restores every process from the chain, each counting on."""
    need_criu()
    tree = start_counter_tree(tmp_path / "logs")
    restored = False
    try:
        tree.wait_ticks(2)
        root = tree.proc.pid
        coldsnap("pre-dump", "-t", root, "-D", tmp_path / "1", "--pre-dump-mode", "nofreeze").check()
        tree.wait_ticks(2)
        coldsnap("pre-dump", "-t", root, "-D", tmp_path / "2", "--prev-images-dir", tmp_path / "1").check()
        tree.wait_ticks(2)
        coldsnap("dump", "-t", root, "-D", tmp_path / "3", "--prev-images-dir", tmp_path / "2").check()
        assert tree.proc.wait(timeout=10) == -signal.SIGKILL
        reap_orphans(pids=tree.pids)
        last = {r: max(tree.ticks(r)) for r in ROLES}
        criu_restore(tmp_path / "3")
        restored = True
        tree.wait_ticks(3)
        for r in ROLES:
            ticks = tree.ticks(r)
            assert ticks == list(range(1, len(ticks) + 1)), (r, ticks[-10:])
            assert len(ticks) > last[r] + 2
        assert tree.fails() == []
    finally:
        tree.kill_all()
        if not restored:
            tree.proc.wait(timeout=10)
        reap_orphans(pids=tree.pids)


COUNTER = """
import sys, time
n = 0
while True:
    n += 1
    open(sys.argv[1], "w").write(str(n))
    time.sleep(0.01)
"""


@pytest.mark.parametrize("direction", DIRECTIONS)
def test_a_stopped_process_stays_stopped_across_tools(direction, tmp_path):
    """A process dumped while stopped (SIGSTOP) comes back stopped, and counts on after
    SIGCONT (task_state 3 and the stop signal, as both tools write them)."""
    need_criu()
    count = tmp_path / "count"
    proc = subprocess.Popen([sys.executable, "-c", COUNTER, str(count)], stdin=subprocess.DEVNULL,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    pid, restored = proc.pid, False
    try:
        _until(lambda: count.exists() and count.read_text(), "a first count")
        os.kill(pid, signal.SIGSTOP)
        _until(lambda: (_state(pid) or ("",))[0] == "T", "the stop")
        dump_with(direction, pid, tmp_path / "img")
        assert proc.wait(timeout=10) == -signal.SIGKILL
        reap_orphans(pids=[pid])
        restore_with(direction, tmp_path / "img")
        restored = True
        time.sleep(0.2)
        assert _state(pid)[0] == "T", "the restored process must stay stopped"
        frozen = count.read_text()
        time.sleep(0.1)
        assert count.read_text() == frozen
        os.kill(pid, signal.SIGCONT)
        _until(lambda: count.read_text() not in ("", frozen), "counting after SIGCONT")
    finally:
        kill_tree(proc, [pid], restored)
