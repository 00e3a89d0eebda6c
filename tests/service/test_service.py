"""`coldsnap service`: commands handed to a resident process run as they would in the caller
(output, exit codes, signals, cleanup); callers it must not serve run the command themselves."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parents[1] / "restore"))
sys.path.insert(0, str(Path(__file__).parents[1] / "dump"))

from predump_helpers import wait_quiet  # noqa: E402
from procs import coldsnap_argv, proc_state  # noqa: E402
from restore_helpers import LogWorkload, assert_one_line_error, coldsnap, end_lazy_restore, reap, wait_gone  # noqa: E402
from service_helpers import start_service  # noqa: E402
from tree_helpers import reap_orphans  # noqa: E402
from coldsnap.kernel.procfs import child_pids  # noqa: E402


@pytest.fixture
def service(tmp_path, monkeypatch):
    svc = start_service(tmp_path)
    monkeypatch.setenv("COLDSNAP_SERVICE", str(svc.address))
    try:
        yield svc
    finally:
        assert svc.stop() == 0
        assert not svc.address.exists()


def _piped(*args) -> subprocess.CompletedProcess:
    """`coldsnap ARGS` through the service with its stdout and stderr on pipes, read to their
    end: nothing the command leaves running (a process restored -d, a lazy restore's server
    and guardian) may hold them (else the end of the timeout, not a hang: run() waits only
    for the client then)."""
    run = subprocess.run(coldsnap_argv(*args), stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=30)
    assert run.returncode == 0, run.stderr
    return run


def test_dump_and_restore_of_a_c_workload_through_the_service(service, workload_bin, tmp_path):
    """dump, then restore -d: the workload checks all its memory every tick afterwards."""
    with LogWorkload([workload_bin("rst_memory")], tmp_path / "log") as w:
        w.wait_ready()
        w.wait_ticks(2)
        coldsnap("dump", "-t", w.pid, "-D", tmp_path / "img").check()
        w.reap_dumped()
        run = _piped("restore", "-D", tmp_path / "img", "-d")
        assert run.stderr.startswith(f"restored {w.pid} ")
        w.adopt_restored()          # the worker's orphan, reparented to the test (a subreaper)
        w.wait_ticks(5)
        w.assert_healthy()
    assert [ln.endswith("exited 0") for ln in service.workers("dump") + service.workers("restore")] == [True, True]


@pytest.fixture
def own_cgroups():
    """A cgroup of the test's own in the v2 hierarchy and in the v1 freezer one (those that
    are mounted), removed at the end: (directory, /proc/PID/cgroup line) pairs."""
    from coldsnap.kernel.procfs import cgroup_mounts
    name = f"coldsnap-test-{os.getpid()}-{time.monotonic_ns()}"
    made = []
    for m in cgroup_mounts(os.getpid()):
        if (m.version == 2 or "freezer" in m.options) and m.root == "/":
            d = Path(m.point, name)
            d.mkdir()
            made.append((d, f"{'0::' if m.version == 2 else ':freezer:'}/{name}"))
    if not made:
        pytest.skip("no cgroup v2 nor v1 freezer hierarchy mounted")
    try:
        yield made
    finally:
        for d, _ in made:
            d.rmdir()


def test_a_caller_in_other_cgroups_gets_its_command_run_there(service, own_cgroups, workload_bin, tmp_path):
    """The worker joins the caller's cgroups: what it restores lands there, as in-process."""
    def join() -> None:
        for d, _ in own_cgroups:
            (d / "cgroup.procs").write_text(str(os.getpid()))
    with LogWorkload([workload_bin("rst_memory")], tmp_path / "log") as w:
        w.wait_ready()
        coldsnap("dump", "-t", w.pid, "-D", tmp_path / "img").check()
        w.reap_dumped()
        run = subprocess.run(coldsnap_argv("restore", "-D", tmp_path / "img", "-d"), capture_output=True,
                             text=True, preexec_fn=join)
        assert run.returncode == 0, run.stderr
        w.adopt_restored()
        lines = Path(f"/proc/{w.pid}/cgroup").read_text().splitlines()
        for _, line in own_cgroups:
            assert any(ln.endswith(line) for ln in lines), (line, lines)
        w.wait_ticks(2)
        w.assert_healthy()
    assert [ln.endswith("exited 0") for ln in service.workers("restore")] == [True]
    assert not [ln for d, _ in own_cgroups for ln in (d / "cgroup.procs").read_text().split()]


