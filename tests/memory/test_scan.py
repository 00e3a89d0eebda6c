"""The page plan: which pages a pre-dump saves, found two independent ways."""
import os

import numpy as np
import pytest

from coldsnap.kernel.page import PAGE_SIZE as PG
from coldsnap.kernel.procfs import read_maps
from coldsnap.memory.ranges import Ranges
from coldsnap.memory.scan import scan_saved_pages
from coldsnap.memory.vma import Kind, classify_all
from coldsnap.seize.freezer import freeze


@pytest.fixture
def kinds(spawn, workload_bin):
    w = spawn([workload_bin("mem_kinds")])
    a, z, f, s = (int(x, 16) for x in w.ready.split()[1:])
    return w, a, z, f, s


def pages_in(plan: Ranges, lo: int, hi: int) -> list[int]:
    part = plan.intersect(Ranges.of([(lo, hi)]))
    return [(p - lo) // PG for s, e in part.pairs() for p in range(s, e, PG)]


def test_policy_saves_written_private_pages_only(kinds):
    w, a, z, f, s = kinds
    vmas = classify_all(read_maps(w.pid))
    plan, method = scan_saved_pages(w.pid, vmas)
    assert method == "ioctl"
    assert pages_in(plan, a, a + 64 * PG) == list(range(0, 64, 2))   # written anon pages
    assert pages_in(plan, z, z + 16 * PG) == []                       # zero page: nothing
    assert pages_in(plan, f, f + 2 * PG) == [1]                       # only the COW copy
    assert pages_in(plan, s, s + 16 * PG) == []                       # shared: not in the plan
    kinds_at = {v.start: v.kind for v in vmas}
    assert kinds_at[s] is Kind.ANON_SHARED and kinds_at[f] is Kind.FILE_PRIVATE
    assert not any(v.kind in (Kind.VDSO, Kind.VVAR) and pages_in(plan, v.start, v.end) for v in vmas)


def test_ioctl_and_pagemap_read_agree(kinds, spawn, python_exe):
    py = spawn([python_exe, "-c", "import sys; b = bytearray(8 << 20); print('ready', flush=True); sys.stdin.read()"])
    for w in (kinds[0], py):
        # frozen: a running interpreter may touch a fresh page between the two scans
        with freeze(w.pid):
            vmas = classify_all(read_maps(w.pid))
            by_ioctl, _ = scan_saved_pages(w.pid, vmas, "ioctl")
            by_read, _ = scan_saved_pages(w.pid, vmas, "read")
        assert by_ioctl.nr_pages > 0
        assert np.array_equal(by_ioctl.starts, by_read.starts)
        assert np.array_equal(by_ioctl.ends, by_read.ends)


def test_a_fragmented_scan_returns_each_region_once_in_order(spawn, python_exe):
    """64 MiB, one page in two: 8192 regions. 6.18's PAGEMAP_SCAN may end such a walk with a
    walk_end megabytes short of the regions it returned; resuming there gave them twice."""
    from coldsnap.kernel import pagemap as pm
    from coldsnap.memory.scan import ANON_QUERY
    py = spawn([python_exe, "-c", "import mmap, sys\n"
                "m = mmap.mmap(-1, 64 << 20, flags=mmap.MAP_PRIVATE)\n"
                "for o in range(0, 64 << 20, 8192): m[o] = 1\n"
                "print('ready', flush=True); sys.stdin.read()"])
    with freeze(py.pid):
        fd = pm.open_pagemap(py.pid)
        try:
            for v in classify_all(read_maps(py.pid)):
                if v.kind is Kind.ANON_PRIVATE and v.size >= 64 << 20:
                    for vec_len in (1 << 15, 1000):     # the vector growing from 256 regions; at most 1000
                        flat = pm.PagemapScanner(fd, vec_len).scan_flat(v.start, v.end, ANON_QUERY)
                        starts, ends = flat[0::3], flat[1::3]
                        assert all(e <= s for e, s in zip(ends, starts[1:])), "regions overlap"
                        assert sum(ends) - sum(starts) >= (32 << 20)
        finally:
            os.close(fd)


def test_plan_never_crosses_a_vma_boundary(kinds):
    w = kinds[0]
    vmas = classify_all(read_maps(w.pid))
    plan, _ = scan_saved_pages(w.pid, vmas)
    for lo, hi in plan.pairs():
        assert any(v.start <= lo and hi <= v.end and v.saves_pages for v in vmas)


GUARDED = r"""
import ctypes, mmap, sys
libc = ctypes.CDLL(None, use_errno=True)
libc.mmap.restype = ctypes.c_void_p
libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long]
base = libc.mmap(None, 8 * 4096, 3, mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS, -1, 0)
ctypes.memset(base, 1, 8 * 4096)
if libc.madvise(ctypes.c_void_p(base + 2 * 4096), 2 * 4096, 102) != 0:     # MADV_GUARD_INSTALL
    print("no", flush=True)
else:
    print(base, flush=True)
sys.stdin.readline()
"""


@pytest.mark.parametrize("method", ["ioctl", "read"])
def test_guard_pages_are_found_and_kept_out_of_the_plan(spawn, python_exe, method):
    from coldsnap.kernel.pagemap import has_guard_category
    from coldsnap.memory.scan import scan_saved_and_guards
    if method == "ioctl" and not has_guard_category():
        pytest.skip("PAGEMAP_SCAN has no guard category on this kernel")
    w = spawn([python_exe, "-c", GUARDED])
    if w.ready == "no":
        pytest.skip("this kernel has no MADV_GUARD_INSTALL")
    base = int(w.ready)
    vmas = classify_all(read_maps(w.pid))
    found, guards, used = scan_saved_and_guards(w.pid, vmas, method)
    assert used == method
    assert guards.pairs() == [(base + 2 * PG, base + 4 * PG)]
    assert pages_in(found, base, base + 8 * PG) == [0, 1, 4, 5, 6, 7]
