"""A broken or hostile client of `coldsnap service` gets an error or a closed connection, its
fds are closed, and the service keeps serving everyone else."""
from __future__ import annotations

import contextlib
import os
import resource
import socket
import subprocess
import sys
import signal
import time

import pytest

from coldsnap.kernel import ptrace
from coldsnap.service import protocol as P
from procs import coldsnap_argv, proc_state, stopped_after_syscall
from service_helpers import start_service


def _connect(svc) -> socket.socket:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    s.settimeout(10)
    s.connect(str(svc.address))
    return s


def _request(argv=("check",), **env: str) -> bytes:
    environ = {**os.environb, **{k.encode(): v.encode() for k, v in env.items()}}
    return P.encode_request(list(argv), [b"%s=%s" % kv for kv in environ.items()], 0o022,
                            os.path.dirname(os.path.dirname(os.path.realpath(P.__file__))))


def _answer(s: socket.socket) -> bytes:
    """The service's reply, then nothing: the connection is closed."""
    reply = s.recv(P.MAX_REPLY)
    assert s.recv(P.MAX_REPLY) == b""
    s.close()
    return reply


def _still_serves(svc, fds_before: list[str]) -> None:
    """A `coldsnap check` runs through SVC, which then holds the fds FDS_BEFORE (idle_fds):
    nothing of what came before stays."""
    n = len(svc.workers("check"))
    run = subprocess.run(coldsnap_argv("check"), capture_output=True, env={**os.environ, "COLDSNAP_SERVICE": str(svc.address)})
    assert run.returncode == 0
    svc.wait_log(lambda ln: len(svc.workers("check")) > n, "a worker for check")
    assert svc.idle_fds() == fds_before


def _send_with(s: socket.socket, data: bytes, fds) -> None:
    s.sendmsg([data], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, b"".join(f.to_bytes(4, sys.byteorder) for f in fds))]
              if fds else [])


def _with_fds(s: socket.socket, data: bytes, n: int) -> None:
    fds = [os.open("/dev/null", os.O_RDONLY) for _ in range(n)]
    try:
        _send_with(s, data, fds)
    finally:
        for fd in fds:
            os.close(fd)


SYS_BIND = 49

CASES = ["garbage", "no fds", "too many fds", "too few fds", "huge", "bad umask", "argc too large",
         "signal first", "empty"]


def _send_broken(s: socket.socket, case: str) -> None:
    if case == "garbage":
        _with_fds(s, os.urandom(512), 4)
    elif case == "no fds":
        _with_fds(s, _request(), 0)
    elif case == "too many fds":
        _with_fds(s, _request(), 7)
    elif case == "too few fds":
        _with_fds(s, _request(), 3)
    elif case == "huge":
        s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1 << 20)
        _with_fds(s, _request() + b"\0X=" + b"y" * P.MAX_REQUEST, 4)
    elif case == "bad umask":
        _with_fds(s, _request().replace(b"\x0022\0", b"\x009999\0", 1), 4)
    elif case == "argc too large":
        _with_fds(s, b"\0".join([P.MAGIC, b"22", b"/x", b"99", b"check"]), 4)
    elif case == "signal first":
        _with_fds(s, P.encode_signal(2), 0)
    elif case == "empty":
        _with_fds(s, b"", 4)


def test_a_broken_request_gets_an_error_and_the_service_serves_on(service):
    """One service for every case (each starts ~1 s of imports)."""
    before = service.idle_fds()
    for case in CASES:
        s = _connect(service)
        _send_broken(s, case)
        reply = _answer(s)
        # an empty record reads as the end of the connection: closed without a word
        assert reply.startswith(b"error ") if case != "empty" else reply == b"", case
        _still_serves(service, before)
    assert len([ln for ln in service.lines() if "refused a request" in ln]) == len(CASES) - 1


def test_a_client_that_connects_and_leaves_or_stays_silent(service):
    before = service.idle_fds()
    _connect(service).close()
    silent = _connect(service)          # holds its connection while others are served
    _still_serves(service, sorted(before + ["socket:[]"]))
    silent.close()
    _still_serves(service, before)


