"""`coldsnap migrate -t PID --to HOST:PORT`: pre-copy a process tree into a waiting
`coldsnap migrate-receive`, then switch over.

    tracked no-freeze pre-dumps, each streamed to the destination as one session (a chain)
      ──► convergence: stop when the predicted final delta fits --max-downtime, when the
          iterations stop shrinking, or after --max-iterations (the reason is reported)
      ──► final dump on top of the chain (frozen), pages and every image streamed
      ──► with the tree still frozen: the destination restores the final session and says
          the process runs ──► only then is the source killed

--post-copy (dump/postcopy.py): the final dump keeps the private pages here and sends only
the images and the pagemaps; the destination restores lazily at once and fetches them from
a page server this process runs until the destination's lazy server has them all. After
the confirmation the source is gone: losing this host or this process from then on kills
the migrated process over there (it cannot run with holes).

Until the destination confirms, any failure (destination gone, link cut, a refused image,
a timeout) leaves the source running: the dump resumes the tree (TCP repair off, its network
lock lifted), and coldsnap's tracking is taken out of it.

Established TCP connections are saved by the final dump and rebuilt over there; the dump's
network lock stays on the source until the source is killed, then migrate lifts it (the
destination's restore takes and lifts a lock of the same name in its own network namespace).
A connection goes on only when its address moves with the process; otherwise its peer gets
a reset once the source's lock is lifted. on_switchover (`--on-switchover CMD`) is where the
address moves: it runs once the destination runs the process and the source is killed, while
the source's lock still drops the connections' packets (so this host never answers them with
a reset), and the lock is lifted after it, whatever it did.
"""
from __future__ import annotations

import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

from ..connections.lock import NetworkLock
from ..errors import CsError, Interrupted, NoSuchProcess, TransportError
from ..images.directory import ImageDir, make_work_dir
from ..kernel.page import PAGE_SHIFT
from ..transport.client import ClientOptions, PageServerClient
from ..transport.sink import ServerPages
from ..transport.wire import Endpoint
from .dump import dump
from .iterate import PreDumpSeries
from .untrack import untrack

SHRINK = 0.9            # an iteration that saves more than this share of the previous one: not converging


class MigrationFailed(CsError):
    """The migration stopped before the destination ran the process; the source runs on.
    `cause`: what stopped it, whose exit code the command keeps (4 for a process traced by
    someone else, 5 for one the final dump refuses)."""

    def __init__(self, words: str, cause: BaseException | None = None):
        super().__init__(words)
        self.cause = cause


@dataclass
class Iteration:
    n: int
    pages: int                  # pages sent (written since the previous iteration)
    bytes_sent: int             # on the wire
    seconds: float
    predicted_downtime_ms: float


@dataclass
class MigrateResult:
    pid: int
    destination_pid: int
    iterations: list[Iteration] = field(default_factory=list)
    stop_reason: str = ""
    downtime_ms: float = 0.0        # the final dump's freeze (its seize) to the destination's "running"
    final_dump_ms: float = 0.0      # seize, pages and images sent and stored over there
    restore_ms: float = 0.0         # the destination's restore, as the source waited for it
    restore_inner_ms: float = 0.0   # of which the restore itself, as the destination timed it
    prebuilt_bytes: int = 0         # of the memory built ahead over there (kept, not written at switchover)
    final_apply_ms: float = 0.0     # the final delta written into the memory built ahead, over there
    # final_dump_ms split: seizing (before the downtime counts), planning (tracking collect,
    # scan), pages (read and sent), the rest (task state, images written and sent, commits)
    final_split: dict = field(default_factory=dict)
    final_pages: int = 0
    final_bytes: int = 0
    total_ms: float = 0.0
    post_copy: bool = False
    post_copy_pages: int = 0        # left to the destination's lazy server (from here and its chain)
    post_copy_ms: float = 0.0       # "running" over there to its last page in

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass
class Policy:
    max_downtime_ms: float = 100.0
    max_iterations: int = 8
    restore_ms: float = 30.0        # what the destination's restore is expected to add


def _stop_reason(its: list[Iteration], policy: Policy) -> str:
    last = its[-1]
    if len(its) >= 2 and last.predicted_downtime_ms <= policy.max_downtime_ms:
        return f"predicted downtime {last.predicted_downtime_ms:.0f} ms fits --max-downtime {policy.max_downtime_ms:.0f}"
    if len(its) >= 3 and last.pages >= SHRINK * its[-2].pages:
        return f"iterations stopped shrinking ({its[-2].pages} then {last.pages} pages)"
    if len(its) >= policy.max_iterations:
        return f"--max-iterations {policy.max_iterations} reached"
    return ""


