"""`coldsnap dump` on real processes: what the images hold, how the task ends, refusals."""
from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path

import numpy as np
import pytest

from coldsnap import TargetError
from coldsnap.dump.dump import dump
from coldsnap.dump.iterate import pre_dump_tracked
from coldsnap.errors import CsError
from coldsnap.images.chain import PageChain
from coldsnap.images.directory import ImageDir
from coldsnap.images.framing import read_image, read_single
from coldsnap.images.pages import PE_PARENT, PE_PRESENT, PagemapReader
from coldsnap.kernel.procfs import read_maps, read_status
from coldsnap.memory.scan import scan_saved_pages
from coldsnap.memory.tracking import PARK_FD_MIN
from coldsnap.memory.vma import MAP_ANONYMOUS, MAP_GROWSDOWN, MAP_SHARED, Kind, classify_all

from predump_helpers import PG, coldsnap, image_pages, wait_quiet
from procs import crit_decode_each, need_crit
from rseq_mask import masked, rseq_areas

FILLER = 0x100000000000
UFFD_LINK = "anon_inode:[userfaultfd]"


def crit_decode_dir(root: Path) -> dict[str, dict]:
    """`crit decode` of every image but the raw pages, in parallel; name -> decoded JSON."""
    need_crit()
    names = sorted(p.name for p in root.iterdir() if not p.name.startswith("pages-") and p.is_file())
    return {path.name: d for path, d in crit_decode_each([root / n for n in names]).items()}


def uffd_links(pid: int) -> list[str]:
    fds = os.listdir(f"/proc/{pid}/fd")
    return [fd for fd in fds if os.readlink(f"/proc/{pid}/fd/{fd}") == UFFD_LINK]


def saved_pages_now(pid: int) -> set[int]:
    """Every page a dump must save, per a fresh scan of the (stopped) task, and the whole
    [vdso] (saved for CRIU's restore, which reads it)."""
    vmas = classify_all(read_maps(pid))
    plan, _ = scan_saved_pages(pid, vmas)
    vdso = [(v.start, v.end) for v in vmas if v.name == "[vdso]"]
    return {a for s, e in plan.pairs() + vdso for a in range(s, e, PG)}


def mem_of(pid: int, addrs) -> dict[int, bytes]:
    with open(f"/proc/{pid}/mem", "rb", buffering=0) as mem:
        return {a: os.pread(mem.fileno(), PG, a) for a in addrs}


def assert_running_untraced(pid: int) -> None:
    # (not conftest.proc_state: `conftest` is another module when tests/images is collected too)
    status = read_status(pid)
    state, tracer = status["State"][:1], int(status["TracerPid"])
    assert state in ("S", "R") and tracer == 0, (state, tracer)


@pytest.fixture
def pattern(spawn, workload_bin):
    def start(filler_pages=4096, victim_pages=16):
        w = spawn([workload_bin("mem_pattern"), filler_pages, victim_pages], stderr=subprocess.DEVNULL)
        wait_quiet(w.pid)
        return w
    return start


@pytest.fixture
def mix(spawn, workload_bin, tmp_path):
    def start():
        priv, shared = tmp_path / "private.dat", tmp_path / "shared.dat"
        priv.write_bytes(bytes(range(256)) * 32)
        shared.write_bytes(b"\0" * PG)
        w = spawn([workload_bin("dump_mix"), priv, shared], stderr=subprocess.DEVNULL)
        w.addrs = {k: int(v, 16) for k, v in (kv.split("=") for kv in w.ready.split()[1:])}
        w.files = (priv, shared)
        wait_quiet(w.pid)
        return w
    return start


