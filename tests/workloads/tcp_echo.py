"""A TCP echo server holding an established connection (with its listener still open).

argv: FAMILY (4 or 6) [MEMORY_MIB [UNIX_PATH]]. Prints "ready PORT" (stdout: a log file),
then serves one connection at a time: echoes what it reads, a little at a time and slowly,
so that both of its queues hold data whenever the peer sends faster than it reads. Logs
"done N" when the peer shut its side (N bytes echoed) or "lost ERRNO N" when the connection
failed, and accepts the next one. MEMORY_MIB of touched memory makes its dump longer; with
UNIX_PATH it also holds a unix socket connected to that path (outside the dumped tree).
TCP_ECHO_SNDBUF in the environment: the connection's SO_SNDBUF (small: the echo blocks soon).
"""
import os
import socket
import sys
import time

family = socket.AF_INET6 if sys.argv[1] == "6" else socket.AF_INET
ballast = bytearray(int(sys.argv[2]) << 20) if len(sys.argv) > 2 else bytearray()
for i in range(0, len(ballast), 4096):
    ballast[i] = 1
if len(sys.argv) > 3:
    outside = socket.socket(socket.AF_UNIX)
    outside.connect(sys.argv[3])
listener = socket.socket(family)
listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
listener.bind(("::1" if family == socket.AF_INET6 else "127.0.0.1", 0))
listener.listen(4)
print("ready", listener.getsockname()[1], flush=True)
while True:
    conn, _ = listener.accept()
    if os.environ.get("TCP_ECHO_SNDBUF"):
        conn.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, int(os.environ["TCP_ECHO_SNDBUF"]))
    total = 0
    try:
        while data := conn.recv(512):
            conn.sendall(data)
            total += len(data)
            time.sleep(0.001)
        print("done", total, flush=True)
    except OSError as e:
        print("lost", e.errno, total, flush=True)
    conn.close()
