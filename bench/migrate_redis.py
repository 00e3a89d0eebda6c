#!/usr/bin/env python3
"""Redis from Debian migrated under a client on one connection (issue 11, the Redis proof).

    python3 bench/migrate_redis.py [--sizes 1G] [--runs 1] [--out FILE]

The set-up of tests/transport/test_migrate_redis.py: two "hosts" (twohosts.py) and a client
namespace, a service address S that `migrate --on-switchover "ip addr del S/32 dev lo"`
moves to the destination (service_address.py). Redis holds SIZE (DEBUG POPULATE of 1 KiB
values, ~1.33 KiB of Redis memory each: SIZE / 1.33 KiB keys); the client
(redis_client.py) issues SET/GET on one connection, each waiting for its answer, from before
the migration to a second after it, then reads every key back on the same connection.

Reported: migrate's downtime_ms (the final dump's freeze to "running" over there) and its
split, the pre-copy iterations, the client's longest single SET or GET wait (downtime plus
TCP's retransmission back-off: the client's packets dropped meanwhile are sent again at
RTO 0.2, 0.6, 1.4, 3.0 s...), its operations, errors and missing keys (must be none) and
Redis's count of connections received before and after (must be equal: no reconnect).
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))
sys.path.insert(0, str(BENCH.parent / "tests" / "transport"))
from common import become_subreaper, log, parse_size, run_meta, size_name, write_section  # noqa: E402
from redis_service import REDIS, kill_all, start_client, start_redis, stop_client  # noqa: E402
from service_address import MovingService  # noqa: E402
from twohosts import TwoHosts  # noqa: E402

SECTION = "## Redis migrated under a client on one connection (issue 11)"
COLDSNAP = [sys.executable, "-m", "coldsnap"]
VALUE = 1024
PER_KEY = 1364            # bytes of used_memory per populated key (measured, Redis 7.0: 100k keys)


def one_run(size: int, tmp: Path) -> dict:
    hosts = TwoHosts(tmp)
    svc = redis = client = None
    try:
        svc = MovingService(hosts)
        redis, port = start_redis(svc.address, tmp)
        hosts.start_destination("migrate-receive", "--address", hosts.dst_addr, "--port", 0, log=tmp / "dest.log")
        text = hosts.wait_log("listening on")
        to = f"{hosts.dst_addr}:{text.split('listening on ')[1].split()[0].rsplit(':', 1)[1]}"
        keys = size // PER_KEY
        t0 = time.monotonic()
        client, conns = start_client(svc, port, keys, VALUE)
        log(f"{size_name(size)}: populated {keys} keys in {time.monotonic() - t0:.1f} s")
        time.sleep(1.0)
        p = subprocess.run([*COLDSNAP, "migrate", "-t", str(redis.pid), "--to", to, "--json",
                            "--on-switchover", svc.move_command],
                           stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=900)
        if p.returncode:
            raise RuntimeError(f"migrate failed: {p.stderr}")
        res = json.loads(p.stdout)
        redis.wait(timeout=30)
        hosts.wait_log("runs here")
        time.sleep(1.0)
        out = stop_client(client)
        client = None
        return {"keys": keys, "migrate": res, "client": out, "conns": conns}
    finally:
        kill_all(client, redis)
        hosts.close()
        if svc is not None:
            svc.close()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="1G")
    ap.add_argument("--runs", type=int, default=1)
    ap.add_argument("--out", type=Path, default=BENCH / "RESULTS.md")
    args = ap.parse_args()
    if REDIS is None:
        log("redis-server is not installed")
        return 1
    become_subreaper()
    rows = []
    for size in (parse_size(s) for s in args.sizes.split(",")):
        for _ in range(args.runs):
            with tempfile.TemporaryDirectory(prefix="coldsnap-bench-redis-") as d:
                r = one_run(size, Path(d))
            log(json.dumps(r))
            rows.append((size, r))
    meta = run_meta("migrate_redis.py", None)
    lines = [SECTION, "", f"Command: `{meta['cmd']}`  ", f"coldsnap: {meta['rev']}  ",
             f"Date: {meta['date']}; kernel `{meta['uname']}`; {meta['cpus']} CPUs (shared machine); "
             f"Redis {subprocess.run([REDIS, '--version'], capture_output=True, text=True).stdout.split()[2].removeprefix('v=')}.", "",
             "| size | keys | iterations (stop reason) | downtime ms (final dump / restore) | longest SET or GET ms "
             "| client ops | errors, missing keys | connections received before / after |",
             "|---|---|---|---|---|---|---|---|"]
    for size, r in rows:
        m, c = r["migrate"], r["client"]
        lines.append(f"| {size_name(size)} | {r['keys']} | {len(m['iterations'])} ({m['stop_reason']}) | "
                     f"{m['downtime_ms']:.0f} ({m['final_dump_ms']:.0f} / {m['restore_ms']:.0f}) | "
                     f"{c['max_stall_ms']:.0f} | {c['ops']} | {c['error'] or 'none'}, "
                     f"{len(c.get('missing', [])) or 'none'} | {c['connections_before']} / "
                     f"{c.get('connections_after')} |")
    lines += ["", "One connection from a client namespace to the moving service address for the whole run "
              "(tests/transport/service_address.py). The longest SET or GET is the downtime as the client "
              "saw it, stretched by TCP's retransmission back-off."]
    text = "\n".join(lines) + "\n"
    print(text)
    write_section(args.out, text, SECTION)
    return 0


if __name__ == "__main__":
    sys.exit(main())
