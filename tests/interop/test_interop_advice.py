"""VMA advice and flags across the two tools (corner_advice.c: one area per madvise advice,
MAP_LOCKED, mlock, MAP_GROWSDOWN): what one dumps, the other restores with every area's
VmFlags as before, and the program's own checks (data, DONTFORK and WIPEONFORK across a
fork) pass. Skipped, with the reason, where the CRIU binary cannot run."""
from __future__ import annotations

import pytest

from criu_peer import DIRECTIONS, dump_with, need_criu, restore_with
from test_corners import ADVICE_CODES, _vm_flags, check_round, start_corner


@pytest.mark.parametrize("direction", DIRECTIONS)
def test_vma_advice_and_flags_across_tools(direction, tmp_path):
    need_criu()
    with start_corner("corner_advice", tmp_path) as w:
        areas = {ln.split()[1]: int(ln.split()[2], 16) for ln in w.lines() if ln.startswith("area ")}
        before = {name: _vm_flags(w.pid, at) for name, at in areas.items()}
        assert before == {name: {code} for name, code in ADVICE_CODES.items()}
        dump_with(direction, w.pid, tmp_path / "img")
        w.reap_dumped()
        restore_with(direction, tmp_path / "img")
        w.adopt_restored()
        assert {name: _vm_flags(w.pid, at) for name, at in areas.items()} == before
        check_round(w)
