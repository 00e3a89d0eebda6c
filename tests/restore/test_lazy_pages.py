"""The lazy server's page state (restore/lazy_pages.py): what is left to copy, and from where."""
from __future__ import annotations

from coldsnap.restore.lazy_pages import LazyPages, Run

P = 4096
A = 0x10000000          # one registered area of 64 pages


def pages(keep=None) -> LazyPages:
    # pages 0-31 in the dump (level 0, file offset 0...), 32-47 in its parent (level 1), 48-63 never saved
    located = [(0, A, 32 * P, 0), (1, A + 32 * P, 16 * P, 8 * P)]
    return LazyPages.build([(A, A + 64 * P)], located, keep or [(A, 48 * P)])


def test_build_keeps_only_the_pieces_left_to_the_server():
    lp = pages(keep=[(A + 4 * P, 4 * P)])
    assert lp.pending == 4
    assert not lp.is_pending(A) and lp.is_pending(A + 4 * P) and not lp.is_pending(A + 8 * P)


def test_background_order_is_the_dump_first_then_the_parent():
    lp = pages()
    got = []
    while (run := lp.next_run(20)) is not None:
        got.append(run)
        lp.done(run.vaddr, run.npages)
    assert got == [Run(A, 0, 0, 20), Run(A + 20 * P, 0, 20 * P, 12), Run(A + 32 * P, 1, 8 * P, 16)]
    assert lp.pending == 0 and lp.pending_newest == 0


def test_a_fault_window_starts_at_the_faulting_page():
    lp = pages()
    runs = lp.window(A + 30 * P, ahead=8, behind=2)
    assert runs == [Run(A + 30 * P, 0, 30 * P, 2), Run(A + 32 * P, 1, 8 * P, 6), Run(A + 28 * P, 0, 28 * P, 2)]


def test_clear_move_and_clone():
    lp = pages()
    lp.clear(A, A + 8 * P)                       # discarded (DONTNEED) or unmapped
    assert lp.pending == 40 and not lp.is_pending(A) and lp.pending_newest == 24
    twin = lp.clone()                            # a fork: the child lacks the same pages
    lp.move(A + 8 * P, 0x20000000, 8 * P)        # mremap: the pending state follows the pages
    assert lp.pending == 40 and lp.is_pending(0x20000000) and not lp.is_pending(A + 8 * P)
    assert lp.pending_newest == 24 and twin.pending_newest == 24
    assert lp.window(0x20000000, 4, 0) == [Run(0x20000000, 0, 8 * P, 4)]
    assert twin.is_pending(A + 8 * P) and twin.pending == 40
    seen = 0
    while (run := lp.next_run(64)) is not None:
        seen += run.npages
        lp.done(run.vaddr, run.npages)
    assert seen == 40 and lp.pending == 0 and lp.pending_newest == 0


def test_quick_pages_answer_as_the_full_state_and_hand_over_what_they_served():
    # the plain-Python state the server faults with while numpy imports (lazy_quick.py)
    from coldsnap.restore.lazy_quick import QuickPages
    located = [(0, A, 32 * P, 0), (1, A + 32 * P, 16 * P, 8 * P)]
    plan = ([(A, A + 64 * P)], located, [(A, 48 * P)])
    quick, full = QuickPages.build(*plan), LazyPages.build(*plan)
    assert quick.pending == full.pending == 48 and quick.pending_newest == full.pending_newest == 32
    assert quick.window(A + 30 * P, ahead=8, behind=2) == full.window(A + 30 * P, ahead=8, behind=2)
    assert QuickPages.build([(A, A + 64 * P)], located, [(A + 4 * P, 4 * P)]).pending == 4
    quick.done(A + 30 * P, 4)
    quick.clear(A, A + 8 * P)
    quick.follow(A + 34 * P)
    assert quick.pending == 36 and quick.pending_newest == 22
    assert not quick.is_pending(A + 31 * P) and quick.is_pending(A + 34 * P) and not quick.is_pending(A + 50 * P)
    assert quick.window(A + 29 * P, ahead=4, behind=0) == [Run(A + 29 * P, 0, 29 * P, 1)]
    after = LazyPages.after(quick, *plan)        # numpy is in: the full state goes on from there
    assert after.pending == 36 and after.pending_newest == 22
    assert after.next_run(64) == Run(A + 34 * P, 1, 10 * P, 14)
    assert QuickPages.build([(A, A + 64 * P)], located + [(2, A, P, 0)], [(A, 48 * P)]) is None   # overlapping runs


def test_quick_pages_push_in_the_background_order():
    from coldsnap.restore.lazy_quick import QuickPages
    located = [(0, A, 32 * P, 0), (1, A + 32 * P, 16 * P, 8 * P)]
    quick = QuickPages.build([(A, A + 64 * P)], located, [(A, 48 * P)])
    got = []
    while (run := quick.next_run(20)) is not None:
        got.append(run)
        quick.done(run.vaddr, run.npages)
    assert got == [Run(A, 0, 0, 20), Run(A + 20 * P, 0, 20 * P, 12), Run(A + 32 * P, 1, 8 * P, 16)]
    assert quick.pending == 0 and quick.pending_newest == 0
