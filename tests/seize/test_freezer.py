"""Freezing and resuming real processes: all threads, churn, every exit path, refusals."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time

import pytest

from coldsnap.errors import TargetError
from coldsnap.kernel import ptrace
from coldsnap.kernel.procfs import list_tids
from coldsnap.seize.freezer import freeze
from seize_helpers import SRC, assert_frozen_by_us, assert_running_untraced, syscall_nr, thread_states, wait_until


def test_all_threads_stopped_then_running(spawn, workload_bin):
    w = spawn([workload_bin("seize_threads"), "8"])
    before = int(w.send("sum").split()[1])
    with freeze(w.pid) as task:
        assert task.pid == w.pid
        assert len(task.tids) == 9 and task.tids == sorted(task.tids)
        assert_frozen_by_us(w.pid, task.tids)
        time.sleep(0.05)
        assert_frozen_by_us(w.pid, task.tids)
    assert task.resumed and task.frozen_ns and task.frozen_ns > 50_000_000
    assert_running_untraced(w.pid)
    # on a loaded machine the spinners may not have run between the first sum and the freeze,
    # nor yet when the main thread answers again: wait for them to move
    wait_until(lambda: int(w.send("sum").split()[1]) > before, what="counters to move")


def test_thread_churn(spawn, workload_bin):
    w = spawn([workload_bin("seize_churn"), "4"])
    first = int(w.send("count").split()[1])
    for _ in range(20):
        with freeze(w.pid) as task:
            assert task.tids == list_tids(w.pid)  # nothing appears while held
            assert_frozen_by_us(w.pid, task.tids)
            assert len(task.tids) >= 5
        assert_running_untraced(w.pid)
    wait_until(lambda: int(w.send("count").split()[1]) > first + 100, what="churn to go on")


def test_resume_on_exception(spawn, workload_bin):
    w = spawn([workload_bin("seize_threads"), "2"])
    with pytest.raises(RuntimeError, match="boom"):
        with freeze(w.pid) as task:
            assert_frozen_by_us(w.pid, task.tids)
            raise RuntimeError("boom")
    assert task.resumed
    assert_running_untraced(w.pid)


def test_early_resume_is_idempotent(spawn, workload_bin):
    w = spawn([workload_bin("seize_reader")])
    with freeze(w.pid) as task:
        task.resume()
        assert_running_untraced(w.pid)
        frozen = task.frozen_ns
        task.resume()
        assert task.frozen_ns == frozen
        assert w.send("again") == "got again"
    assert task.frozen_ns == frozen


def test_signal_handlers_restored(spawn, workload_bin):
    w = spawn([workload_bin("seize_reader")])
    old = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    with freeze(w.pid):
        assert signal.getsignal(signal.SIGINT) is not old[0]
    assert (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)) == old


def test_sigint_in_freeze_body_raises_interrupted(spawn, workload_bin):
    from coldsnap.errors import Interrupted
    w = spawn([workload_bin("seize_threads"), "3"])
    with pytest.raises(Interrupted, match="SIGINT"):
        with freeze(w.pid):
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(5)
    assert_running_untraced(w.pid)


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM, signal.SIGHUP])
@pytest.mark.parametrize("calls", [False, True])
def test_holder_signalled_resumes(spawn, workload_bin, holder, sig, calls):
    w = spawn([workload_bin("seize_reader")])
    h = holder(w.pid, calls)
    assert all(s == "t" for s, _ in thread_states(w.pid).values())
    h.send_signal(sig)
    _, err = h.communicate(timeout=10)
    assert h.returncode != 0
    assert f"interrupted by {signal.Signals(sig).name}" in err.decode()
    assert_running_untraced(w.pid)
    assert w.send("after") == "got after"


@pytest.mark.parametrize("calls", [False, True])
def test_holder_sigkilled_target_runs_on(spawn, workload_bin, holder, calls):
    w = spawn([workload_bin("seize_threads"), "4"])
    h = holder(w.pid, calls)
    assert all(s == "t" for s, _ in thread_states(w.pid).values())
    h.kill()
    h.communicate()
    wait_until(lambda: all(s not in "tT" and t == 0 for s, t in thread_states(w.pid).values()),
               what="target untraced after the holder's death")
    before = int(w.send("sum").split()[1])
    wait_until(lambda: int(w.send("sum").split()[1]) > before, what="counters to move")
    assert w.proc.poll() is None


# -- refusals ---------------------------------------------------------------------------

def _refused(pid: int, message: str) -> None:
    with pytest.raises(TargetError) as e:
        with freeze(pid):
            pass
    assert str(e.value) == f"cannot seize {pid}: {message}"
    assert "\n" not in str(e.value)


def test_refuse_no_such_process():
    p = subprocess.Popen(["true"])
    p.wait()
    _refused(p.pid, "no such process")


def test_refuse_init():
    _refused(1, "it is init (PID 1)")


def test_refuse_kernel_thread():
    _refused(2, "it is a kernel thread")


def test_refuse_self_and_own_thread():
    _refused(os.getpid(), "it is coldsnap itself (a tree holding coldsnap cannot be dumped by it)")
    ready, done = threading.Event(), threading.Event()
    tid: list[int] = []

    def run() -> None:
        tid.append(threading.get_native_id())
        ready.set()
        done.wait()

    t = threading.Thread(target=run)
    t.start()
    try:
        ready.wait()
        _refused(tid[0], "it is coldsnap itself (a tree holding coldsnap cannot be dumped by it)")
    finally:
        done.set()
        t.join()


def test_refuse_thread_of_other_process(spawn, workload_bin):
    w = spawn([workload_bin("seize_threads"), "1"])
    other = [t for t in list_tids(w.pid) if t != w.pid][0]
    _refused(other, f"it is a thread of process {w.pid}")


def test_refuse_zombie():
    p = subprocess.Popen(["true"])
    try:
        wait_until(lambda: thread_states(p.pid)[p.pid][0] == "Z", what="zombie")
        _refused(p.pid, "it is a zombie")
    finally:
        p.wait()


def test_refuse_already_traced(spawn, workload_bin):
    w = spawn([workload_bin("seize_reader")])
    # another tracer: a child that seizes the target (no stop) and waits to be killed
    code = ("import ctypes,sys,time; l=ctypes.CDLL(None,use_errno=True);"
            "assert l.ptrace(0x4206, int(sys.argv[1]), 0, 0) == 0; print('ok', flush=True); time.sleep(30)")
    tracer = subprocess.Popen([sys.executable, "-c", code, str(w.pid)], stdout=subprocess.PIPE)
    try:
        assert tracer.stdout.readline().strip() == b"ok"
        _refused(w.pid, f"already traced by {tracer.pid}")
    finally:
        tracer.kill()
        tracer.communicate()
    wait_until(lambda: thread_states(w.pid)[w.pid][1] == 0, what="tracer gone")
    assert w.send("x") == "got x"


def test_refuse_eperm(spawn, workload_bin):
    w = spawn([workload_bin("seize_reader")])
    code = (f"import os,sys; sys.path.insert(0,{SRC!r})\n"
            "from coldsnap.seize.freezer import freeze\nfrom coldsnap.errors import TargetError\n"
            "os.setgid(65534); os.setuid(65534)\n"
            "try:\n  freeze(int(sys.argv[1])).__enter__()\nexcept TargetError as e:\n  print(e)\n")
    out = subprocess.run([sys.executable, "-c", code, str(w.pid)], capture_output=True, timeout=20)
    assert out.stdout.decode().strip() == f"cannot seize {w.pid}: permission denied", out.stderr.decode()
    assert_running_untraced(w.pid)


def test_wait_stop_decodes(spawn, workload_bin):
    w = spawn([workload_bin("seize_reader")])
    wait_until(lambda: syscall_nr(w.pid) == 0, what="target in read()")
    ptrace.seize(w.pid, 0)
    try:
        ptrace.interrupt(w.pid)
        st = ptrace.wait_stop(w.pid)
        assert st.stopped and st.is_event_stop and st.sig == signal.SIGTRAP and not st.exited
        assert ptrace.get_regs(w.pid).orig_rax == 0  # sits in read()
    finally:
        ptrace.detach(w.pid)
    assert_running_untraced(w.pid)


def test_undos_run_held_last_first_and_a_failing_one_still_resumes(spawn, workload_bin):
    w = spawn([workload_bin("seize_threads"), "2"])
    seen: list[str] = []

    def undo(name: str, fail: bool = False):
        def run() -> None:
            assert_frozen_by_us(w.pid, task.tids)      # still held while undoing
            seen.append(name)
            if fail:
                raise RuntimeError(f"{name} failed")
        return run

    with pytest.raises(RuntimeError, match="b failed"):
        with freeze(w.pid) as task:
            task.at_resume("a", undo("a"))
            task.at_resume("b", undo("b", fail=True))
            task.at_resume("c", undo("c"))
            task.at_resume("gone", undo("gone"))
            task.cancel_at_resume("gone")
            with pytest.raises(ValueError):
                task.at_resume("a", undo("a2"))
    assert seen == ["c", "b", "a"]
    assert task.resumed
    assert_running_untraced(w.pid)
