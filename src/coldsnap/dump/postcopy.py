"""`coldsnap migrate --post-copy`, the source's side: the final dump keeps the private pages
here and the destination runs the process at once, fetching them from a page server of ours.

    pages = PostCopyPages(to, options)          # the final dump's page target
    server = SourcePageServer(base, to, options)   # before the final dump: serves base/
    ... dump(pid, final, pages=pages, after_commit=switchover(server.request(final.name)))
    server.wait_done(timeout)                   # the destination's lazy server has every page

What the final dump sends: every image, the shared memory pages, and for each process's
private memory only its pagemap: PE_PARENT runs (the destination holds them from the
pre-copy iterations) and PE_LAZY runs for what the final dump saved. The bytes of those
are written here, in the final images directory, as a local dump writes them: the frozen
window pays a local copy of the last delta and the images on the wire, whatever the delta.
The destination's restore (lazy) reads the PE_LAZY runs from our page server by address
(images/source.py ChainSource with a lazy source), the rest from its own chain.

The server answers reading sessions only (ServerOptions.read_only), with the migration's
token and TLS files. When the destination's lazy server closes
its session (role "lazy", protocol.py: it does once no page of ours is left to fetch) we
are done; if it drops the connection instead, the migrated process has been killed there.

A silent destination is noticed within SILENCE seconds, as the destination notices a silent
source (transport/source.py): its host or the path gone, by TCP (data of ours unacknowledged,
keepalive probes unanswered: wire.py tcp_liveness); its lazy server stopped (its kernel
still acknowledges), by the session: while pages are owed it asks as fast as our answers
reach it (the push asks ahead of its reads), so SILENCE seconds with no request on any of
its connections and no byte of ours newly acknowledged is silence (PageServer.quiet; a
stopped peer's kernel acknowledges until its receive buffer is full, and no more). No connection has an idle
bound of its own: the fault connection idles while the push goes on. On silence we shut
the session's connections down and migrate fails in one line: the destination's lazy server
sees them gone (or, if it was stopped, as soon as it runs again) and its guardian kills the
process, which cannot run with holes; nothing of ours is kept (the final images hold pages
no restore could use without the destination's chain).
"""
from __future__ import annotations

import socket
import threading
import time
from pathlib import Path

import numpy as np

from ..errors import CsError, TransportError
from ..images.directory import ImageDir
from ..memory.sink import PagemapKey
from ..transport.client import ClientOptions
from ..transport.server import PageServer, ServerOptions
from ..transport.sink import ServerPages, ServerSession, ServerSink
from ..transport.wire import Endpoint
from .sink import ImageSink


class TeeSink:
    """Private pagemaps: bytes into the local images, PE_LAZY runs to the destination;
    shared memory pagemaps: all to the destination (a PageSink)."""

    def __init__(self, local: ImageSink, remote: ServerSink):
        self.local, self.remote = local, remote
        self.private = False

    def prepare(self, pagemap: PagemapKey, nbytes: int) -> None:
        if not pagemap.shmem:
            self.local.prepare(pagemap, nbytes)

    def begin(self, pagemap: PagemapKey) -> None:
        self.private = not pagemap.shmem
        self.remote.begin(pagemap)
        if self.private:
            self.local.begin(pagemap)

    def present(self, vaddrs: np.ndarray, lengths: np.ndarray, data: memoryview) -> None:
        if self.private:
            self.local.present(vaddrs, lengths, data)
            self.remote.client.lazy(vaddrs, lengths)
        else:
            self.remote.present(vaddrs, lengths, data)

    def parent(self, vaddr: int, nr_pages: int) -> None:
        self.remote.parent(vaddr, nr_pages)

    def skipped(self, vaddr: int, nr_pages: int) -> None:
        self.remote.skipped(vaddr, nr_pages)
        if self.private:
            self.local.skipped(vaddr, nr_pages)

    def reserve(self, nbytes: int):
        return self.local.reserve(nbytes) if self.private else self.remote.reserve(nbytes)

    def placed(self, vaddrs: np.ndarray, lengths: np.ndarray) -> None:
        if self.private:
            self.local.placed(vaddrs, lengths)
            self.remote.client.lazy(vaddrs, lengths)
        else:
            self.remote.placed(vaddrs, lengths)

    def end(self) -> None:
        self.remote.end()
        if self.private:
            self.local.end()
        self.private = False

    def close(self) -> None:
        self.local.close()
        self.remote.close()

    def __enter__(self) -> "TeeSink":
        return self

    def __exit__(self, exc_type, *exc) -> None:
        self.local.__exit__(exc_type, *exc)
        self.remote.__exit__(exc_type, *exc)


