"""The transplant batches its injected system calls: a process of many areas is rebuilt in
a handful of tracer round trips, not one per call (seize/remote.py `batch`)."""
from __future__ import annotations

import json

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
