"""Shared memory across a restored tree: each object made once, mapped again by every process
that had it, so that the processes go on seeing each other's writes."""
from __future__ import annotations

import os
import time

from procs import coldsnap
from shm_helpers import ROLES, Family, shared_inodes, start_family
from tree_helpers import reap_orphans


def _dump_restore(fam: Family, img) -> None:
    coldsnap("dump", "-t", fam.proc.pid, "-D", img, check=True)
    fam.proc.wait(timeout=10)
    reap_orphans(pids=list(fam.pids.values()))
    coldsnap("restore", "-D", img, "-d", check=True)


def _assert_shared_after(fam: Family, before: dict[str, int]) -> None:
    """Every process went on from its own tick and saw the others' slots grow past what
    any of them had written before the dump, in every region."""
    fam.wait_ticks(4)
    assert fam.fails() == []
    for r in ROLES:
        ticks = fam.ticks(r)
        assert [n for n, _ in ticks] == list(range(1, len(ticks) + 1)), (r, ticks[-3:])
        last_n, views = ticks[-1]
        assert last_n > before[r] + 2
        for kind in fam.kinds:
            slots = views[kind]
            assert slots[ROLES.index(r)] == last_n
            for other in ROLES:
                assert slots[ROLES.index(other)] > before[other], (r, kind, other, slots, before)


def test_anonymous_and_dev_shm_memory_inherited_across_fork(tmp_path):
    fam = start_family(tmp_path / "logs", "anon", "posix")
    restored = False
    try:
        fam.wait_ticks(2)
        _dump_restore(fam, tmp_path / "img")
        restored = True
        before = {r: fam.ticks(r)[-1][0] for r in ROLES}
        inodes = {r: shared_inodes(fam.pids[r])["/dev/zero (deleted)"] for r in ROLES}
        assert len(set(inodes.values())) == 1, inodes       # one object, mapped by all three
        _assert_shared_after(fam, before)
    finally:
        fam.cleanup(restored)


def _sysv_line(kind: str, key: int) -> list[str] | None:
    for line in open(f"/proc/sysvipc/{kind}").read().splitlines()[1:]:
        f = line.split()
        if int(f[0]) & 0xFFFFFFFF == key:
            return f
    return None


def test_sysv_segment_and_semaphores_keep_ids_keys_and_values(tmp_path):
    fam = start_family(tmp_path / "logs", "sysv", "anon")
    restored = False
    try:
        fam.wait_ticks(2)
        shm, sem = _sysv_line("shm", fam.key), _sysv_line("sem", fam.key)
        assert shm and sem
        _dump_restore(fam, tmp_path / "img")
        restored = True
        before = {r: fam.ticks(r)[-1][0] for r in ROLES}
        shm2, sem2 = _sysv_line("shm", fam.key), _sysv_line("sem", fam.key)
        assert shm2[:4] == shm[:4] and shm2[6:9] == shm[6:9]      # key, id, mode, size; nattch, uid, gid
        assert sem2[:6] == sem[:6]                                # key, id, mode, nsems, uid, gid
        _assert_shared_after(fam, before)                         # sem 1 still 7, sem 0 a working lock
    finally:
        fam.cleanup(restored)