def test_pages_are_the_memory_and_the_task_runs_on(pattern, tmp_path):
    w = pattern()
    stats = dump(w.pid, tmp_path / "img", leave_running=True)
    os.kill(w.pid, signal.SIGSTOP)
    try:
        pages = image_pages(tmp_path / "img", w.pid)
        assert set(pages) == saved_pages_now(w.pid)
        assert all(FILLER + i * PG in pages for i in range(4096))
        mem = mem_of(w.pid, pages)
        holes = rseq_areas(tmp_path / "img")
        assert [a for a in pages if masked(a, pages[a], holes) != masked(a, mem[a], holes)] == []
    finally:
        os.kill(w.pid, signal.SIGCONT)
    assert stats.pages_written == len(pages) and stats.pages_skipped_parent == 0
    assert_running_untraced(w.pid)
    assert w.send("write 1 5") == "wrote 1"       # still serving
    assert not (tmp_path / "img" / "parent").exists()
    assert all(oct(f.stat().st_mode & 0o777) == "0o600" for f in (tmp_path / "img").iterdir())
    # the pages file allocated before the freeze (ImageSink.prepare) was taken over and cut
    # to the pages written: nothing spare left, no byte more
    files = sorted(f.name for f in (tmp_path / "img").iterdir())
    assert not [f for f in files if "spare" in f] and files.count("pages-1.img") == 1
    assert (tmp_path / "img" / "pages-1.img").stat().st_size == stats.pages_written * PG


def test_a_prepared_pages_file_is_taken_over_or_dropped(tmp_path):
    from coldsnap.dump.sink import ImageSink
    from coldsnap.images.pages import PagemapReader
    from coldsnap.memory.sink import PagemapKey
    with ImageDir.create(tmp_path / "img") as d, ImageSink(d) as sink:
        sink.prepare(PagemapKey(7), 16 * PG)
        sink.prepare(PagemapKey(8), 16 * PG)
        sink.prepare(PagemapKey(9), 16 * PG)
        sink.begin(PagemapKey(7))             # taken over, cut to the 2 pages written
        sink.reserve(2 * PG).pwrite(b"ab" * PG, 0)
        sink.placed(np.array([0x10000], np.uint64), np.array([2 * PG], np.uint64))
        sink.end()
        sink.begin(PagemapKey(8))             # taken over, nothing written: no pages file
        sink.parent(0x20000, 1)
        sink.end()
        sink.close()                          # 9 never begun: dropped
        assert sorted(p.name for p in d.root.iterdir()) == ["pagemap-7.img", "pagemap-8.img", "pages-1.img"]
        with PagemapReader(d, 7) as r:
            assert r.read_pages(0x10000, 2) == b"ab" * PG and r.pages_bytes == 2 * PG
        assert d.path("pages-1.img").stat().st_size == 2 * PG


def test_threads_all_saved_crit_decodes_and_the_task_is_killed(spawn, workload_bin, tmp_path):
    w = spawn([workload_bin("state_threads")], stderr=subprocess.DEVNULL)
    tids = sorted(int(t) for t in os.listdir(f"/proc/{w.pid}/task"))
    assert len(tids) == 4
    dump(w.pid, tmp_path / "img")
    assert w.proc.wait(timeout=5) == -signal.SIGKILL
    img = tmp_path / "img"
    dec = crit_decode_dir(img)
    assert {f"core-{t}.img" for t in tids} <= set(dec)
    assert dec["pstree.img"]["entries"][0]["threads"] == tids
    inv = read_single(img / "inventory.img")
    assert not inv.HasField("pre_dump_mode")
    for t in tids:
        core = read_single(img / f"core-{t}.img")
        assert core.thread_info.fpregs.xsave.cs_xsave_raw
    ids = read_single(img / f"ids-{w.pid}.img")
    assert (img / f"fdinfo-{ids.files_id}.img").exists()
    mm = read_single(img / f"mm-{w.pid}.img")
    files = {e.id: e for e in read_image(img / "files.img")}
    exe = files[mm.exe_file_id].reg
    assert exe.name == str(workload_bin("state_threads")) and exe.flags == os.O_RDONLY
    stack = [v for v in mm.vmas if v.status & 0x2]
    assert len(stack) == 1 and stack[0].flags & MAP_GROWSDOWN
    assert mm.vmas and all(v.shmid in files for v in mm.vmas if v.status & (0x40 | 0x80))
    r = coldsnap("show", img)
    assert r.returncode == 0 and "dump" in r.stdout, r.stderr
    assert "'stmain', 4 threads, running; fds:" in r.stdout, r.stdout      # the name it gave itself


