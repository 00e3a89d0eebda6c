"""A parent chain deeper than Python's recursion limit (a series of tracked pre-dumps grows
one level a run: one a minute for a day is 1440): opening it, resolving its PE_PARENT runs
through every level and planning a dump on top of it were recursive, a RecursionError
traceback past ~900 levels."""
from __future__ import annotations

import os

from coldsnap.images.chain import PageChain
from coldsnap.images.directory import PARENT_LINK
from predump_helpers import coldsnap, wait_quiet

DEPTH = 1200


def _copy(src, dst, parent: str | None) -> None:
    """DST: the image files of SRC (hard links), its parent link leading to PARENT."""
    os.mkdir(dst)
    for name in os.listdir(src):
        if name != PARENT_LINK:
            os.link(src / name, dst / name)
    if parent is not None:
        os.symlink(parent, dst / PARENT_LINK)


def test_a_chain_deeper_than_python_recursion(spawn, workload_bin, tmp_path):
    w = spawn([workload_bin("mem_pattern"), 256, 8])
    wait_quiet(w.pid)
    base, child = tmp_path / "base", tmp_path / "child"
    coldsnap("pre-dump", "-t", w.pid, "-D", base, check=True)
    assert w.send("write 4 7") == "wrote 4"
    wait_quiet(w.pid)
    coldsnap("pre-dump", "-t", w.pid, "-D", child, "--prev-images-dir", base, check=True)
    deep = tmp_path / "deep"
    deep.mkdir()
    _copy(base, deep / "0", None)
    for i in range(1, DEPTH + 1):       # each level the child again: its PE_PARENT runs go to the bottom
        _copy(child, deep / str(i), f"../{i - 1}")
    top = deep / str(DEPTH)

    run = coldsnap("show", top)
    assert run.returncode == 0, run.stderr[-300:]
    assert f"parent {DEPTH}: {deep / '0'}" in run.stdout
    with PageChain(top, w.pid) as chain, PageChain(child, w.pid) as short:
        chain.check()
        assert chain.covered_ranges().merged() == short.covered_ranges().merged()
        sources = chain.sources()
        assert {lv for lv, *_ in sources} == {0, DEPTH}
        for _, vaddr, nbytes, _ in sources:
            assert chain.lookup(vaddr, nbytes >> 12) == short.lookup(vaddr, nbytes >> 12)
    run = coldsnap("dump", "-t", w.pid, "-D", tmp_path / "final", "--prev-images-dir", top, "--leave-running")
    assert run.returncode == 0, run.stderr[-300:]
    assert coldsnap("show", tmp_path / "final").returncode == 0


def test_a_stream_too_deep_to_send_is_refused_before_the_dump(spawn, workload_bin, tmp_path):
    """A stream carries at most MAX_LEVELS levels; a dump --stream on top of a chain that
    deep was found too deep only once the dump had killed its target (its images left in a
    spool). Now refused first: one line, exit 6, the target running, nothing written."""
    import subprocess
    from coldsnap.images.stream import MAX_LEVELS
    from procs import coldsnap_argv, proc_state
    w = spawn([workload_bin("mem_pattern"), 16, 8])
    wait_quiet(w.pid)
    base = tmp_path / "base"
    coldsnap("pre-dump", "-t", w.pid, "-D", base, "--pre-dump-mode", "live", check=True)
    deep = tmp_path / "deep"
    deep.mkdir()
    _copy(base, deep / "0", None)
    for i in range(1, MAX_LEVELS):
        _copy(base, deep / str(i), f"../{i - 1}")
    top = deep / str(MAX_LEVELS - 1)            # MAX_LEVELS levels: the dump would add one more
    env = dict(os.environ, TMPDIR=str(tmp_path))
    with open(tmp_path / "stream", "wb") as out:
        run = subprocess.run(coldsnap_argv("dump", "-t", w.pid, "--stream", "--prev-images-dir", top),
                             stdout=out, stderr=subprocess.PIPE, text=True, timeout=120, env=env)
    assert run.returncode == 6, run.stderr
    assert run.stderr == (f"coldsnap: {top}: a dump on top of it makes a parent chain of {MAX_LEVELS + 1} "
                          f"levels, at most {MAX_LEVELS} stream\n")
    assert (tmp_path / "stream").stat().st_size == 0
    assert not [p for p in os.listdir(tmp_path) if p.startswith("coldsnap-stream")]
    assert proc_state(w.pid)[0] in ("S", "R")
