"""Redis from Debian migrated while a client on a third "host" keeps issuing SET/GET on ONE
connection to a service address that moves with it (tests/transport/service_address.py):
no error, no reconnect (the server's own count of connections received does not move),
every key present after, the same connection served by the destination.

The address moves through `migrate --on-switchover "ip addr del S/32 dev lo"`: run once the
destination runs Redis and the source is killed, while the source's network lock still
drops the connection's packets (so the source never answers them with a reset)."""
from __future__ import annotations

import json
import os
import subprocess
import time

import pytest

from ps_helpers import PageServerProc  # noqa: F401  (test helper paths)
from procs import coldsnap_argv
from restore_helpers import end_migration
from redis_service import REDIS, kill_all, start_client, start_redis, stop_client
from service_address import MovingService
from test_migrate import _netns_inode, _pid_in_root_ns, _receiver, hosts  # noqa: F401  (the fixture)

pytestmark = pytest.mark.skipif(REDIS is None, reason="redis-server not installed")

POPULATE_KEYS, POPULATE_SIZE = 197_000, 1024        # 256 MiB of Redis used_memory (1364 bytes a key)


def test_redis_migrates_under_a_client_on_one_connection(hosts, tmp_path):
    svc = MovingService(hosts)
    redis = client = None
    try:
        redis, port = start_redis(svc.address, tmp_path)
        to = _receiver(hosts, tmp_path)
        client, conns = start_client(svc, port, POPULATE_KEYS, POPULATE_SIZE)
        time.sleep(0.5)                                         # SET/GET under way
        p = subprocess.run(coldsnap_argv("migrate", "-t", redis.pid, "--to", to, "--json",
                                         "--on-switchover", svc.move_command),
                           stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=300)
        assert p.returncode == 0, p.stderr + hosts.log.read_text()
        res = json.loads(p.stdout)
        assert redis.wait(timeout=30) == -9                     # the source was killed
        hosts.wait_log("runs here")
        there = _pid_in_root_ns(redis.pid, _netns_inode(hosts))
        assert there is not None, "Redis is not in the destination's namespaces"
        time.sleep(1.0)                                         # the client goes on over there
        out = stop_client(client)
        client = None
        assert out["error"] is None, out
        assert out["missing"] == [], out
        assert out["dbsize"] == POPULATE_KEYS + out["keys_set"], out
        assert out["connections_after"] == conns, "the client reconnected"
        assert out["local_after"] == out["local"]
        assert os.path.exists(f"/proc/{there}")                 # served by the destination's Redis
        print(f"redis migration: downtime {res['downtime_ms']} ms, {len(res['iterations'])} iterations, "
              f"client ops {out['ops']}, longest SET/GET {out['max_stall_ms']:.0f} ms")
    finally:
        kill_all(client, redis)
        hosts.close()
        svc.close()


def test_a_failing_switchover_command_is_said_and_the_lock_lifted(hosts, workload_bin, tmp_path):
    """The process runs over there whatever the command does; its failure is one line, and
    no lock table of the migration is left here."""
    from coldsnap.connections.lock import TABLE_PREFIX, our_tables
    from test_migrate import _writer
    to = _receiver(hosts, tmp_path)
    w = _writer(workload_bin, tmp_path, 16, 10)
    try:
        p = subprocess.Popen(coldsnap_argv("migrate", "-t", w.pid, "--to", to, "--max-iterations", "1",
                                           "--on-switchover",
                                           'echo "moving $COLDSNAP_SOURCE_PID to $COLDSNAP_DESTINATION_PID"; exit 3'),
                             stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        out, err = p.communicate(timeout=300)
        errors = [line for line in err.splitlines() if line.startswith("coldsnap: ")]
        assert p.returncode == 1 and len(errors) == 1, err
        assert f"{w.pid} runs on {to} (pid {w.pid} there), but --on-switchover exited 3" in errors[0]
        assert f"moving {w.pid} to {w.pid}" in err and out == ""
        w.reap_dumped()
        hosts.wait_log("runs here")
        assert not [t for t in our_tables() if t.startswith(f"{TABLE_PREFIX}{p.pid}-")]
    finally:
        end_migration(w)
