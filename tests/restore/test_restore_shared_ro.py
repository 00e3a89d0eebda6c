"""Shared anonymous memory the process made read-only comes back with its data and its
protection (the kernel refuses even forced writes to it, so restore fills it first)."""
from __future__ import annotations

import os
import subprocess

from restore_helpers import coldsnap, kill_and_reap, wait_gone

PG = 4096
WORKLOAD = r"""
import ctypes, mmap, os, time
m = mmap.mmap(-1, 16 * 4096)                  # MAP_SHARED|MAP_ANONYMOUS
for i in range(16):
    m[i * 4096:(i + 1) * 4096] = bytes([i + 7]) * 4096
addr = ctypes.addressof(ctypes.c_char.from_buffer(m))
assert ctypes.CDLL(None).mprotect(ctypes.c_void_p(addr), 16 * 4096, mmap.PROT_READ) == 0
os.write(1, b"%d\n" % addr)
while True:                                   # (stdin is a fresh pipe after restore: no EOF wait)
    time.sleep(1)
"""


def _maps_line(pid: int, addr: int) -> str:
    return next(line for line in open(f"/proc/{pid}/maps") if int(line.split("-")[0], 16) == addr)


def test_read_only_shared_anonymous_memory(python_exe, tmp_path):
    proc = subprocess.Popen([python_exe, "-c", WORKLOAD], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL)
    pid = proc.pid
    try:
        addr = int(proc.stdout.readline())
        before = _maps_line(pid, addr).split()[1]
        assert before == "r--s"
        coldsnap("dump", "-t", pid, "-D", tmp_path / "img").check()
        proc.wait(timeout=10)
        wait_gone(pid)
        coldsnap("restore", "-D", tmp_path / "img", "-d").check()
        assert _maps_line(pid, addr).split()[1] == before
        with open(f"/proc/{pid}/mem", "rb", buffering=0) as mem:
            data = os.pread(mem.fileno(), 16 * PG, addr)
        assert data == b"".join(bytes([i + 7]) * PG for i in range(16))
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        kill_and_reap(pid)