def test_pre_dump_then_lazy_restore_through_the_service(service, workload_bin, tmp_path):
    """A tracked pre-dump, the dump on top of it, a lazy restore: every page comes right."""
    go = tmp_path / "go"
    w = LogWorkload([workload_bin("lazy_check"), 16, go], tmp_path / "log")
    res = None
    try:
        w.wait_ready()
        coldsnap("pre-dump", "-t", w.pid, "-D", tmp_path / "pre").check()
        coldsnap("dump", "-t", w.pid, "-D", tmp_path / "img", "--prev-images-dir", tmp_path / "pre").check()
        w.reap_dumped()
        res = json.loads(_piped("restore", "-D", tmp_path / "img", "-d", "--lazy-pages", "--json",
                                "--lazy-log", tmp_path / "lazy.log").stdout)
        w.adopt_restored()
        go.touch()
        w.wait_for("ok line", lambda: any(ln.startswith("ok") for ln in w.lines()), timeout=60)
        assert not w.failures(), w.tail()
        assert os.WEXITSTATUS(reap(res["lazy_guardian"], 60)) == 0
        wait_gone(res["lazy_server"])
        res = None                  # its guardian reaped: nothing left for the finally
    finally:
        end_lazy_restore(w, res)
    assert [len(service.workers(c)) for c in ("pre-dump", "dump", "restore")] == [1, 1, 1]
    # the spare's lazy middle process, forked ahead (restore/lazy_seed.py), started the server
    assert "started ahead (seed)" in (tmp_path / "lazy.log").read_text()


def test_a_spare_s_lazy_seed_ends_with_its_worker(service, tmp_path):
    """Each spare forks a lazy restore's middle process ahead (restore/lazy_seed.py): a
    command that does not take it leaves nothing of it: the service keeps its spare and the
    spare's seed, no more."""
    for _ in range(3):
        assert coldsnap("show", tmp_path / "nothing").returncode == 6
    deadline = time.monotonic() + 10
    while True:
        spares = child_pids([service.proc.pid])[service.proc.pid]
        seeds = [k for ks in child_pids(spares).values() for k in ks]
        if (len(spares), len(seeds)) == (1, 1) or time.monotonic() > deadline:
            break
        time.sleep(0.02)
    assert (len(spares), len(seeds)) == (1, 1)
    reap_orphans()      # the workers' seeds, killed as their workers ended and reparented to us


def test_a_failing_command_relays_its_error_and_exit_code(service, tmp_path):
    run = coldsnap("dump", "-t", 999999999, "-D", tmp_path / "img")
    assert run.returncode == 3
    assert_one_line_error(run)
    run = coldsnap("show", tmp_path / "nothing", "--json")
    assert run.returncode == 6 and json.loads(run.stdout)["error"]["exit_code"] == 6
    assert_one_line_error(run)
    run = coldsnap("dump", "--no-such-option")
    assert run.returncode == 2 and "usage:" in run.stderr
    assert [ln.rsplit(" ", 1)[1] for ln in service.workers("dump") + service.workers("show")] == ["3", "2", "6"]
    assert not (tmp_path / "img").exists()


