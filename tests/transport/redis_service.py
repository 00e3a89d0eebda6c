"""Redis from Debian as a migrated service, and its one-connection client
(tests/transport/redis_client.py) run on the client "host" of a MovingService."""
from __future__ import annotations

import json
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

from service_address import MovingService

REDIS = shutil.which("redis-server")
CLIENT = Path(__file__).with_name("redis_client.py")


def _free_port(addr: str) -> int:
    with socket.socket() as s:
        s.bind((addr, 0))
        return s.getsockname()[1]


def start_redis(addr: str, tmp: Path) -> tuple[subprocess.Popen, int]:
    """redis-server listening on ADDR only (no persistence, DEBUG allowed), once it accepts."""
    port = _free_port(addr)
    proc = subprocess.Popen([REDIS, "--port", str(port), "--bind", addr, "--save", "", "--appendonly", "no",
                             "--daemonize", "no", "--dir", str(tmp), "--logfile", "",
                             "--enable-debug-command", "yes", "--protected-mode", "no"],
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            cwd=tmp)
    deadline = time.monotonic() + 10
    while True:
        if proc.poll() is not None:
            raise AssertionError("redis-server exited")
        try:
            socket.create_connection((addr, port), timeout=1).close()
            return proc, port
        except OSError:
            if time.monotonic() > deadline:
                proc.kill()
                proc.wait()
                raise AssertionError("redis-server did not listen") from None
            time.sleep(0.05)


def start_client(svc: MovingService, port: int, keys: int, size: int) -> tuple[subprocess.Popen, int]:
    """The client, once it filled Redis with KEYS values of SIZE bytes and began its SET/GET
    loop; returns it and Redis's count of connections received at that point."""
    client = subprocess.Popen(svc.client_argv(sys.executable, CLIENT, svc.address, port, keys, size),
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    line = client.stdout.readline()
    if not line.startswith("ready "):
        client.kill()
        client.wait()
        raise AssertionError(f"client: {line!r}")
    return client, int(line.split()[1])


def stop_client(client: subprocess.Popen) -> dict:
    """Stop the SET/GET loop; the client's own checks, as its JSON says them."""
    client.stdin.write("stop\n")
    client.stdin.flush()
    out = client.stdout.readline()
    client.wait(timeout=300)
    return json.loads(out)


def kill_all(*procs: subprocess.Popen | None) -> None:
    """Kill and reap what of the client and Redis still runs (for finally blocks)."""
    for p in procs:
        if p is not None and p.poll() is None:
            p.kill()
        if p is not None:
            p.wait()