def migrate(pid: int, to: Endpoint, options: ClientOptions = ClientOptions(), *, policy: Policy = Policy(),
            workdir: str | Path | None = None, report: Callable[[str], None] = lambda line: None,
            on_switchover: Callable[[MigrateResult], None] | None = None,
            post_copy: bool = False) -> MigrateResult:
    """post_copy: the final dump sends no private page; the destination restores lazily at
    once and fetches them from a page server run here until it has them all (dump/postcopy.py)."""
    t_start = time.perf_counter()
    base = Path(workdir or make_work_dir("migrate"))
    base.mkdir(parents=True, exist_ok=True)
    tag = f"m{os.getpid()}-{int(time.time() * 1000) % 10**9}"      # session names unique on the destination
    # the pre-dumps' images go too (mm, pstree: the destination builds the memory ahead from them)
    target = ServerPages(to, options, send_images=True)
    result = MigrateResult(pid, 0, post_copy=post_copy)
    dumped = False
    source = None
    try:
        with PreDumpSeries(pid, base, track="uffd", park=True, pages=target) as series:
            rate = 1.0
            while True:
                n = len(result.iterations) + 1
                sent0, t0 = target.bytes_sent, time.perf_counter()
                stats = series.step(base / f"{tag}-{n}")
                secs = time.perf_counter() - t0
                sent = target.bytes_sent - sent0
                # the link's speed: the best an iteration reached (small ones are mostly fixed costs)
                rate = max(rate, sent / max(secs, 1e-6))
                predicted = (stats.pages_written << PAGE_SHIFT) / rate * 1000 + policy.restore_ms
                it = Iteration(n, stats.pages_written, sent, round(secs, 4), round(predicted, 1))
                result.iterations.append(it)
                report(f"iteration {n}: {it.pages} pages, {sent / 2**20:.1f} MiB in {secs * 1000:.0f} ms "
                       f"({rate / 2**20:.0f} MiB/s), predicted downtime {predicted:.0f} ms")
                result.stop_reason = _stop_reason(result.iterations, policy)
                if result.stop_reason:
                    break
            prev = series.prev
        report(f"stopping: {result.stop_reason}; final dump")
        final = base / f"{tag}-final"
        if post_copy:
            from .postcopy import PostCopyPages, SourcePageServer
            final_target = PostCopyPages(to, options)
            source = SourcePageServer(base, to, options)
            request = source.request(final.name)
        else:
            final_target, request = ServerPages(to, options, send_images=True), None
        timing: dict[str, float] = {}

        def switchover() -> None:
            timing["committed"] = time.perf_counter()
            with PageServerClient(to, options, session=final.name, reading=True) as c:
                answer = c.restore(request=request)
            timing["running"] = time.perf_counter()
            if "pid" not in answer:
                raise TransportError(f"the destination could not restore: {answer.get('error', answer)}")
            result.destination_pid = int(answer["pid"])
            result.restore_inner_ms = float(answer.get("total_ms") or 0.0)
            result.post_copy_pages = int(answer.get("lazy_pages") or 0)
            result.prebuilt_bytes = int(answer.get("prebuilt_bytes") or 0)
            result.final_apply_ms = float(answer.get("last_apply_ms") or 0.0)

        try:
            stats = dump(pid, final, prev_images_dir=prev, pages=final_target, after_commit=switchover,
                         durable=False)
        except BaseException:
            _lift_source_lock(final)    # a dump failing after its commit (kill) may have kept it
            raise
        dumped = True
        result.final_pages, result.final_bytes = stats.pages_written, final_target.bytes_sent
        result.restore_ms = round((timing["running"] - timing["committed"]) * 1000, 2)
        # not the dump's frozen_time: that goes on while the killed source's memory is freed,
        # which the process running over there does not wait for
        result.downtime_ms = round((timing["running"] * 1e9 - stats.frozen_at_ns) / 1e6, 2)
        result.final_dump_ms = round(result.downtime_ms - result.restore_ms, 2)
        seize_ms = stats.freezing_time / 1000
        plan_ms, pages_ms = stats.scan_time / 1000, (stats.memdump_time + stats.memwrite_time) / 1000
        result.final_split = {"seize_ms": round(seize_ms, 2), "plan_ms": round(plan_ms, 2),
                              "pages_ms": round(pages_ms, 2),
                              "rest_ms": round(result.final_dump_ms - seize_ms - plan_ms - pages_ms, 2)}
    except (CsError, OSError) as e:
        if source is not None:
            source.stop()
        if not dumped:
            try:
                untrack(pid)            # the source runs on, without coldsnap's tracking
            except CsError:
                pass
        if isinstance(e, (NoSuchProcess, Interrupted)) and not dumped:
            raise                       # gone (it runs nowhere), or stopped by a signal: their own exit codes
        raise MigrationFailed(f"migration of {pid} to {to} failed, {pid} runs on here: {e}", e) from None
    if source is not None:
        report(f"{pid} runs at {to}; serving its last pages from {source.endpoint}")
    try:
        if on_switchover is not None:
            on_switchover(result)       # e.g. the service address moves: no packet is answered here meanwhile
    finally:
        _lift_source_lock(final)        # the source is gone: its connections' packets go to the destination
        if source is not None:          # whatever the hook did: the process over there needs its pages
            try:
                source.wait_done(options.timeout)
            except CsError as e:
                raise CsError(f"post-copy migration of {pid} to {to}: {e}") from None
            finally:
                source.stop()
            # the destination may have every page before its answer reaches us (a small delta)
            result.post_copy_ms = round(max(0.0, source.t_end - timing["running"]) * 1000, 1)
    result.total_ms = round((time.perf_counter() - t_start) * 1000, 1)
    return result


def _lift_source_lock(final: Path) -> None:
    """Lift the lock the final dump left here for a restore: the restore ran on the
    destination, in its own network namespace, so nothing else would. Once the source is
    killed (success) or resumed (a failed dump lifted it already: removing is idempotent)."""
    try:
        run_id = ImageDir.open(final).inventory.dump_criu_run_id
    except (CsError, OSError):
        return                      # no committed images: the dump lifted its lock itself
    if run_id:
        NetworkLock(run_id).remove()
