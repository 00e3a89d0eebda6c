"""Shared memory across a restored tree: each object made once, mapped again by every process
that had it, so that the processes go on seeing each other's writes."""
from __future__ import annotations

from procs import coldsnap
from shm_helpers import ROLES, Family, shared_inodes, start_family
from tree_helpers import reap_orphans


def _dump_restore(fam: Family, img) -> None:
    coldsnap("dump", "-t", fam.proc.pid, "-D", img, check=True)
    fam.proc.wait(timeout=10)
    reap_orphans(pids=list(fam.pids.values()))
    coldsnap("restore", "-D", img, "-d", check=True)


def _assert_shared_after(fam: Family, before: dict[str, int]) -> None:
    """Every process went on from its own tick and saw the others' slots grow past what
    any of them had written before the dump, in every region."""
    fam.wait_ticks(4)
    assert fam.fails() == []
    for r in ROLES:
        ticks = fam.ticks(r)
        assert [n for n, _ in ticks] == list(range(1, len(ticks) + 1)), (r, ticks[-3:])
        last_n, views = ticks[-1]
        assert last_n > before[r] + 2
        for kind in fam.kinds:
            slots = views[kind]
            assert slots[ROLES.index(r)] == last_n
            for other in ROLES:
                assert slots[ROLES.index(other)] > before[other], (r, kind, other, slots, before)


def test_anonymous_shared_memory_inherited_across_fork(tmp_path):
    fam = start_family(tmp_path / "logs", "anon")
    restored = False
    try:
        fam.wait_ticks(2)
        _dump_restore(fam, tmp_path / "img")
        restored = True
        before = {r: fam.ticks(r)[-1][0] for r in ROLES}
        inodes = {r: shared_inodes(fam.pids[r])["/dev/zero (deleted)"] for r in ROLES}
        assert len(set(inodes.values())) == 1, inodes       # one object, mapped by all three
        _assert_shared_after(fam, before)
    finally:
        fam.cleanup(restored)
