"""A tracked series under a target that never stops writing still reproduces its memory."""
import os
import signal
import time

from coldsnap.dump.iterate import PreDumpSeries
from coldsnap.images.chain import PageChain

WRITER = r"""
import random, sys, threading
mem = bytearray(32 << 20)
def write(seed):
    r = random.Random(seed)
    i = 0
    while True:
        i += 1
        p = r.randrange(len(mem) // 4096) * 4096
        mem[p:p + 8] = i.to_bytes(8, "little")
for s in range(3):
    threading.Thread(target=write, args=(s,), daemon=True).start()
print("ready", flush=True)
sys.stdin.read()
"""


def test_chain_equals_memory_after_a_final_iteration_on_a_stopped_writer(spawn, python_exe, tmp_path):
    w = spawn([python_exe, "-c", WRITER])
    with PreDumpSeries(w.pid, tmp_path, track="uffd") as series:
        for _ in range(3):
            series.step()
            time.sleep(0.05)
        os.kill(w.pid, signal.SIGSTOP)
        try:
            while open(f"/proc/{w.pid}/stat").read().rsplit(")", 1)[1].split()[0] != "T":
                time.sleep(0.001)
            last = series.step()
            assert last.frozen_time == 0 and last.pages_skipped_parent > 0
            with PageChain(tmp_path / "4", w.pid) as chain, \
                    open(f"/proc/{w.pid}/mem", "rb", buffering=0) as mem:
                starts, ends = chain.covered_ranges()
                bad = []
                for s, e in zip(starts.tolist(), ends.tolist()):
                    mem.seek(s)
                    if chain.lookup(s, (e - s) // 4096) != mem.read(e - s):
                        bad.append(hex(s))
            assert bad == []
            assert sum(e - s for s, e in zip(starts.tolist(), ends.tolist())) >= 32 << 20
        finally:
            os.kill(w.pid, signal.SIGCONT)
