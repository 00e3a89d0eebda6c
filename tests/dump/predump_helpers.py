"""Reading images back and comparing them with a live process's memory."""
from __future__ import annotations

import contextlib
import threading
import time
from pathlib import Path

from coldsnap.images.directory import ImageDir
from coldsnap.images.pages import PagemapReader, PE_PRESENT

from procs import coldsnap  # noqa: F401  (re-exported: the one runner of the command)

PG = 4096


def present_runs(images: Path, pid: int) -> list[tuple[int, int]]:
    with PagemapReader(ImageDir.open(images), pid) as r:
        return [(run.vaddr, run.nr_pages) for run in r.runs() if run.flags & PE_PRESENT]


def image_pages(images: Path, pid: int) -> dict[int, bytes]:
    """Every present page of the image: vaddr -> bytes (tests only: one entry per page)."""
    out = {}
    with PagemapReader(ImageDir.open(images), pid) as r:
        for run in r.runs():
            if run.flags & PE_PRESENT:
                data = r.read_pages(run.vaddr, run.nr_pages)
                for i in range(run.nr_pages):
                    out[run.vaddr + i * PG] = data[i * PG:(i + 1) * PG]
    return out


def mismatched_pages(images: Path, pid: int, only=None) -> list[int]:
    """Pages whose image bytes differ from the process's memory right now."""
    bad = []
    with open(f"/proc/{pid}/mem", "rb", buffering=0) as mem:
        for vaddr, data in image_pages(images, pid).items():
            if only and not only(vaddr):
                continue
            mem.seek(vaddr)
            if mem.read(PG) != data:
                bad.append(vaddr)
    return bad


def wait_quiet(pid: int, timeout: float = 5.0) -> None:
    """Wait until the process sits in read(2) (syscall 0): only then is its memory still."""
    import time
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if Path(f"/proc/{pid}/syscall").read_text().split()[0] == "0":
                return
        except (OSError, IndexError):
            pass
        time.sleep(0.002)
    raise TimeoutError(f"{pid} did not block in read()")


@contextlib.contextmanager
def command_when_draining(w, where: Path, command: bytes):
    """Send the workload a command once a drain into `where` has written its first pages."""
    def watch():
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if any(f.stat().st_size for f in where.glob(".*.staging/pages-*.img")):
                break
            time.sleep(0.0005)
        w.proc.stdin.write(command)
        w.proc.stdin.flush()
    t = threading.Thread(target=watch)
    t.start()
    try:
        yield
    finally:
        t.join()
