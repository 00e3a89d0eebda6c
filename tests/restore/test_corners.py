"""Single-process corners real programs hit, each on a small C program of its own
(tests/workloads/corner_*.c, see corner.h): set up, dump, restore, then the program checks
what the kernel really holds after the restore ("FAIL ..." lines), and the test looks at
/proc where the program cannot see for itself."""
from __future__ import annotations

import os
import time
from pathlib import Path

from procs import CRIT, build_workload, crit_decode
from restore_helpers import LogWorkload, alive, assert_one_line_error, coldsnap
from tree_helpers import reap_orphans


def start_corner(name: str, tmp: Path, *args) -> LogWorkload:
    """The program, ready; `with start_corner(...) as w:` stops it at the end."""
    w = LogWorkload([build_workload(name), *args], tmp / f"{name}.log")
    try:
        w.wait_ready()
    except BaseException:
        w.stop()
        raise
    return w


def dump_restore(w: LogWorkload, tmp: Path, *dump_args, children=()) -> Path:
    """Dump the program (and its CHILDREN), reap them all, restore; the images' path."""
    images = tmp / "img"
    coldsnap("dump", "-t", w.pid, "-D", images, *dump_args, check=True)
    w.reap_dumped()
    reap_orphans(pids=children)
    coldsnap("restore", "-D", images, "-d", check=True)
    w.adopt_restored()
    return images


def check_round(w: LogWorkload, n: int = 1, at: int | None = None) -> None:
    """Let the program (or its process `at`) check itself (SIGUSR1) and assert it found
    nothing wrong."""
    os.kill(at or w.pid, 10)
    w.wait_line(f"checked {n}")
    assert not w.failures(), "\n".join(w.failures())


def test_pipes_keep_descriptions_flags_size_and_every_byte(tmp_path):
    with start_corner("corner_pipes", tmp_path) as w:
        images = dump_restore(w, tmp_path)
        check_round(w)
        if os.path.exists(CRIT):     # crit takes the entries with their buffer lengths
            sizes = sorted(e["size"] for e in crit_decode(images / "pipes-data.img")["entries"])
            assert sizes[-1] == 1 << 20


def test_append_files_keep_size_and_offset_and_append_at_the_end(tmp_path):
    d = tmp_path / "files"
    d.mkdir()
    with start_corner("corner_append", tmp_path, d) as w:
        check_round(w)                   # round 1 on the original: appends 3 and 2 bytes
        dump_restore(w, tmp_path)
        check_round(w, 2)
        assert (d / "log").stat().st_size == 1037 + 6 and (d / "rw").stat().st_size == 5004


def test_deleted_files_open_and_mapped_come_back_deleted_with_their_bytes(tmp_path):
    d = tmp_path / "files"
    d.mkdir()
    with start_corner("corner_ghost", tmp_path, d) as w:
        check_round(w)                  # the program's own checks hold before the dump
        images = dump_restore(w, tmp_path)
        assert os.listdir(d) == [], "a ghost file was left behind"
        check_round(w, 2)
        ghosts = sorted(p.name for p in images.iterdir() if p.name.startswith("ghost-file-"))
        assert len(ghosts) == 5 and (images / "remap-fpath.img").exists()
        if os.path.exists(CRIT):
            dec = crit_decode(images / "remap-fpath.img")["entries"]
            assert len(dec) == 5 and {e["remap_type"] for e in dec} == {"GHOST"}
            crit_decode(images / ghosts[0])


def test_a_deleted_file_over_the_ghost_limit_is_refused_naming_the_fd(tmp_path):
    d = tmp_path / "files"
    d.mkdir()
    with start_corner("corner_ghost", tmp_path, d, 3 << 20) as w:
        run = coldsnap("dump", "-t", w.pid, "-D", tmp_path / "img")
        assert_one_line_error(run)
        assert "fd " in run.stderr and "big" in run.stderr and "--ghost-limit" in run.stderr
        assert not (tmp_path / "img").exists() and alive(w.pid)
        dump_restore(w, tmp_path, "--ghost-limit", "4M")
        check_round(w)


