"""Pipelined page fetches for a lazy restore's server reading from a page server
(transport/source.py RemoteSource).

The lazy server asks its page source for one run at a time: a fault's window, or 2 MiB of
the background push (restore/lazy_server.py). With one request and its answer per run, the
link idles for a round trip each time, and on a loaded machine for the wake-ups of both ends.
Here the pages are asked ahead, on a connection of their own:

    pipe = Pipeline(client)                 # a second reading connection, a thread of its own
    ahead = Readahead(pipe, key, runs)      # one pagemap: the (vaddr, nbytes) runs it holds
    buf = ahead.take(vaddr, nbytes)         # the bytes if asked ahead (in, or nearly), else None
    ahead.fill(vaddr, nbytes)               # keep up to WINDOW bytes asked after it
    pipe.close()

The push walks a pagemap in address order, and after a fault it goes on where the fault's
window ended: asking ahead from where each read ended predicts it. A fault whose pages are
not in (or not about to be: at most FAULT_WAIT bytes of answers before them) is fetched on
the restore's own connection, so it never waits behind the push's window; both connections
share the link. What was asked once is never asked again here (a later read of it, rare: a
fork's copy of the same pages, what eviction dropped, goes to the other connection).

The thread owns the connection (sends and receives: a TLS socket takes one thread at a
time); a TransportError there (the server gone, or silent: ClientOptions.silence) is raised
to the next take() or fill().
"""
from __future__ import annotations

import threading
from bisect import bisect_right, insort
from collections import deque
from dataclasses import dataclass

import numpy as np

from ..errors import TransportError
from ..memory.sink import PagemapKey
from .client import PageServerClient

CHUNK = 2 << 20             # one request: the push's own step (restore/lazy_server.py PUSH_PAGES), one piece each
WINDOW = 8 << 20            # bytes asked and not received yet, at most
RAMP = CHUNK                # asked after a read that found nothing asked (module docstring)
FAULT_WAIT = 2 << 20        # a read waits for an answer with at most this much before it
HOLD_MAX = 32 << 20         # answers received and not read yet, at most (the oldest go)


@dataclass(eq=False, repr=False)
class Ask:
    key: PagemapKey
    vaddr: int
    buf: np.ndarray
    done: bool = False

    @property
    def end(self) -> int:
        return self.vaddr + self.buf.nbytes


class Pipeline:
    """Requests sent as they are asked for, answers read in order by a thread."""

    def __init__(self, client: PageServerClient):
        self.client = client
        self.error: TransportError | None = None
        self.outstanding = 0                # bytes asked, not received
        self._cv = threading.Condition()
        self._unsent: deque[Ask] = deque()
        self._sent: deque[Ask] = deque()    # answers to come, in order
        self._closing = False
        self._thread = threading.Thread(target=self._run, name="coldsnap page fetch", daemon=True)
        self._thread.start()

    def ask(self, key: PagemapKey, vaddr: int, nbytes: int) -> Ask:
        a = Ask(key, vaddr, np.empty(nbytes, np.uint8))
        with self._cv:
            self._check()
            self._unsent.append(a)
            self.outstanding += nbytes
            self._cv.notify_all()
        return a

    def before(self, a: Ask) -> int | None:
        """Bytes of answers to come before A's (0: A's is next or in), None if A was lost."""
        with self._cv:
            if a.done:
                return 0
            n = 0
            for q in (self._sent, self._unsent):
                for x in q:
                    if x is a:
                        return n
                    n += x.buf.nbytes
        return None

    def wait(self, a: Ask) -> None:
        with self._cv:
            while not a.done:
                self._check()
                self._cv.wait()

    def _check(self) -> None:
        if self.error is not None:
            raise self.error
        if self._closing:
            raise TransportError(f"page server {self.client.endpoint}: fetching has stopped")

    def _run(self) -> None:
        try:
            while True:
                with self._cv:
                    while not self._unsent and not self._sent and not self._closing:
                        self._cv.wait()
                    if not self._unsent and not self._sent:
                        break                   # closing, nothing owed: a clean end
                    todo = list(self._unsent)
                    self._unsent.clear()
                    self._sent.extend(todo)
                    head = self._sent[0]
                if todo:
                    self.client.ask_pages([(a.key, a.vaddr, a.buf.nbytes) for a in todo])
                self.client.receive_pages_into(head.key, head.vaddr, memoryview(head.buf))
                with self._cv:
                    self._sent.popleft()
                    self.outstanding -= head.buf.nbytes
                    head.done = True
                    self._cv.notify_all()
            self.client.close()
        except TransportError as e:
            with self._cv:
                self.error = e
                self._cv.notify_all()
        except BaseException as e:              # noqa: BLE001 - never a silent thread
            with self._cv:
                self.error = TransportError(f"page server {self.client.endpoint}: fetching failed: {e!r}")
                self._cv.notify_all()

    def close(self, timeout: float) -> None:
        """Receive what is owed, end the session cleanly (within TIMEOUT, else cut)."""
        with self._cv:
            self._closing = True
            self._cv.notify_all()
        self._thread.join(timeout)
        if self._thread.is_alive():
            self.client.cut()
            self._thread.join()
        self.client.abort()


