"""The transplant batches its injected system calls: a process of many areas is rebuilt in
a handful of tracer round trips, not one per call (seize/remote.py `batch`)."""
from __future__ import annotations

import json
import os

import pytest

from coldsnap.kernel.procfs import read_maps

from restore_helpers import coldsnap, start_workload


def test_many_areas_few_round_trips(workload_bin, python_exe, tmp_path):
    with start_workload("rst_python", workload_bin, python_exe, tmp_path) as w:
        coldsnap("dump", "-t", w.pid, "-D", tmp_path / "img").check()
        w.reap_dumped()
        res = json.loads(coldsnap("restore", "-D", tmp_path / "img", "-d", "--json").check().stdout)
        w.adopt_restored()
        areas = len(read_maps(w.pid))
        w.wait_ticks(2)
        w.assert_healthy()
    print(f"{areas} areas: {res['injected_calls']} calls in {res['round_trips']} round trips")
    assert areas > 50
    assert res["injected_calls"] > areas            # an mmap each, and more
    assert res["round_trips"] <= 16                 # per call, it would be more than `areas`


def test_a_thread_failing_its_state_leaves_nothing(workload_bin, python_exe, tmp_path, monkeypatch):
    """A failure in a new thread's state (its session open, the leader's batches run): the
    restore raises it at once, the half-built process is killed and reaped, no thread of it
    left traced (its leader's reaping would wait for ever)."""
    from coldsnap.restore import transplant
    from coldsnap.restore.restore import restore

    with start_workload("rst_python", workload_bin, python_exe, tmp_path) as w:
        coldsnap("dump", "-t", w.pid, "-D", tmp_path / "img").check()
        w.reap_dumped()
        pid = w.pid
    real = transplant.Transplant._thread_state

    def failing(self, rc, core, stage):
        if rc.tid != self.pid:
            raise RuntimeError("a thread's state failed")
        return real(self, rc, core, stage)

    monkeypatch.setattr(transplant.Transplant, "_thread_state", failing)
    with pytest.raises(RuntimeError, match="a thread's state failed"):
        restore(tmp_path / "img", detach=True)
    assert not os.path.exists(f"/proc/{pid}")


def test_a_thread_id_taken_meanwhile_leaves_nothing(workload_bin, python_exe, tmp_path, monkeypatch):
    """The threads are made in one batch: when one's TID is taken by then (by another process,
    after the images were checked), the restore says which, and the threads made before it
    are held and go with the killed process (none left traced)."""
    import signal
    import time

    from coldsnap.errors import TargetError
    from coldsnap.kernel.clone import fork_with_pid
    from coldsnap.restore import transplant
    from coldsnap.restore.restore import restore

    with start_workload("rst_python", workload_bin, python_exe, tmp_path) as w:
        coldsnap("dump", "-t", w.pid, "-D", tmp_path / "img").check()
        w.reap_dumped()
        pid = w.pid
    real = transplant.Transplant._clone_threads
    taker = []

    def taken(self, tids):
        assert len(tids) >= 2
        child = fork_with_pid(tids[-1])
        if child == 0:
            time.sleep(60)
            os._exit(0)
        taker.append(child)
        return real(self, tids)

    monkeypatch.setattr(transplant.Transplant, "_clone_threads", taken)
    try:
        with pytest.raises(TargetError, match=r"^cannot create thread \d+: it is in use$"):
            restore(tmp_path / "img", detach=True)
    finally:
        for child in taker:
            os.kill(child, signal.SIGKILL)
            os.waitpid(child, 0)
    assert taker and not os.path.exists(f"/proc/{pid}")
