"""Round-trip workload: a CPython process with state in objects and two threads.

Protocol (as the C rst_* workloads): stdin /dev/null, stdout+stderr a log file opened
O_APPEND; prints "ready", then every 20 ms "tick N ok <checksum>", or "FAIL <reason>" on
a failed check. Everything goes out with os.write on fd 1 (no buffering).

State: a list and a dict that grow by a deterministic sequence every tick (the oldest
entries are dropped past 4000, so the sizes stay bounded but the contents keep moving),
and two threads that increment their own counters and a shared total under one lock.
Every tick the main thread recomputes the list and dict from the sequence, checks that
the counters only grew and add up to the total, and that every thread's native id is
the one it started with. The checksum covers the list and dict contents.
"""
import os
import threading
import time
import zlib

KEEP = 4000


def say(line: str) -> None:
    data = (line + "\n").encode()
    while data:
        n = os.write(1, data)
        data = data[n:]


def value(n: int) -> int:
    return (n * 2654435761 + 12345) % (1 << 61)


def text(n: int) -> str:
    return f"v{value(n):x}-{n}"


lock = threading.Lock()
counts = [0, 0]
total = 0
native_ids = {}


def fail(msg: str) -> None:
    say("FAIL " + msg)


def worker(i: int) -> None:
    global total
    native_ids[i] = threading.get_native_id()
    mine = 0
    while True:
        time.sleep(0.005 + 0.003 * i)
        with lock:
            if counts[i] != mine:
                fail(f"thread {i}: counter {counts[i]}, own copy {mine}")
            mine += 1
            counts[i] = mine
            total += 1
        if threading.get_native_id() != native_ids[i]:
            fail(f"thread {i}: native id {threading.get_native_id()}, was {native_ids[i]}")


def main() -> None:
    items: list[int] = []
    table: dict[int, str] = {}
    first = 0          # sequence number of items[0]
    seq = 0            # next sequence number
    pid = os.getpid()
    main_id = threading.get_native_id()
    threads = [threading.Thread(target=worker, args=(i,), daemon=True) for i in range(2)]
    for t in threads:
        t.start()
    while len(native_ids) < 2:
        time.sleep(0.001)
    start_ids = dict(native_ids)
    seen = [0, 0]
    say("ready")
    tick = 0
    while True:
        time.sleep(0.02)
        tick += 1
        for _ in range(50):
            items.append(value(seq))
            table[seq] = text(seq)
            seq += 1
        while len(items) > KEEP:
            items.pop(0)
            del table[first]
            first += 1
        # recompute the objects from the sequence
        if len(items) != seq - first or len(table) != seq - first:
            fail(f"sizes {len(items)}/{len(table)}, want {seq - first}")
        for k, v in enumerate(items):
            if v != value(first + k):
                fail(f"items[{k}] = {v}, want {value(first + k)}")
                break
        for n in range(first, seq):
            if table.get(n) != text(n):
                fail(f"table[{n}] = {table.get(n)!r}")
                break
        with lock:
            c, tot = list(counts), total
        if sum(c) != tot:
            fail(f"counters {c} add up to {sum(c)}, total {tot}")
        for i in range(2):
            if c[i] < seen[i]:
                fail(f"counter {i} went down: {c[i]} < {seen[i]}")
        seen = c
        if native_ids != start_ids or threading.get_native_id() != main_id or os.getpid() != pid:
            fail(f"ids changed: {native_ids} vs {start_ids}, main {threading.get_native_id()}")
        if not all(t.is_alive() for t in threads):
            fail("a worker thread died")
        crc = zlib.crc32(repr(items).encode())
        crc = zlib.crc32(repr(sorted(table.items())).encode(), crc)
        say(f"tick {tick} ok {crc:08x}")


if __name__ == "__main__":
    main()