def test_output_and_cwd_are_the_callers(service, tmp_path):
    """Relative paths are the caller's cwd; stdout the caller's; the same text as in-process."""
    with LogWorkload([sys.executable, "-c", "import time; print('ready', flush=True); time.sleep(60)"],
                     tmp_path / "log") as w:
        w.wait_ready()
        run = subprocess.run(coldsnap_argv("dump", "-t", w.pid, "-D", "img", "--leave-running", "--json"),
                             cwd=tmp_path, capture_output=True, text=True, timeout=60)
        assert run.returncode == 0, run.stderr
        assert json.loads(run.stdout)["images_dir"] == "img" and (tmp_path / "img" / "inventory.img").exists()
    here = subprocess.run(coldsnap_argv("show", "img"), cwd=tmp_path, capture_output=True, text=True)
    local = subprocess.run(coldsnap_argv("show", "img"), cwd=tmp_path, capture_output=True, text=True,
                           env={**os.environ, "COLDSNAP_SERVICE": ""})
    assert (here.returncode, here.stdout, here.stderr) == (local.returncode, local.stdout, local.stderr)
    assert len(service.workers("show")) == 1


def _slow_pre_dump(spawn, workload_bin, images: Path) -> tuple[int, subprocess.Popen]:
    """A live pre-dump of 256 MiB through a 4 KiB buffer, once it drains (target running)."""
    w = spawn([workload_bin("mem_pattern"), 65536, 8], stderr=subprocess.DEVNULL)
    wait_quiet(w.pid)
    p = subprocess.Popen(coldsnap_argv("pre-dump", "-t", w.pid, "-D", images, "--pre-dump-mode", "live",
                                       "--buffer-size", "4k"), stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        staging = [d for d in images.parent.iterdir() if d.name.startswith(".")]
        if any(f.name.startswith("pages-") and f.stat().st_size for d in staging for f in d.iterdir()):
            break
        time.sleep(0.002)
    return w.pid, p


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_to_the_client_interrupts_the_worker(sig, service, spawn, workload_bin, tmp_path):
    (tmp_path / "d").mkdir()
    pid, p = _slow_pre_dump(spawn, workload_bin, tmp_path / "d" / "img")
    p.send_signal(sig)
    _, err = p.communicate(timeout=20)
    assert p.returncode == 128 + sig and err.strip() == f"coldsnap: interrupted by {sig.name}", err
    assert proc_state(pid) == ("S", 0)
    assert list((tmp_path / "d").iterdir()) == []
    assert service.workers("pre-dump")[0].endswith(f"exited {128 + sig}")


def test_a_killed_client_ends_its_worker_cleanly(service, spawn, workload_bin, tmp_path):
    """SIGKILL the client: the service passes SIGTERM on; the target runs on, nothing stays."""
    (tmp_path / "d").mkdir()
    pid, p = _slow_pre_dump(spawn, workload_bin, tmp_path / "d" / "img")
    p.kill()
    p.communicate(timeout=10)
    line = service.wait_log(lambda ln: "(pre-dump)" in ln, "worker's end")
    assert line.endswith("exited 143 (its client had left)")
    assert proc_state(pid) == ("S", 0)
    assert list((tmp_path / "d").iterdir()) == []


def test_a_killed_service_ends_its_workers_cleanly(spawn, workload_bin, tmp_path, monkeypatch):
    """SIGKILL the service: its workers get SIGTERM (parent-death signal) and unwind, the
    client says it lost the service (exit 1) and does not run the command again."""
    service = start_service(tmp_path)
    monkeypatch.setenv("COLDSNAP_SERVICE", str(service.address))
    (tmp_path / "d").mkdir()
    pid, p = _slow_pre_dump(spawn, workload_bin, tmp_path / "d" / "img")
    workers = [int(c) for t in Path(f"/proc/{service.proc.pid}/task").iterdir()
               for c in (t / "children").read_text().split()]
    service.proc.kill()
    service.proc.wait()
    _, err = p.communicate(timeout=20)
    assert p.returncode == 1, err
    interrupted, lost = sorted(err.strip().splitlines())        # the worker's line, the client's
    assert lost.startswith("coldsnap: lost the service while its worker"), err
    assert interrupted == "coldsnap: interrupted by SIGTERM", err
    reap_orphans(timeout=20, pids=workers)
    assert not [w for w in workers if Path(f"/proc/{w}").exists()]
    assert proc_state(pid) == ("S", 0)
    assert list((tmp_path / "d").iterdir()) == []
    service.address.unlink()        # a killed service leaves its socket file (the next replaces it)


def test_a_caller_in_another_network_namespace_runs_the_command_itself(service):
    through = subprocess.run(["unshare", "--net", *coldsnap_argv("check")], capture_output=True, text=True)
    local = subprocess.run(coldsnap_argv("check"), capture_output=True, text=True,
                           env={**os.environ, "COLDSNAP_SERVICE": ""})
    assert through.returncode == local.returncode == 0
    assert through.stdout == local.stdout and through.stderr == local.stderr == ""
    assert "the caller's net namespace is not the service's" in service.lines()[-1]
    assert service.workers("check") == []


def test_a_confined_caller_runs_the_command_itself(service):
    """no_new_privs (so too a seccomp filter or an LSM profile): the service's worker would
    run free of it."""
    run = subprocess.run(["setpriv", "--no-new-privs", *coldsnap_argv("check")], capture_output=True, text=True)
    assert run.returncode == 0 and "pagemap_scan" in run.stdout, run.stderr
    assert "the caller's confinement (no_new_privs, seccomp or LSM label) is not the service's" in service.lines()[-1]
    assert service.workers("check") == []


def test_restore_shell_job_runs_in_the_caller(service, tmp_path):
    run = coldsnap("restore", "-D", tmp_path / "none", "--shell-job")
    assert run.returncode == 6
    assert_one_line_error(run)
    assert service.workers("restore") == [] and len(service.lines()) == 1    # never asked


def test_without_a_service_the_command_runs_in_process(tmp_path, monkeypatch):
    monkeypatch.setenv("COLDSNAP_SERVICE", str(tmp_path / "nobody.sock"))
    run = coldsnap("show", tmp_path / "none")
    assert run.returncode == 6
    assert_one_line_error(run)


def test_a_second_service_on_the_same_address_is_refused_and_a_stale_socket_replaced(tmp_path, monkeypatch):
    first = start_service(tmp_path)
    try:
        run = subprocess.run(coldsnap_argv("service", "--address", first.address), capture_output=True,
                             text=True, timeout=60)
        assert run.returncode == 1 and run.stderr == f"coldsnap: a service already answers on {first.address}\n"
        assert first.proc.poll() is None
    finally:
        first.proc.kill()           # leaves its socket file behind
        first.proc.wait()
    assert first.address.exists()
    again = start_service(tmp_path)
    try:
        assert again.address == first.address
        monkeypatch.setenv("COLDSNAP_SERVICE", str(again.address))
        assert subprocess.run(coldsnap_argv("check"), capture_output=True).returncode == 0
        assert len(again.workers("check")) == 1
    finally:
        assert again.stop() == 0


def test_an_empty_address_is_a_usage_error():
    """`coldsnap service --address ""` (COLDSNAP_SERVICE="" meaning "no service" to every
    command) served on the default socket; now a usage error, nothing started."""
    run = subprocess.run(coldsnap_argv("service", "--address", ""), capture_output=True, text=True, timeout=60,
                         env=dict(os.environ, COLDSNAP_SERVICE=""))
    assert run.returncode == 2 and "argument --address: an empty path" in run.stderr, run.stderr


def test_stopping_the_service_ends_running_workers_cleanly(service, spawn, workload_bin, tmp_path):
    (tmp_path / "d").mkdir()
    pid, p = _slow_pre_dump(spawn, workload_bin, tmp_path / "d" / "img")
    assert service.stop() == 0
    _, err = p.communicate(timeout=20)
    assert p.returncode == 143 and err.strip() == "coldsnap: interrupted by SIGTERM", err
    assert proc_state(pid) == ("S", 0)
    assert list((tmp_path / "d").iterdir()) == []
    assert not service.address.exists()


def test_a_daemon_service_serves_and_stops_on_sigterm(tmp_path, monkeypatch):
    address, pidfile, log = tmp_path / "d" / "s.sock", tmp_path / "pid", tmp_path / "log"
    marker = os.open(tmp_path / "marker", os.O_RDWR | os.O_CREAT, 0o600)     # left open for it
    try:
        run = subprocess.run(coldsnap_argv("service", "--address", address, "-d", "--pidfile", pidfile, "-o", log),
                             stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=60, pass_fds=(marker,))
    finally:
        os.close(marker)
    assert (run.returncode, run.stdout, run.stderr) == (0, "", "")
    pid = int(pidfile.read_text())
    try:
        assert address.exists() and oct(address.stat().st_mode & 0o777) == "0o600"
        assert oct(address.parent.stat().st_mode & 0o777) == "0o700"
        deadline = time.monotonic() + 30        # set up: its fds are all open (an fd in reserve too)
        while "listening on" not in log.read_text():
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.01)
        held = [os.readlink(f"/proc/{pid}/fd/{fd}") for fd in os.listdir(f"/proc/{pid}/fd")]
        assert str(tmp_path / "marker") not in held and held.count(os.devnull) == 3, held   # 0, 1, reserve
        monkeypatch.setenv("COLDSNAP_SERVICE", str(address))
        assert subprocess.run(coldsnap_argv("check"), capture_output=True).returncode == 0
        assert log.read_text().splitlines()[-1].endswith("(check) exited 0")
    finally:
        os.kill(pid, signal.SIGTERM)
        status = reap(pid, 20)          # a daemon, reparented to the test (a subreaper)
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0
    assert not address.exists() and not pidfile.exists()


