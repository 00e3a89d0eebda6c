"""Transparent huge pages across a restore. An area the process advised MADV_HUGEPAGE had
huge pages (THP `enabled` is `madvise` or `always`): its pages go in by process_vm_writev
after the advice, whose faults bring huge pages again, and not by UFFDIO_COPY, which fills
4 KiB pages (the per-area form of the THP `always` fallback, restore/transplant.py). The
machine-wide `always` is not switched here: sysfs is the whole machine's, and other suites
run at the same time."""
from __future__ import annotations

import signal
import sys
from pathlib import Path

import pytest

from restore_helpers import LogWorkload, coldsnap

# a 16 MiB area advised MADV_HUGEPAGE, each page holding its own offset; SIGUSR1 checks them all
CODE = """import ctypes, mmap, signal, sys, time
m = mmap.mmap(-1, 16 << 20, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
m.madvise(mmap.MADV_HUGEPAGE)
for i in range(0, len(m), 4096):
    m[i:i + 8] = i.to_bytes(8, "little")
def check(*_):
    bad = [i for i in range(0, len(m), 4096) if m[i:i + 8] != i.to_bytes(8, "little")]
    print(f"FAIL at {bad[0]:#x}" if bad else "check ok", flush=True)
signal.signal(signal.SIGUSR1, check)
print("ready", hex(ctypes.addressof(ctypes.c_char.from_buffer(m))), flush=True)
while True:
    time.sleep(1)
"""


def huge_kib(pid: int, addr: int) -> int:
    """AnonHugePages of the area of PID that starts at ADDR (kB)."""
    lines = Path(f"/proc/{pid}/smaps").read_text().splitlines()
    at = next(i for i, ln in enumerate(lines) if ln.startswith(f"{addr:x}-"))
    for ln in lines[at + 1:]:
        if ln.startswith("AnonHugePages:"):
            return int(ln.split()[1])
    raise AssertionError(f"no AnonHugePages for the area at {addr:#x}")


def test_an_area_advised_hugepage_comes_back_with_huge_pages(tmp_path):
    enabled = Path("/sys/kernel/mm/transparent_hugepage/enabled")
    if not enabled.exists() or "[never]" in enabled.read_text():
        pytest.skip("no transparent huge pages here")
    with LogWorkload([sys.executable, "-c", CODE], tmp_path / "log") as w:
        w.wait_ready()
        addr = int(next(ln for ln in w.lines() if ln.startswith("ready")).split()[1], 16)
        if huge_kib(w.pid, addr) == 0:
            pytest.skip("the kernel gave the workload no huge page (memory too fragmented)")
        coldsnap("dump", "-t", w.pid, "-D", tmp_path / "img", check=True)
        w.reap_dumped()
        coldsnap("restore", "-D", tmp_path / "img", "-d", check=True)
        w.adopt_restored()
        assert huge_kib(w.pid, addr) > 0, "the area came back in 4 KiB pages"
        w.signal(signal.SIGUSR1)
        w.wait_line("check ok")
        assert not w.failures(), w.tail()