def test_memfd_fds_mappings_and_seals(tmp_path):
    """The counters memfd (fd 50 in p and b, mapping only in a) and the sealed one (fd 51,
    read-only mapping) come back once each: same inode in every process, name, size,
    contents, seals (checked by the workload every tick), fd offsets."""
    fam = start_family(tmp_path / "logs", "memfd")
    restored = False
    try:
        fam.wait_ticks(2)
        before_links = {r: os.readlink(f"/proc/{fam.pids[r]}/fd/50") for r in ("p", "b")}
        _dump_restore(fam, tmp_path / "img")
        restored = True
        before = {r: fam.ticks(r)[-1][0] for r in ROLES}
        maps = {r: shared_inodes(fam.pids[r]) for r in ROLES}
        for name in ("/memfd:cs-counters (deleted)", "/memfd:cs-sealed (deleted)"):
            assert len({maps[r][name] for r in ROLES}) == 1, (name, maps)
        for r in ("p", "b"):
            assert os.readlink(f"/proc/{fam.pids[r]}/fd/50") == before_links[r]
            assert os.stat(f"/proc/{fam.pids[r]}/fd/50").st_ino == maps["a"]["/memfd:cs-counters (deleted)"]
            assert os.stat(f"/proc/{fam.pids[r]}/fd/51").st_size == 16
        assert not os.path.exists(f"/proc/{fam.pids['a']}/fd/50")
        _assert_shared_after(fam, before)
    finally:
        fam.cleanup(restored)


CHILD_PRIVATE_MEMFD = """
import mmap, os, sys, time
r, w = os.pipe()
pid = os.fork()
if pid == 0:
    fd = os.memfd_create("cs-private")
    os.ftruncate(fd, 4096)
    m = mmap.mmap(fd, 4096, flags=mmap.MAP_PRIVATE)
    os.write(w, b"%d" % os.getpid())
    time.sleep(600)
    os._exit(0)
print(os.read(r, 32).decode(), flush=True)
os.waitpid(pid, 0)
"""


def test_a_refusal_names_the_process_and_the_mapping(tmp_path):
    """A private mapping of a memfd in a child: the dump of the tree says which process and
    which mapping, and leaves the tree running."""
    import subprocess
    import sys
    proc = subprocess.Popen([sys.executable, "-c", CHILD_PRIVATE_MEMFD], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                            stdin=subprocess.DEVNULL, start_new_session=True)
    child = 0
    try:
        child = int(proc.stdout.readline())
        run = coldsnap("dump", "-t", proc.pid, "-D", tmp_path / "img")
        assert run.returncode == 5 and run.stderr.count("\n") == 1, run.stderr
        area = next(ln.split()[0] for ln in open(f"/proc/{child}/maps") if "/memfd:cs-private" in ln)
        start = "0x" + area.split("-")[0].lstrip("0")
        assert f"process {child}: mapping {start}-" in run.stderr, run.stderr
        assert "private mapping of memfd /memfd:cs-private" in run.stderr, run.stderr
        assert not (tmp_path / "img").exists()
        assert proc.poll() is None and os.path.exists(f"/proc/{child}")
    finally:
        for p in (child, proc.pid):
            if p:
                try:
                    os.kill(p, 9)
                except ProcessLookupError:
                    pass
        proc.wait(timeout=10)
        reap_orphans(pids=[child])


ATTACH = """
import ctypes, sys, time
libc = ctypes.CDLL(None, use_errno=True)
libc.shmat.restype = ctypes.c_void_p
assert libc.shmat(int(sys.argv[1]), None, 0) not in (None, ctypes.c_void_p(-1).value)
print("attached", flush=True)
time.sleep(600)
"""


