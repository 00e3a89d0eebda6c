"""Hostile images, the long job: N mutations of a real dump through show and restore's loading.

The same mutations and checks as tests/images/test_fuzz_images.py (tests/images/image_fuzz.py),
but many more cases, a seed of your choice (default: random; the suite's are derandomized)
and every failure counted instead of the first one stopping the run; --restore K also runs
`coldsnap restore -d` on K of the mutated sets the loader accepted (the restored tree is
killed afterwards). Prints and records (bench/RESULTS.md) cases run, accepted, refused,
failures by kind with one mutation each, and the time.

    python3 bench/fuzz_images.py --cases 20000 [--seed 1] [--restore 50]
"""
from __future__ import annotations

import argparse
import collections
import json
import os
import shutil
import sys
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))
sys.path.insert(0, str(BENCH.parent / "tests"))
sys.path.insert(0, str(BENCH.parent / "tests" / "images"))

from common import become_subreaper, run_meta, scratch_dir, write_section  # noqa: E402

SECTION = "## Hostile images: fuzzing show and restore (issue 10)"


def _restore_one(case: Path) -> str:
    """`coldsnap restore -d` of CASE: 'restored', 'refused N' (one line, documented code) or
    a failure's description."""
    from image_fuzz import DOCUMENTED_EXITS, kill_restored
    from procs import coldsnap
    from tree_helpers import reap_orphans
    run = coldsnap("restore", "-D", case, "-d", "--json", timeout=120)
    if run.returncode == 0:
        kill_restored(json.loads(run.stdout)["pid"])
        return "restored"
    reap_orphans(timeout=1)      # what a failed restore killed: orphans of ours (a subreaper)
    lines = run.stderr.strip().splitlines()
    if len(lines) != 1 or not lines[0].startswith("coldsnap: ") or run.returncode not in DOCUMENTED_EXITS:
        return f"restore exit {run.returncode}: {run.stderr.strip()[-300:]}"
    return f"refused {run.returncode}"


def fuzz(cases: int, seed, restores: int, work: Path) -> dict:
    from hypothesis import HealthCheck, given, settings, strategies as st
    from hypothesis import seed as hseed

    from image_fuzz import Layout, make_dump, mutations, run_case
    pristine = make_dump(work)
    layout = Layout.of(pristine)
    scratch = work / "scratch"
    scratch.mkdir()
    tally = collections.Counter()
    strategy = mutations(layout)
    failures: dict[str, list] = {}

    def fail(key: str, m) -> None:
        tally["failures"] += 1
        failures.setdefault(key, [0, str(m)[:400]])[0] += 1

    @settings(max_examples=cases, deadline=None, database=None, suppress_health_check=list(HealthCheck),
              phases=("generate",))
    @given(st.data())
    def case(data):
        m = data.draw(strategy)
        tally["cases"] += 1
        out = run_case(pristine, m, scratch)
        if out.failure:
            fail(out.failure.strip().splitlines()[-1][:200], m)
            return
        tally["accepted" if out.accepted else "refused"] += 1
        if out.accepted and tally["restore tried"] < restores:
            tally["restore tried"] += 1
            c = scratch / "restore"
            c.mkdir()
            try:
                m.apply(pristine, c)
                got = _restore_one(c)
            finally:
                shutil.rmtree(c)
            if got.startswith("restore exit"):
                fail(got, m)
            else:
                tally["restored" if got == "restored" else "refused at restore"] += 1

    if seed is not None:
        case = hseed(seed)(case)
    t0 = time.monotonic()
    case()
    return {"tally": dict(tally), "failures": failures, "seconds": time.monotonic() - t0}


def report(res: dict, meta: dict) -> str:
    t = res["tally"]
    lines = [SECTION, "",
             f"`{meta['cmd']}` — {meta['date']}, Linux {meta['uname']}, {meta['cpus']} CPUs, rev {meta['rev']}, "
             f"load average {meta['load']} at the start. Mutations (byte flips, truncations, entry "
             "lengths, protobuf field values, repeated fields duplicated/dropped/swapped, files removed, "
             "swapped, emptied, replaced by symlinks or FIFOs) of a 2-process dump "
             "(tests/workloads/fuzz_pair.c), each through `show` and restore's loading in-process.", "",
             "| cases | accepted | refused (one line) | restores tried | restored | refused at restore | failures | seconds | cases/s |",
             "|---|---|---|---|---|---|---|---|---|",
             f"| {t.get('cases', 0)} | {t.get('accepted', 0)} | {t.get('refused', 0)} | {t.get('restore tried', 0)} | "
             f"{t.get('restored', 0)} | {t.get('refused at restore', 0)} | "
             f"{t.get('failures', 0)} | {res['seconds']:.0f} | {t.get('cases', 0) / max(res['seconds'], 1e-9):.0f} |"]
    if res["failures"]:
        lines += ["", "Failures (count, last line, one mutation):", ""]
        lines += [f"- {n} × `{k}` — `{m}`" for k, (n, m) in res["failures"].items()]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cases", type=int, default=20000)
    ap.add_argument("--seed", type=int, default=None)
    ap.add_argument("--restore", type=int, default=20, metavar="K",
                    help="run `coldsnap restore -d` on K accepted mutations")
    ap.add_argument("--out", type=Path, default=BENCH / "RESULTS.md")
    ap.add_argument("--no-record", action="store_true", help="print only; leave RESULTS.md alone")
    args = ap.parse_args(argv)
    become_subreaper()
    load = "/".join(f"{x:.1f}" for x in os.getloadavg())
    with scratch_dir() as work:
        res = fuzz(args.cases, args.seed, args.restore, work)
    text = report(res, run_meta("fuzz_images.py", argv, load=load))
    print(text)
    if not args.no_record:
        write_section(args.out, text, SECTION)
    return 1 if res["failures"] else 0


if __name__ == "__main__":
    sys.exit(main())