def test_signalfd_timerfd_and_inotify_come_back_armed_and_watching(tmp_path):
    d = tmp_path / "watched"
    d.mkdir()
    with start_corner("corner_fds", tmp_path, d) as w:
        images = dump_restore(w, tmp_path)
        check_round(w)
        if os.path.exists(CRIT):         # crit takes the three kinds in files.img
            kinds = [e["type"] for e in crit_decode(images / "files.img")["entries"]]
            assert {"SIGNALFD", "TIMERFD", "INOTIFY"} <= set(kinds) and kinds.count("TIMERFD") == 3


def test_posix_timers_come_back_with_their_ids_clocks_and_time_left(tmp_path):
    with start_corner("corner_timers", tmp_path) as w:
        before = Path(f"/proc/{w.pid}/timers").read_text()
        images = dump_restore(w, tmp_path)
        after = Path(f"/proc/{w.pid}/timers").read_text()
        assert after == before      # ids, signals, values, notification (same tids), clocks
        check_round(w)
        if os.path.exists(CRIT):
            posix = crit_decode(images / f"core-{w.pid}.img")["entries"][0]["tc"]["timers"]["posix"]
            assert sorted(t["it_id"] for t in posix) == [0, 1, 3, 4]
            assert max(t["overrun"] for t in posix) >= 0


def _epoll_lines(pid: int) -> list[str]:
    """The registrations of the process's epoll instance, without inode numbers."""
    for fd in os.listdir(f"/proc/{pid}/fd"):
        if os.readlink(f"/proc/{pid}/fd/{fd}") == "anon_inode:[eventpoll]":
            lines = Path(f"/proc/{pid}/fdinfo/{fd}").read_text().splitlines()
            return sorted(" ".join(ln.split()[:6]) for ln in lines if ln.startswith("tfd:"))
    return []


def test_epoll_watches_on_closed_and_reused_fd_numbers_come_back(tmp_path):
    with start_corner("corner_epoll", tmp_path) as w:
        before = _epoll_lines(w.pid)
        assert len(before) == 4
        dump_restore(w, tmp_path)
        assert _epoll_lines(w.pid) == before
        check_round(w)


def test_a_thread_that_ended_unjoined_is_no_reason_to_fail(tmp_path):
    with start_corner("corner_zthread", tmp_path) as w:
        dump_restore(w, tmp_path)
        check_round(w)                 # joins it: its result is still there


def test_a_process_whose_main_thread_ended_is_refused_in_one_line(tmp_path):
    with start_corner("corner_zthread", tmp_path, "leader") as w:
        deadline = time.monotonic() + 5
        while Path(f"/proc/{w.pid}/stat").read_text().split(") ")[1][0] != "Z":
            assert time.monotonic() < deadline, "the main thread did not end"
            time.sleep(0.01)
        run = coldsnap("dump", "-t", w.pid, "-D", tmp_path / "img")
        assert_one_line_error(run)
        assert run.returncode == 5 and "main thread has ended" in run.stderr
        w.signal(10)                   # left running, untouched: the worker still answers
        while "checked 1" not in w.lines():
            assert time.monotonic() < deadline + 5, w.tail()
            time.sleep(0.01)


def test_prctl_state_and_a_seccomp_filter_come_back_in_every_thread(tmp_path):
    w = start_corner("corner_prctl", tmp_path)
    child = 0
    try:
        child = int(next(ln for ln in w.lines() if ln.startswith("child ")).split()[1])
        check_round(w, at=child)       # the program's checks hold before the dump
        images = dump_restore(w, tmp_path, children=[child])
        check_round(w, 2, at=child)
        status = Path(f"/proc/{child}/status").read_text()
        assert "Seccomp:\t2" in status and "Seccomp_filters:\t1" in status
        if os.path.exists(CRIT):
            assert len(crit_decode(images / "seccomp.img")["entries"][0]["seccomp_filters"]) == 1
    finally:
        w.stop()
        if child:                      # its parent-death signal, SIGUSR2, is blocked
            try:
                os.kill(child, 9)
            except ProcessLookupError:
                pass
            reap_orphans(pids=[child])


