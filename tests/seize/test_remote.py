"""Remote system calls in seized threads: results, memory, restarts, exact restore, uffd."""
from __future__ import annotations

import os
import re
import signal
import time

import pytest

from coldsnap.kernel import pidfd, ptrace, uffd
from coldsnap.kernel.libc import SYS
from coldsnap.kernel.procfs import read_maps
from coldsnap.seize.freezer import freeze
from coldsnap.seize.remote import RemoteCalls
from seize_helpers import assert_running_untraced, syscall_nr, wait_until

MODES = ["step", "syscall"]
ERESTARTSYS, ERESTARTNOHAND, ERESTART_RESTARTBLOCK = -512, -514, -516


def _signed(v: int) -> int:
    return v - (1 << 64) if v >> 63 else v


@pytest.mark.parametrize("mode", MODES)
def test_getpid_gettid_in_each_thread(spawn, workload_bin, mode):
    w = spawn([workload_bin("seize_threads"), "3"])
    with freeze(w.pid) as task:
        for tid in task.tids:
            with RemoteCalls(task, tid, mode=mode) as rc:
                assert rc.call(SYS.getpid) == w.pid
                assert rc.call(SYS.gettid) == tid
    assert_running_untraced(w.pid)


def test_checked_raises_oserror(spawn, workload_bin):
    w = spawn([workload_bin("seize_reader")])
    with freeze(w.pid) as task, RemoteCalls(task) as rc:
        assert rc.call(SYS.close, 9999) == -9  # raw -EBADF
        with pytest.raises(OSError) as e:
            rc.checked(SYS.close, 9999, what="close")
        assert e.value.errno == 9
    assert w.send("ok") == "got ok"


@pytest.mark.parametrize("mode", MODES)
def test_mmap_munmap_visible_in_maps(spawn, workload_bin, mode):
    w = spawn([workload_bin("seize_reader")])
    with freeze(w.pid) as task, RemoteCalls(task, mode=mode) as rc:
        addr = rc.checked(SYS.mmap, 0, 5 * 4096, 1, 0x22, -1, 0)  # PROT_READ, MAP_PRIVATE|ANON
        assert any(m.start <= addr and addr + 5 * 4096 <= m.end and m.perms == "r--p" for m in read_maps(w.pid))
        rc.checked(SYS.munmap, addr, 5 * 4096)
        assert not any(m.start <= addr < m.end for m in read_maps(w.pid))
    assert w.send("x") == "got x"


@pytest.mark.parametrize("mode", MODES)
def test_registers_sigmask_and_maps_restored(spawn, workload_bin, mode):
    w = spawn([workload_bin("seize_threads"), "2"])
    with freeze(w.pid) as task:
        for tid in task.tids:
            regs = ptrace.get_regs(tid)
            mask = ptrace.get_sigmask(tid)
            fp = ptrace.get_regset(tid, ptrace.NT_X86_XSTATE)
            maps = read_maps(w.pid)
            with RemoteCalls(task, tid, mode=mode) as rc:
                addr = rc.write_scratch(b"hello scratch", 100)
                assert rc.read_scratch(13, 100) == b"hello scratch"
                assert rc.call(SYS.write, 1 << 20, addr, 13) == -9  # fd 2**20 is closed: EBADF
                assert any(m.start <= addr < m.end for m in read_maps(w.pid))
            assert ptrace.get_regs(tid) == regs
            assert ptrace.get_sigmask(tid) == mask
            assert ptrace.get_regset(tid, ptrace.NT_X86_XSTATE) == fp
            assert read_maps(w.pid) == maps  # scratch page gone
    assert_running_untraced(w.pid)
    assert w.send("sum").startswith("sum ")


def test_restore_after_exception_in_session(spawn, workload_bin):
    w = spawn([workload_bin("seize_reader")])
    with freeze(w.pid) as task:
        regs, maps = ptrace.get_regs(w.pid), read_maps(w.pid)
        with pytest.raises(ZeroDivisionError):
            with RemoteCalls(task) as rc:
                rc.scratch()
                rc.call(SYS.getpid)
                1 / 0
        assert ptrace.get_regs(w.pid) == regs
        assert read_maps(w.pid) == maps
    assert w.send("y") == "got y"


def test_session_left_open_is_closed_by_resume(spawn, workload_bin):
    w = spawn([workload_bin("seize_reader")])
    with freeze(w.pid) as task:
        maps = read_maps(w.pid)
        rc = RemoteCalls(task)
        rc.open()
        rc.scratch()
    assert rc.saved is None
    assert read_maps(w.pid) == maps
    assert w.send("z") == "got z"


@pytest.mark.parametrize("mode", MODES)
def test_read_on_pipe_restarts(spawn, workload_bin, mode):
    w = spawn([workload_bin("seize_reader")])
    wait_until(lambda: syscall_nr(w.pid) == SYS.read, what="target in read()")
    with freeze(w.pid) as task:
        regs = ptrace.get_regs(w.pid)
        assert regs.orig_rax == SYS.read and _signed(regs.rax) == ERESTARTSYS
        with RemoteCalls(task, mode=mode) as rc:
            rc.write_scratch(b"z" * 64)
            for _ in range(20):
                assert rc.call(SYS.getpid) == w.pid
    assert w.send("hello") == "got hello"   # not EINTR, not a lost read
    assert w.send("again") == "got again"