def test_mixed_memory_and_mapped_files(mix, tmp_path):
    w = mix()
    a = w.addrs
    img = tmp_path / "img"
    dump(w.pid, img, leave_running=True)
    pages = image_pages(img, w.pid)
    live = mem_of(w.pid, [a["none"], a["none"] + PG, a["priv"] + PG, a["anon"]])
    # the PROT_NONE page kept its data and is in the image, read through /proc/PID/mem
    assert pages[a["none"] + PG] == live[a["none"] + PG] and live[a["none"] + PG] != bytes(PG)
    assert pages[a["priv"] + PG] == b"\x5a" * PG                 # COW copy of the private file
    assert a["priv"] not in pages and a["shmap"] not in pages    # the files hold these
    # shared anonymous memory: vaddr = byte offset in the object; page 2 is no longer mapped
    vmas = {v.start: v for v in classify_all(read_maps(w.pid))}
    shm = vmas[a["shared"]]
    assert shm.kind is Kind.ANON_SHARED and shm.pgoff == 4 * PG
    with PagemapReader(ImageDir.open(img), shm.inode, shmem=True) as r:
        runs = [(run.vaddr, run.nr_pages, run.flags) for run in r.runs()]
        assert runs == [(5 * PG, 1, PE_PRESENT), (12 * PG, 1, PE_PRESENT)]
        for off in (5, 12):
            assert r.read_pages(off * PG, 1) == mem_of(w.pid, [a["shared"] + (off - 4) * PG]).popitem()[1]
    # mm and files agree on ids
    mm = read_single(img / f"mm-{w.pid}.img")
    files = {e.id: e for e in read_image(img / "files.img")}
    by_start = {v.start: v for v in mm.vmas}
    assert by_start[a["shared"]].shmid == shm.inode
    assert by_start[a["shared"]].flags == MAP_SHARED | MAP_ANONYMOUS
    priv, shared = (files[by_start[a[k]].shmid].reg for k in ("priv", "shmap"))
    assert (priv.name, priv.flags, priv.pos, priv.size) == (str(w.files[0]), os.O_RDONLY, 0, 8192)
    assert (shared.name, shared.flags) == (str(w.files[1]), os.O_RDWR)
    assert by_start[a["shmap"]].fdflags == os.O_RDWR
    fd_ids = {fi.id for fi in read_image(img / "fdinfo-1.img")}
    fs = read_single(img / f"fs-{w.pid}.img")
    mapped = {by_start[a["priv"]].shmid, by_start[a["shmap"]].shmid, mm.exe_file_id}
    assert not mapped & (fd_ids | {fs.cwd_id, fs.root_id})
    assert len(files) == len({e.id for e in files.values()})
    crit_decode_dir(img)
    assert_running_untraced(w.pid)


def test_a_deleted_mapped_file_over_the_ghost_limit_is_refused(mix, tmp_path):
    w = mix()
    w.files[0].unlink()
    with pytest.raises(TargetError, match=r"^mapping 0x[0-9a-f]+-0x[0-9a-f]+: deleted file \S+private\.dat holds"):
        dump(w.pid, tmp_path / "img", ghost_limit=0)
    assert not (tmp_path / "img").exists()
    assert_running_untraced(w.pid)