def _guard_pages(pid: int, start: int, pages: int) -> list[bool]:
    """Which of the pages from start are guard-region pages (pagemap bit 58)."""
    import struct
    with open(f"/proc/{pid}/pagemap", "rb") as f:
        f.seek(start // 4096 * 8)
        return [bool(e >> 58 & 1) for e in struct.unpack(f"<{pages}Q", f.read(8 * pages))]


def test_guard_regions_are_left_out_of_the_pages_and_installed_again(tmp_path):
    with start_corner("corner_guard", tmp_path) as w:
        area = int(next(ln for ln in w.lines() if ln.startswith("area ")).split()[1], 16)
        want = [False, False, True, True, False, False, False, False]
        assert _guard_pages(w.pid, area, 8) == want
        dump_restore(w, tmp_path)
        assert _guard_pages(w.pid, area, 8) == want
        check_round(w)


# the VmFlags code (smaps) each area of corner_advice.c must show, before and after
ADVICE_CODES = {"seq": "sr", "rand": "rr", "dontfork": "dc", "wipeonfork": "wf", "dontdump": "dd",
                "huge": "hg", "nohuge": "nh", "locked": "lo", "mlocked": "lo", "growsdown": "gd",
                "noreserve": "nr"}


def _vm_flags(pid: int, at: int) -> set[str]:
    """The advice codes among the VmFlags of the mapping holding address AT (two areas with
    the same flags may come back as one mapping: the kernel merges them)."""
    found = False
    with open(f"/proc/{pid}/smaps") as f:
        for line in f:
            if "-" in line.split(None, 1)[0] and not line.startswith("VmFlags"):
                lo, hi = (int(x, 16) for x in line.split(None, 1)[0].split("-"))
                found = lo <= at < hi
            elif found and line.startswith("VmFlags:"):
                return set(line.split()[1:]) & set(ADVICE_CODES.values())
    raise AssertionError(f"no mapping at {at:#x}")


def test_vma_advice_and_flags_come_back_and_act_across_a_fork(tmp_path):
    with start_corner("corner_advice", tmp_path) as w:
        areas = {ln.split()[1]: int(ln.split()[2], 16) for ln in w.lines() if ln.startswith("area ")}
        assert not w.failures(), "\n".join(w.failures())
        before = {name: _vm_flags(w.pid, at) for name, at in areas.items()}
        assert before == {name: {code} for name, code in ADVICE_CODES.items()}
        images = dump_restore(w, tmp_path)
        assert {name: _vm_flags(w.pid, at) for name, at in areas.items()} == before
        check_round(w)
        # stored as CRIU stores them: advice as bits 1 << MADV_x of madv, the rest as mmap flags
        vmas = {v["start"]: v for v in crit_decode(images / f"mm-{w.pid}.img")["entries"][0]["vmas"]}
        madv = {"seq": 2, "rand": 1, "dontfork": 10, "wipeonfork": 18, "dontdump": 16, "huge": 14, "nohuge": 15}
        for name, advice in madv.items():
            assert vmas[areas[name]].get("madv") == 1 << advice, name
        for name, flag in {"locked": 0x2000, "mlocked": 0x2000, "growsdown": 0x100, "noreserve": 0x4000}.items():
            assert vmas[areas[name]]["flags"] & flag and not vmas[areas[name]].get("madv"), name


def test_locked_and_advised_areas_come_back_under_lazy_pages(tmp_path):
    """64-page areas (lazy ones): MAP_LOCKED would fill a locked area with zeros before the
    userfaultfd; restore mlocks it once the server answers, and every page holds its data."""
    from restore_helpers import end_lazy_restore
    from test_lazy_restore import dumped, lazy_restore, wait_served
    w = start_corner("corner_advice", tmp_path, 64)
    res = None
    try:
        areas = {ln.split()[1]: int(ln.split()[2], 16) for ln in w.lines() if ln.startswith("area ")}
        before = {name: _vm_flags(w.pid, at) for name, at in areas.items()}
        dumped(w, tmp_path / "img")
        res = lazy_restore(tmp_path / "img")
        w.adopt_restored()
        assert res["lazy_pages"] > 0
        assert {name: _vm_flags(w.pid, at) for name, at in areas.items()} == before
        check_round(w)
        assert wait_served(res) == 0
    finally:
        end_lazy_restore(w, res)
