"""PageChain across parent directories, coverage, chain errors, dedup punching, disk usage."""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from coldsnap.errors import ImageError
from coldsnap.images import chain as chain_mod
from coldsnap.images.chain import PageChain, disk_usage, punch_superseded
from coldsnap.images.directory import ImageDir, new_inventory
from imgtools import PAGE, PID, make_dir, page_bytes

B = 0x10000  # base address of the test layouts


def pages(tags_by_page: list[tuple[int, int]]) -> bytes:
    return b"".join(page_bytes(B + i * PAGE, 1, tag) for i, tag in tags_by_page)


@pytest.fixture
def three(tmp_path):
    """1 <- 2 <- 3, with parent runs that cross the parents' entry boundaries."""
    make_dir(tmp_path / "1", runs=[("present", B, 16, 1), ("present", B + 0x20000, 2, 1)])
    make_dir(tmp_path / "2", parent=tmp_path / "1",
             runs=[("parent", B, 4), ("present", B + 0x4000, 4, 2), ("parent", B + 0x8000, 8)])
    make_dir(tmp_path / "3", parent=tmp_path / "2",
             runs=[("parent", B, 12), ("present", B + 0xC000, 4, 3)])
    return tmp_path


def test_lookup_three_levels_with_splitting(three):
    with PageChain(three / "3", PID) as c:
        want = pages([(i, 1) for i in range(4)] + [(i, 2) for i in range(4, 8)] +
                     [(i, 1) for i in range(8, 12)] + [(i, 3) for i in range(12, 16)])
        assert c.lookup(B, 16) == want
        assert c.lookup(B + 0x3000, 3) == want[3 * PAGE:6 * PAGE]     # inside split runs
        assert c.lookup(B + 0xB000, 2) == want[11 * PAGE:13 * PAGE]
        assert c.covered_ranges().pairs() == [(B, B + 0x10000)]
        c.check()
    with PageChain(three / "1", PID) as c1:
        assert c1.covered_ranges().pairs() == [
            (B, B + 0x10000), (B + 0x20000, B + 0x22000)]


def test_chain_errors(three):
    t = three
    # A parent run the parent does not cover (here: a page the parent skipped).
    make_dir(t / "1s", runs=[("present", B, 2, 1), ("skipped", B + 0x2000, 1)])
    d = make_dir(t / "2s", parent=t / "1s", runs=[("parent", B, 3)])
    c = PageChain(d, PID)
    assert c.lookup(B, 2) == pages([(0, 1), (1, 1)])
    with pytest.raises(ImageError, match="not covered by parent"):
        c.lookup(B, 3)
    with pytest.raises(ImageError, match="not covered by parent"):
        c.check()
    assert c.covered_ranges().pairs() == [(B, B + 0x2000)]
    # Not in the top pagemap at all.
    with pytest.raises(ImageError, match="not in the pagemap"):
        c.lookup(B + 0x100000, 1)
    # The parent has no pagemap for this pid.
    d = make_dir(t / "2p", parent=t / "1", pid=99, runs=[("parent", B, 1)])
    with pytest.raises(ImageError, match="has no pagemap-99.img"):
        PageChain(d, 99).lookup(B, 1)
    # A parent run in a directory without parent.
    d = make_dir(t / "np", runs=[("parent", B, 1)])
    with pytest.raises(ImageError, match="has no parent"):
        PageChain(d, PID).lookup(B, 1)
    # Truncated pages file two levels down.
    pf = t / "1" / "pages-1.img"
    pf.write_bytes(pf.read_bytes()[:5 * PAGE])
    with pytest.raises(ImageError, match="truncated"):
        PageChain(t / "3", PID).lookup(B, 1)
    # Broken link and loop are refused when opening the chain.
    os.rename(t / "1", t / "1x")
    with pytest.raises(ImageError, match="broken parent link"):
        PageChain(t / "3", PID)
    os.rename(t / "1x", t / "1")
    os.symlink("../3", t / "1" / "parent")
    with pytest.raises(ImageError, match="loops"):
        PageChain(t / "3", PID)


