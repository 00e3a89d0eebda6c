"""The round-trip workloads are right on their own: they get ready, tick without a FAIL
line, and answer their signals. (If one of these fails, a round-trip failure means nothing.)"""
from __future__ import annotations

import pytest

from restore_helpers import ALL_WORKLOADS, LogWorkload, poke, start_workload, tids


@pytest.mark.parametrize("name", ALL_WORKLOADS)
def test_workload_ticks_and_answers(name, workload_bin, python_exe, tmp_path):
    with start_workload(name, workload_bin, python_exe, tmp_path, ticks=5) as w:
        for round_ in (1, 2):
            poke(name, w, round_)
            w.wait_ticks(3)
        w.assert_healthy()
        assert len(w.ticks()) >= 5


def test_threads_workload_has_nine_threads(workload_bin, python_exe, tmp_path):
    with start_workload("rst_threads", workload_bin, python_exe, tmp_path, ticks=1) as w:
        assert len(tids(w.pid)) == 9
        assert tids(w.pid)[0] == w.pid


def test_python_workload_has_three_threads(workload_bin, python_exe, tmp_path):
    with start_workload("rst_python", workload_bin, python_exe, tmp_path, ticks=1) as w:
        assert len(tids(w.pid)) == 3


def test_files_workload_notices_a_moved_offset(workload_bin, python_exe, tmp_path):
    """The checks can fail: truncating the O_APPEND file from outside shows as FAIL lines."""
    with start_workload("rst_files", workload_bin, python_exe, tmp_path, ticks=2) as w:
        (tmp_path / "files" / "append.log").write_bytes(b"")   # size no longer what it expects
        w.wait_for("a FAIL line", lambda: bool(w.failures()))
        assert any("append.log" in ln for ln in w.failures())


def test_log_workload_sees_a_restarted_counter(tmp_path):
    """assert_healthy rejects tick numbers that restart (what a restore from scratch shows)."""
    log = tmp_path / "fake.log"
    with LogWorkload(["sh", "-c", "printf 'ready\\ntick 1 ok\\ntick 2 ok\\ntick 1 ok\\n'; exec sleep 5"], log) as w:
        w.wait_for("three ticks", lambda: len(w.ticks()) == 3)
        with pytest.raises(AssertionError, match="do not continue"):
            w.assert_healthy()