def test_a_client_leaving_right_after_its_request(service):
    """Gone before the service read its request, nothing starts (most often); else its
    worker is told to stop (or has ended already). Nothing stays."""
    before = service.idle_fds()
    n = len(service.workers("check"))
    s = _connect(service)
    _with_fds(s, _request(), 4)
    s.close()
    service.wait_log(lambda ln: len(service.workers("check")) > n or "gave it up" in ln, "the request's end")
    _still_serves(service, before)


def test_another_user_is_told_to_run_it_itself(service):
    """The socket is 0600; opened to all, a caller of another uid gets `local`, nothing runs."""
    before = service.idle_fds()
    request = _request()
    os.chmod(service.address.parent, 0o711)
    os.chmod(service.address, 0o666)
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:            # connects as nobody, from the socket's directory (its parents are 0700)
        try:
            os.close(r)
            os.chdir(service.address.parent)
            os.setresgid(65534, 65534, 65534)
            os.setresuid(65534, 65534, 65534)
            s = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
            s.settimeout(10)
            s.connect(service.address.name)
            s.sendmsg([request], [(socket.SOL_SOCKET, socket.SCM_RIGHTS,
                                   b"".join(f.to_bytes(4, sys.byteorder) for f in (0, 1, 2, 0)))])
            os.write(w, s.recv(4096))
        except BaseException as e:
            os.write(w, repr(e).encode())
        finally:
            os._exit(0)
    os.close(w)
    try:
        with os.fdopen(r, "rb") as f:
            reply = f.read()
    finally:
        os.waitpid(pid, 0)
        os.chmod(service.address, 0o600)
        os.chmod(service.address.parent, 0o700)
    assert reply == b"local the service runs requests of its own user only"
    _still_serves(service, before)


def _start_restore_stream(svc, stdin: int, null: int, cwd: int) -> socket.socket:
    """A raw client whose `restore --stream` runs (waiting on STDIN). Its stream spool goes
    beside the service's log."""
    s = _connect(svc)
    _send_with(s, _request(["restore", "--stream"], TMPDIR=str(svc.log.parent)), (stdin, null, null, cwd))
    assert s.recv(P.MAX_REPLY).startswith(b"started ")
    return s


@contextlib.contextmanager
def _command_fds():
    """(stdin, stdout/stderr, cwd) for a raw client's command: a pipe nobody writes to (a
    `restore --stream` waits on it), /dev/null and /."""
    stdin_r, stdin_w = os.pipe()
    null = os.open("/dev/null", os.O_RDWR)
    cwd = os.open("/", os.O_PATH | os.O_DIRECTORY)
    try:
        yield stdin_r, null, cwd
    finally:
        for fd in (stdin_r, stdin_w, null, cwd):
            os.close(fd)


@pytest.mark.parametrize("case", ["huge", "too many fds"])
def test_a_running_client_breaking_the_protocol_ends_its_worker(service, case):
    """A record that does not fit (cut short by the kernel) from a client whose command runs:
    its worker is told to stop, as when it leaves; no fd of it stays in the service."""
    before = service.idle_fds()
    with _command_fds() as fds:
        s = _start_restore_stream(service, *fds)
        if case == "huge":
            s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1 << 20)
            s.send(b"signal 2" + b" " * P.MAX_REQUEST)
        else:
            _with_fds(s, P.encode_signal(2), 7)
        line = service.wait_log(lambda ln: "(restore)" in ln, "the worker's end")
        # SIGTERM before the command set its handler (a fast client) ends it outright
        assert line.endswith(("exited 143 (its client had left)", "killed by signal 15 (its client had left)")), line
        s.close()
    assert not [ln for ln in service.lines() if "after an error" in ln]
    _still_serves(service, before)


def test_a_package_path_that_is_not_utf8_is_told_to_run_itself(service):
    """The refusal names the caller's package path, whatever bytes it holds."""
    before = service.idle_fds()
    s = _connect(service)
    request = P.encode_request(["check"], [], 0o022, os.fsdecode(b"/tmp/no-coldsnap-\xff"))
    _with_fds(s, request, 4)
    reply = _answer(s)
    assert reply.startswith(b"local the service runs the coldsnap of ") and reply.endswith(b"-\xff"), reply
    assert not [ln for ln in service.lines() if "after an error" in ln]
    _still_serves(service, before)