def test_dedup_punches_and_chain_still_reads(tmp_path, monkeypatch):
    n = 64
    # Level 1 has two entries (lazy flag differs) that sit back to back in its pages file.
    make_dir(tmp_path / "1", runs=[("present", B, n // 2, 1), ("present", B + n // 2 * PAGE, n // 2, 7)])
    make_dir(tmp_path / "2", parent=tmp_path / "1",
             runs=[("parent", B, 8), ("present", B + 8 * PAGE, 8, 2), ("parent", B + 16 * PAGE, 48)])
    d3 = make_dir(tmp_path / "3", parent=tmp_path / "2",
                  runs=[("parent", B, 8), ("present", B + 8 * PAGE, 48, 3), ("parent", B + 56 * PAGE, 8)])
    before = PageChain(d3, PID).lookup(B, n)
    used1, used2 = disk_usage(tmp_path / "1"), disk_usage(tmp_path / "2")
    size1 = (tmp_path / "1" / "pages-1.img").stat().st_size
    calls = []
    real = chain_mod.punch_hole
    monkeypatch.setattr(chain_mod, "punch_hole", lambda *a: calls.append(a) or real(*a))
    # Level 3 rewrote pages 8..56, given as two touching ranges.
    punched = punch_superseded(d3.parent, PID, [(B + 8 * PAGE, B + 30 * PAGE),
                                                (B + 30 * PAGE, B + 56 * PAGE)])
    assert punched == (48 + 8) * PAGE          # 48 pages in level 1, 8 in level 2
    assert len(calls) == 2                     # one contiguous run per pages file
    assert disk_usage(tmp_path / "1") <= used1 - 48 * PAGE
    assert disk_usage(tmp_path / "2") <= used2 - 8 * PAGE
    assert (tmp_path / "1" / "pages-1.img").stat().st_size == size1   # offsets stay valid
    assert PageChain(d3, PID).lookup(B, n) == before
    # Pages of level 1 that nobody rewrote are intact.
    assert PageChain(tmp_path / "1", PID).lookup(B + 56 * PAGE, 8) == page_bytes(B + 56 * PAGE, 8, 7)


# ---- property: random chains, random writer call splits, lookups, coverage, dedup -------

NPAGES = 48
state = st.sampled_from(["absent", "present", "parent", "skipped"])


def _runs(states: list[str], cuts: list[int]) -> list[tuple[str, int, int]]:
    """Group per-page states into runs, cut further at random points (writer must merge)."""
    out, i = [], 0
    while i < len(states):
        j = i + 1
        while j < len(states) and states[j] == states[i] and j not in cuts:
            j += 1
        if states[i] != "absent":
            out.append((states[i], i, j - i))
        i = j
    return out


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(st.lists(state, min_size=NPAGES, max_size=NPAGES),
                          st.lists(st.integers(1, NPAGES - 1), max_size=6)),
                min_size=1, max_size=3),
       st.lists(st.tuples(st.integers(0, NPAGES - 1), st.integers(1, 8)), max_size=8))
def test_chain_property(levels, probes):
    with tempfile.TemporaryDirectory() as tmp:
        model: list[list[object]] = []     # per level, per page: (level, tag) of the data or None
        parent = None
        for lvl, (states, cuts) in enumerate(levels):
            below = model[-1] if model else [None] * NPAGES
            # Parent runs only where the level below can supply the page (the writer's duty).
            states = [s if s != "parent" or below[p] is not None else "present"
                      for p, s in enumerate(states)]
            runs = _runs(states, cuts)
            spec = [(k, B + v * PAGE, n, lvl + 1) if k == "present" else (k, B + v * PAGE, n)
                    for k, v, n in runs]
            path = Path(tmp) / str(lvl)
            make_dir(path, parent=parent, runs=spec)
            model.append([(lvl + 1) if s == "present" else below[p] if s == "parent" else None
                          for p, s in enumerate(states)])
            parent = path
        top = model[-1]
        c = PageChain(parent, PID)
        have = [p for p in range(NPAGES) if top[p] is not None]
        covered = set()
        for a, b in c.covered_ranges().pairs():
            covered.update(range((a - B) // PAGE, (b - B) // PAGE))
        assert covered == set(have)
        c.check()

        def expect(p0, n):
            return b"".join(page_bytes(B + p * PAGE, 1, top[p]) for p in range(p0, p0 + n))

        def check_all():
            for p0, n in probes + [(p, 1) for p in have]:
                n = min(n, NPAGES - p0)
                if all(top[p] is not None for p in range(p0, p0 + n)):
                    assert c.lookup(B + p0 * PAGE, n) == expect(p0, n)
                else:
                    with pytest.raises(ImageError):
                        c.lookup(B + p0 * PAGE, n)

        check_all()
        if len(levels) > 1:
            # Dedup against what the top level wrote itself; the top must still read the same.
            rewritten = [(B + p * PAGE, B + (p + 1) * PAGE) for p in range(NPAGES)
                         if levels[-1][0][p] == "present" and top[p] == len(levels)]
            if rewritten:
                punch_superseded(ImageDir.open(parent).parent, PID, np.array(rewritten, np.uint64))
            c = PageChain(parent, PID)
            check_all()


def test_the_chain_as_a_page_source(three):
    """ChainSource (memory/source.py's interface): runs with parents resolved, mapped bytes
    and random reads equal to the chain's lookups."""
    from coldsnap.images.source import ChainSource
    want = PageChain(three / "3", PID).lookup(B, 16)
    with ChainSource(three / "3", PID) as src:
        runs = src.runs()
        assert sum(n for _, n in runs) == 16 * PAGE and runs[0][0] == B
        assert [v for v, _ in runs] == sorted(v for v, _ in runs)
        for vaddr, n, buf, off in src.mapped():
            assert bytes(buf[off:off + n]) == want[vaddr - B:vaddr - B + n]
        got = bytearray(5 * PAGE)
        src.read_into(B + 0x3000, memoryview(got))                   # across three levels
        assert bytes(got) == want[3 * PAGE:8 * PAGE]
        with pytest.raises(ImageError, match="no data"):
            src.read_into(B + 0xF000, memoryview(bytearray(2 * PAGE)))


def test_a_chain_needs_the_pagemap_at_its_top_and_lazy_runs_are_not_data(tmp_path):
    from coldsnap.images.pages import PagemapWriter
    make_dir(tmp_path / "1", runs=[("present", B, 2)])
    with pytest.raises(ImageError, match="pagemap-99.img"):
        PageChain(tmp_path / "1", 99)                 # refused at once, not at the first lookup
    with ImageDir.create(tmp_path / "lazy") as d:
        d.write("inventory.img", [new_inventory()])
        with PagemapWriter(d, PID) as w:
            w.add_lazy(B, 2)
    with PageChain(tmp_path / "lazy", PID) as c, pytest.raises(ImageError, match="are lazy, not in the image"):
        c.lookup(B, 1)


def test_a_chain_source_forgets_the_pages_of_dropped_areas(tmp_path):
    from coldsnap.images.source import ChainSource
    make_dir(tmp_path / "1", runs=[("present", B, 8)])
    make_dir(tmp_path / "2", parent=tmp_path / "1", runs=[("parent", B, 4), ("present", B + 4 * PAGE, 4)])
    src = ChainSource(ImageDir.open(tmp_path / "2"), PID)
    assert src.runs() == [(B, 4 * PAGE), (B + 4 * PAGE, 4 * PAGE)]
    src.drop([(B + 2 * PAGE, B + 5 * PAGE)])
    assert src.runs() == [(B, 2 * PAGE), (B + 5 * PAGE, 3 * PAGE)]


def test_a_pinned_chain_source_reads_on_after_its_directories_are_gone(tmp_path):
    import shutil
    from coldsnap.images.source import ChainSource
    make_dir(tmp_path / "1", runs=[("present", B, 8)])
    make_dir(tmp_path / "2", parent=tmp_path / "1", runs=[("parent", B, 4), ("present", B + 4 * PAGE, 4, 9)])
    src = ChainSource(ImageDir.open(tmp_path / "2"), PID)
    src.pin()
    shutil.rmtree(tmp_path / "1")
    shutil.rmtree(tmp_path / "2")
    buf = bytearray(8 * PAGE)
    src.read_into(B, memoryview(buf))
    assert bytes(buf) == page_bytes(B, 4) + page_bytes(B + 4 * PAGE, 4, 9)
    src.close()


def _mapped_kib(addr: int) -> int:
    """Rss of our mapping that starts at ADDR: what our page tables map of it."""
    smaps = Path("/proc/self/smaps").read_text()
    block = smaps.split(f"\n{addr:x}-", 1)[1]
    return int(next(ln for ln in block.splitlines() if ln.startswith("Rss:")).split()[1])


def test_warming_a_chain_source_maps_every_page_of_its_files(tmp_path):
    """warm() (the lazy server's page tables filled ahead of its copies) reads a byte per
    64 KiB: the kernel's fault-around maps the pages between, up to each file's end (all but
    a page that is locked at that moment, written back on a disk: left to the copy's own fault)."""
    from coldsnap.images.source import ChainSource
    from coldsnap.kernel.vm import address
    make_dir(tmp_path / "1", runs=[("present", B, 40)])
    make_dir(tmp_path / "2", parent=tmp_path / "1", runs=[("parent", B, 20), ("present", B + 20 * PAGE, 37, 9)])
    src = ChainSource(ImageDir.open(tmp_path / "2"), PID)
    src.pin()
    views = list(src._maps.values())
    assert len(views) == 2 and all(_mapped_kib(address(v)) == 0 for v in views)
    src.warm()
    for v in views:     # the bytes read alone would be one page in 16
        assert len(v) // 1024 >= _mapped_kib(address(v)) >= len(v) // 1024 * 3 // 4
    src.close()
