"""coldsnap restores what CRIU 4.2 dumped: `criu dump` -> `coldsnap restore -d` -> the
process carries on under its PID with its self-checks passing (CRIU's vDSO and vvar
records, its sigactions and blocked masks, its xstate components, its optional images).

Skipped, with the reason, where the CRIU binary cannot run (criu_peer.need_criu).
"""
from __future__ import annotations

import pytest

from criu_peer import criu_dump, need_criu
from restore_helpers import coldsnap, poke, start_workload, tids

# rst_memory: CRIU 4.2 dumps its shared anonymous area as a memfd named "/dev/zero"
WORKLOADS = ("rst_memory", "rst_signals", "rst_clock", "rst_files", "rst_python", "rst_threads", "iop_threads")


@pytest.mark.parametrize("name", WORKLOADS)
def test_coldsnap_restores_a_criu_dump(name, workload_bin, python_exe, tmp_path):
    need_criu()
    images = tmp_path / "img"
    w = start_workload(name, workload_bin, python_exe, tmp_path)
    try:
        poke(name, w, 1)
        threads = tids(w.pid)
        criu_dump(w.pid, images)
        w.reap_dumped()
        at_dump = len(w.ticks())
        coldsnap("restore", "-D", images, "-d").check()
        w.adopt_restored()
        assert tids(w.pid) == threads
        w.wait_ticks(5)
        w.assert_healthy()
        assert w.ticks()[at_dump] == at_dump + 1
        poke(name, w, 2)
        w.wait_ticks(2)
        w.assert_healthy()
    finally:
        w.stop()