def test_the_worker_s_end_reaches_a_client_whose_last_signal_went_unread():
    """A second signal passed on as the worker ended: the service sends the worker's end and
    closes the connection with that record unread, which the kernel reports to the client as
    a reset on its next read: the client takes the end all the same (it said it lost the
    service and exited 1)."""
    import socket
    from coldsnap.service import client, protocol as P
    ours, service_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    with ours:
        ours.send(P.encode_signal(signal.SIGINT))
        service_end.send(P.encode_exit(130, False))
        service_end.close()
        assert client._wait_for_worker(ours, "1") == 130


@pytest.mark.parametrize("then", ["exits", "is killed"])
def test_the_client_has_the_end_before_the_worker_tears_down(then, service, tmp_path):
    """The worker says its command's end (its output flushed, the caller's stdio closed)
    before it exits, and the service relays it at once: held by ptrace at its exit_group(2),
    before any of its teardown, the worker has told its client everything: the client ends
    with the command's code and its output complete. SIGKILLed there instead, the worker
    ends otherwise, after the client had its end: that end stands (the service logs both)."""
    from coldsnap.kernel import ptrace
    from coldsnap.kernel.libc import SYS
    spare = service.wait_idle()
    ptrace.seize(spare, ptrace.PTRACE_O_TRACESYSGOOD)
    client = None
    try:
        ptrace.interrupt(spare)
        client = subprocess.Popen(coldsnap_argv("show", tmp_path / "nothing"), stdin=subprocess.DEVNULL,
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        while True:                 # system call by system call, up to its exit_group
            stop = ptrace.wait_stop(spare)
            assert not stop.exited, stop
            if stop.is_syscall_stop and ptrace.get_regs(spare).orig_rax == SYS.exit_group:
                break
            ptrace.syscall_step(spare, stop.sig if stop.is_signal_stop else 0)
        out, err = client.communicate(timeout=10)
        assert proc_state(spare) == ("t", os.getpid())        # still held, before its exit
        assert client.returncode == 6 and out == "" and err.startswith("coldsnap: "), (client.returncode, out, err)
        assert service.workers("show") == [f"coldsnap service: worker {spare} (show) exited 6"]
        if then == "exits":
            ptrace.detach(spare)
        else:
            os.kill(spare, signal.SIGKILL)
            assert ptrace.wait_stop(spare).term_signal == signal.SIGKILL     # then its parent's
    finally:
        if proc_state(spare)[1] == os.getpid():      # first: it may hold the client's stdio
            os.kill(spare, signal.SIGKILL)
            ptrace.wait_stop(spare)
        if client is not None and client.poll() is None:
            client.kill()
            client.communicate()
    service.wait_idle()             # reaped, a new spare ready
    assert service.workers("show") == [f"coldsnap service: worker {spare} (show) exited 6"] + (
        [f"coldsnap service: worker {spare} (show) then killed by signal 9, after its end was told"]
        if then == "is killed" else [])


def test_a_worker_killed_before_its_word_ends_its_client_by_that_signal(service, tmp_path):
    """No word on its channel (SIGKILLed while its command runs): the service tells the
    client the kernel's end, and the client ends by the same signal."""
    spare = service.wait_idle()
    r, w = os.pipe()
    try:
        client = subprocess.Popen(coldsnap_argv("restore", "--stream", "-d"), stdin=r, stdout=subprocess.DEVNULL,
                                  stderr=subprocess.PIPE, text=True, env={**os.environ, "TMPDIR": str(tmp_path)})
        deadline = time.monotonic() + 30        # the worker waits for the stream on stdin
        while not any(p.name.startswith("coldsnap-stream.") for p in tmp_path.iterdir()):
            assert time.monotonic() < deadline and client.poll() is None, client.stderr.read()
            time.sleep(0.01)
        os.kill(spare, signal.SIGKILL)
        _, err = client.communicate(timeout=30)
    finally:
        os.close(r)
        os.close(w)
    assert client.returncode == -signal.SIGKILL and err == "", (client.returncode, err)
    assert service.workers("restore") == [f"coldsnap service: worker {spare} (restore) killed by signal 9"]
    for spool in tmp_path.glob("coldsnap-stream.*"):        # what a killed command leaves
        spool.rmdir()


def test_the_client_imports_only_built_in_modules():
    """What the `coldsnap` command loads before it knows whether the service runs it."""
    code = ("import sys; before = set(sys.modules); import coldsnap.service.client; "
            "print(' '.join(sorted(set(sys.modules) - before)))")
    new = subprocess.run([sys.executable, "-S", "-c", code], capture_output=True, text=True, check=True,
                         env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[2] / "src")}).stdout.split()
    # not even `os` (1 ms without `site`), nor coldsnap's other modules (errors)
    assert [m for m in new if m not in sys.builtin_module_names] == ["coldsnap", "coldsnap.service",
                                                                     "coldsnap.service.client",
                                                                     "coldsnap.service.protocol"]


