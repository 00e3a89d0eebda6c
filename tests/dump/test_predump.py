"""Live and frozen pre-dumps of real processes: contents, races, refusals, cleanliness."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from coldsnap import pre_dump
from coldsnap.images.directory import ImageDir
from coldsnap.images.pages import PagemapReader
from coldsnap.kernel import ptrace
from coldsnap.seize.freezer import freeze

from procs import coldsnap_argv, crit, crit_decode_each, need_crit, proc_state
from predump_helpers import PG, coldsnap, command_when_draining, image_pages, mismatched_pages, present_runs, wait_quiet
from rseq_mask import masked

FILLER = 0x100000000000
VICTIM = 0x200000000000


@pytest.fixture
def pattern(spawn, workload_bin):
    def start(filler_pages=4096, victim_pages=64):
        w = spawn([workload_bin("mem_pattern"), filler_pages, victim_pages])
        wait_quiet(w.pid)
        return w
    return start


def test_images_hold_the_memory_at_freeze_time(pattern, tmp_path):
    w = pattern()
    stats = pre_dump(w.pid, tmp_path / "img")
    assert stats.pages_written > 4096 + 4 * 64 and stats.pages_skipped == 0
    assert mismatched_pages(tmp_path / "img", w.pid) == []
    pages = image_pages(tmp_path / "img", w.pid)
    assert all(FILLER + i * PG in pages for i in range(4096))
    assert oct(os.stat(tmp_path / "img").st_mode & 0o777) == "0o700"
    assert all(oct(f.stat().st_mode & 0o777) == "0o600" for f in (tmp_path / "img").iterdir())


def test_live_frozen_and_both_scans_give_identical_images(pattern, tmp_path):
    w = pattern()
    variants = {"live": dict(mode="live"), "frozen": dict(mode="frozen"),
                "read": dict(mode="live", scan="read"), "small": dict(mode="live", buffer_size=3 * PG)}
    for name, opts in variants.items():
        pre_dump(w.pid, tmp_path / name, **opts)
    ref = tmp_path / "live"
    # every seize resumes the task through the kernel's rseq update: its cpu_id may differ
    with freeze(w.pid):
        conf = ptrace.get_rseq_configuration(w.pid)
    rseq = [(conf.rseq_abi_pointer, conf.rseq_abi_size)]

    def pages(name):
        return {a: masked(a, data, rseq) for a, data in image_pages(tmp_path / name, w.pid).items()}
    for name in variants:
        assert present_runs(tmp_path / name, w.pid) == present_runs(ref, w.pid), name
        assert pages(name) == pages("live"), name


def test_memory_changed_during_the_drain_is_skipped_exactly(pattern, tmp_path):
    victim = 64
    w = pattern(filler_pages=65536, victim_pages=victim)
    # A one-page buffer keeps the drain busy in the filler (lowest addresses) for a long
    # while; as soon as it has started, the resumed target reshapes the victims above it.
    with command_when_draining(w, tmp_path, b"race\n"):
        stats = pre_dump(w.pid, tmp_path / "img", buffer_size=PG)
    assert w.proc.stdout.readline().strip() == b"done"
    vanished = 3 * victim + (victim - victim // 2)   # A unmapped, B PROT_NONE, C moved, D's tail
    assert stats.pages_skipped == vanished
    runs = present_runs(tmp_path / "img", w.pid)
    stride = (victim + 1) * PG
    gone = [(VICTIM + k * stride, VICTIM + k * stride + victim * PG) for k in range(3)]
    gone.append((VICTIM + 3 * stride + victim // 2 * PG, VICTIM + 3 * stride + victim * PG))
    for vaddr, n in runs:
        assert not any(vaddr < hi and vaddr + n * PG > lo for lo, hi in gone)
    with PagemapReader(ImageDir.open(tmp_path / "img"), w.pid) as r:
        assert r.skipped.nr_pages == vanished
    assert mismatched_pages(tmp_path / "img", w.pid, only=lambda a: a < VICTIM) == []
    assert FILLER in image_pages(tmp_path / "img", w.pid)
    assert VICTIM + 3 * stride in image_pages(tmp_path / "img", w.pid)   # D's first half stays

    # Next time B is a PROT_NONE area at freeze time: its pages are skipped up front, in order.
    again = pre_dump(w.pid, tmp_path / "again", buffer_size=PG)
    assert again.pages_skipped == victim
    with PagemapReader(ImageDir.open(tmp_path / "again"), w.pid) as r:
        assert r.skipped.pairs() == [(VICTIM + stride, VICTIM + stride + victim * PG)]
    assert VICTIM + 3 * stride in image_pages(tmp_path / "again", w.pid)


def test_target_exiting_during_the_drain_fails_cleanly(pattern, tmp_path):
    w = pattern(filler_pages=65536)
    with command_when_draining(w, tmp_path, b"exit\n"):
        r = coldsnap("pre-dump", "-t", w.pid, "-D", tmp_path / "img", "--pre-dump-mode", "live",
                     "--buffer-size", "4k")
    assert r.returncode != 0
    assert r.stderr.count("\n") == 1 and "exited during the pre-dump" in r.stderr, r.stderr
    assert w.proc.wait(5) == 3
    assert list(tmp_path.iterdir()) == []


def test_multithreaded_target_is_resumed_whole(spawn, workload_bin, tmp_path):
    w = spawn([workload_bin("seize_threads"), 8])
    tids = os.listdir(f"/proc/{w.pid}/task")
    assert len(tids) == 9
    for mode in ("live", "frozen"):
        pre_dump(w.pid, tmp_path / mode, mode=mode)
        for tid in tids:
            state, tracer = proc_state(w.pid, int(tid))
            assert state in ("R", "S") and tracer == 0
    before = int(w.send("sum").split()[-1])
    time.sleep(0.05)
    assert int(w.send("sum").split()[-1]) > before


def test_sigkill_of_coldsnap_leaves_the_target_running(pattern, tmp_path):
    w = pattern(filler_pages=65536)
    cmd = coldsnap_argv("pre-dump", "-t", w.pid, "-D", tmp_path / "img", "--pre-dump-mode", "frozen",
                        "--buffer-size", "4k")
    p = subprocess.Popen(cmd, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 10
    while proc_state(w.pid)[1] == 0 and time.monotonic() < deadline:
        time.sleep(0.001)
    p.kill()
    p.wait()
    deadline = time.monotonic() + 2
    while proc_state(w.pid) != ("S", 0) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert proc_state(w.pid)[1] == 0
    assert w.send("write 1 2") == "wrote 1"        # it still obeys
    assert not (tmp_path / "img").exists()


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM, signal.SIGHUP])
def test_sigint_or_sigterm_of_coldsnap_resumes_the_target(sig, pattern, tmp_path):
    w = pattern(filler_pages=65536)
    cmd = coldsnap_argv("pre-dump", "-t", w.pid, "-D", tmp_path / "img", "--pre-dump-mode", "frozen",
                        "--buffer-size", "4k")
    p = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 10
    while proc_state(w.pid)[1] == 0 and time.monotonic() < deadline:
        time.sleep(0.001)
    p.send_signal(sig)
    _, err = p.communicate(timeout=10)
    assert p.returncode == 128 + sig and err.strip() == f"coldsnap: interrupted by {sig.name}"
    _assert_left_running(w.pid)
    assert list(tmp_path.iterdir()) == []


def _assert_left_running(pid: int) -> None:
    """Neither stopped nor traced: back asleep on its stdin (it may be scheduled a moment
    longer on a loaded machine after printing its last answer, state R)."""
    deadline = time.monotonic() + 5
    while proc_state(pid) != ("S", 0) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert proc_state(pid) == ("S", 0)


def _zombie():
    p = subprocess.Popen(["true"])
    while proc_state(p.pid)[0] != "Z":
        time.sleep(0.01)
    return p


@pytest.mark.parametrize("case", ["no-such-pid", "pid-1", "kernel-thread", "zombie", "self",
                                  "non-empty-dir", "unwritable-dir", "bad-pid"])
def test_bad_input_gets_one_line_and_nonzero_exit(case, pattern, tmp_path):
    w = pattern(filler_pages=16)
    target, images = str(w.pid), tmp_path / "img"
    zombie = None
    if case == "no-such-pid":
        target = "4194304"
    elif case == "pid-1":
        target = "1"
    elif case == "kernel-thread":
        target = "2"
    elif case == "zombie":
        zombie = _zombie()
        target = str(zombie.pid)
    elif case == "non-empty-dir":
        images.mkdir()
        (images / "keep").write_text("x")
    elif case == "unwritable-dir":
        images = Path("/proc/img")
    elif case == "bad-pid":
        target = "abc"
    if case == "self":
        r = subprocess.run(["sh", "-c", f'exec {sys.executable} -m coldsnap pre-dump -t $$ -D {images}'],
                           capture_output=True, text=True, timeout=30)
    else:
        r = coldsnap("pre-dump", "-t", target, "-D", images)
    if zombie:
        zombie.wait()
    assert r.returncode != 0
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 or case == "bad-pid", r.stderr
    assert "coldsnap" in lines[-1] and "Traceback" not in r.stderr
    if case == "non-empty-dir":
        assert [p.name for p in images.iterdir()] == ["keep"]
    elif case != "unwritable-dir":
        assert not images.exists()
    _assert_left_running(w.pid)


def test_crit_decodes_every_image(pattern, tmp_path):
    need_crit()
    w = pattern()
    pre_dump(w.pid, tmp_path / "img")
    files = [f for f in (tmp_path / "img").iterdir() if not f.name.startswith("pages-")]
    assert {f.name for f in files} >= {"inventory.img", f"mm-{w.pid}.img", f"pagemap-{w.pid}.img", "stats-dump"}
    crit_decode_each(files)
    assert "nr_pages" in crit("decode", "-i", tmp_path / "img" / f"pagemap-{w.pid}.img").stdout
