"""Pages a tracked pre-dump had to skip are not in its images: the next pre-dump, or the final
dump, on that chain must save them, although nothing wrote them since (the tracking says
"clean", the parent says "not here"). A page is left to the parent only if the parent holds it.

The parent skips them for real: the target makes a tracked area PROT_NONE while the first
pre-dump drains (after its plan), then makes it readable again without writing a byte."""
from __future__ import annotations

import json

import pytest

from coldsnap.images.chain import PageChain
from coldsnap.images.directory import ImageDir
from coldsnap.images.pages import PagemapReader
from coldsnap.kernel.features import probe

from predump_helpers import PG, coldsnap, command_when_draining, image_pages, wait_quiet

FILLER = 0x100000000000
VICTIM = 0x200000000000
NR_VICTIM = 64
B = VICTIM + (NR_VICTIM + 1) * PG          # the area the target hides: mem_pattern's B


@pytest.fixture
def hidden_in_parent(spawn, workload_bin, tmp_path):
    """(workload, parent dir): a tracked pre-dump that skipped all of B, B readable again."""
    if not probe().uffd_wp_async:
        pytest.skip("this kernel has no asynchronous userfaultfd write-protect (tracked pre-dumps)")
    w = spawn([workload_bin("mem_pattern"), 65536, NR_VICTIM])
    wait_quiet(w.pid)
    parent = tmp_path / "1"
    # a one-page buffer keeps the drain in the filler (lowest addresses) while B is hidden
    with command_when_draining(w, tmp_path, b"hide\n"):
        coldsnap("pre-dump", "-t", w.pid, "-D", parent, "--track-mem", "uffd",
                 "--buffer-size", "4k", check=True)
    assert w.proc.stdout.readline().strip() == b"hidden"
    with PagemapReader(ImageDir.open(parent), w.pid) as r:
        assert r.skipped.pairs() == [(B, B + NR_VICTIM * PG)], "B was not hidden during the drain"
    assert w.send("unhide") == "shown"
    wait_quiet(w.pid)
    return w, parent


def _memory(pid: int, start: int, nr_pages: int) -> bytes:
    with open(f"/proc/{pid}/mem", "rb", buffering=0) as mem:
        mem.seek(start)
        return mem.read(nr_pages * PG)


def _assert_b_saved_and_the_rest_left_to_the_parent(run, where, pid: int) -> None:
    stats = json.loads(run.stdout)["stats"]
    assert stats["track_backend"] == "uffd"
    pages = image_pages(where, pid)
    want = _memory(pid, B, NR_VICTIM)
    missing = [i for i in range(NR_VICTIM) if pages.get(B + i * PG) != want[i * PG:(i + 1) * PG]]
    assert missing == [], f"{len(missing)} pages of B not saved"
    # the tracking worked: the unwritten filler and the other victims stay in the parent
    def in_parent(a: int) -> bool:
        return FILLER <= a < VICTIM or (VICTIM <= a < VICTIM + 4 * (NR_VICTIM + 1) * PG
                                        and not B <= a < B + NR_VICTIM * PG)
    assert [hex(a) for a in pages if in_parent(a)] == []
    with PageChain(where, pid) as chain:
        chain.check()
        for start in (FILLER, VICTIM, B):
            assert chain.lookup(start, NR_VICTIM) == _memory(pid, start, NR_VICTIM), hex(start)


def test_a_tracked_pre_dump_saves_what_its_parent_skipped(hidden_in_parent, tmp_path):
    w, parent = hidden_in_parent
    run = coldsnap("pre-dump", "--json", "-t", w.pid, "-D", tmp_path / "2", "--prev-images-dir", parent,
                   "--track-mem", "uffd", check=True)
    _assert_b_saved_and_the_rest_left_to_the_parent(run, tmp_path / "2", w.pid)


def test_a_final_dump_on_a_tracked_chain_saves_what_the_chain_skipped(hidden_in_parent, tmp_path):
    w, parent = hidden_in_parent
    run = coldsnap("dump", "--json", "-t", w.pid, "-D", tmp_path / "2", "--prev-images-dir", parent,
                   "--leave-running", check=True)
    _assert_b_saved_and_the_rest_left_to_the_parent(run, tmp_path / "2", w.pid)
    assert json.loads(run.stdout)["stats"]["uffd_fd"] == -1     # the dump took the tracking out