def test_the_client_resolves_its_package_as_realpath_does(tmp_path):
    """The client resolves its package directory without `os` (the service compares it with
    its own, resolved by os.path.realpath): links relative and absolute, . and .."""
    from coldsnap.service import client
    (tmp_path / "a" / "b").mkdir(parents=True)
    (tmp_path / "l").symlink_to("a/b")
    (tmp_path / "a" / "b" / "up").symlink_to("../b")
    (tmp_path / "abs").symlink_to(tmp_path / "l")
    for path in ["l", "abs/up", "l/../b", "abs/./up/..", "a/b/up/up/../..", "."]:
        assert client._resolved(f"{tmp_path}/{path}") == os.path.realpath(tmp_path / path), path
    assert client.PACKAGE == os.path.dirname(os.path.dirname(os.path.realpath(client.__file__)))


def test_the_worker_takes_the_caller_s_environment_exactly():
    """Only what differs is set or unset, and what the worker's C library sees (what its
    children and exec get) is the caller's environment, no more, no less."""
    code = """
import ctypes, os
from coldsnap.service.worker import _take_environ
os.environ.update(SAME="1", CHANGED="old", GONE="x")
caller = {**os.environ, "CHANGED": "new", "ADDED": "é"}
del caller["GONE"]
_take_environ(caller)
assert dict(os.environ) == caller
getenv = ctypes.CDLL(None).getenv
getenv.restype = ctypes.c_char_p
assert [getenv(n) for n in (b"SAME", b"CHANGED", b"ADDED", b"GONE")] == [b"1", b"new", "é".encode(), None]
"""
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60,
                   env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[2] / "src")})