def test_dump_on_a_tracked_chain_writes_only_what_changed(pattern, tmp_path):
    w = pattern()
    first = pre_dump_tracked(w.pid, tmp_path / "1")
    assert first.uffd_fd >= PARK_FD_MIN and uffd_links(w.pid)
    assert w.send("write 8 2") == "wrote 8"
    wait_quiet(w.pid)
    stats = dump(w.pid, tmp_path / "2", prev_images_dir=tmp_path / "1", leave_running=True)
    assert stats.track_backend == "uffd"
    assert 8 <= stats.pages_written < 100 and stats.pages_skipped_parent > 4000
    assert uffd_links(w.pid) == []
    os.kill(w.pid, signal.SIGSTOP)
    try:
        want = saved_pages_now(w.pid)
        mem = mem_of(w.pid, want)
        with PagemapReader(ImageDir.open(tmp_path / "2"), w.pid) as r:
            parent = {run.vaddr + i * PG for run in r.runs() if run.flags & PE_PARENT
                      for i in range(run.nr_pages)}
        present = set(image_pages(tmp_path / "2", w.pid))
        assert present | parent == want and not present & parent
        holes = rseq_areas(tmp_path / "2")
        with PageChain(tmp_path / "2", w.pid) as chain:
            assert [p for p in sorted(want)
                    if masked(p, chain.lookup(p, 1), holes) != masked(p, mem[p], holes)] == []
    finally:
        os.kill(w.pid, signal.SIGCONT)
    assert_running_untraced(w.pid)


def test_cli_dump_kills_and_reports(pattern, tmp_path):
    w = pattern(filler_pages=64)
    r = coldsnap("dump", "-t", w.pid, "-D", tmp_path / "img")
    assert r.returncode == 0, r.stderr
    assert "killed" in r.stdout
    assert w.proc.wait(timeout=5) == -signal.SIGKILL
    assert (tmp_path / "img" / f"pagemap-{w.pid}.img").exists()


def test_bad_input_is_one_line_and_leaves_nothing(pattern, spawn, python_exe, tmp_path):
    w = pattern(filler_pages=16)
    dead = subprocess.Popen(["true"])
    dead.wait()
    r = coldsnap("dump", "-t", dead.pid, "-D", tmp_path / "a")
    assert r.returncode == 3 and r.stderr.count("\n") == 1 and "no such process" in r.stderr, r.stderr
    assert not (tmp_path / "a").exists()

    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("keep")
    r = coldsnap("dump", "-t", w.pid, "-D", tmp_path / "full")
    assert r.returncode == 6 and r.stderr.count("\n") == 1 and "not empty" in r.stderr, r.stderr
    assert os.listdir(tmp_path / "full") == ["x"]
    assert_running_untraced(w.pid)

    s = spawn([python_exe, "-c", "import socket, sys; a, b = socket.socketpair(); "
               "socket.send_fds(a, [b'x'], [0]); print(b.fileno(), flush=True); sys.stdin.readline()"], stderr=subprocess.DEVNULL)
    r = coldsnap("dump", "-t", s.pid, "-D", tmp_path / "b")
    assert r.returncode != 0 and r.stderr.count("\n") == 1, r.stderr
    assert r.stderr.startswith("coldsnap: ") and f"fd {s.ready}: unix socket" in r.stderr, r.stderr
    assert not (tmp_path / "b").exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []
    assert_running_untraced(s.pid)
    assert_running_untraced(w.pid)
    with pytest.raises(CsError):
        dump(w.pid, tmp_path / "full")
    assert_running_untraced(w.pid)


SPECIAL_MEMORY = {
    "memfd": ("import mmap, os; fd = os.memfd_create('cs'); os.ftruncate(fd, 4096); "
              "m = mmap.mmap(fd, 4096, flags=mmap.MAP_PRIVATE)",
              "private mapping of memfd /memfd:cs is not supported"),
}


@pytest.mark.parametrize("kind", sorted(SPECIAL_MEMORY))
def test_special_shared_memory_is_refused(kind, spawn, python_exe, tmp_path):
    setup, message = SPECIAL_MEMORY[kind]
    w = spawn([python_exe, "-c", f"{setup}; import sys; print('ready', flush=True); sys.stdin.readline()"],
              stderr=subprocess.DEVNULL)
    with pytest.raises(TargetError, match=message):
        dump(w.pid, tmp_path / "img")
    assert not (tmp_path / "img").exists()
    assert_running_untraced(w.pid)
