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


def test_a_later_located_run_holds_the_pages_it_overlaps():
    located = [(1, A, 64 * P, 0), (0, A + 8 * P, 4 * P, 100 * P)]
    lp = LazyPages.build([(A, A + 64 * P)], located, [(A, 64 * P)])
    assert lp.pending == 64 and lp.pending_newest == 4
    assert lp.window(A + 6 * P, ahead=8, behind=0) == [Run(A + 6 * P, 1, 6 * P, 2), Run(A + 8 * P, 0, 100 * P, 4),
                                                       Run(A + 12 * P, 1, 12 * P, 2)]


def test_the_background_goes_on_from_a_fault_and_sweeps_what_it_skipped():
    lp = pages()
    lp.done(A + 10 * P, 2)                       # a fault's window
    lp.follow(A + 12 * P)
    got = []
    while (run := lp.next_run(64)) is not None:
        got.append(run)
        lp.done(run.vaddr, run.npages)
    assert got == [Run(A + 12 * P, 0, 12 * P, 20), Run(A + 32 * P, 1, 8 * P, 16), Run(A, 0, 0, 10)]


def test_a_fork_child_keeps_its_state_when_the_parent_moves_on():
    lp = pages()
    twin = lp.clone()
    lp.clear(A, A + 64 * P)
    assert lp.pending == 0 and twin.pending == 48 and twin.next_run(8) == Run(A, 0, 0, 8)

