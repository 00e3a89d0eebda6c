"""One established TCP stream, saved from a socket in repair mode and rebuilt into a new one.

    s_ = socket over a duplicate of the task's socket; lock its packets first (lock.py)
    set_repair(s_, True); stream = save_stream(s_)        # nothing consumed, nothing sent
    ...
    s = socket.socket(family); set its options; set_repair(s, True)   # in the restored process
    restore_stream(s, local, remote, stream)               # still in repair mode
    finish(s, reuseaddr)                                   # repair off: the stream goes on

Sequence numbers (CRIU's naming, as tcp_stream_entry keeps them):
  inq_seq  = rcv_nxt (the receive queue's end), inq_len = bytes received, not read yet
  outq_seq = write_seq (the send queue's end),  outq_len = bytes written, not acked yet,
             of which `unsent` never left the socket
A queue's first byte therefore has sequence number seq - len, which is what a new socket's
TCP_QUEUE_SEQ is set to before the queue's bytes are put back.
"""
from __future__ import annotations

import errno
import socket
from dataclasses import dataclass

from coldsnap.kernel import tcp_repair as R

from .fin import TH_ACK, TH_FIN, send_segment

TCP_ESTABLISHED = 1
TCP_CLOSE_WAIT = 8          # the peer closed its side; its FIN is given back by fin.py
# the others with a FIN of ours in flight or acked (FIN_WAIT1/2, CLOSING, LAST_ACK) are not
# rebuilt yet
SUPPORTED_STATES = {TCP_ESTABLISHED, TCP_CLOSE_WAIT}
_MIN_CHUNK = 1024


class StreamError(OSError):
    """A stream that cannot be saved or rebuilt; the message says which step failed."""


@dataclass(slots=True)
class TcpStream:
    """What TCP_REPAIR reads from an established socket (tcp_stream_entry and its queues)."""
    state: int
    inq_seq: int
    outq_seq: int
    inq: bytes                 # received, not read by the task
    outq: bytes                # written by the task, not acknowledged by the peer
    unsent: int                # the tail of outq that was never sent
    mss_clamp: int
    opt_mask: int              # TCPI_OPT_* the two ends agreed on
    snd_wscale: int = 0
    rcv_wscale: int = 0
    timestamp: int = 0
    window: R.RepairWindow | None = None


def save_stream(s: socket.socket) -> TcpStream:
    """The state of S, a TCP socket already in repair mode; its queues are peeked, not read."""
    info = R.tcp_info(s)
    if info.state not in SUPPORTED_STATES:
        raise StreamError(errno.EOPNOTSUPP, f"TCP state {info.state} cannot be repaired")
    inq_len, outq_len, unsent = R.queue_sizes(s)
    st = TcpStream(info.state, 0, 0, b"", b"", unsent, R.mss(s), info.options)
    if info.options & R.TCPI_OPT_WSCALE:
        st.snd_wscale, st.rcv_wscale = info.snd_wscale, info.rcv_wscale
    if info.options & R.TCPI_OPT_TIMESTAMPS:
        st.timestamp = R.timestamp(s)
    st.window = R.repair_window(s)
    st.inq_seq, st.inq = _peek_queue(s, R.TCP_RECV_QUEUE, inq_len)
    st.outq_seq, st.outq = _peek_queue(s, R.TCP_SEND_QUEUE, outq_len)
    R.select_queue(s, R.TCP_NO_QUEUE)
    return st


def _peek_queue(s: socket.socket, queue: int, length: int) -> tuple[int, bytes]:
    R.select_queue(s, queue)
    seq = R.queue_seq(s)
    if not length:
        return seq, b""
    # one byte more than announced: a longer queue would mean the sizes moved under us
    data = s.recv(length + 1, socket.MSG_PEEK | socket.MSG_DONTWAIT)
    if len(data) != length:
        what = "receive" if queue == R.TCP_RECV_QUEUE else "send"
        raise StreamError(errno.EIO, f"{what} queue holds {len(data)} bytes, {length} announced "
                                     "(it changed while read: packets not held back by a network lock?)")
    return seq, data


