"""Pre-dump chains of a process tree: every process tracked on its own (userfaultfd parked in
each), the dump on the chain leaves each process's unwritten pages to the parent and takes
every parked fd back, and the chain holds what a plain dump would."""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

from coldsnap.images.chain import PageChain
from coldsnap.images.directory import ImageDir
from coldsnap.kernel.procfs import read_maps
from coldsnap.kernel.pagemap import open_pagemap
from coldsnap.memory.scan import scan_saved_pages
from coldsnap.memory.tracking import drop_wp_markers
from coldsnap.memory.vma import classify_all
from coldsnap.show import describe
from procs import coldsnap
from test_tracking import uffd_in_fdinfo
from tree_helpers import reap_orphans

PG = 4096
N = 64
# a parent and two children, each writing a counter into its own region (filled with its
# tag) until SIGUSR1, then blocked in pause() (memory still)
CODE = r"""
import ctypes, mmap, os, signal, time
N = %d
stop = False
def on_usr1(*_):
    global stop
    stop = True
signal.signal(signal.SIGUSR1, on_usr1)
def run(tag):
    m = mmap.mmap(-1, N * 4096)
    for i in range(N):
        m[i * 4096:(i + 1) * 4096] = bytes([tag]) * 4096
    addr = ctypes.addressof(ctypes.c_char.from_buffer(m))
    os.write(1, f"ready {os.getpid()} {addr}\n".encode())    # one write: lines never interleave
    i = 0
    while not stop:
        p = (i %% N) * 4096
        m[p:p + 8] = i.to_bytes(8, "little")
        i += 1
        time.sleep(0.001)
    os.write(1, f"stopped {os.getpid()}\n".encode())
    while True:
        signal.pause()
def on_usr2(*_):          # the root makes one more child on demand
    if os.fork() == 0:
        run(ord("C"))
signal.signal(signal.SIGUSR2, on_usr2)
for tag in os.environ.get("TAGS", "AB").encode():
    if os.fork() == 0:
        run(tag)
run(ord("P"))
""" % N


def start_tree(tmp_path):
    """The parent and its two children of CODE in a session of their own; (proc, log)."""
    log = tmp_path / "log"
    with open(log, "w") as out:
        proc = subprocess.Popen([sys.executable, "-c", CODE], stdin=subprocess.DEVNULL, stdout=out, stderr=out,
                                start_new_session=True)
    return proc, log


def wait_lines(log, word: str, n: int) -> dict[int, int]:
    deadline = time.monotonic() + 10
    while True:
        found = {int(p): int(a or 0) for p, a in re.findall(rf"^{word} (\d+) ?(\d*)$", log.read_text(), re.M)}
        if len(found) >= n:
            return found
        assert time.monotonic() < deadline, log.read_text()
        time.sleep(0.01)


def wait_paused(pid: int, timeout: float = 10.0) -> None:
    """Until PID sits in pause(2) (syscall 34): only then is its memory still."""
    deadline = time.monotonic() + timeout
    while Path(f"/proc/{pid}/syscall").read_text().split()[0] != "34":
        assert time.monotonic() < deadline, f"{pid} did not block in pause()"
        time.sleep(0.002)


def snapshot(pid: int) -> dict[int, bytes]:
    """Every page a dump of PID would save now: run start -> its bytes."""
    present, _ = scan_saved_pages(pid, classify_all(read_maps(pid)))
    fd = open_pagemap(pid)
    try:
        present = drop_wp_markers(fd, present)     # the parked tracking's markers are no pages
    finally:
        os.close(fd)
    out = {}
    with open(f"/proc/{pid}/mem", "rb", buffering=0) as mem:
        for lo, hi in present.merged().pairs():
            mem.seek(lo)
            out[lo] = mem.read(hi - lo)
    return out


def rseq_area(images, pid: int) -> tuple[int, int]:
    """[start, end) of PID's rseq area, whose cpu fields the kernel rewrites whenever the
    thread runs (a freeze moves it too): no image or snapshot can pin them."""
    e = ImageDir.open(images).read_single(f"core-{pid}.img").thread_core.rseq_entry
    return e.rseq_abi_pointer, e.rseq_abi_pointer + e.rseq_abi_size