def test_a_signal_right_after_started_reaches_a_forked_worker(service):
    """The worker forked for a request (the spare is busy) gets a signal sent as soon as the
    client hears `started`: none is lost while it still has the service's handlers."""
    with _command_fds() as fds:
        busy = _start_restore_stream(service, *fds)      # takes the spare
        try:
            for _ in range(10):
                s = _start_restore_stream(service, *fds)
                s.send(P.encode_signal(signal.SIGINT))
                try:
                    reply = s.recv(P.MAX_REPLY)
                except TimeoutError:
                    reply = b"(no end within 10 s)"
                s.close()
                assert reply in (b"exit code 130", b"exit signal 2"), reply
        finally:
            busy.send(P.encode_signal(signal.SIGINT))
            assert busy.recv(P.MAX_REPLY) in (b"exit code 130", b"exit signal 2")
            busy.close()


def _ready_spare(svc) -> int:
    """The service's spare worker, once it waits for its request (its shared pages copied)
    and the service read its b"r"."""
    return svc.wait_idle()


def test_a_spare_that_died_ready_is_replaced(service):
    """The spare dies after saying it is ready, and a request comes before the service saw its
    end: the request gets a worker forked for it, the dead spare is forgotten (not kept as the
    next one: its fds closed, numbers another worker may reuse) and a new one forked later."""
    spare = _ready_spare(service)
    before = service.idle_fds()
    s = _connect(service)
    time.sleep(0.3)                         # accepted
    os.kill(service.proc.pid, signal.SIGSTOP)
    try:
        with _command_fds() as (_, null, cwd):
            _send_with(s, _request(), (null, null, null, cwd))     # before the spare's end
        os.kill(spare, signal.SIGKILL)
        while proc_state(spare)[0] != "Z":
            time.sleep(0.01)
    finally:
        os.kill(service.proc.pid, signal.SIGCONT)
    assert s.recv(P.MAX_REPLY).startswith(b"started ")
    assert s.recv(P.MAX_REPLY) == b"exit code 0"
    s.close()
    service.wait_log(lambda ln: "(check)" in ln, "the worker's end")
    _ready_spare(service)
    _still_serves(service, before)          # by the new spare
    assert service.stop() == 0
    assert not [ln for ln in service.lines() if "after an error" in ln], service.lines()
    assert service.lines()[-1].endswith("stopped after 2 requests, 1 of them run by a worker forked ahead")



def _lowest_free_fd(pid: int) -> int:
    """The fd number process PID would get next: as its RLIMIT_NOFILE, it can open no more."""
    opened = {int(fd) for fd in os.listdir(f"/proc/{pid}/fd")}
    return min(set(range(len(opened) + 1)) - opened)


@contextlib.contextmanager
def _out_of_fds_at_its_next_fork(pid: int):
    """Process PID (a child of ours) runs out of fds right after its next fork: stopped there
    (ptrace's fork event), its RLIMIT_NOFILE is lowered to its lowest free fd, until the end
    of the block. Yields a function that waits for that fork (the caller makes it happen) and
    returns the child's pid."""
    soft, hard = resource.prlimit(pid, resource.RLIMIT_NOFILE)

    def at_fork() -> int:
        while (stop := ptrace.wait_stop(pid)).event != ptrace.PTRACE_EVENT_FORK:
            ptrace.cont(pid, stop.sig if stop.is_signal_stop else 0)     # SIGCHLD and the like
        child = ptrace.get_event_msg(pid)
        resource.prlimit(pid, resource.RLIMIT_NOFILE, (_lowest_free_fd(pid), hard))
        ptrace.wait_stop(child)
        ptrace.detach(child)
        ptrace.detach(pid)
        return child

    ptrace.seize(pid, ptrace.PTRACE_O_TRACEFORK)
    try:
        yield at_fork
    finally:
        try:
            ptrace.detach(pid)
        except OSError:         # detached at the fork already
            pass
        resource.prlimit(pid, resource.RLIMIT_NOFILE, (soft, hard))


def test_a_worker_forked_without_a_pidfd_never_runs_the_command_twice(service):
    """The service runs out of fds between a worker's fork and its pidfd: the command runs
    once (in the caller, as the service could not watch its worker), not in both."""
    before = service.idle_fds()
    with _command_fds() as fds:
        busy = _start_restore_stream(service, *fds)      # takes the spare: a worker is forked
        try:
            with _out_of_fds_at_its_next_fork(service.proc.pid) as at_fork:
                client = _check_client(service)
                at_fork()
                out, err = client.communicate(timeout=60)
        finally:
            busy.send(P.encode_signal(signal.SIGINT))
            assert busy.recv(P.MAX_REPLY) in (b"exit code 130", b"exit signal 2")
            busy.close()
    assert client.returncode == 0 and out.count("pagemap_scan") == 1, (out, err)
    assert not [ln for ln in service.lines() if "after an error" in ln], service.lines()
    _still_serves(service, before)


