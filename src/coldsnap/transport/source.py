"""A page server's stored session as the pages of a restore (memory/source.py PageSource):
`coldsnap restore -D DIR --page-server HOST:PORT`, eager or --lazy-pages.

    origin = RemotePages(endpoint, options, session="final")
    src = origin.source(imgdir, pid)        # covered runs asked once (CS_COVERED)
    src.saved(0, vaddr, nbytes)             # fetched (CS_GET), whatever the chain over there

Every run is at level 0 with its saved address as offset: the server resolves its own
chain. What the server says is checked like an image: covered ranges must be page-aligned,
ascending and inside an address space (the restore then checks them against the VMAs), an
answer must be exactly the pages asked for (client.py; no crc32: see RemotePages); anything
else is a TransportError, never a hole. When DIR holds the pagemap too, the server's ranges
must be the same.

One connection per process: the restore's, and the lazy-pages server's own (start()); a
process forked from the restore lets the inherited one go without a word (forked()). The
lazy-pages server has a second one, on which the pages are asked ahead of its reads
(transport/fetch.py): its own connection is left to faults.

A lazy restore's connections bound a silent server (ClientOptions.silence, wire.py
liveness()): SILENCE seconds without a byte of an answer owed, or with data unacknowledged,
is an error, the lazy server then exits and its guardian kills the restored processes.
5 s: a page server answers a request within milliseconds (a 4 MiB window on a loaded
machine: tens), and even at a load of 20 on 2 CPUs a runnable process waits well under a
second for a CPU.
"""
from __future__ import annotations

from dataclasses import replace

import numpy as np

from ..errors import ImageError, TransportError
from ..images.chain import PageChain
from ..images.pages import pagemap_name
from ..images.source import cut_runs
from ..kernel.page import PAGE_SHIFT, PAGE_SIZE
from ..memory.ranges import Ranges
from ..memory.sink import PagemapKey
from . import protocol as P
from .client import ClientOptions, PageServerClient
from .fetch import Pipeline, Readahead
from .wire import Endpoint

FETCH_MAX = P.BATCH_MAX_PAGES << PAGE_SHIFT     # one CS_GET at most
SILENCE = 5.0                                   # seconds (module docstring)


class RemotePages:
    """The session SESSION of the page server at ENDPOINT, read (a PageOrigin)."""

    def __init__(self, endpoint: Endpoint, options: ClientOptions = ClientOptions(), session: str = ""):
        # no crc32 of every answer: it costs more than the transfer (1 ms per MiB on each end,
        # under load), while TCP's checksum (and TLS's MAC) cover the bytes on the way
        self.endpoint, self.session = endpoint, session
        self.options = replace(options, checksum=False, silence=options.silence or SILENCE)
        self._client: PageServerClient | None = None
        self._keys: set[PagemapKey] | None = None
        self.role: str | None = None
        self.pipe: Pipeline | None = None       # the lazy-pages server's pages asked ahead

    def __str__(self) -> str:
        return f"session {self.session!r} of page server {self.endpoint}"

    def client(self) -> PageServerClient:
        if self._client is None:
            self._client = PageServerClient(self.endpoint, self.options, session=self.session, reading=True,
                                            role=self.role)
        return self._client

    def source(self, imgdir, key: int, shmem: bool = False) -> "RemoteSource | None":
        if self._keys is None:
            self._keys = set(self.client().pagemaps())
        pk = PagemapKey(key, shmem)
        if pk not in self._keys:
            return None
        src = RemoteSource(self, pk, _checked_ranges(self, pk, self.client().covered(pk)))
        name = pagemap_name(key, shmem)
        if imgdir.exists(name):
            with PageChain(imgdir, key, shmem) as chain:
                local = chain.covered_ranges().merged()
            theirs = [(v, v + n) for v, n in src.runs()]
            if local.pairs() != Ranges.of(theirs).merged().pairs():
                raise ImageError(f"{imgdir.path(name)}: {self} holds other pages than this pagemap")
        return src

    def by_address(self, key: int, shmem: bool = False) -> "RemoteSource":
        """Pagemap KEY's pages fetched by address, its ranges not asked (the PE_LAZY runs of a
        local pagemap say which: images/source.py ChainSource)."""
        return RemoteSource(self, PagemapKey(key, shmem), [])

    def start(self) -> None:
        self.role = "lazy"      # its clean close tells the server that every page is in
        self.client()
        self.pipe = Pipeline(PageServerClient(self.endpoint, self.options, session=self.session, reading=True,
                                              role="lazy-ahead"))

    def forked(self) -> None:
        """Close the inherited descriptor (the restore goes on using the connection)."""
        if self._client is not None:
            self._client.abort()
            self._client = None

    def close(self) -> None:
        if self.pipe is not None:
            pipe, self.pipe = self.pipe, None
            try:
                pipe.close(self.options.silence)
            except TransportError:
                pass
        if self._client is not None:
            try:
                self._client.close()
            except TransportError:
                pass
            self._client = None


