"""CRIU 4.2 restores what coldsnap dumped: `coldsnap dump` -> `criu restore -d` -> the
process carries on under its PID, its self-checks (memory patterns, registers, thread ids,
file offsets, signal state) pass and its tick numbers continue from before the dump.

Skipped, with the reason, where the CRIU binary cannot run (criu_peer.need_criu).
"""
from __future__ import annotations

import pytest

from criu_peer import criu_restore, need_criu
from restore_helpers import coldsnap, poke, start_workload, tids

# one thread (memory of every kind, signals, clocks, open files and pipes), then threads
WORKLOADS = ("rst_memory", "rst_signals", "rst_clock", "rst_files", "rst_python", "rst_threads", "iop_threads")


@pytest.mark.parametrize("name", WORKLOADS)
def test_criu_restores_a_coldsnap_dump(name, workload_bin, python_exe, tmp_path):
    need_criu()
    images = tmp_path / "img"
    w = start_workload(name, workload_bin, python_exe, tmp_path)
    try:
        poke(name, w, 1)
        threads = tids(w.pid)
        coldsnap("dump", "-t", w.pid, "-D", images).check()
        w.reap_dumped()
        at_dump = len(w.ticks())
        assert criu_restore(images) == w.pid
        w.adopt_restored()
        assert tids(w.pid) == threads
        w.wait_ticks(5)
        w.assert_healthy()
        assert w.ticks()[at_dump] == at_dump + 1
        poke(name, w, 2)            # handlers, pipe data still work
        w.wait_ticks(2)
        w.assert_healthy()
    finally:
        w.stop()