def test_a_spare_forked_without_a_pidfd_leaves_and_is_reaped(service):
    """The service runs out of fds between a spare's fork and its pidfd: the spare leaves
    without a request, reaped at once; the next request gets a worker forked for it."""
    _ready_spare(service)
    before = service.idle_fds()
    with _out_of_fds_at_its_next_fork(service.proc.pid) as at_fork:
        client = _check_client(service)        # the spare runs it; the next is forked at its end
        spare = at_fork()
        out, err = client.communicate(timeout=60)
        # the limit stays until the service tried (the client has its answer before)
        line = service.wait_log(lambda ln: "no spare worker" in ln or "after an error" in ln, "the spare's failure")
    assert client.returncode == 0 and out.count("pagemap_scan") == 1, (out, err)
    assert line.endswith("no spare worker: pidfd_open(%d): Too many open files" % spare), line
    assert spare not in service.children() and proc_state(spare) == ("", 0)     # reaped
    _still_serves(service, before)              # by a worker forked for it, then a new spare
    assert not [ln for ln in service.lines() if "after an error" in ln], service.lines()


def _check_client(svc) -> subprocess.Popen:
    """`coldsnap check` through SVC, running."""
    return subprocess.Popen(coldsnap_argv("check"), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "COLDSNAP_SERVICE": str(svc.address)})


@pytest.mark.parametrize("how", ["ignored", "blocked"])
def test_a_service_started_with_sigchld_ignored_or_signals_blocked_serves_and_stops(tmp_path, how):
    """As a careless starter may leave them: SIGCHLD ignored (the kernel would reap the workers
    before the service learns how they ended: each request ended in an error of its loop, its
    fds left behind), or SIGTERM, SIGINT and SIGCHLD blocked (SIGTERM would not stop it)."""
    sigs = (signal.SIGCHLD, signal.SIGTERM, signal.SIGINT)
    if how == "ignored":
        svc = start_service(tmp_path, ignoring=(signal.SIGCHLD,))
    else:
        old = signal.pthread_sigmask(signal.SIG_BLOCK, sigs)        # inherited across fork and exec
        try:
            svc = start_service(tmp_path)
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, old)
    try:
        _ready_spare(svc)
        before = svc.idle_fds()
        for n in range(3):              # by the spare, each time a new one
            client = _check_client(svc)
            out, err = client.communicate(timeout=60)
            assert out.count("pagemap_scan") == 1 and err == "", (client.returncode, out, err)
            svc.wait_log(lambda ln: len(svc.workers("check")) > n, "the worker's end")
        _still_serves(svc, before)
        assert [ln.endswith("exited 0") for ln in svc.workers("check")] == [True] * 4
    finally:
        assert svc.stop() == 0
    assert not [ln for ln in svc.lines() if "after an error" in ln], svc.lines()


