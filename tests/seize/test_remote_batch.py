"""Batches of injected system calls: one round trip for many calls, the first error ends
them, foreign signals kept, the code page never writable, MDWE targets."""
from __future__ import annotations

import os
import signal
import struct
import threading
import time

import pytest

from coldsnap.kernel import ptrace
from coldsnap.kernel.libc import SYS
from coldsnap.kernel.procfs import read_maps
from coldsnap.seize.freezer import freeze
from coldsnap.seize.remote import RemoteCalls, sys_call
from seize_helpers import assert_running_untraced, syscall_nr, wait_until

EBADF = 9
MAP_PRIVATE_ANON, MAP_FIXED_NOREPLACE = 0x22, 0x100000
NR_nanosleep = 35


def test_batch_results_in_one_round_trip(spawn, workload_bin):
    w = spawn([workload_bin("seize_threads"), "2"])
    with freeze(w.pid) as task:
        regs, mask, maps = ptrace.get_regs(w.pid), ptrace.get_sigmask(w.pid), read_maps(w.pid)
        with RemoteCalls(task) as rc:
            rc.call(SYS.getpid)
            assert rc.code_page()                   # mapped (with the scratch area) on first use
            trips, calls = rc.stats.trips, rc.stats.calls
            got = rc.batch([sys_call(SYS.getpid), sys_call(SYS.gettid), sys_call(SYS.close, 9999, may_fail=True),
                            sys_call(SYS.mmap, 0, 3 * 4096, 1, MAP_PRIVATE_ANON, -1, 0), sys_call(110)])      # getppid
            assert got[:3] == [w.pid, w.pid, -EBADF] and got[4] == os.getpid()
            assert any(m.start == got[3] and m.end == got[3] + 3 * 4096 for m in read_maps(w.pid))
            assert (rc.stats.trips - trips, rc.stats.calls - calls) == (1, 5)
            code = [m for m in read_maps(w.pid) if any(s <= m.start < e for s, e in rc.spans) and "x" in m.perms]
            assert [m.perms for m in code] == ["r-xp"]          # never writable and executable
            rc.checked(SYS.munmap, got[3], 3 * 4096)
        assert ptrace.get_regs(w.pid) == regs and ptrace.get_sigmask(w.pid) == mask
        assert read_maps(w.pid) == maps                         # scratch and code page gone
    assert_running_untraced(w.pid)
    assert w.send("sum").startswith("sum ")


def test_first_error_ends_the_batch(spawn, workload_bin):
    w = spawn([workload_bin("seize_reader")])
    with freeze(w.pid) as task, RemoteCalls(task) as rc:
        rc.code_page()                                  # scratch and code page mapped first
        spot = rc.checked(SYS.mmap, 0, 4096, 1, MAP_PRIVATE_ANON, -1, 0)
        rc.checked(SYS.munmap, spot, 4096)
        later = sys_call(SYS.mmap, spot, 4096, 1, MAP_PRIVATE_ANON | MAP_FIXED_NOREPLACE, -1, 0, what="mmap later")
        calls = [sys_call(SYS.getpid), sys_call(SYS.close, 9999, what="close 9999"), later]
        assert rc.batch(calls) == [w.pid, -EBADF]
        assert not any(m.start <= spot < m.end for m in read_maps(w.pid))    # not run
        with pytest.raises(OSError) as e:
            rc.batch_checked(calls)
        assert e.value.errno == EBADF and "close 9999" in str(e.value)
        assert not any(m.start <= spot < m.end for m in read_maps(w.pid))
        assert rc.batch_checked([sys_call(SYS.getpid)] * 3) == [w.pid] * 3   # the session goes on
    assert w.send("ok") == "got ok"


def test_batch_longer_than_its_table(spawn, workload_bin):
    w = spawn([workload_bin("seize_reader")])
    with freeze(w.pid) as task, RemoteCalls(task) as rc:      # one page: 64 entries a table
        rc.code_page()
        trips = rc.stats.trips
        assert rc.batch_checked([sys_call(SYS.gettid)] * 150) == [w.pid] * 150
        assert rc.stats.trips - trips == 3
        got = rc.batch([sys_call(SYS.getpid)] * 70 + [sys_call(SYS.close, 9999)] + [sys_call(SYS.getpid)] * 70)
        assert got == [w.pid] * 70 + [-EBADF]
    assert w.send("ok") == "got ok"


def test_first_call_of_a_session_in_a_batch(spawn, workload_bin):
    w = spawn([workload_bin("seize_reader")])
    wait_until(lambda: syscall_nr(w.pid) == SYS.read, what="target in read()")
    with freeze(w.pid) as task:
        mask = ptrace.get_sigmask(w.pid)
        with RemoteCalls(task) as rc:
            assert rc.batch_checked([sys_call(SYS.getpid)] * 4) == [w.pid] * 4
        assert ptrace.get_sigmask(w.pid) == mask
    assert w.send("hello") == "got hello"       # the read restarted


