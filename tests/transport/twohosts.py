"""Two "hosts" on one machine for migration tests: the destination is a network namespace
joined to this one by a veth pair, with its own PID and mount namespaces (PID 1 there is
ns_init.py, so the namespace outlives the receiver). Everything is removed by close()."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

INIT = Path(__file__).with_name("ns_init.py")
SRC = Path(__file__).resolve().parents[2] / "src"


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(["ip", *args], capture_output=True, text=True, check=check)


class TwoHosts:
    def __init__(self, tmp: Path):
        pid = os.getpid()
        self.tmp = tmp
        self.netns = f"csmig{pid}"
        self.veth_src, self.veth_dst = f"csm{pid}s", f"csm{pid}d"
        x, y = 100 + (pid >> 8) % 100, pid % 256
        self.src_addr, self.dst_addr = f"10.{x}.{y}.1", f"10.{x}.{y}.2"
        self.dest: subprocess.Popen | None = None
        _ip("netns", "add", self.netns)
        try:
            _ip("link", "add", self.veth_src, "type", "veth", "peer", "name", self.veth_dst)
            _ip("link", "set", self.veth_dst, "netns", self.netns)
            _ip("addr", "add", f"{self.src_addr}/30", "dev", self.veth_src)
            _ip("link", "set", self.veth_src, "up")
            for cmd in (["addr", "add", f"{self.dst_addr}/30", "dev", self.veth_dst],
                        ["link", "set", self.veth_dst, "up"], ["link", "set", "lo", "up"]):
                _ip("netns", "exec", self.netns, "ip", *cmd)
        except BaseException:
            self.close()
            raise

    def start_destination(self, *coldsnap_args, log: Path) -> None:
        """`coldsnap ARGS` as the destination's receiver, below ns_init (PID 1 there)."""
        # TMPDIR: a receiver killed with its namespaces leaves its session directories in the test's tmp
        env = dict(os.environ, PYTHONPATH=str(SRC), TMPDIR=str(self.tmp))
        self.status = self.tmp / "dest.status"
        with open(log, "wb") as out:
            self.dest = subprocess.Popen(
                ["ip", "netns", "exec", self.netns, "unshare", "--pid", "--fork", "--mount-proc", "--kill-child",
                 sys.executable, INIT, self.status, sys.executable, "-m", "coldsnap", *map(str, coldsnap_args)],
                stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, env=env)
        self.log = log

    def wait_log(self, what: str, timeout: float = 20.0) -> str:
        deadline = time.monotonic() + timeout
        while True:
            text = self.log.read_text()
            if what in text:
                return text
            if time.monotonic() > deadline or (self.dest and self.dest.poll() is not None):
                raise AssertionError(f"destination: no {what!r}; log:\n{text}")
            time.sleep(0.02)

    def receiver_status(self) -> str | None:
        try:
            return self.status.read_text().strip()
        except OSError:
            return None

    def link(self, up: bool) -> None:
        _ip("link", "set", self.veth_src, "up" if up else "down")

    def close(self) -> None:
        if self.dest is not None and self.dest.poll() is None:
            self.dest.send_signal(signal.SIGKILL)        # unshare --kill-child: PID 1 and all there go
        if self.dest is not None:
            self.dest.wait()
        _ip("link", "del", self.veth_src, check=False)
        _ip("netns", "del", self.netns, check=False)
