"""Memory built ahead by migrate-receive's restore worker (restore/prebuild.py), driven here
without the network: local tracked pre-dumps and a final dump on top, each session handed
to a real worker as migrate-receive hands them, then its restore. The restored process
checks its own memory; areas whose layout changed between iterations, a tree and an area
colliding with the worker's own mappings come back right."""
from __future__ import annotations

import signal
import time
from pathlib import Path

import pytest

from coldsnap.dump.dump import dump
from coldsnap.dump.iterate import PreDumpSeries
from coldsnap.kernel.procfs import read_maps
from coldsnap.restore.receive import Restorer
from restore_helpers import LogWorkload
from tree_helpers import ROLES, ids_now, reap_orphans, start_counter_tree

NP = 256 * 4096


def _migrate_locally(w: LogWorkload, tmp: Path, *, iterations: int = 2, between=lambda i: None,
                     prebuild: bool = True, worker: Restorer | None = None, apply_final: bool = True) -> dict:
    """Pre-dumps and a final dump of W in TMP, applied by a restore worker as they are
    stored; then the worker restores W and answers."""
    answer = _sessions_then_restore(w.pid, tmp, iterations, between, w.reap_dumped, worker or Restorer(prebuild),
                                    apply_final)
    w.adopt_restored()
    return answer


def _sessions_then_restore(pid: int, tmp: Path, iterations: int, between, reap, worker: Restorer,
                           apply_final: bool = True) -> dict:
    tmp.mkdir()
    try:
        with PreDumpSeries(pid, tmp, track="uffd", park=True) as series:
            for i in range(1, iterations + 1):
                series.step(tmp / str(i))
                worker.apply(tmp / str(i))
                between(i)
            prev = series.prev
        dump(pid, tmp / "final", prev_images_dir=prev)
        if apply_final:
            worker.apply(tmp / "final")
        reap()
        answer = worker.restore(tmp / "final")
    finally:
        worker.close()
    assert "pid" in answer, answer
    return answer


def _full_check(w: LogWorkload, line: str) -> None:
    w.wait_ticks(3)
    n = w.count_lines(line)
    w.signal(signal.SIGUSR1)
    w.wait_for(line, lambda: w.count_lines(line) > n)
    w.assert_healthy()


def test_a_writer_comes_back_whole_from_memory_built_ahead(workload_bin, tmp_path):
    with LogWorkload([workload_bin("mig_writer"), 32, 20], tmp_path / "w.log") as w:
        w.wait_ready()
        w.wait_ticks(3)
        answer = _migrate_locally(w, tmp_path / "img", iterations=3)
        assert answer["pid"] == w.pid
        assert answer["prebuilt_bytes"] >= 32 << 20      # the big area at least was built ahead
        _full_check(w, f"full check ok {(32 << 20) // 4096}")


def test_without_prebuild_the_restore_writes_everything(workload_bin, tmp_path):
    with LogWorkload([workload_bin("mig_writer"), 16, 20], tmp_path / "w.log") as w:
        w.wait_ready()
        answer = _migrate_locally(w, tmp_path / "img", prebuild=False)
        assert answer["prebuilt_bytes"] == 0
        _full_check(w, f"full check ok {(16 << 20) // 4096}")


def test_areas_not_brought_up_to_date_by_the_session_restored_are_not_kept(workload_bin, tmp_path):
    with LogWorkload([workload_bin("mig_writer"), 16, 20], tmp_path / "w.log") as w:
        w.wait_ready()
        answer = _migrate_locally(w, tmp_path / "img", apply_final=False)   # the final delta never applied
        assert answer["prebuilt_bytes"] == 0
        _full_check(w, f"full check ok {(16 << 20) // 4096}")


def _area_bytes(answer: dict, lo: int, hi: int) -> int:
    return sum(min(e, hi) - max(s, lo) for s, e in answer["prebuilt_areas"] if s < hi and e > lo)


