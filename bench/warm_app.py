"""A service that is slow to start, for bench/lazy.py: it listens at once, then imports numpy
and loads its data (a .npy file of SIZE), and only then answers, one request per connection:

    first  -> the sum of its first 64 Ki values (what a typical request touches: 512 KiB)
    all    -> the sum of every value and how long that took inside the process, in ms

    python3 bench/warm_app.py DATA.npy PORTFILE      # stdout: "ready" once loaded

Its stdio must survive a checkpoint (/dev/null, a regular file): the port goes to PORTFILE.
"""
import os
import socket
import sys
import time

path, port_file = sys.argv[1:3]
lsock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
lsock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)   # restorable with TIME_WAITs about
lsock.bind(("127.0.0.1", 0))
lsock.listen(16)
with open(port_file + ".tmp", "w") as f:
    f.write(str(lsock.getsockname()[1]))
os.rename(port_file + ".tmp", port_file)

import numpy as np  # noqa: E402  (the slow part of starting, on purpose after listen)

data = np.load(path)
index = {i: int(data[i * 997 % len(data)]) for i in range(10000)}   # some Python objects too
print("ready", flush=True)
while True:
    conn, _ = lsock.accept()
    with conn:
        req = conn.recv(64).strip()
        if req == b"first":
            answer = str(int(data[:1 << 16].sum()) + len(index))
        elif req == b"all":
            t0 = time.perf_counter()
            total = int(data.sum())
            answer = f"{total} {(time.perf_counter() - t0) * 1e3:.2f}"
        else:
            answer = "?"
        conn.sendall(answer.encode() + b"\n")