@pytest.mark.parametrize("how", ["clock", "nano"])
def test_sleep_restarts_with_remaining_time(spawn, workload_bin, how):
    w = spawn([workload_bin("seize_sleeper"), "700", how])
    wait_until(lambda: syscall_nr(w.pid) is not None, what="target asleep")
    time.sleep(0.2)
    with freeze(w.pid) as task:
        regs = ptrace.get_regs(w.pid)
        assert _signed(regs.rax) == ERESTART_RESTARTBLOCK
        with RemoteCalls(task) as rc:
            rc.scratch()
            for _ in range(10):
                rc.call(SYS.gettid)
        time.sleep(0.1)
    m = re.fullmatch(r"slept ([\d.]+) rc=(\d+)", w.proc.stdout.readline().decode().strip())
    assert m and m.group(2) == "0"
    assert 700 <= float(m.group(1)) < 1000


def test_python_sleep_restarts(spawn, python_exe):
    code = ("import time; print('ready', flush=True); t=time.monotonic(); time.sleep(0.7);"
            "print(round((time.monotonic()-t)*1000), flush=True); input()")
    w = spawn([python_exe, "-c", code])
    wait_until(lambda: syscall_nr(w.pid) is not None, what="python asleep")
    time.sleep(0.2)
    with freeze(w.pid) as task:
        regs = ptrace.get_regs(w.pid)
        assert _signed(regs.rax) in (ERESTARTNOHAND, ERESTART_RESTARTBLOCK, ERESTARTSYS)
        with RemoteCalls(task) as rc:
            rc.write_scratch(b"abc")
            rc.call(SYS.getpid)
        time.sleep(0.1)
    elapsed = int(w.proc.stdout.readline())
    assert 700 <= elapsed < 1000


def test_signal_sent_during_injection_is_kept(spawn, python_exe):
    code = ("import signal,sys,time; signal.signal(signal.SIGUSR1, lambda *a: print('usr1', flush=True));"
            "print('ready', flush=True); time.sleep(30)")
    w = spawn([python_exe, "-c", code])
    wait_until(lambda: syscall_nr(w.pid) is not None, what="python asleep")
    with freeze(w.pid) as task, RemoteCalls(task) as rc:
        rc.call(SYS.getpid)
        os.kill(w.pid, signal.SIGUSR1)   # blocked during the session: stays pending
        rc.call(SYS.getpid)
        rc.call(SYS.getpid)
    assert w.proc.stdout.readline().strip() == b"usr1"


def test_uffd_taken_from_target(spawn, workload_bin):
    w = spawn([workload_bin("seize_memory"), "64"])
    _, addr_s, len_s = w.ready.split()
    addr, length = int(addr_s, 16), int(len_s)
    with freeze(w.pid) as task:
        with RemoteCalls(task) as rc:
            fd = rc.checked(SYS.userfaultfd, os.O_CLOEXEC | os.O_NONBLOCK, what="userfaultfd")
            assert os.path.exists(f"/proc/{w.pid}/fdinfo/{fd}")
            pfd = pidfd.pidfd_open(w.pid)
            try:
                local = pidfd.pidfd_getfd(pfd, fd)
            finally:
                os.close(pfd)
            rc.checked(SYS.close, fd, what="close uffd")
        assert not os.path.exists(f"/proc/{w.pid}/fdinfo/{fd}")
        try:
            res = uffd.api(local, uffd.UFFD_FEATURE_WP_ASYNC | uffd.UFFD_FEATURE_WP_UNPOPULATED)
            assert res.available & uffd.UFFD_FEATURE_WP_ASYNC
            ioctls = uffd.register(local, addr, length, uffd.UFFDIO_REGISTER_MODE_WP)
            assert ioctls & (1 << 0x06)   # _UFFDIO_WRITEPROTECT
            uffd.writeprotect(local, addr, length, True)
        except BaseException:
            os.close(local)
            raise
    try:
        for i in range(1, 4):   # writes into protected pages resolve asynchronously
            assert w.send("write") == f"ok {i}"
        assert_running_untraced(w.pid)
        uffd.unregister(local, addr, length)
    finally:
        os.close(local)
    assert w.send("write") == "ok 4"


def test_remote_in_churning_process(spawn, workload_bin):
    w = spawn([workload_bin("seize_churn"), "3"])
    for _ in range(5):
        with freeze(w.pid) as task:
            for tid in task.tids:
                with RemoteCalls(task, tid) as rc:
                    assert rc.call(SYS.gettid) == tid
        assert_running_untraced(w.pid)
    assert w.send("count").startswith("count ")


def _sig_bits(pid: int, key: str) -> int:
    line = next(ln for ln in open(f"/proc/{pid}/status") if ln.startswith(key + ":"))
    return int(line.split()[1], 16)


@pytest.mark.parametrize("setup, mode", [
    ("signal.signal(signal.SIGTRAP, lambda *a: None); signal.pthread_sigmask(signal.SIG_BLOCK, range(1, 65))", "step"),
    ("signal.signal(signal.SIGTRAP, signal.SIG_IGN)", "syscall"),
])
def test_sigtrap_disposition_and_mask_survive(spawn, python_exe, setup, mode):
    code = f"import signal,time; {setup}; print('ready', flush=True); time.sleep(30)"
    w = spawn([python_exe, "-c", code])
    wait_until(lambda: syscall_nr(w.pid) is not None, what="python asleep")
    before = {k: _sig_bits(w.pid, k) for k in ("SigBlk", "SigIgn", "SigCgt")}
    with freeze(w.pid) as task:
        with RemoteCalls(task) as rc:
            assert rc.mode == mode
            for _ in range(3):
                assert rc.call(SYS.getpid) == w.pid
    assert {k: _sig_bits(w.pid, k) for k in ("SigBlk", "SigIgn", "SigCgt")} == before
    assert_running_untraced(w.pid)