def test_areas_mprotected_moved_unmapped_split_or_zapped_between_iterations(workload_bin, tmp_path):
    with LogWorkload([workload_bin("prebuild_layout")], tmp_path / "w.log") as w:
        w.wait_ready()
        w.wait_ticks(2)

        def change(i: int) -> None:
            if i == 1:
                w.signal(signal.SIGUSR2)
                w.wait_line("layout changed")
        answer = _migrate_locally(w, tmp_path / "img", iterations=2, between=change)
        assert answer["prebuilt_bytes"] >= 6 * NP
        _full_check(w, "full check ok")
        maps = {(m.start, m.end): m for m in read_maps(w.pid)}
        assert any(m.perms.startswith("r--p") and m.end - m.start == NP for m in maps.values())   # B


def _library_spot(pid: int) -> int:
    """The start of a shared library's mapping of 1 MiB or more in process PID (loaded by
    now or soon; never unmapped): a spot of the worker's own, most likely free in the
    workload (another process, another random layout)."""
    deadline = time.monotonic() + 30
    while True:
        spots = [m for m in read_maps(pid) if ".so" in m.path and m.end - m.start >= NP]
        if spots:
            return spots[0].start
        assert time.monotonic() < deadline, "the worker maps no library of 1 MiB"
        time.sleep(0.05)


def test_an_area_colliding_with_the_workers_own_mappings_is_written_at_restore(workload_bin, tmp_path):
    worker = Restorer()
    at = _library_spot(worker.proc.pid)
    w = LogWorkload([workload_bin("prebuild_layout"), f"{at:x}"], tmp_path / "w.log")
    try:
        w.wait_for("ready", lambda: any(ln in ("ready", "at failed") for ln in w.lines()))
        if "at failed" in w.lines():
            worker.close()
            pytest.skip("the worker's spot is taken in the workload too")
        answer = _migrate_locally(w, tmp_path / "img", worker=worker)
        assert answer["prebuilt_bytes"] >= 5 * NP            # the others were built ahead
        assert _area_bytes(answer, at, at + NP) == 0          # not the colliding one
        _full_check(w, "full check ok")
    finally:
        worker.close()
        w.stop()


def test_a_tree_migrates_with_the_roots_memory_built_ahead(tmp_path):
    tree = start_counter_tree(tmp_path / "logs")
    restored = False
    try:
        tree.wait_ticks(2)
        before = {r: tree.ids[r] for r in ROLES}

        def reap() -> None:
            assert tree.proc.wait(timeout=10) == -signal.SIGKILL
            reap_orphans(pids=tree.pids)
        answer = _sessions_then_restore(tree.proc.pid, tmp_path / "img", 2, lambda i: None, reap, Restorer())
        restored = True
        assert answer["pid"] == tree.proc.pid and answer["prebuilt_bytes"] >= 1 << 20
        for r in ROLES:
            assert ids_now(before[r].pid).pid == before[r].pid
        tree.wait_ticks(3)
        for r in ROLES:   # each counter goes on from where the dump left it
            ticks = tree.ticks(r)
            assert ticks == list(range(1, len(ticks) + 1)), (r, ticks[-10:])
        assert tree.fails() == []
        # the root's areas built ahead were MADV_DONTFORK in its blank process: not any more
        flags = _vm_flags(tree.proc.pid)
        for s, e in answer["prebuilt_areas"]:
            assert "dc" not in flags[s], hex(s)
    finally:
        tree.kill_all()
        if not restored:
            tree.proc.wait(timeout=10)
        reap_orphans(pids=tree.pids)


def _vm_flags(pid: int) -> dict[int, list[str]]:
    """start of each area -> its VmFlags (smaps)."""
    out, start = {}, None
    for line in Path(f"/proc/{pid}/smaps").read_text().splitlines():
        head = line.split()[0]
        if "-" in head and not head.endswith(":"):
            start = int(head.split("-")[0], 16)
        elif head == "VmFlags:":
            out[start] = line.split()[1:]
    return out
