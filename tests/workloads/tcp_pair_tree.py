"""Both ends of a TCP connection inside one tree: a parent accepts its child's connection.

argv: FAMILY (4 or 6). The child sends numbered lines and checks each echo; the parent
checks the numbers and echoes them. The parent logs "ready PORT CHILD", then "tick N ok" every
200 lines; either side logs "FAIL ..." on a wrong, missing or repeated line."""
import os
import socket
import sys
import time

family = socket.AF_INET6 if sys.argv[1] == "6" else socket.AF_INET
host = "::1" if family == socket.AF_INET6 else "127.0.0.1"
listener = socket.socket(family)
listener.bind((host, 0))
listener.listen(1)
port = listener.getsockname()[1]
child = os.fork()
if child == 0:
    listener.close()
    c = socket.create_connection((host, port))
    n, buf = 0, b""
    while True:
        c.sendall(b"%08d\n" % n)
        while b"\n" not in buf:
            data = c.recv(4096)
            if not data:
                print("FAIL child: connection closed", flush=True)
                os._exit(1)
            buf += data
        line, buf = buf.split(b"\n", 1)
        if int(line) != n:
            print(f"FAIL child: echo {line!r}, expected {n}", flush=True)
            os._exit(1)
        n += 1
        time.sleep(0.0005)
conn, _ = listener.accept()
print("ready", port, child, flush=True)
n, buf = 0, b""
while True:
    data = conn.recv(4096)
    if not data:
        print("FAIL parent: connection closed", flush=True)
        sys.exit(1)
    buf += data
    while b"\n" in buf:
        line, buf = buf.split(b"\n", 1)
        if int(line) != n:
            print(f"FAIL parent: got {line!r}, expected {n}", flush=True)
            sys.exit(1)
        conn.sendall(line + b"\n")
        n += 1
        if n % 200 == 0:
            print(f"tick {n // 200} ok", flush=True)