def test_requests_run_side_by_side(service, spawn, workload_bin, tmp_path):
    """A second request while a first one runs gets a worker of its own at once (the check
    returns while the pre-dump still runs). Which one the worker forked ahead takes depends
    on whether it had finished copying its pages (at nice 19: not always, on a loaded machine)."""
    (tmp_path / "d").mkdir()
    pid, p = _slow_pre_dump(spawn, workload_bin, tmp_path / "d" / "img")
    try:
        check = subprocess.run(coldsnap_argv("check"), capture_output=True, text=True, timeout=60)
        assert check.returncode == 0 and "pagemap_scan" in check.stdout
    finally:
        p.send_signal(signal.SIGINT)
        p.communicate(timeout=20)
    assert p.returncode == 130
    assert service.stop() == 0
    assert service.lines()[-1].startswith("coldsnap service: stopped after 2 requests, ")
    (pre_dump,), (check_worker,) = service.workers("pre-dump"), service.workers("check")
    assert pre_dump.split()[3] != check_worker.split()[3]      # "coldsnap service: worker PID (...)"


def test_after_coldsnap_changed_the_caller_runs_it_itself(service):
    """A coldsnap edited (or upgraded) in place after the service started: its requests run
    in their callers, with the new code, until it is restarted."""
    import coldsnap.show
    path = Path(coldsnap.show.__file__)
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))
    try:
        run = subprocess.run(coldsnap_argv("check"), capture_output=True, text=True)
    finally:
        os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert run.returncode == 0 and "pagemap_scan" in run.stdout
    assert service.lines()[-1].endswith("coldsnap's code changed since the service started (restart it)")
    assert service.workers("check") == []


