"""A blank process, once set up, waits in a page of code of ours (restore/blank.py Idle)
having unmapped the rest of its memory: the inherited interpreter is gone before the
transplant, but for the vDSO, the rseq area the kernel writes to and the areas it keeps."""
from __future__ import annotations

import time

from coldsnap.kernel.libc import own_rseq_area
from coldsnap.kernel.procfs import read_maps
from coldsnap.restore.blank import Idle, kill_blank, make_blank_tree
from coldsnap.restore.images import load_tree

from restore_helpers import coldsnap, start_workload


def _settled(pid: int) -> list:
    """The maps of PID once it sits in pause() (its unmapping done)."""
    deadline = time.monotonic() + 10
    while True:
        with open(f"/proc/{pid}/syscall") as f:
            if f.read().split()[0] == "34":
                return read_maps(pid)
        assert time.monotonic() < deadline, "the blank process never got to its pause()"
        time.sleep(0.005)


def test_a_blank_process_waits_with_its_memory_unmapped(workload_bin, python_exe, tmp_path):
    if own_rseq_area() is None:
        import pytest
        pytest.skip("this libc does not say where its rseq area is: no Idle")
    with start_workload("rst_python", workload_bin, python_exe, tmp_path) as w:
        coldsnap("dump", "-t", w.pid, "-D", tmp_path / "img").check()
        w.reap_dumped()
        pid = w.pid
    images = load_tree(tmp_path / "img")
    assert make_blank_tree(images, shell_job=False) == pid
    try:
        maps = _settled(pid)
    finally:
        kill_blank(pid)
    names = [m.path for m in maps if m.path.startswith("[")]
    assert "[vdso]" in names and "[heap]" not in names and "[stack]" not in names
    files = [m.path for m in maps if m.path and not m.path.startswith("[")]
    assert files == [], files                       # no library, no interpreter
    mine = sum(m.end - m.start for m in maps if not m.path)
    assert mine <= 4 * 4096, [(hex(m.start), hex(m.end), m.perms) for m in maps]    # its page, the rseq area's


def test_no_idle_where_the_libc_does_not_say_where_rseq_is(monkeypatch):
    from coldsnap.restore import blank
    monkeypatch.setattr(blank, "own_rseq_area", lambda: None)
    assert Idle.make([]) is None
