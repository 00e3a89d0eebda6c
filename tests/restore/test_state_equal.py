"""What restore sets is what dump read: dump, restore, dump again, compare the two image sets.

The workload (rst_still.c) parks every thread in pause() with known ymm registers (xmm on a
CPU without AVX, or when asked: that variant runs everywhere), an
alternate signal stack and its own blocked mask, so nothing legitimately changes between the
two dumps: registers (restart of the interrupted pause included), xstate, masks, handlers,
rseq, robust lists, VMAs, mm fields and every saved page must come back identical.
"""
from __future__ import annotations

import os
import signal
import subprocess
import time

import pytest

from coldsnap.images.chain import PageChain
from coldsnap.images.directory import ImageDir
from coldsnap.images.pages import PagemapReader

from restore_helpers import coldsnap, kill_and_reap, wait_gone
from rseq_mask import masked, rseq_areas

PAUSE = 34


def _all_paused(pid: int, n: int) -> None:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        tids = os.listdir(f"/proc/{pid}/task")
        calls = []
        for t in tids:
            try:
                with open(f"/proc/{pid}/task/{t}/syscall") as f:
                    calls.append(f.read().split()[0])
            except OSError:
                calls.append("?")
        if len(tids) == n and all(c == str(PAUSE) for c in calls):
            return
        time.sleep(0.01)
    raise AssertionError(f"threads of {pid} did not all park in pause(): {calls}")


def _thread_view(core) -> dict:
    ti, tc = core.thread_info, core.thread_core
    fp = ti.fpregs
    return {
        "gpregs": ti.gpregs.SerializeToString(deterministic=True),
        "fxsave": (fp.cwd, fp.swd, fp.twd, fp.mxcsr, list(fp.st_space), list(fp.xmm_space)),
        "ymmh": list(fp.xsave.ymmh_space),
        "clear_tid": ti.clear_tid_addr,
        "mask": tc.blk_sigset,
        "sas": (tc.sas.ss_sp, tc.sas.ss_size, tc.sas.ss_flags),
        "rseq": (tc.rseq_entry.rseq_abi_pointer, tc.rseq_entry.rseq_abi_size, tc.rseq_entry.signature),
        "robust": (tc.futex_rla, tc.futex_rla_len),
        "comm": tc.comm,
        "creds": tc.creds.SerializeToString(deterministic=True),
    }


def _merged(vmas) -> list[tuple]:
    """VMAs as the kernel may merge them: a restored relro area is mapped before its copied
    pages exist, so it merges with its read-only neighbour where the original could not."""
    out: list[list] = []
    for v in vmas:
        p = out[-1] if out else None
        if p and p[1] == v.start and p[2:5] == [v.prot, v.flags, v.status] and \
                (not v.status & 0x40 or p[5] + p[1] - p[0] == v.pgoff):
            p[1] = v.end
        else:
            out.append([v.start, v.end, v.prot, v.flags, v.status, v.pgoff])
    return [tuple(x) for x in out]


def _process_view(d: ImageDir, pid: int) -> dict:
    core = d.read_single(f"core-{pid}.img")
    mm = d.read_single(f"mm-{pid}.img")
    mm_fields = {f.name: getattr(mm, f.name) for f in mm.DESCRIPTOR.fields
                 if f.name not in ("vmas", "exe_file_id", "aios")}
    mm_fields["mm_saved_auxv"] = list(mm.mm_saved_auxv)
    return {
        "sigactions": [a.SerializeToString(deterministic=True) for a in core.tc.sigactions],
        "rlimits": [(r.cur, r.max) for r in core.tc.rlimits.rlimits],
        "personality": core.tc.personality,
        "vmas": _merged(mm.vmas),
        "mm": mm_fields,
    }


def _blocked(pid: int) -> dict[int, str]:
    """tid -> SigBlk, as the kernel shows each thread's blocked mask."""
    out = {}
    for t in os.listdir(f"/proc/{pid}/task"):
        for line in open(f"/proc/{pid}/task/{t}/status"):
            if line.startswith("SigBlk:"):
                out[int(t)] = line.split()[1]
    return out


HAVE_AVX = "avx" in open("/proc/cpuinfo").read().split()


@pytest.mark.parametrize("vector", ["avx", "sse"])
def test_dump_of_restored_process_equals_first_dump(spawn, workload_bin, tmp_path, vector):
    if vector == "avx" and not HAVE_AVX:
        pytest.skip("no AVX on this CPU: the sse variant checks the same without ymm registers")
    w = spawn([str(workload_bin("rst_still")), vector], stderr=subprocess.DEVNULL)
    pid = w.pid
    _all_paused(pid, 4)
    tids = sorted(int(t) for t in os.listdir(f"/proc/{pid}/task"))
    masks = _blocked(pid)
    assert len(set(masks.values())) == len(tids), masks      # every thread its own mask
    first, second = tmp_path / "first", tmp_path / "second"
    try:
        coldsnap("dump", "-t", pid, "-D", first).check()
        w.proc.wait(timeout=10)
        wait_gone(pid)
        coldsnap("restore", "-D", first, "-d").check()
        _all_paused(pid, 4)
        assert sorted(int(t) for t in os.listdir(f"/proc/{pid}/task")) == tids
        assert _blocked(pid) == masks
        coldsnap("dump", "-t", pid, "-D", second, "--leave-running").check()

        a, b = ImageDir.open(first), ImageDir.open(second)
        for tid in tids:
            va = _thread_view(a.read_single(f"core-{tid}.img"))
            vb = _thread_view(b.read_single(f"core-{tid}.img"))
            for key in va:
                assert va[key] == vb[key], f"thread {tid}: {key} differs after restore"
        pa, pb = _process_view(a, pid), _process_view(b, pid)
        for key in pa:
            assert pa[key] == pb[key], f"{key} differs after restore"

        rseq = rseq_areas(first)
        ra = PagemapReader(a, pid)
        with PageChain(b, pid) as cb, ra:
            for run in ra.runs():
                before = masked(run.vaddr, ra.read_pages(run.vaddr, run.nr_pages), rseq)
                after = masked(run.vaddr, cb.lookup(run.vaddr, run.nr_pages), rseq)
                assert before == after, f"pages at {run.vaddr:#x} differ after restore"
        os.kill(pid, signal.SIGUSR1)          # the handler runs on the restored alt stack...
        time.sleep(0.05)
        _all_paused(pid, 4)                   # ...and every thread goes back to its pause()
    finally:
        w.proc.poll()
        kill_and_reap(pid)