def restore_stream(s: socket.socket, local: tuple, remote: tuple, st: TcpStream) -> None:
    """Make S (new, in repair mode) the established stream ST between LOCAL and REMOTE
    ((addr, port) each): sequence numbers, connection, options, queues, window. S stays in
    repair mode: nothing has reached the wire yet. StreamError names the failed step.

    A stream in CLOSE_WAIT is rebuilt established, the peer's FIN one sequence number
    short, then handed a FIN|ACK from the peer (fin.py): the kernel closes it as it did."""
    peer_fin = st.state == TCP_CLOSE_WAIT
    rcv_nxt = st.inq_seq - 1 if peer_fin else st.inq_seq      # before the peer's FIN
    _step("bind", s.bind, local)
    _step("set the receive sequence", _set_seq, s, R.TCP_RECV_QUEUE, rcv_nxt - len(st.inq))
    _step("set the send sequence", _set_seq, s, R.TCP_SEND_QUEUE, st.outq_seq - len(st.outq))
    R.select_queue(s, R.TCP_NO_QUEUE)
    _step("connect", s.connect, remote)
    _step("set the TCP options", R.set_repair_options, s, _options(st))
    if st.opt_mask & R.TCPI_OPT_TIMESTAMPS:
        _step("set the timestamp", R.set_timestamp, s, st.timestamp)
    if st.inq:
        R.select_queue(s, R.TCP_RECV_QUEUE)
        _step("refill the receive queue", _send_all, s, st.inq)
    sent = len(st.outq) - st.unsent
    if sent:
        R.select_queue(s, R.TCP_SEND_QUEUE)     # "sent": queued as in flight, transmitted never
        _step("refill the send queue", _send_all, s, st.outq[:sent])
    R.select_queue(s, R.TCP_NO_QUEUE)
    if st.unsent:
        # never sent before: an ordinary send, with repair off for it (the lock holds the
        # packets back; the stream retransmits them once it is lifted)
        R.set_repair(s, False)
        try:
            _step("queue the unsent data", _send_all, s, st.outq[sent:])
        finally:
            R.set_repair(s, True)
    if st.window is not None:
        w = st.window
        if peer_fin:     # the window as it was before the FIN took its sequence number
            w = R.RepairWindow(w.snd_wl1, w.snd_wnd, w.max_window, w.rcv_wnd + 1, w.rcv_wup - 1)
        _step("set the window", R.set_repair_window, s, w)
    if peer_fin:
        window = (st.window.snd_wnd >> st.snd_wscale) if st.window is not None else 0xFFFF
        _step("give back the peer's FIN", send_segment, s.family, remote[:2], local[:2], rcv_nxt,
              st.outq_seq - len(st.outq), TH_FIN | TH_ACK, window)


def finish(s: socket.socket, reuseaddr: bool) -> None:
    """Repair mode off (the kernel then resets SO_REUSEADDR: set the task's value again)."""
    R.set_repair(s, False)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, int(reuseaddr))


def _options(st: TcpStream) -> list[tuple[int, int]]:
    out = []
    if st.opt_mask & R.TCPI_OPT_SACK:
        out.append((R.TCPOPT_SACK_PERM, 0))
    if st.opt_mask & R.TCPI_OPT_WSCALE:
        out.append((R.TCPOPT_WINDOW, st.snd_wscale | st.rcv_wscale << 16))
    if st.opt_mask & R.TCPI_OPT_TIMESTAMPS:
        out.append((R.TCPOPT_TIMESTAMP, 0))
    out.append((R.TCPOPT_MAXSEG, st.mss_clamp))
    return out


def _set_seq(s: socket.socket, queue: int, seq: int) -> None:
    R.select_queue(s, queue)
    R.set_queue_seq(s, seq)


def _send_all(s: socket.socket, data: bytes) -> None:
    """Send DATA whole; in repair mode the kernel builds one buffer per call, so a chunk too
    big for it (ENOMEM) is halved until it fits."""
    view, chunk = memoryview(data), len(data)
    while view:
        try:
            n = s.send(view[:chunk])
        except OSError as e:
            if e.errno in (errno.ENOMEM, errno.ENOBUFS) and chunk > _MIN_CHUNK:
                chunk //= 2
                continue
            raise
        view = view[n:]


def _step(what: str, fn, *args) -> None:
    try:
        fn(*args)
    except OSError as e:
        raise StreamError(e.errno or errno.EIO, f"cannot {what}: {e.strerror or e}") from None
