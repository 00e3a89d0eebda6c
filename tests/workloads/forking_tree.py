"""A tree that never stops changing: the root keeps 6 children alive, each lives 5-40 ms,
may fork up to two grandchildren (which may fork too, 2 levels deep), waits for them and
exits with status 7; the root reaps them (WNOHANG) and logs `reaped N` every few ms, or
`bad STATUS` for a child that ended otherwise. Every process waits for its own children,
so nothing is ever orphaned out of the tree. The root never reaps its last child before it
has forked others: a dump always finds at least one (living or a zombie) below it."""
import os
import random
import sys
import time

log = open(sys.argv[1], "a", buffering=1)


def child(depth: int) -> None:
    random.seed()
    kids = []
    end = time.monotonic() + random.uniform(0.005, 0.04)
    while time.monotonic() < end:
        if depth < 2 and len(kids) < 2 and random.random() < 0.2:
            pid = os.fork()
            if pid == 0:
                child(depth + 1)
            kids.append(pid)
        time.sleep(0.002)
    for k in kids:
        os.waitpid(k, 0)
    os._exit(7)


print("ready", flush=True)
reaped, live = 0, set()
while True:
    while len(live) < 6:
        pid = os.fork()
        if pid == 0:
            child(0)
        live.add(pid)
    while len(live) > 1:     # else, all reaped, the sleep below would leave the root alone
        pid, status = os.waitpid(-1, os.WNOHANG)
        if pid == 0:
            break
        if os.waitstatus_to_exitcode(status) != 7:
            log.write(f"bad {status}\n")
        live.discard(pid)
        reaped += 1
    log.write(f"reaped {reaped}\n")
    time.sleep(0.003)
