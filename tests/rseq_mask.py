"""Comparing saved pages with live memory: the kernel rewrites every thread's rseq area
(cpu_id, mm_cid) whenever the thread resumes, so those bytes are blanked on both sides."""
from __future__ import annotations

import os

from coldsnap.images.directory import ImageDir


def rseq_areas(images) -> list[tuple[int, int]]:
    """(address, size) of the rseq area of every thread of a dump directory."""
    d = ImageDir.open(images, follow_parent=False)
    return [(c.thread_core.rseq_entry.rseq_abi_pointer, c.thread_core.rseq_entry.rseq_abi_size)
            for c in (d.read_single(n) for n in sorted(os.listdir(images)) if n.startswith("core-"))]


def live_rseq_areas(pid: int) -> list[tuple[int, int]]:
    """(address, size) of the rseq area of every thread of running process PID (held a moment)."""
    from coldsnap.kernel import ptrace
    from coldsnap.seize.freezer import freeze
    with freeze(pid) as task:
        confs = [ptrace.get_rseq_configuration(tid) for tid in task.tids]
        task.resume()
    return [(c.rseq_abi_pointer, c.rseq_abi_size) for c in confs if c.rseq_abi_pointer]


def masked(addr: int, data: bytes, holes: list[tuple[int, int]]) -> bytes:
    """DATA (memory at ADDR) with the bytes of HOLES zeroed."""
    buf = bytearray(data)
    for start, size in holes:
        lo, hi = max(start, addr), min(start + size, addr + len(buf))
        if lo < hi:
            buf[lo - addr:hi - addr] = bytes(hi - lo)
    return bytes(buf)
