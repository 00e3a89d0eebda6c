"""A `coldsnap page-server` for a test: started on a free port, stopped (and reaped) at the
end; its log is a file the test reads. Also: merging the images a dump wrote locally with
the pages a page server received, and test certificates."""
from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parents[1] / "restore"))
sys.path.insert(0, str(Path(__file__).parents[1] / "dump"))

from procs import coldsnap_argv  # noqa: E402

CRIU = Path(__file__).resolve().parents[3] / "shared" / "peers" / "criu-4.2" / "criu"


class PageServerProc:
    def __init__(self, images_dir: Path, log: Path, *extra):
        images_dir.mkdir(parents=True, exist_ok=True)
        self.dir, self.log = images_dir, log
        self._out = log.with_suffix(".out")
        with open(self._out, "wb") as out, open(log, "wb") as err:
            self.proc = subprocess.Popen(coldsnap_argv("page-server", "-D", images_dir, "--port", 0, *extra),
                                         stdin=subprocess.DEVNULL, stdout=out, stderr=err)
        deadline = time.monotonic() + 15
        while True:
            text = self._out.read_text()
            if "listening on" in text:
                break
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise AssertionError(f"page server did not start: {log.read_text()}")
            time.sleep(0.02)
        self.port = int(text.split("listening on ")[1].split(",")[0].rsplit(":", 1)[1])
        self.address = f"127.0.0.1:{self.port}"

    def lines(self) -> list[str]:
        return self.log.read_text().splitlines()

    def wait_line(self, what: str, count: int = 1, timeout: float = 10.0) -> list[str]:
        deadline = time.monotonic() + timeout
        while True:
            found = [line for line in self.lines() if what in line]
            if len(found) >= count:
                return found
            if time.monotonic() > deadline:
                raise AssertionError(f"no {count} log lines with {what!r}; log:\n{self.log.read_text()}")
            time.sleep(0.02)

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def merge_images(local: Path, received: Path) -> Path:
    """The dump's own images (written locally) added to the session the page server
    received (pagemaps, pages, the parent link of the chain there); the local inventory wins."""
    for f in local.iterdir():
        if f.name == "parent" or f.name.startswith(("pagemap-", "pages-")):
            continue
        shutil.copy2(f, received / f.name)
    return received


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def make_certs(d: Path) -> dict[str, Path]:
    """A CA and two certificates it signed (server, client), by the openssl command."""
    d.mkdir(parents=True, exist_ok=True)

    def run(*args):
        subprocess.run(["openssl", *map(str, args)], check=True, capture_output=True)

    run("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=test-ca",
        "-keyout", d / "ca.key", "-out", d / "ca.pem")
    out = {"ca": d / "ca.pem"}
    for who in ("server", "client", "stranger"):
        run("req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={who}", "-keyout", d / f"{who}.key",
            "-out", d / f"{who}.csr")
        if who == "stranger":      # signed by itself, not by the CA
            run("x509", "-req", "-in", d / f"{who}.csr", "-signkey", d / f"{who}.key", "-days", "2",
                "-out", d / f"{who}.pem")
        else:
            run("x509", "-req", "-in", d / f"{who}.csr", "-CA", d / "ca.pem", "-CAkey", d / "ca.key",
                "-CAcreateserial", "-days", "2", "-out", d / f"{who}.pem")
        out[who] = d / f"{who}.pem"
        out[f"{who}_key"] = d / f"{who}.key"
    return out


def criu_skip_reason() -> str:
    """Why the stock CRIU cannot run here ('' when it can)."""
    if not os.access(CRIU, os.X_OK):
        return f"no CRIU binary at {CRIU}"
    try:
        p = subprocess.run([str(CRIU), "check"], capture_output=True, text=True, timeout=60)
    except OSError as e:
        return f"CRIU does not start: {e}"
    if p.returncode != 0:
        return f"`criu check` fails: {(p.stdout + p.stderr).strip().splitlines()[-1:]}"
    return ""
