"""The lazy server's copier (restore/lazy_copier.py): a run copied in pieces by two threads
lands whole and in place, and each piece says how far it got."""
from __future__ import annotations

import errno
import mmap
import os

import numpy as np

from coldsnap.kernel import uffd
from coldsnap.kernel.libc import SYS, syscall
from coldsnap.kernel.vm import address
from coldsnap.restore.lazy_copier import PIECE, Copier

SIZE = 4 * PIECE + 3 * 4096          # a short last piece


def _registered():
    """An anonymous area of ours registered MISSING on a uffd of ours: (fd, area)."""
    area = mmap.mmap(-1, SIZE, mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    fd = syscall(SYS.userfaultfd, os.O_CLOEXEC | os.O_NONBLOCK, what="userfaultfd")
    uffd.api(fd, 0)
    uffd.register(fd, address(area), SIZE, uffd.UFFDIO_REGISTER_MODE_MISSING)
    return fd, area


def test_pieces_land_whole_and_in_order():
    src = np.random.default_rng(7).integers(0, 256, SIZE, np.uint8)
    fd, area = _registered()
    copier = Copier()
    try:
        got = copier.copy(fd, address(area), address(src), SIZE)
        assert [p[0] - address(area) for p, _ in got] == list(range(0, SIZE, PIECE))
        assert all(r == (0, p[2]) for p, r in got)
        assert np.array_equal(np.frombuffer(area, np.uint8), src)
    finally:
        copier.close()          # no thread left behind (an in-process restore refuses to run beside one)
        os.close(fd)
        area.close()


def test_a_page_in_already_stops_its_piece_only():
    src = np.full(SIZE, 5, np.uint8)
    fd, area = _registered()
    try:
        hole = PIECE + 2 * 4096             # in the second piece
        assert uffd.copy(fd, address(area) + hole, address(src), 4096) == (0, 4096)
        got = Copier(helper=False).copy(fd, address(area), address(src), SIZE)
        assert got[1][1] == (-errno.EAGAIN, 2 * 4096)      # a partial copy says EAGAIN
        assert all(r == (0, p[2]) for k, (p, r) in enumerate(got) if k != 1)
        assert Copier(helper=False).copy(fd, address(area) + hole, address(src), 4096)[0][1] == (-errno.EEXIST, 0)
    finally:
        os.close(fd)
        area.close()


def test_a_stop_ends_the_copy_after_the_pieces_begun():
    src = np.full(SIZE, 9, np.uint8)
    fd, area = _registered()
    asked = []

    def stop() -> bool:
        asked.append(1)
        return len(asked) >= 2          # the caller's second check: stop there
    copier = Copier(helper=False)
    try:
        got = copier.copy(fd, address(area), address(src), SIZE, stop)
        assert [r for _, r in got] == [(0, PIECE), (0, PIECE)]      # a prefix, each piece whole
        assert copier.calls == 2
        assert np.all(np.frombuffer(area, np.uint8, 2 * PIECE) == 9)
        # the rest is still missing: a copy there goes in (EEXIST would say it was filled)
        assert uffd.copy(fd, address(area) + 2 * PIECE, address(src), 4096) == (0, 4096)
    finally:
        os.close(fd)
        area.close()