class PostCopySession(ServerSession):
    # the pages and pagemaps stay here: the destination has its own pagemaps, received run by run
    KEEP_LOCAL = ("pagemap-", "pages-", ".")

    def sink(self, imgdir: ImageDir) -> TeeSink:
        self.imgdir = imgdir
        return TeeSink(ImageSink(imgdir), ServerSink(self._client()))


class PostCopyPages(ServerPages):
    """The page target of the final dump of a post-copy migration."""

    def __init__(self, endpoint: Endpoint, options: ClientOptions = ClientOptions()):
        super().__init__(endpoint, options, send_images=True)

    def session(self, path: str | Path, prev: str | Path | None) -> PostCopySession:
        return PostCopySession(self, Path(path).name, Path(prev).name if prev is not None else None)


def address_towards(to: Endpoint) -> str:
    """This host's address on the route to TO (what the destination can reach us at)."""
    try:
        family, kind, proto, _, addr = socket.getaddrinfo(to.host, to.port, type=socket.SOCK_DGRAM)[0]
        with socket.socket(family, kind, proto) as s:
            s.connect(addr)             # a datagram socket: no packet, only the route
            return s.getsockname()[0]
    except OSError as e:
        raise TransportError(f"no route to {to}: {e.strerror or e}") from None


SILENCE = 5.0       # seconds: as the destination's bound on us (transport/source.py SILENCE)
POLL = 0.25         # seconds between two looks at the session's silence


class SourcePageServer:
    """Our page server for the destination's lazy restore: serves the sessions of BASE (the
    final images directory), on this host's address towards the destination, with the
    migration's token and TLS files."""

    def __init__(self, base: Path, to: Endpoint, options: ClientOptions, log=lambda line: None,
                 silence: float = SILENCE):
        self.silence = silence
        self.session: str | None = None
        self.opened = threading.Event()
        self.ended = threading.Event()
        self.clean = False
        self.t_open = self.t_end = 0.0
        address = address_towards(to)
        self.server = PageServer(base, address, 0, ServerOptions(
            token=options.token, tls=options.tls, idle_timeout=None, silence=silence, log=log,
            reader_event=self._event, read_only=True)).start()
        self.endpoint = Endpoint(address, self.server.port)

    def request(self, session: str) -> dict:
        """The CS_RESTORE request of a post-copy switchover for SESSION."""
        self.session = session
        return {"lazy_from": str(self.endpoint), "session": session}

    def _event(self, name: str, role: str | None, event: str) -> None:
        if name != self.session or role != "lazy":
            return
        if event == "open":
            self.t_open = time.perf_counter()
            self.opened.set()
        else:
            self.clean = event == "closed"
            self.t_end = time.perf_counter()
            self.ended.set()

    def wait_done(self, start_timeout: float) -> None:
        """Until the destination's lazy server has every page (its session closed); raises
        CsError if it never came (within start_timeout) or dropped the connection."""
        if not self.opened.wait(start_timeout):
            raise CsError(f"the destination's lazy-pages server never asked {self.endpoint} for pages")
        while not self.ended.wait(POLL):
            quiet = self.server.quiet(self.session)
            if quiet is not None and quiet >= self.silence:
                self.server.cut(self.session)
                raise CsError(f"the destination's lazy-pages server went silent with pages still to come "
                              f"(nothing asked for {quiet:.0f} s): stopped serving them; the migrated "
                              f"process is killed there once its lazy server notices")
        if not self.clean:
            raise CsError("the destination's lazy-pages server lost its connection before every page "
                          "was in: the migrated process was killed there")

    def stop(self) -> None:
        self.server.stop()
        self.server.cut()       # no thread of ours waits on a connection any more