def test_a_change_lost_in_an_inotify_overflow_counts_as_one(service):
    """More events than the inotify queue holds (16384 by default) before a source file
    changes: that change's event is dropped, the overflow says so, and the service must take
    it as a change."""
    import coldsnap.show
    path = Path(coldsnap.show.__file__)
    scratch = path.parent / f"review-overflow-{os.getpid()}.txt"
    with open("/proc/sys/fs/inotify/max_queued_events") as f:
        queued = int(f.read())
    st = path.stat()
    try:
        for _ in range(queued // 2 + 1):            # IN_CREATE, IN_DELETE: no .py among them
            scratch.touch()
            scratch.unlink()
        os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))
        run = subprocess.run(coldsnap_argv("check"), capture_output=True, text=True)
    finally:
        scratch.unlink(missing_ok=True)
        os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert run.returncode == 0 and "pagemap_scan" in run.stdout
    assert service.lines()[-1].endswith("coldsnap's code changed since the service started (restart it)")
    assert service.workers("check") == []


def test_restore_without_d_relays_the_restored_process_exit_status(service, spawn, python_exe, tmp_path):
    """The worker waits for the process it restored; the process's exit code is the client's."""
    from test_restore_wait import WORKLOAD
    flag = tmp_path / "exit-now"
    w = spawn([python_exe, "-c", WORKLOAD, str(flag)], stderr=subprocess.DEVNULL)
    coldsnap("dump", "-t", w.pid, "-D", tmp_path / "img").check()
    w.proc.wait(timeout=10)
    restorer = subprocess.Popen(coldsnap_argv("restore", "-D", tmp_path / "img", "--json"),
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 20
        while not os.path.exists(f"/proc/{w.pid}/task"):
            assert restorer.poll() is None and time.monotonic() < deadline, restorer.stderr.read()
            time.sleep(0.02)
        flag.touch()
        assert restorer.wait(timeout=20) == 7, restorer.stderr.read()
        assert json.loads(restorer.stdout.read())["exit_code"] == 7
    finally:
        if restorer.poll() is None:
            restorer.kill()
            restorer.wait()
    wait_gone(w.pid)
    assert service.wait_log(lambda ln: "(restore)" in ln, "the restore's worker").endswith("exited 7")


@pytest.mark.parametrize("argv, through_service", [
    (["dump", "-t", "1", "-D", "d"], True),
    (["restore", "-D", "d", "-d"], True),
    (["restore", "-D", "d", "-j"], False),
    (["restore", "-dj", "-D", "d"], False),          # a cluster of short options
    (["restore", "-D", "d", "--shell-job"], False),
    (["restore", "-D", "d", "--shell"], False),       # argparse takes an unambiguous prefix
    (["restore", "--", "-j"], True),
    (["dump", "-t", "1", "-D", "d", "-j"], True),     # dump's -j needs no terminal of ours
    (["service", "--address", "a"], False),
    ([], False),
])
def test_which_command_lines_the_service_runs(argv, through_service):
    from coldsnap.service.protocol import runs_in_service
    assert runs_in_service(argv) is through_service


def _catches(pid: int, sig: int) -> bool:
    with open(f"/proc/{pid}/status") as f:
        caught = next(int(ln.split()[1], 16) for ln in f if ln.startswith("SigCgt:"))
    return bool(caught >> (sig - 1) & 1)


def _worker_catches(svc, sig: int) -> bool:
    """Whether a worker of SVC catches SIG (its command set its handler: a SIGHUP before
    that ends it outright, as it would the command in-process)."""
    with open(f"/proc/{svc.proc.pid}/task/{svc.proc.pid}/children") as f:
        children = [int(c) for c in f.read().split()]
    def catches(pid: int) -> bool:
        try:
            return _catches(pid, sig)
        except OSError:         # ended meanwhile
            return False
    return any(catches(c) for c in children)


@pytest.mark.parametrize("sig", [signal.SIGHUP, signal.SIGINT])
def test_a_signal_the_caller_ignores_stays_ignored(sig, service):
    """nohup (SIGHUP), a script's background job (SIGINT): a signal the caller ignores is not
    passed on to the worker, as the command run in-process would not see it either."""
    def run(env: dict) -> tuple[int, str]:
        p = subprocess.Popen(coldsnap_argv("restore", "--stream"), stdin=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True, env=env, preexec_fn=lambda: signal.signal(sig, signal.SIG_IGN))
        deadline = time.monotonic() + 30
        while not _catches(p.pid, signal.SIGTERM) and time.monotonic() < deadline:   # set up
            time.sleep(0.01)
        p.send_signal(sig)
        time.sleep(0.3)
        assert p.poll() is None
        _, err = p.communicate(timeout=30)      # stdin closed: an empty stream
        return p.returncode, err
    here = run(dict(os.environ))
    assert run({**os.environ, "COLDSNAP_SERVICE": ""}) == here
    assert len(service.workers("restore")) == 1


def test_a_service_started_under_nohup_passes_sighup_on(tmp_path, monkeypatch):
    """Its workers do not inherit the ignored SIGHUP: a hangup unwinds the command (exit 129)
    as it does in-process."""
    svc = start_service(tmp_path, ignoring=(signal.SIGHUP,))
    monkeypatch.setenv("COLDSNAP_SERVICE", str(svc.address))
    try:
        p = subprocess.Popen(coldsnap_argv("restore", "--stream"), stdin=subprocess.PIPE, stderr=subprocess.PIPE,
                             env={**os.environ, "TMPDIR": str(tmp_path)})
        deadline = time.monotonic() + 30
        while not (_catches(p.pid, signal.SIGHUP) and _worker_catches(svc, signal.SIGHUP)):
            assert time.monotonic() < deadline, "the command never set its SIGHUP handler"
            time.sleep(0.01)
        p.send_signal(signal.SIGHUP)
        try:
            p.wait(timeout=20)      # stdin kept open: its end would end the stream as well
            err = p.stderr.read()
        finally:
            p.kill()
            p.wait()
            p.stdin.close()
            p.stderr.close()
        assert p.returncode == 128 + signal.SIGHUP and err.decode().strip() == "coldsnap: interrupted by SIGHUP", err
        assert svc.wait_log(lambda ln: "(restore)" in ln, "the worker's end").endswith("exited 129")
    finally:
        assert svc.stop() == 0
