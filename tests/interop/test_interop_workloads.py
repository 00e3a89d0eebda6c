"""Single processes across the two tools, both ways (`coldsnap dump` -> `criu restore -d`,
`criu dump` -> `coldsnap restore -d`): the process carries on under its PID with its
thread ids, its self-checks pass (memory patterns, registers, file offsets, signal state;
CRIU's vDSO and vvar records, its sigactions and blocked masks, its xstate components, its
optional images) and its tick numbers continue from before the dump.

Skipped, with the reason, where the CRIU binary cannot run (criu_peer.need_criu).
"""
from __future__ import annotations

import pytest

from criu_peer import DIRECTIONS, dump_with, need_criu, restore_with
from restore_helpers import poke, start_workload, tids

# one thread (memory of every kind, signals, clocks, open files and pipes), then threads;
# rst_memory: CRIU 4.2 dumps its shared anonymous area as a memfd named "/dev/zero"
WORKLOADS = ("rst_memory", "rst_signals", "rst_clock", "rst_files", "rst_python", "rst_threads", "iop_threads")


@pytest.mark.parametrize("name", WORKLOADS)
@pytest.mark.parametrize("direction", DIRECTIONS)
def test_a_workload_across_tools(direction, name, workload_bin, python_exe, tmp_path):
    need_criu()
    images = tmp_path / "img"
    with start_workload(name, workload_bin, python_exe, tmp_path) as w:
        poke(name, w, 1)
        threads = tids(w.pid)
        dump_with(direction, w.pid, images)
        w.reap_dumped()
        at_dump = len(w.ticks())
        assert restore_with(direction, images) in (None, w.pid)
        w.adopt_restored()
        assert tids(w.pid) == threads
        w.wait_ticks(5)
        w.assert_healthy()
        assert w.ticks()[at_dump] == at_dump + 1
        poke(name, w, 2)            # handlers, pipe data still work
        w.wait_ticks(2)
        w.assert_healthy()
