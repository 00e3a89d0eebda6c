"""A zombie below the root that leads a process group a living sibling joined.

root (session leader) -> middle (setpgid own group) -> Z: setpgid(0, 0), exits 5, unreaped
                                                    -> S: joins Z's group, sleeps
LOGDIR/ready gets "MIDDLE Z S" when all is in place; once LOGDIR/reap exists the middle
reaps Z and writes "PID STATUS" to LOGDIR/reaped."""
import os
import sys
import time

logdir = sys.argv[1]
if os.fork() == 0:
    os.setpgid(0, 0)
    r, w = os.pipe()
    z = os.fork()
    if z == 0:
        os.setpgid(0, 0)
        os.close(r)
        os.write(w, b"1")
        os._exit(5)
    os.read(r, 1)
    s = os.fork()
    if s == 0:
        os.setpgid(0, z)
        while True:
            time.sleep(1)
    while not open(f"/proc/{z}/stat").read().rsplit(")", 1)[1].split()[0] == "Z" or os.getpgid(s) != z:
        time.sleep(0.01)
    with open(os.path.join(logdir, "ready.tmp"), "w") as f:
        f.write(f"{os.getpid()} {z} {s}\n")
    os.rename(os.path.join(logdir, "ready.tmp"), os.path.join(logdir, "ready"))
    while not os.path.exists(os.path.join(logdir, "reap")):
        time.sleep(0.01)
    pid, status = os.waitpid(z, 0)
    with open(os.path.join(logdir, "reaped"), "w") as f:
        f.write(f"{pid} {status}\n")
    while True:
        time.sleep(1)
while True:
    time.sleep(1)
