"""Shared memory across a restored tree: each object made once, mapped again by every process
that had it, so that the processes go on seeing each other's writes."""
from __future__ import annotations

import os

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


def test_anonymous_and_dev_shm_memory_inherited_across_fork(tmp_path):
    fam = start_family(tmp_path / "logs", "anon", "posix")
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


def _sysv_line(kind: str, key: int) -> list[str] | None:
    for line in open(f"/proc/sysvipc/{kind}").read().splitlines()[1:]:
        f = line.split()
        if int(f[0]) & 0xFFFFFFFF == key:
            return f
    return None


def test_sysv_segment_and_semaphores_keep_ids_keys_and_values(tmp_path):
    fam = start_family(tmp_path / "logs", "sysv", "anon")
    restored = False
    try:
        fam.wait_ticks(2)
        shm, sem = _sysv_line("shm", fam.key), _sysv_line("sem", fam.key)
        assert shm and sem
        _dump_restore(fam, tmp_path / "img")
        restored = True
        before = {r: fam.ticks(r)[-1][0] for r in ROLES}
        shm2, sem2 = _sysv_line("shm", fam.key), _sysv_line("sem", fam.key)
        assert shm2[:4] == shm[:4] and shm2[6:9] == shm[6:9]      # key, id, mode, size; nattch, uid, gid
        assert sem2[:6] == sem[:6]                                # key, id, mode, nsems, uid, gid
        _assert_shared_after(fam, before)                         # sem 1 still 7, sem 0 a working lock
    finally:
        fam.cleanup(restored)


def test_memfd_fds_mappings_and_seals(tmp_path):
    """The counters memfd (fd 50 in p and b, mapping only in a) and the sealed one (fd 51,
    read-only mapping) come back once each: same inode in every process, name, size,
    contents, seals (checked by the workload every tick), fd offsets."""
    fam = start_family(tmp_path / "logs", "memfd")
    restored = False
    try:
        fam.wait_ticks(2)
        before_links = {r: os.readlink(f"/proc/{fam.pids[r]}/fd/50") for r in ("p", "b")}
        _dump_restore(fam, tmp_path / "img")
        restored = True
        before = {r: fam.ticks(r)[-1][0] for r in ROLES}
        maps = {r: shared_inodes(fam.pids[r]) for r in ROLES}
        for name in ("/memfd:cs-counters (deleted)", "/memfd:cs-sealed (deleted)"):
            assert len({maps[r][name] for r in ROLES}) == 1, (name, maps)
        for r in ("p", "b"):
            assert os.readlink(f"/proc/{fam.pids[r]}/fd/50") == before_links[r]
            assert os.stat(f"/proc/{fam.pids[r]}/fd/50").st_ino == maps["a"]["/memfd:cs-counters (deleted)"]
            assert os.stat(f"/proc/{fam.pids[r]}/fd/51").st_size == 16
        assert not os.path.exists(f"/proc/{fam.pids['a']}/fd/50")
        _assert_shared_after(fam, before)
    finally:
        fam.cleanup(restored)
