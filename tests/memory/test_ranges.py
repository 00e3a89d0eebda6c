"""Range algebra against a brute-force model of page sets."""
import numpy as np
from hypothesis import example, given, settings, strategies as st

from coldsnap.memory.ranges import Ranges
from coldsnap.memory.ranges_np import sorted_unique

PG = 4096


def page_sets():
    return st.sets(st.integers(0, 200), max_size=80)


def to_ranges(pages: set[int]) -> Ranges:
    pairs, run = [], None
    for p in sorted(pages):
        if run and run[1] == p:
            run[1] = p + 1
        else:
            if run:
                pairs.append(tuple(run))
            run = [p, p + 1]
    if run:
        pairs.append(tuple(run))
    return Ranges.of([(a * PG, b * PG) for a, b in pairs]) if pairs else Ranges.empty()


def to_pages(r: Ranges) -> set[int]:
    return {p for s, e in r.pairs() for p in range(s // PG, e // PG)}


@settings(deadline=None)      # pure arithmetic; 200 ms was exceeded once only on a machine at load 7
@given(page_sets(), page_sets())
def test_set_operations_match_page_sets(a, b):
    ra, rb = to_ranges(a), to_ranges(b)
    assert to_pages(ra.union(rb)) == a | b
    assert to_pages(ra.intersect(rb)) == a & b
    assert to_pages(ra.subtract(rb)) == a - b
    assert ra.nr_pages == len(a)


@given(page_sets(), st.sets(st.integers(0, 201), max_size=20))
def test_split_at_keeps_pages_and_cuts(a, cuts):
    r = to_ranges(a)
    cut_addrs = np.array(sorted(c * PG for c in cuts), dtype=np.uint64)
    s = r.split_at(cut_addrs)
    assert to_pages(s) == a
    for lo, hi in s.pairs():
        assert not any(lo < c < hi for c in cut_addrs.tolist())
    assert to_pages(s.merged()) == a


@given(page_sets(), st.integers(1, 7))
def test_split_into_buffer_sized_pieces(a, pages):
    cut = to_ranges(a).chunked(pages * PG)
    starts, ends = cut.starts, cut.ends
    assert to_pages(Ranges(starts, ends)) == a
    assert all(e - s <= pages * PG for s, e in zip(starts, ends))


@given(st.lists(st.tuples(st.integers(0, 200), st.integers(0, 40)), max_size=30))
def test_covering_joins_any_pairs(spans):
    pairs = [(a * PG, (a + n) * PG) for a, n in spans]
    r = Ranges.covering(pairs)
    assert to_pages(r) == {p for a, n in spans for p in range(a, a + n)}
    assert r.pairs() == r.merged().pairs() == sorted(r.pairs())


@given(page_sets(), page_sets(), st.sets(st.integers(0, 201), max_size=20))
@example(set(range(10, 20)), {0, 11, 13}, set())          # one range across two, after another
@example(set(range(10, 20)), {11, 13, 15}, {12})
def test_pieces_in_keep_the_ranges_they_come_from(a, b, cuts):
    ra = to_ranges(a).split_at(np.array(sorted(c * PG for c in cuts), dtype=np.uint64))
    s, e, idx = ra.pieces_in(to_ranges(b))
    assert to_pages(Ranges.covering(zip(s.tolist(), e.tolist()))) == a & b
    for lo, hi, i in zip(s.tolist(), e.tolist(), idx.tolist()):
        assert ra.starts[i] <= lo < hi <= ra.ends[i]


@given(page_sets())
@example({1, 2})                                        # two ranges that touch
@example({1, 2, 5, 6, 7})
def test_merged_joins_exactly_the_ranges_that_touch(a):
    r = to_ranges(a)
    per_page = Ranges.of([(p * PG, (p + 1) * PG) for p in sorted(a)]) if a else Ranges.empty()
    assert per_page.merged().pairs() == r.pairs()
    assert r.merged().pairs() == r.pairs()


def test_sorted_unique_is_np_unique():
    rng = np.random.default_rng(7)
    for n in (0, 1, 2, 3, 100):
        x = rng.integers(0, 20, n).astype(np.uint64)
        got = sorted_unique(x)
        assert got.dtype == np.uint64 and got.tolist() == np.unique(x).tolist()


@settings(deadline=None)      # the first example imports numpy
@given(page_sets(), page_sets())
def test_vectorised_set_operations_match_the_plain_ones(a, b):
    """Past ranges.BIG the set operations go to numpy (ranges_np): the same results."""
    from coldsnap.memory import ranges_np
    ra, rb = to_ranges(a), to_ranges(b)
    assert ranges_np.boolean(ra, rb, "or") == ra.union(rb)
    assert ranges_np.boolean(ra, rb, "and") == ra.intersect(rb)
    assert ranges_np.boolean(ra, rb, "sub") == ra.subtract(rb)


@settings(deadline=None)
@given(page_sets(), page_sets(), st.sets(st.integers(0, 201), max_size=20))
def test_unions_join_like_the_sorted_merge_whatever_the_sizes(a, b, cuts):
    """A short side (ranges.FEW) is inserted into the other, not merged with it: the same
    ranges, touching ones joined, even when the operands come split (at VMA bounds)."""
    from heapq import merge
    from coldsnap.memory.ranges import _join_sorted
    at = sorted(c * PG for c in cuts)
    ra, rb = to_ranges(a).split_at(at), to_ranges(b).split_at(at)
    want = _join_sorted(merge(zip(ra.starts, ra.ends), zip(rb.starts, rb.ends)))
    assert ra.union(rb) == want and rb.union(ra) == want
    assert ra.subtract(Ranges.empty()) == ra.merged() == _join_sorted(zip(ra.starts, ra.ends))
    assert ra.intersect(Ranges.empty()) == Ranges.empty() == Ranges.empty().intersect(ra)