def assert_chain_holds(images, pid: int, want: dict[int, bytes]) -> None:
    """The chain holds every page of WANT (run start -> bytes) as it was, rseq area aside."""
    r0, r1 = rseq_area(images, pid)
    with PageChain(images, pid) as chain:
        for lo, data in want.items():
            got = bytearray(chain.lookup(lo, len(data) // PG))
            data = bytearray(data)
            if lo < r1 and r0 < lo + len(data):
                s, e = max(r0, lo) - lo, min(r1, lo + len(data)) - lo
                got[s:e] = data[s:e] = bytes(e - s)
            bad = [lo + i * PG for i in range(len(data) // PG) if got[i * PG:(i + 1) * PG] != data[i * PG:(i + 1) * PG]]
            assert not bad, f"process {pid}: {len(bad)} pages differ, first {bad[0]:#x}"


def end_tree(proc, pids: list[int], restored: bool = False) -> None:
    """SIGKILL the whole tree (its own session and group, restored or not) and reap it."""
    for p in reversed(pids):
        try:
            os.kill(p, signal.SIGKILL)
        except ProcessLookupError:
            pass
    try:
        os.killpg(proc.pid, signal.SIGKILL)      # children not listed yet (start-up failed)
    except ProcessLookupError:
        pass
    if not restored:
        proc.wait(timeout=10)
    reap_orphans(pids=pids)


def region(pid: int, addr: int) -> bytes:
    with open(f"/proc/{pid}/mem", "rb", buffering=0) as mem:
        mem.seek(addr)
        return mem.read(N * PG)


def test_tree_pre_dump_chain_then_dump_and_restore(tmp_path):
    log = tmp_path / "log"
    with open(log, "w") as out:
        proc = subprocess.Popen([sys.executable, "-c", CODE], stdin=subprocess.DEVNULL, stdout=out, stderr=out,
                                start_new_session=True)
    pids: list[int] = []
    restored = False
    try:
        regions = wait_lines(log, "ready", 3)
        pids = sorted(regions)
        d1, d2, d3 = tmp_path / "1", tmp_path / "2", tmp_path / "3"
        coldsnap("pre-dump", "-t", proc.pid, "-D", d1, check=True)
        parked = {p: uffd_in_fdinfo(p) for p in pids}
        assert all(len(fds) == 1 for fds in parked.values()), parked
        time.sleep(0.2)                                   # they keep writing
        coldsnap("pre-dump", "-t", proc.pid, "-D", d2, "--prev-images-dir", d1, check=True)
        assert {p: uffd_in_fdinfo(p) for p in pids} == parked     # adopted, not re-armed
        first, second = (describe(str(d))["chain"][0]["processes"] for d in (d1, d2))
        for p in pids:     # each process's own tracking: the second pre-dump wrote only what changed
            assert first[str(p)]["pages_present"] > second[str(p)]["pages_present"]
            assert second[str(p)]["pages_in_parent"] > 0
        for p in pids:
            os.kill(p, signal.SIGUSR1)
        wait_lines(log, "stopped", 3)
        for p in pids:
            wait_paused(p)
        want = {p: region(p, regions[p]) for p in pids}
        before = {p: snapshot(p) for p in pids}       # the memory a plain dump would hold
        for p, tag in zip([proc.pid] + sorted(set(pids) - {proc.pid}), b"PAB"):
            assert want[p][8:PG] == bytes([tag]) * (PG - 8)   # each its own pattern
        coldsnap("dump", "-t", proc.pid, "-D", d3, "--prev-images-dir", d2, "--leave-running", check=True)
        for p in pids:
            assert uffd_in_fdinfo(p) == [], p                # every parked fd taken back
            assert_chain_holds(d3, p, before[p])
        last = describe(str(d3))["chain"][0]["processes"]
        assert all(last[str(p)]["pages_in_parent"] > 0 for p in pids), last
        for p in reversed(pids):
            os.kill(p, signal.SIGKILL)
        proc.wait(timeout=10)
        reap_orphans(pids=pids)
        coldsnap("restore", "-D", d3, "-d", check=True)
        restored = True
        for p in pids:
            assert region(p, regions[p]) == want[p], p
    finally:
        end_tree(proc, pids, restored)


def test_tree_live_pre_dumps_with_a_child_born_between(tmp_path):
    """--pre-dump-mode live freezes the tree once per pre-dump; a child born after the first
    pre-dump has no parent pages in the second, is tracked from then on, and the dump on the
    chain holds every process's memory."""
    log = tmp_path / "log"
    with open(log, "w") as out:
        proc = subprocess.Popen([sys.executable, "-c", CODE], stdin=subprocess.DEVNULL, stdout=out, stderr=out,
                                start_new_session=True, env={**os.environ, "TAGS": "A"})
    pids: list[int] = []
    try:
        first = set(wait_lines(log, "ready", 2))
        pids = sorted(first)
        d1, d2, d3 = tmp_path / "1", tmp_path / "2", tmp_path / "3"
        live = ("--pre-dump-mode", "live", "--track-mem", "uffd")
        coldsnap("pre-dump", "-t", proc.pid, "-D", d1, *live, check=True)
        os.kill(proc.pid, signal.SIGUSR2)
        pids = sorted(wait_lines(log, "ready", 3))
        (born,) = set(pids) - first
        coldsnap("pre-dump", "-t", proc.pid, "-D", d2, "--prev-images-dir", d1, *live, check=True)
        second = describe(str(d2))["chain"][0]
        assert second["stats"]["mode"] == "live"
        assert {int(p) for p in second["processes"]} == set(pids)
        assert [p["pid"] for p in second["tree"]][0] == proc.pid
        for p in pids:
            got = second["processes"][str(p)]
            assert (got["pages_in_parent"] == 0) == (p == born), (p, born, got)
        # each its own tracking: the copy of the root's the child inherited with fork is gone
        assert all(len(uffd_in_fdinfo(p)) == 1 for p in pids)
        for p in pids:
            os.kill(p, signal.SIGUSR1)
        wait_lines(log, "stopped", 3)
        for p in pids:
            wait_paused(p)
        before = {p: snapshot(p) for p in pids}
        coldsnap("dump", "-t", proc.pid, "-D", d3, "--prev-images-dir", d2, "--leave-running", check=True)
        last = describe(str(d3))["chain"][0]["processes"]
        for p in pids:
            assert uffd_in_fdinfo(p) == [], p
            assert last[str(p)]["pages_in_parent"] > 0, (p, last[str(p)])
            assert_chain_holds(d3, p, before[p])
    finally:
        end_tree(proc, pids)


def test_tree_pre_dump_iterations_save_every_process(tmp_path):
    """--iterations N on a tree: every directory of the series holds each process's pages,
    the later ones only what each process wrote since; show draws the tree of each."""
    proc, log = start_tree(tmp_path)
    pids: list[int] = []
    try:
        pids = sorted(wait_lines(log, "ready", 3))
        coldsnap("pre-dump", "-t", proc.pid, "-D", tmp_path / "s", "--iterations", "2", "--track-mem", "uffd",
                 check=True)
        for n in (1, 2):
            level = describe(str(tmp_path / "s" / str(n)))["chain"][0]
            assert {int(p) for p in level["processes"]} == set(pids)
            assert {p["pid"] for p in level["tree"]} == set(pids)
        last = describe(str(tmp_path / "s" / "2"))["chain"][0]["processes"]
        assert all(last[str(p)]["pages_in_parent"] > 0 for p in pids), last
        text = coldsnap("show", tmp_path / "s" / "2", check=True).stdout
        assert "  process tree (3 processes):" in text and f"    {proc.pid}, 1 thread, " in text
        assert all(uffd_in_fdinfo(p) == [] for p in pids)     # a series parks nothing
    finally:
        end_tree(proc, pids)


def test_untrack_of_a_tree_closes_every_parked_userfaultfd(tmp_path):
    """A tree's pre-dump parks one userfaultfd in each process; `untrack ROOT` closes them all
    (JSON: pid -> fds closed) and the processes run on, written to as before."""
    proc, log = start_tree(tmp_path)
    pids: list[int] = []
    try:
        pids = sorted(wait_lines(log, "ready", 3))
        coldsnap("pre-dump", "-t", proc.pid, "-D", tmp_path / "1", check=True)
        parked = {p: uffd_in_fdinfo(p) for p in pids}
        assert all(len(fds) == 1 for fds in parked.values()), parked
        got = json.loads(coldsnap("untrack", proc.pid, "--json", check=True).stdout)
        assert got["processes"] == {str(p): fds for p, fds in parked.items()}
        assert got["closed_fds"] == parked[proc.pid]
        assert all(uffd_in_fdinfo(p) == [] for p in pids)
        assert "carry no coldsnap tracking" in coldsnap("untrack", proc.pid, check=True).stdout
        for p in pids:
            os.kill(p, signal.SIGUSR1)
        assert set(wait_lines(log, "stopped", 3)) == set(pids)      # all ran on to the end
    finally:
        end_tree(proc, pids)