class Readahead:
    """One pagemap's pages asked ahead along its RUNS ((vaddr, nbytes), ascending).

    After a read ending at E, what lies in [E, E + span) along the runs is asked for, unless
    read already or asked and held: span starts at RAMP and doubles with every read that
    found its pages asked (a stream), up to WINDOW; a read that did not (a fault elsewhere)
    sets it back, so that scattered faults waste little."""

    def __init__(self, pipe: Pipeline, key: PagemapKey, runs: list[tuple[int, int]]):
        self.pipe, self.key = pipe, key
        self._run_starts = [v for v, _ in runs]
        self._run_ends = [v + n for v, n in runs]
        self._asks: dict[int, Ask] = {}         # by vaddr: asked, not read yet
        self._order: list[int] = []             # their vaddrs, ascending
        self._fifo: deque[Ask] = deque()        # in the order asked (eviction)
        self._held = 0                          # bytes of self._asks
        self._read_starts: list[int] = []       # every range read once, joined
        self._read_ends: list[int] = []
        self._span = RAMP

    def take(self, vaddr: int, nbytes: int) -> np.ndarray | None:
        """The bytes [vaddr, vaddr + nbytes) if asks cover them all and none is more than
        FAULT_WAIT behind the answers coming (waited for then), else None."""
        if self.pipe.error is not None:
            raise self.pipe.error
        pieces = self._covering(vaddr, vaddr + nbytes)
        if pieces is None:
            self._span = RAMP
            return None
        self._span = min(WINDOW, self._span * 2)
        for a in pieces:
            self.pipe.wait(a)
        end = vaddr + nbytes
        if len(pieces) == 1:
            a = pieces[0]
            out = a.buf[vaddr - a.vaddr:end - a.vaddr]
        else:
            out = np.empty(nbytes, np.uint8)
            for a in pieces:
                lo, hi = max(a.vaddr, vaddr), min(a.end, end)
                out[lo - vaddr:hi - vaddr] = a.buf[lo - a.vaddr:hi - a.vaddr]
        for a in pieces:            # read up to its end (or past it): done with
            if a.end <= end:
                self._forget(a)
        return out

    def _covering(self, lo: int, hi: int) -> list[Ask] | None:
        """The asks that cover [lo, hi) one after the other, each with at most FAULT_WAIT
        of answers before it; None if there are none such."""
        i = bisect_right(self._order, lo) - 1
        pieces: list[Ask] = []
        pos = lo
        while pos < hi:
            if i < 0 or i >= len(self._order):
                return None
            a = self._asks[self._order[i]]
            if not a.vaddr <= pos < a.end:
                return None
            before = self.pipe.before(a)
            if before is None or before > FAULT_WAIT:
                return None
            pieces.append(a)
            pos, i = a.end, i + 1
        return pieces

    def fill(self, vaddr: int, nbytes: int) -> None:
        """[vaddr, vaddr + nbytes) was just read: ask for what follows (module docstring)."""
        _mark(self._read_starts, self._read_ends, vaddr, vaddr + nbytes)
        pos, limit = vaddr + nbytes, vaddr + nbytes + self._span
        while pos < limit and self.pipe.outstanding < WINDOW:
            pos, stop = self._next_unasked(pos)
            if pos is None or pos >= limit:
                break
            stop = min(stop, pos + CHUNK)
            a = self.pipe.ask(self.key, pos, stop - pos)
            self._asks[pos] = a
            insort(self._order, pos)
            self._fifo.append(a)
            self._held += a.buf.nbytes
            pos = stop
        while self._held > HOLD_MAX and self._fifo and self._fifo[0].done:
            self._forget(self._fifo[0])

    def _next_unasked(self, pos: int) -> tuple[int | None, int]:
        """The first position from POS inside a run, neither read nor asked, and where that
        stretch ends (the run's end, or the next range read or asked)."""
        while True:
            r = bisect_right(self._run_starts, pos) - 1
            if r < 0 or pos >= self._run_ends[r]:
                r += 1
                if r >= len(self._run_starts):
                    return None, 0
                pos = self._run_starts[r]
            k = bisect_right(self._read_starts, pos) - 1
            if k >= 0 and pos < self._read_ends[k]:
                pos = self._read_ends[k]
                continue
            j = bisect_right(self._order, pos) - 1
            if j >= 0 and pos < self._asks[self._order[j]].end:
                pos = self._asks[self._order[j]].end
                continue
            stop = self._run_ends[r]
            if k + 1 < len(self._read_starts):
                stop = min(stop, self._read_starts[k + 1])
            if j + 1 < len(self._order):
                stop = min(stop, self._order[j + 1])
            return pos, stop

    def _forget(self, a: Ask) -> None:
        if self._asks.pop(a.vaddr, None) is a:
            self._order.pop(bisect_right(self._order, a.vaddr) - 1)
            self._held -= a.buf.nbytes
        try:
            self._fifo.remove(a)
        except ValueError:
            pass


def _mark(starts: list[int], ends: list[int], lo: int, hi: int) -> None:
    """Add [lo, hi) to the joined ranges STARTS/ENDS."""
    k = bisect_right(starts, lo)
    if k and ends[k - 1] >= lo:
        k -= 1
        lo = starts[k]
        hi = max(hi, ends[k])
        del starts[k], ends[k]
    while k < len(starts) and starts[k] <= hi:
        hi = max(hi, ends[k])
        del starts[k], ends[k]
    starts.insert(k, lo)
    ends.insert(k, hi)
