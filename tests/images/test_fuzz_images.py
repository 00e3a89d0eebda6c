"""Hostile and broken images (tests/images/image_fuzz.py): every mutation of a real dump
ends, for `show` and restore's loading, in a one-line coldsnap error or is accepted; a
sample also goes through the `coldsnap show` and `coldsnap restore` commands.

FUZZ_CASES (environment) sets the number of in-process cases (default 1500, ~30 s alone);
the longer job is bench/fuzz_images.py. Derandomized: CI runs the same cases every time."""
from __future__ import annotations

import json
import os
import shutil

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from image_fuzz import DOCUMENTED_EXITS, Mutation, check_images, kill_restored, mutations, run_case
from tree_helpers import reap_orphans

CASES = int(os.environ.get("FUZZ_CASES", "1500"))


def fuzz_settings(cases: int) -> settings:
    return settings(max_examples=cases, deadline=None, derandomize=True, database=None, print_blob=True,
                    suppress_health_check=list(HealthCheck))


@pytest.mark.timeout(600)       # ~40 s alone; a loaded machine takes longer
def test_mutated_images_end_in_one_line_errors_or_load(fuzz_dump, tmp_path):
    pristine, layout = fuzz_dump
    assert check_images(pristine, pristine.parent).accepted, "the pristine dump must load"
    tally = {"accepted": 0, "refused": 0}
    strategy = mutations(layout)

    @fuzz_settings(CASES)
    @given(st.data())
    def case(data):
        m = data.draw(strategy, label="mutation")
        out = run_case(pristine, m, tmp_path)
        assert out.failure is None, f"{m}: {out.failure}"
        tally["accepted" if out.accepted else "refused"] += 1

    case()
    # the cases reach both sides of the validators, not only the framing checks
    assert tally["refused"] > CASES // 4 and tally["accepted"] > CASES // 20, tally


def _one_line_error(run) -> None:
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("coldsnap: "), run.stderr
    assert run.returncode in DOCUMENTED_EXITS, (run.returncode, run.stderr)


@pytest.mark.timeout(600)
def test_commands_on_a_sample_of_mutations(fuzz_dump, tmp_path):
    """The commands themselves: `show` and `restore -d` each end in one line with a
    documented exit code, or succeed (a restored tree is then killed); a mutation the
    loader refused is refused by `restore` with exit 6 or 1 (a PID in use), nothing left."""
    from procs import coldsnap
    pristine, layout = fuzz_dump
    # the pristine images (a flip by 0) first: a real restore
    strategy = st.one_of(st.just(Mutation("flip", "stats-dump", (0, 0))), mutations(layout))

    @fuzz_settings(10)
    @given(st.data())
    def case(data):
        m = data.draw(strategy, label="mutation")
        case_dir = tmp_path / "case"
        case_dir.mkdir()
        try:
            m.apply(pristine, case_dir)
            loaded = check_images(case_dir, tmp_path)
            before = sorted(os.listdir(case_dir))
            show = coldsnap("show", case_dir, timeout=60)
            if show.returncode:
                _one_line_error(show)
            run = coldsnap("restore", "-D", case_dir, "-d", "--json", timeout=60)
            if run.returncode == 0:
                kill_restored(json.loads(run.stdout)["pid"])
            else:
                reap_orphans(timeout=1)      # what a failed restore killed (orphans of ours)
                _one_line_error(run)
                if not loaded.accepted:
                    assert run.returncode in (1, 6), (m, run.stderr)
            assert sorted(os.listdir(case_dir)) == before
        finally:
            shutil.rmtree(case_dir)

    case()