def test_sysv_restore_refuses_a_segment_someone_else_holds(tmp_path):
    """After the dump, a process outside attaches the dumped segment: restore refuses in one
    line, makes no process and touches no object; once it is gone, restore replaces the
    leftover segment and the family goes on."""
    import subprocess
    import sys
    fam = start_family(tmp_path / "logs", "sysv")
    restored, holder = False, None
    try:
        fam.wait_ticks(2)
        coldsnap("dump", "-t", fam.proc.pid, "-D", tmp_path / "img", check=True)
        fam.proc.wait(timeout=10)
        reap_orphans(pids=list(fam.pids.values()))
        shm, sem = _sysv_line("shm", fam.key), _sysv_line("sem", fam.key)
        holder = subprocess.Popen([sys.executable, "-c", ATTACH, shm[1]], stdout=subprocess.PIPE,
                                  stdin=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        assert holder.stdout.readline() == b"attached\n"
        run = coldsnap("restore", "-D", tmp_path / "img", "-d")
        assert run.returncode != 0 and run.stderr.count("\n") == 1, run.stderr
        assert f"SysV shared memory {shm[1]} (key {fam.key:#x}): still attached by 1 process" in run.stderr
        assert not any(os.path.exists(f"/proc/{p}") for p in fam.pids.values())
        assert _sysv_line("shm", fam.key)[:4] == shm[:4] and _sysv_line("sem", fam.key)[:2] == sem[:2]
        holder.kill()
        holder.wait(timeout=10)
        coldsnap("restore", "-D", tmp_path / "img", "-d", check=True)
        restored = True
        before = {r: fam.ticks(r)[-1][0] for r in ROLES}
        assert _sysv_line("shm", fam.key)[:4] == shm[:4]
        _assert_shared_after(fam, before)
    finally:
        if holder is not None and holder.poll() is None:
            holder.kill()
            holder.wait(timeout=10)
        fam.cleanup(restored)


MARKED_FOR_REMOVAL = """
import ctypes, sys, time
libc = ctypes.CDLL(None, use_errno=True)
libc.shmat.restype = ctypes.c_void_p
sid = libc.shmget(0, 8192, 0o1600)
addr = libc.shmat(sid, None, 0)
buf = (ctypes.c_char * 8192).from_address(addr)
buf[4096:4101] = b"hello"
libc.shmctl(sid, 0, None)                       # IPC_RMID: gone once nobody is attached
out = open(sys.argv[1], "a", buffering=1)
out.write("id %d\\n" % sid)
n = 0
while True:
    n += 1
    buf[0] = n % 256
    out.write("tick %d %s %d\\n" % (n, buf[4096:4101].decode(), buf[0][0] if isinstance(buf[0], bytes) else buf[0]))
    time.sleep(0.02)
"""


def test_sysv_segment_marked_for_removal_comes_back_marked(tmp_path):
    import re
    import subprocess
    import sys
    log = tmp_path / "log"
    proc = subprocess.Popen([sys.executable, "-c", MARKED_FOR_REMOVAL, str(log)], stdin=subprocess.DEVNULL,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    restored = False
    try:
        deadline = time.monotonic() + 10
        while "tick 3 " not in (log.read_text() if log.exists() else ""):
            assert time.monotonic() < deadline and proc.poll() is None
            time.sleep(0.02)
        sid = re.search(r"^id (\d+)$", log.read_text(), re.M).group(1)
        line = next(ln.split() for ln in open("/proc/sysvipc/shm") if ln.split()[1] == sid)
        assert int(line[2], 8) & 0o1000                         # SHM_DEST
        coldsnap("dump", "-t", proc.pid, "-D", tmp_path / "img", check=True)
        proc.wait(timeout=10)
        assert not any(ln.split()[1] == sid for ln in open("/proc/sysvipc/shm"))    # gone with it
        last = int(re.findall(r"^tick (\d+) ", log.read_text(), re.M)[-1])
        coldsnap("restore", "-D", tmp_path / "img", "-d", check=True)
        restored = True
        deadline = time.monotonic() + 10
        while f"tick {last + 3} " not in log.read_text():
            assert time.monotonic() < deadline, log.read_text()[-300:]
            time.sleep(0.02)
        assert re.search(rf"^tick {last + 1} hello {(last + 1) % 256}$", log.read_text(), re.M)
        line = next(ln.split() for ln in open("/proc/sysvipc/shm") if ln.split()[1] == sid)
        assert int(line[2], 8) & 0o1000 and int(line[6]) == 1   # marked again, attached once
    finally:
        try:
            os.kill(proc.pid, 9)
        except ProcessLookupError:
            pass
        if not restored:
            proc.wait(timeout=10)
        reap_orphans(pids=[proc.pid])
