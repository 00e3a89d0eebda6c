"""A `coldsnap service` of a test's own, on an address under its tmp_path, stopped at the end."""
from __future__ import annotations

import os
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
