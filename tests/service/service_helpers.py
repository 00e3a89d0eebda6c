"""A `coldsnap service` of a test's own, on an address under its tmp_path, stopped at the end."""
from __future__ import annotations

import os
import re
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from procs import coldsnap_argv


@dataclass
class RunningService:
    proc: subprocess.Popen
    address: Path
    log: Path

    def lines(self) -> list[str]:
        return self.log.read_text().splitlines()

    def wait_log(self, pred, what: str, timeout: float = 10.0) -> str:
        """The first log line for which PRED holds, waiting for it."""
        deadline = time.monotonic() + timeout
        while True:
            hit = next((ln for ln in self.lines() if pred(ln)), None)
            if hit is not None:
                return hit
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"no {what} in the service's log (exit {self.proc.poll()}):\n"
                                     + "\n".join(self.lines()))
            time.sleep(0.01)

    def workers(self, command: str) -> list[str]:
        """Its log lines about the workers that ran COMMAND."""
        return [ln for ln in self.lines() if ln.startswith("coldsnap service: worker ") and f"({command})" in ln]

    def children(self) -> list[int]:
        with open(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children") as f:
            return [int(c) for c in f.read().split()]

    def wait_idle(self, timeout: float = 30.0) -> int:
        """Wait until the service is idle with a ready spare (whose pid is returned): its one
        child a spare (no worker of the log: every worker reaped), blocked in recvmsg (it said
        b"r", it waits for a request), and then the service asleep in epoll_wait, which it
        is only with no event unread: the spare's b"r" read, every reap done with its fds
        closed and the new spare's made. Its fds are then those of an idle service: counted
        earlier, they may be a worker's or a spare's on their way in or out."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            kids = self.children()
            workers = {int(n) for n in re.findall(r"worker (\d+)", self.log.read_text())}
            if len(kids) == 1 and kids[0] not in workers and _blocked_in(kids[0]) == SYS_RECVMSG \
                    and _blocked_in(self.proc.pid) == SYS_EPOLL_WAIT:
                return kids[0]
            time.sleep(0.005)
        raise AssertionError(f"the service was not idle with a ready spare within {timeout:g} s: children "
                             f"{self.children()}, log:\n" + "\n".join(self.lines()[-5:]))

    def idle_fds(self) -> list[str]:
        """What the service's fds are once it is idle with a ready spare (fds_of)."""
        self.wait_idle()
        return fds_of(self.proc.pid)

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise AssertionError("the service did not stop within 20 s of SIGTERM")


def start_service(where: Path, *more: str, ignoring: tuple[int, ...] = ()) -> RunningService:
    """`coldsnap service --address WHERE/svc/service.sock`, once it listens (started with
    the signals IGNORING ignored, as nohup does)."""
    address = where / "svc" / "service.sock"
    log = where / "service.log"
    with open(log, "w") as f:
        proc = subprocess.Popen(coldsnap_argv("service", "--address", address, *more), stdin=subprocess.DEVNULL,
                                stdout=f, stderr=f, env={**os.environ, "COLDSNAP_SERVICE": ""},
                                preexec_fn=lambda: [signal.signal(s, signal.SIG_IGN) for s in ignoring])
    svc = RunningService(proc, address, log)
    try:
        svc.wait_log(lambda ln: "listening on" in ln, "listening line", timeout=60)
    except BaseException:
        svc.stop()
        raise
    return svc


SYS_RECVMSG, SYS_EPOLL_WAIT = 47, 232       # x86_64's numbers, as /proc/PID/syscall says them


def _blocked_in(pid: int) -> int:
    """The system call process PID is blocked in (-1: it runs, or is gone)."""
    try:
        with open(f"/proc/{pid}/syscall") as f:
            first = f.read().split()[0]
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return -1
    return int(first) if first.lstrip("-").isdigit() else -1


def fds_of(pid: int) -> list[str]:
    """What process PID's fds are, sorted: their links without inode numbers ("socket:[]",
    "anon_inode:[pidfd]", "/dev/null"...)."""
    out = []
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            out.append(re.sub(r"\[\d+\]", "[]", os.readlink(f"/proc/{pid}/fd/{fd}")))
        except FileNotFoundError:       # the listing's own fd
            pass
    return sorted(out)