def test_syscall_mode_batches_one_call_at_a_time(spawn, workload_bin):
    w = spawn([workload_bin("seize_reader")])
    with freeze(w.pid) as task, RemoteCalls(task, mode="syscall") as rc:
        assert rc.batch([sys_call(SYS.getpid), sys_call(SYS.close, 9999), sys_call(SYS.getpid)]) == [w.pid, -EBADF]
        assert rc.stats.trips == rc.stats.calls == 2
    assert w.send("ok") == "got ok"


@pytest.mark.parametrize("foreign", [signal.SIGTRAP, signal.SIGSTOP])
def test_foreign_signals_during_a_batch(spawn, python_exe, foreign):
    """A batch of 30 sleeps of 5 ms; meanwhile SIGUSR1 (blocked: stays pending) and a signal
    that stops the thread mid-batch (SIGTRAP, SIGSTOP): kept for after the session, the
    interrupted sleep restarted, every call run once."""
    code = ("import signal,sys,time\n"
            "for s in (signal.SIGUSR1, signal.SIGTRAP):\n"
            "    signal.signal(s, lambda n, f: print(signal.Signals(n).name, flush=True))\n"
            "print('ready', flush=True)\n"
            "while True: time.sleep(1)\n")
    w = spawn([python_exe, "-c", code])
    wait_until(lambda: syscall_nr(w.pid) is not None, what="python asleep")

    def send() -> None:
        time.sleep(0.04)
        os.kill(w.pid, signal.SIGUSR1)
        time.sleep(0.02)
        os.kill(w.pid, foreign)

    with freeze(w.pid) as task, RemoteCalls(task) as rc:
        rc.code_page()
        ts = rc.write_scratch(struct.pack("<qq", 0, 5_000_000))     # the table comes after it
        sleeps = [sys_call(NR_nanosleep, ts, 0, what="nanosleep")] * 30
        sender = threading.Thread(target=send)
        t0 = time.monotonic()
        sender.start()
        try:
            assert rc.batch_checked(sleeps, table_off=64) == [0] * 30
        finally:
            sender.join()
        assert 0.15 <= time.monotonic() - t0 < 2
    if foreign == signal.SIGSTOP:
        wait_until(lambda: open(f"/proc/{w.pid}/stat").read().split(")")[1].split()[0] == "T", what="stopped")
        os.kill(w.pid, signal.SIGCONT)
    want = {"SIGUSR1"} | ({"SIGTRAP"} if foreign == signal.SIGTRAP else set())
    assert {w.proc.stdout.readline().decode().strip() for _ in want} == want


def test_batch_in_an_mdwe_process(spawn, python_exe):
    """PR_SET_MDWE(REFUSE_EXEC_GAIN): no mapping may become executable or be W+X; a fresh
    r-x page written through /proc/PID/mem is neither."""
    code = ("import ctypes,time; libc = ctypes.CDLL(None, use_errno=True)\n"
            "assert libc.prctl(65, 1, 0, 0, 0) == 0, ctypes.get_errno()\n"
            "print('ready', flush=True)\n"
            "while True: time.sleep(1)\n")
    w = spawn([python_exe, "-c", code])
    wait_until(lambda: syscall_nr(w.pid) is not None, what="python asleep")
    with freeze(w.pid) as task, RemoteCalls(task) as rc:
        # the kernel refuses a W+X mapping here: the batch's page must do without
        assert rc.call(SYS.mmap, 0, 4096, 7, MAP_PRIVATE_ANON, -1, 0) == -13   # EACCES
        trips = rc.stats.trips
        assert rc.batch_checked([sys_call(SYS.getpid)] * 10) == [w.pid] * 10
        assert rc.stats.trips - trips <= 3          # scratch, code page, the batch
    assert_running_untraced(w.pid)


def test_target_killed_during_a_batch(spawn, workload_bin):
    """SIGKILL in the middle of a batch: NoSuchProcess, and the freeze lets go cleanly."""
    from coldsnap.errors import NoSuchProcess

    w = spawn([workload_bin("seize_reader")])
    with freeze(w.pid) as task:
        with pytest.raises(NoSuchProcess):
            with RemoteCalls(task) as rc:
                rc.code_page()
                ts = rc.write_scratch(struct.pack("<qq", 0, 5_000_000))
                killer = threading.Timer(0.05, os.kill, (w.pid, signal.SIGKILL))
                killer.start()
                try:
                    rc.batch([sys_call(NR_nanosleep, ts, 0)] * 100, table_off=64)
                finally:
                    killer.cancel()
    w.proc.wait(timeout=5)          # reaped already by the session's wait: status unknown here
    assert not os.path.exists(f"/proc/{w.pid}")
