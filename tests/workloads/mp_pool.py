"""multiprocessing at work: a Pool of 3 workers (task and result pipes, handler threads)
squares batches of 20 numbers; the sums go through a multiprocessing.Queue (its feeder
thread) to a consumer Process, which checks them. Logs `batch I OK` (root) and
`consumed I OK` (consumer) for I = 0, 20, 40, ..."""
import multiprocessing as mp
import os
import sys
import time


def square(x: int) -> int:
    return x * x


def consume(q, path: str) -> None:
    log = open(path, "a", buffering=1)
    while True:
        i, total = q.get()
        log.write(f"consumed {i} {total == sum(x * x for x in range(i, i + 20))}\n")


if __name__ == "__main__":
    path = sys.argv[1]
    log = open(path, "a", buffering=1)
    q = mp.Queue()
    mp.Process(target=consume, args=(q, path), daemon=True).start()
    with mp.Pool(3) as pool:
        log.write(f"ready {os.getpid()}\n")
        i = 0
        while True:
            got = pool.map(square, range(i, i + 20))
            log.write(f"batch {i} {got == [x * x for x in range(i, i + 20)]}\n")
            q.put((i, sum(got)))
            i += 20
            time.sleep(0.02)
