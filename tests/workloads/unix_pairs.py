"""Unix socketpairs of every type holding queued messages both ways, a parent and child
talking over a stream pair, and (optionally) listeners on a path and in the abstract
namespace. Usage: unix_pairs.py DIR [LISTEN_PATH ABSTRACT_NAME]

Writes DIR/log: "ready" once everything is set up (dump now), then, after DIR/go appears,
what it reads from each queue, whether each pair still works both ways, and "done".
The child writes "child N" lines as its exchanges with the parent go on.
"""
import fcntl
import os
import socket
import sys
import time

d = sys.argv[1]
log = open(os.path.join(d, "log"), "a", buffering=1)
TYPES = {"stream": socket.SOCK_STREAM, "dgram": socket.SOCK_DGRAM, "seqpacket": socket.SOCK_SEQPACKET}
AB = [b"one", b"two-longer", b"3"]
BA = [b"back-1", b"back-two"]

# the parent/child pair, made before anything else so the child holds only its end
pc, cc = socket.socketpair()
srv = None
if len(sys.argv) > 3:      # a named datagram server with clients in both processes
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    srv.bind(b"\0" + sys.argv[3].encode() + b"-srv")
child = os.fork()
if child == 0:
    pc.close()
    if srv is not None:
        ccl = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        ccl.connect(srv.getsockname())
    n = 0
    while True:      # ask, wait for the answer, log it: a conversation across the dump
        n += 1
        if srv is not None:
            try:
                ccl.send(b"c%d" % n, socket.MSG_DONTWAIT)
            except BlockingIOError:
                pass
        cc.sendall(f"{n}\n".encode())
        got = b""
        while not got.endswith(b"\n"):
            chunk = cc.recv(100)
            if not chunk:
                os._exit(0)
            got += chunk
        log.write(f"child {got.decode().strip()}\n")
        time.sleep(0.02)
cc.close()

pairs = {}
for name, t in TYPES.items():
    a, b = socket.socketpair(socket.AF_UNIX, t)
    for m in AB:
        a.send(m)
    for m in BA:
        b.send(m)
    pairs[name] = (a, b)
pairs["stream"][0].setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 50000)
fcntl.fcntl(pairs["dgram"][1].fileno(), fcntl.F_SETFL, os.O_NONBLOCK)
sa, sb = socket.socketpair()          # b shut its sending side after writing
sb.send(b"last words")
sb.shutdown(socket.SHUT_WR)
qa, qb = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)   # qb shut its receiving side
qa.send(b"before")
qb.shutdown(socket.SHUT_RD)

listeners = []
if len(sys.argv) > 3:
    lp = socket.socket(socket.AF_UNIX)
    lp.bind(sys.argv[2])
    lp.listen(5)
    la = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    la.bind(b"\0" + sys.argv[3].encode())
    la.listen(3)
    lg = socket.socket(socket.AF_UNIX)   # a listener whose file was unlinked after bind
    lg.bind(sys.argv[2] + ".unlinked")
    lg.listen(2)
    os.unlink(sys.argv[2] + ".unlinked")
    listeners = [lp, la]
    # a connection accepted inside the tree (comes back as a plain pair), data both ways
    cl = socket.socket(socket.AF_UNIX)
    cl.connect(sys.argv[2])
    acc, _ = lp.accept()
    cl.send(b"to server")
    acc.send(b"to client")
    # another accepted connection whose listener is closed and its file removed since
    tmp = socket.socket(socket.AF_UNIX)
    tmp.bind(sys.argv[2] + ".gone")
    tmp.listen(1)
    cl2 = socket.socket(socket.AF_UNIX)
    cl2.connect(sys.argv[2] + ".gone")
    acc2, _ = tmp.accept()
    tmp.close()
    os.unlink(sys.argv[2] + ".gone")
    # a bound datagram socket nobody is connected to, two datagrams waiting in it
    dg = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    dg.bind(b"\0" + sys.argv[3].encode() + b"-dgram")
    dg.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
    pcl = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    pcl.connect(srv.getsockname())
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as tx:
        tx.sendto(b"dg-1", dg.getsockname())
        tx.sendto(b"dg-22", dg.getsockname())

sndbuf = pairs["stream"][0].getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF)
log.write("ready\n")
while not os.path.exists(os.path.join(d, "go")):
    # answer the child meanwhile
    pc.settimeout(0.02)
    try:
        q = pc.recv(100)
        if q:
            pc.sendall(q)
    except TimeoutError:
        pass
pc.settimeout(None)
log.write(f"nonblock {bool(fcntl.fcntl(pairs['dgram'][1].fileno(), fcntl.F_GETFL) & os.O_NONBLOCK)}\n")


def drain(s, t):
    s.setblocking(False)
    out = []
    while True:
        try:
            m = s.recv(1000)
        except BlockingIOError:
            break
        if not m:
            break
        out.append(m)
    s.setblocking(True)
    if t == socket.SOCK_STREAM:
        return [b"".join(out)]
    return out


for name, t in TYPES.items():
    a, b = pairs[name]
    log.write(f"{name} a<-b {drain(a, t)!r}\n")
    log.write(f"{name} b<-a {drain(b, t)!r}\n")
    a.send(b"ping")
    b.send(b"pong")
    log.write(f"{name} after {b.recv(100)!r} {a.recv(100)!r}\n")
log.write(f"sndbuf {sndbuf} {pairs['stream'][0].getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF)}\n")
log.write(f"shutdown {sa.recv(100)!r} {sa.recv(100)!r}\n")
try:
    qa.send(b"more")
    peer = "open"
except BrokenPipeError:
    peer = "EPIPE"
log.write(f"seqpacket shut {qb.recv(100)!r} {qb.recv(100)!r} {peer}\n")
try:
    sa.send(b"x")
    log.write("shutdown-peer-open\n")
except BrokenPipeError:
    log.write("shutdown-peer-closed\n")
if listeners:
    log.write(f"accepted pair {acc.recv(100)!r} {cl.recv(100)!r}\n")
    cl.send(b"again")
    log.write(f"accepted pair after {acc.recv(100)!r}\n")
    cl2.send(b"still")
    log.write(f"accepted pair of a gone listener {acc2.recv(100)!r}\n")
    log.write(f"bound dgram {dg.recv(100)!r} {dg.recv(100)!r} "
              f"passcred {dg.getsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED)}\n")
if listeners:
    log.write(f"unlinked listener {lg.getsockname()} {os.path.exists(sys.argv[2] + '.unlinked')}\n")
for i, l in enumerate(listeners):
    c, _ = l.accept()
    c.send(b"hello from listener %d" % i)
    c.close()
    log.write(f"accepted {i}\n")
def drain_srv():
    out = []
    while True:
        try:
            out.append(srv.recv(100, socket.MSG_DONTWAIT))
        except BlockingIOError:
            return out


if srv is not None:
    drain_srv()
    pcl.send(b"parent-after")
    first = drain_srv()
for i in range(5):      # a few more exchanges with the child after restore
    q = pc.recv(100)
    pc.sendall(q)
if srv is not None:
    later = drain_srv()
    log.write(f"dgram server {b'parent-after' in first} {any(m.startswith(b'c') for m in later)}\n")
# the end of the conversation: the child logs its last answer, reads the end and exits by
# itself (killing it could beat its last "child N" line)
pc.shutdown(socket.SHUT_WR)
os.waitpid(child, 0)
log.write("done\n")