def _checked_ranges(origin: RemotePages, key: PagemapKey, cov) -> list[tuple[int, int]]:
    """The covered ranges a server answered, as (start, end) pairs, if they make sense."""
    starts, ends = cov.as_numpy()
    bad = (starts % np.uint64(PAGE_SIZE) != 0) | (ends % np.uint64(PAGE_SIZE) != 0) | (ends <= starts) \
        | (ends > np.uint64(P.ADDR_LIMIT))
    if len(starts) > 1:
        bad[1:] |= starts[1:] < ends[:-1]
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise TransportError(f"{origin}: pagemap {key.id}: range {int(starts[i]):#x}-{int(ends[i]):#x} "
                             "is not page-aligned, ascending and inside an address space")
    return list(zip(starts.tolist(), ends.tolist()))


class RemoteSource:
    """One pagemap of a page server's session (memory/source.py PageSource): RANGES, the
    (start, end) pairs it holds."""

    def __init__(self, origin: RemotePages, key: PagemapKey, ranges: list[tuple[int, int]]):
        self.origin, self.key = origin, key
        self._runs = [(0, s, e - s, s) for s, e in ranges]
        self._held: list[np.ndarray] = []
        self._ahead: Readahead | None = None
        self._expected: list[tuple[int, int]] | None = None

    def expect(self, runs: list[tuple[int, int]]) -> None:
        """The (vaddr, nbytes) runs this source will be read by address (those of by_address()
        that a local pagemap knows), ascending: what the lazy server's reads are guessed along."""
        self._expected = runs

    def drop(self, areas: list[tuple[int, int]]) -> None:
        """Forget the pages inside AREAS (the vDSO's: the running one is moved there)."""
        self._runs = cut_runs(self._runs, areas)

    def runs(self) -> list[tuple[int, int]]:
        return [(v, n) for _, v, n, _ in self._runs]

    def located(self) -> list[tuple[int, int, int, int]]:
        return list(self._runs)

    def saved(self, level: int, offset: int, nbytes: int) -> np.ndarray:
        ahead = self._readahead()
        got = ahead.take(offset, nbytes) if ahead is not None else None
        if got is None:
            got = np.empty(nbytes, np.uint8)
            self.read_into(offset, memoryview(got))
        if ahead is not None:
            ahead.fill(offset, nbytes)
        return got

    def _readahead(self) -> Readahead | None:
        """In the lazy-pages server only (its pipe): this pagemap's pages asked ahead."""
        if self._ahead is None and self.origin.pipe is not None:
            runs = self._expected if self._expected is not None else self.runs()
            self._ahead = Readahead(self.origin.pipe, self.key, runs)
        return self._ahead if self.origin.pipe is not None else None

    def pin(self) -> None:
        """Nothing here: the server keeps the pages."""

    def warm(self) -> None:
        """Nothing here (the lazy server's main thread owns the connection)."""

    def mapped(self):
        for _, vaddr, nbytes, offset in self._runs:
            buf = self.saved(0, offset, nbytes)
            self._held.append(buf)          # the writer's threads read it after we yield
            yield vaddr, nbytes, buf, 0

    def read_into(self, vaddr: int, buf: memoryview) -> None:
        view = memoryview(buf).cast("B")
        client = self.origin.client()
        for at in range(0, view.nbytes, FETCH_MAX):
            client.read_pages_into(self.key, vaddr + at, view[at:at + FETCH_MAX])

    def close(self) -> None:
        self._held.clear()
