"""A master with two workers accepting on the listening socket they inherited (nginx-like).

Prints "ready PORT W1 W2" (stdout: a log file); each worker answers a connection with
"worker PID\\n" and holds it until the client closes it (so that a client holding one
connection is sure to be answered by the other worker on its next); the master waits for its workers and logs "reaped PID STATUS"
for each one that ends."""
import os
import socket

s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("127.0.0.1", 0))
s.listen(16)
kids = []
for _ in range(2):
    pid = os.fork()
    if pid == 0:
        while True:
            c, _ = s.accept()
            c.sendall(f"worker {os.getpid()}\n".encode())
            c.recv(1)
            c.close()
    kids.append(pid)
print("ready", s.getsockname()[1], *kids, flush=True)
while kids:
    pid, status = os.wait()
    kids.remove(pid)
    print("reaped", pid, status, flush=True)