def test_a_caller_whose_pid_is_taken_after_it_connected_is_not_served(tmp_path):
    """The pid the kernel gives for the caller (SO_PEERCRED) is the one it had when it
    connected: once it ended, another process may hold that pid. The service must not
    inspect that one instead (a confined caller would get its command run unconfined)."""
    run = subprocess.run(["unshare", "--pid", "--fork", "--mount-proc", sys.executable,
                          os.path.join(os.path.dirname(__file__), "pid_reuse_probe.py"), tmp_path],
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    assert run.stdout == "local the caller is gone or cannot be inspected\n", (run.stdout, run.stderr)


def test_a_package_path_on_a_hung_mount_stalls_nobody(tmp_path):
    """A request naming a package directory on a mount that hangs (a FUSE server that never
    answers): the service compares the path as it is, touching nothing there, and serves
    everyone else meanwhile."""
    run = subprocess.run(["unshare", "--mount", "--propagation", "private", sys.executable,
                          os.path.join(os.path.dirname(__file__), "hung_mount_probe.py"), tmp_path],
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    assert run.stdout.splitlines() == [
        "check: exit 0", f"request: local the service runs the coldsnap of {os.path.realpath(P.__file__).rsplit('/', 2)[0]}, "
        f"not of {tmp_path}/hung/coldsnap"], (run.stdout, run.stderr)


def test_a_caller_importing_coldsnap_through_a_link_is_served(service, tmp_path):
    """The client resolves the links of its package path (the service compares it as is)."""
    (tmp_path / "src").symlink_to(os.path.realpath(P.__file__).rsplit("/", 3)[0])
    n = len(service.workers("check"))
    run = subprocess.run(coldsnap_argv("check"), capture_output=True, text=True, timeout=60,
                         env={**os.environ, "COLDSNAP_SERVICE": str(service.address), "PYTHONPATH": str(tmp_path / "src")})
    assert run.returncode == 0 and run.stdout.count("pagemap_scan") == 1, (run.stdout, run.stderr)
    service.wait_log(lambda ln: len(service.workers("check")) > n, "a worker for check")


def test_a_socket_of_another_user_at_the_address_gets_nothing(tmp_path):
    """Someone else listens at the address (a user who could write its directory first): the
    client runs the command itself and sends nothing there (no stdio, cwd or environment)."""
    squat = tmp_path / "squat"
    squat.mkdir()
    os.chmod(squat, 0o777)
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:            # listens as nobody, and says what it received
        try:
            os.close(r)
            os.chdir(squat)
            os.setresgid(65534, 65534, 65534)
            os.setresuid(65534, 65534, 65534)
            s = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
            s.bind("cs.sock")
            s.listen()
            os.write(w, b"listening\n")
            s.settimeout(30)
            conn, _ = s.accept()
            conn.settimeout(30)
            data, anc, _, _ = conn.recvmsg(1 << 20, socket.CMSG_SPACE(64))
            os.write(w, b"got %d bytes, %d fds\n" % (len(data), len(anc)))
        except BaseException as e:
            os.write(w, repr(e).encode())
        finally:
            os._exit(0)
    os.close(w)
    with os.fdopen(r, "rb") as f:
        try:
            assert f.readline() == b"listening\n"
            run = subprocess.run(coldsnap_argv("check"), capture_output=True, text=True, timeout=60,
                                 env={**os.environ, "COLDSNAP_SERVICE": str(squat / "cs.sock")})
            said = f.read()
        finally:
            os.waitpid(pid, 0)
    assert run.returncode == 0 and run.stdout.count("pagemap_scan") == 1, (run.stdout, run.stderr)
    assert said == b"got 0 bytes, 0 fds\n", said


@contextlib.contextmanager
def _no_fd_left(pid: int):
    """Process PID can open no more fd (RLIMIT_NOFILE at its lowest free one) in the block."""
    soft, hard = resource.prlimit(pid, resource.RLIMIT_NOFILE)
    resource.prlimit(pid, resource.RLIMIT_NOFILE, (_lowest_free_fd(pid), hard))
    try:
        yield
    finally:
        resource.prlimit(pid, resource.RLIMIT_NOFILE, (soft, hard))


def test_a_service_out_of_fds_tells_its_callers_to_run_it_themselves(service):
    """It cannot accept a connection: it takes it all the same (on an fd kept in reserve for
    that) to say so, and each caller runs its command itself, at once; the service neither
    spins on the connection it cannot take nor fills its log."""
    _ready_spare(service)
    before = service.idle_fds()
    with _no_fd_left(service.proc.pid):
        for _ in range(3):
            run = subprocess.run(coldsnap_argv("check"), capture_output=True, text=True, timeout=30,
                                 env={**os.environ, "COLDSNAP_SERVICE": str(service.address)})
            assert run.returncode == 0 and run.stdout.count("pagemap_scan") == 1, (run.stdout, run.stderr)
        cpu = sum(map(int, open(f"/proc/{service.proc.pid}/stat").read().rsplit(")", 1)[1].split()[11:13]))
        time.sleep(0.5)
        idle = sum(map(int, open(f"/proc/{service.proc.pid}/stat").read().rsplit(")", 1)[1].split()[11:13])) - cpu
    assert idle <= 5, f"the service spun: {idle} ticks in 0.5 s"
    assert [ln for ln in service.lines() if "out of file descriptors" in ln] == \
        ["coldsnap service: runs in the caller: the service is out of file descriptors"] * 3, service.lines()[-5:]
    assert service.workers("check") == []
    _still_serves(service, before)


def test_a_stopped_service_is_waited_for_with_a_word_and_ctrl_c_gives_up(service):
    """The service stopped (Ctrl-Z in its terminal): the client says after 5 s that it waits;
    a Ctrl-C ends it, and the service, once it runs again, runs nothing of that request."""
    _ready_spare(service)
    os.kill(service.proc.pid, signal.SIGSTOP)
    try:
        client = _check_client(service)
        line = client.stderr.readline()
        assert line == (f"coldsnap: the service at {service.address} (pid {service.proc.pid}) has not answered "
                        "for 5 s; waiting for it (Ctrl-C gives up)\n"), line
        client.send_signal(signal.SIGINT)
        client.wait(timeout=10)
    finally:
        os.kill(service.proc.pid, signal.SIGCONT)       # it holds the client's stdio, in flight
    out, err = client.communicate(timeout=10)
    assert client.returncode == -signal.SIGINT and out == "" and err == "", (client.returncode, out, err)
    service.wait_log(lambda ln: "gave it up" in ln, "the request given up")
    assert service.workers("check") == []


def test_a_socket_file_swapped_for_a_link_right_after_bind_changes_nothing_there(tmp_path):
    """Someone who can write in the socket's directory swaps the socket file for a symbolic
    link right after the service made it: the service sets no mode through that link (it
    made the file 0600 to begin with)."""
    where = tmp_path / "svc"
    where.mkdir()
    victim = tmp_path / "victim"
    victim.write_text("someone's\n")
    victim.chmod(0o644)

    def swap(_proc) -> None:
        (where / "s.sock").unlink()
        (where / "s.sock").symlink_to(victim)

    with open(tmp_path / "log", "w") as log:
        svc = stopped_after_syscall(coldsnap_argv("service", "--address", where / "s.sock"), (SYS_BIND,), swap,
                                    stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                    env={**os.environ, "COLDSNAP_SERVICE": ""})
    try:
        deadline = time.monotonic() + 60
        while "listening on" not in (tmp_path / "log").read_text():
            assert svc.poll() is None and time.monotonic() < deadline, (tmp_path / "log").read_text()
            time.sleep(0.01)
    finally:
        svc.send_signal(signal.SIGTERM)
        assert svc.wait(timeout=30) == 0
    assert oct(victim.stat().st_mode & 0o777) == "0o644" and victim.read_text() == "someone's\n"


def test_a_spare_ready_in_the_round_its_request_is_read_serves_it(service):
    """The request and the spare's "ready" (its copy done) come in one round of the service's
    loop, the request first: the service hands the request over and closes the channel with
    the "ready" unread, which the kernel reports to the spare as a reset on its next read.
    The spare reads the request all the same (before: it exited 1, its client told "exit
    code 1" with no word: a rare failure of the service's tests under load)."""
    pid = service.proc.pid
    with _command_fds() as fds:
        busy = _start_restore_stream(service, *fds)      # takes the spare
        ptrace.seize(pid, ptrace.PTRACE_O_TRACEFORK)
        try:
            busy.send(P.encode_signal(signal.SIGINT))       # its end: a new spare is forked
            while (stop := ptrace.wait_stop(pid)).event != ptrace.PTRACE_EVENT_FORK:
                ptrace.cont(pid, stop.sig if stop.is_signal_stop else 0)
            spare = ptrace.get_event_msg(pid)
            ptrace.wait_stop(spare)             # held before its copy, so before its "ready"
        finally:
            ptrace.detach(pid)
        assert busy.recv(P.MAX_REPLY) in (b"exit code 130", b"exit signal 2")
        busy.close()
        s = _connect(service)
        time.sleep(0.3)                         # accepted
        os.kill(pid, signal.SIGSTOP)
        try:
            with _command_fds() as (_, null, cwd):
                _send_with(s, _request(), (null, null, null, cwd))     # first
            ptrace.detach(spare)                 # then its copy and its "ready"
            deadline = time.monotonic() + 30
            while open(f"/proc/{spare}/syscall").read().split()[0] != "47":     # waits in recvmsg
                assert time.monotonic() < deadline
                time.sleep(0.01)
        finally:
            os.kill(pid, signal.SIGCONT)
    assert s.recv(P.MAX_REPLY) == b"started %d" % spare
    assert s.recv(P.MAX_REPLY) == b"exit code 0"
    s.close()
    assert not [ln for ln in service.lines() if "after an error" in ln], service.lines()


def test_an_address_too_long_for_a_socket_is_refused_in_one_line_making_nothing(tmp_path):
    address = tmp_path / ("d" * 120) / "s.sock"
    run = subprocess.run(coldsnap_argv("service", "--address", address), capture_output=True, text=True,
                         timeout=60, env={**os.environ, "COLDSNAP_SERVICE": ""})
    n = len(os.fsencode(str(address)))
    assert (run.returncode, run.stdout, run.stderr) == (
        1, "", f"coldsnap: {address} is too long for a socket's address ({n} bytes, at most 107)\n"), run
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("which", ["--pidfile", "--log-file"])
def test_a_daemon_whose_pidfile_or_log_cannot_be_made_fails_in_one_line(tmp_path, which):
    """Before the daemon's parent exits: its exit code and its one line say it (before: exit 0,
    the error printed later by a child that then ended, no service)."""
    address, bad = tmp_path / "d" / "s.sock", tmp_path / "none" / "file"
    run = subprocess.run(coldsnap_argv("service", "--address", address, "-d", which, bad), capture_output=True,
                         text=True, timeout=60, env={**os.environ, "COLDSNAP_SERVICE": ""})
    assert (run.returncode, run.stdout, run.stderr) == (1, "", f"coldsnap: {bad}: No such file or directory\n"), run
    assert list((tmp_path / "d").iterdir()) == []


SYS_CONNECT, SYS_FLOCK = 42, 73


def test_two_services_started_at_once_on_a_stale_socket_leave_one(tmp_path):
    """Both find the stale socket file; the second stands still right after its look (its
    connect refused) while the first replaces it and would listen: one service is left (the
    other says one answers there), never one listening on a socket file the other unlinked."""
    address = tmp_path / "svc" / "service.sock"
    address.parent.mkdir(mode=0o700)
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    stale.bind(str(address))
    stale.close()
    env = {**os.environ, "COLDSNAP_SERVICE": ""}
    logs = [open(tmp_path / f"log{i}", "w+") for i in (0, 1)]
    first = None

    def start_the_first(_second) -> None:
        nonlocal first
        first = subprocess.Popen(coldsnap_argv("service", "--address", address), stdin=subprocess.DEVNULL,
                                 stdout=logs[0], stderr=logs[0], env=env)
        deadline = time.monotonic() + 30       # listening, or waiting for the second's lock
        while "listening on" not in (tmp_path / "log0").read_text():
            assert first.poll() is None and time.monotonic() < deadline, (tmp_path / "log0").read_text()
            if open(f"/proc/{first.pid}/syscall").read().split()[0] == str(SYS_FLOCK):
                break
            time.sleep(0.01)

    second = stopped_after_syscall(coldsnap_argv("service", "--address", address), (SYS_CONNECT,), start_the_first,
                                   stdin=subprocess.DEVNULL, stdout=logs[1], stderr=logs[1], env=env)
    try:
        procs = [first, second]
        deadline = time.monotonic() + 60
        while not any(p.poll() is not None for p in procs):
            assert time.monotonic() < deadline, [(tmp_path / f"log{i}").read_text() for i in (0, 1)]
            time.sleep(0.05)
        running = [p for p in procs if p.poll() is None]
        refused = [i for i, p in enumerate(procs) if p.poll() is not None]
        assert len(running) == 1 and [procs[i].returncode for i in refused] == [1], \
            [(tmp_path / f"log{i}").read_text() for i in (0, 1)]
        assert (tmp_path / f"log{refused[0]}").read_text() == f"coldsnap: a service already answers on {address}\n"
        check = subprocess.run(coldsnap_argv("check"), capture_output=True, text=True, timeout=60,
                               env={**os.environ, "COLDSNAP_SERVICE": str(address)})
        assert check.returncode == 0 and "(check) exited 0" in (tmp_path / f"log{procs.index(running[0])}").read_text()
    finally:
        for p in (first, second):
            if p is not None and p.poll() is None:
                p.send_signal(signal.SIGTERM)
                p.wait(timeout=30)
        for f in logs:
            f.close()
