"""The `coldsnap` command leaves through os._exit once main() returns (no interpreter
teardown): its output must still arrive whole, through pipes too, with main's exit code."""
from __future__ import annotations

import json
import subprocess
import sys

from procs import coldsnap_argv


def test_output_and_exit_code_survive_the_fast_exit():
    p = subprocess.run(coldsnap_argv("check", "--json"), capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr
    assert set(json.loads(p.stdout)) >= {"pagemap_scan", "clone3_set_tid"}


def test_error_line_and_code_survive_the_fast_exit(tmp_path):
    p = subprocess.run(coldsnap_argv("restore", "-D", tmp_path / "none", "--json"), capture_output=True,
                       text=True, timeout=60)
    assert p.returncode == 6
    assert json.loads(p.stdout)["error"]["exit_code"] == 6
    assert p.stderr.startswith("coldsnap: ") and p.stderr.endswith("\n")


def test_usage_errors_and_help_exit_as_argparse_says():
    assert subprocess.run(coldsnap_argv("--help"), capture_output=True, timeout=60).returncode == 0
    assert subprocess.run(coldsnap_argv("dump"), capture_output=True, timeout=60).returncode == 2


def test_numpy_starts_no_thread_pool_in_the_command(tmp_path):
    """coldsnap never calls BLAS: the command keeps OpenBLAS from starting its threads when
    it imports numpy (they cost 40-50 ms of a restore's wall time)."""
    code = ("import os, sys\nos.environ.pop('OPENBLAS_NUM_THREADS', None)\nfrom coldsnap.cli import main\n"
            f"main(['restore', '-D', {str(tmp_path / 'none')!r}])\nimport numpy\n"
            "print(len(os.listdir('/proc/self/task')))")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr
    assert p.stdout.split() == ["1"]


def test_a_reader_gone_from_stdout_ends_the_command_quietly(tmp_path):
    """`coldsnap check | true`, `coldsnap show DIR | head`: the reader went away; as a filter
    that SIGPIPE kills, exit 141 and nothing on stderr (before: 'coldsnap: Broken pipe', and
    with --json a traceback from the error object's own print)."""
    import os
    for argv in (["check"], ["check", "--json"], ["show", tmp_path / "none", "--json"]):
        r, w = os.pipe()
        os.close(r)
        try:
            p = subprocess.run(coldsnap_argv(*argv), stdout=w, stderr=subprocess.PIPE, text=True, timeout=60)
        finally:
            os.close(w)
        if argv[0] == "show":       # the error object is lost with stdout, its line is not
            assert p.returncode == 6 and p.stderr.count("\n") == 1 and p.stderr.startswith("coldsnap: "), p.stderr
        else:
            assert (p.returncode, p.stderr) == (141, ""), argv


def test_criu_log_options_are_understood(tmp_path):
    """A CRIU command line runs: -v, -v4, -vvvv are accepted (coldsnap says the same at every
    level) and -o/--log-file FILE keeps the result or error line; a log file that cannot be
    opened fails first, in one line."""
    from coldsnap.cli import build_parser
    for spelling, level in (("-v", 3), ("-vv", 4), ("-v4", 4), ("-vvvv", 4), ("-v0", 0)):
        args = build_parser("dump").parse_args(["dump", "-t", "1", "-D", "x", spelling, "-o", "d.log"])
        assert (args.verbosity, args.log_file) == (level, "d.log")
    log = tmp_path / "cs.log"
    p = subprocess.run(coldsnap_argv("check", "-v4", "-o", log), capture_output=True, text=True, timeout=60)
    assert p.returncode == 0 and log.read_text() == p.stdout, p.stderr
    p = subprocess.run(coldsnap_argv("show", tmp_path / "none", "-vvv", "--log-file", log), capture_output=True,
                       text=True, timeout=60)
    assert p.returncode == 6 and log.read_text().endswith(p.stderr) and p.stderr.startswith("coldsnap: ")
    p = subprocess.run(coldsnap_argv("show", tmp_path / "none", "-o", tmp_path / "no" / "x.log"),
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == 1 and p.stderr.count("\n") == 1 and "cannot open the log file" in p.stderr


def test_numbers_out_of_range_are_usage_errors():
    """Values that parsed but failed later, after the target was frozen or with a traceback:
    a buffer under a page, no or negative iterations, a negative interval or size, a port
    past 65535; each is now argparse's usage error (exit 2) before anything runs."""
    import pytest
    from coldsnap.cli import build_parser
    bad = [["pre-dump", "-t", "1", "-D", "x", "--buffer-size", "1"],
           ["pre-dump", "-t", "1", "-D", "x", "--iterations", "0"],
           ["pre-dump", "-t", "1", "-D", "x", "--iterations", "2", "--interval", "-1"],
           ["pre-dump", "-t", "1", "-D", "x", "--interval", "nan"],
           ["dump", "-t", "1", "-D", "x", "--ghost-limit", "-1"],
           ["page-server", "-D", "x", "--port", "99999"],
           ["page-server", "-D", "x", "--port", "0", "--idle-timeout", "-1"]]
    for argv in bad:
        with pytest.raises(SystemExit) as e:
            build_parser(argv[0]).parse_args(argv)
        assert e.value.code == 2, argv
    ok = build_parser("pre-dump").parse_args(["pre-dump", "-t", "1", "-D", "x", "--buffer-size", "4k",
                                              "--iterations", "3", "--interval", "0"])
    assert (ok.buffer_size, ok.iterations, ok.interval) == (4096, 3, 0.0)


def test_lazy_status_of_no_process_is_exit_3():
    """It said "no lazy restore ... in progress (every page is in)", exit 1, of a pid that
    names no process at all."""
    p = subprocess.run(coldsnap_argv("lazy-status", "99999999"), capture_output=True, text=True, timeout=60)
    assert (p.returncode, p.stderr) == (3, "coldsnap: process 99999999: no such process\n")


def test_demo_sizes_the_workload_cannot_take_are_usage_errors():
    """`demo --size 0` (and any size that is no whole number of pages) crashed the workload:
    'cannot seize N: it is a zombie', exit 1."""
    for size in ("0", "5000", "512K"):
        p = subprocess.run(coldsnap_argv("demo", "--size", size), capture_output=True, text=True, timeout=60)
        assert p.returncode == 2 and "the demo workload needs 1M at least" in p.stderr, (size, p.stderr)


def test_a_tree_holding_coldsnap_is_refused_saying_why(tmp_path):
    """`coldsnap dump -t $$` from a shell: the shell's tree holds coldsnap itself; the error
    named coldsnap's own pid ("cannot seize N: it is coldsnap itself") without saying that
    the tree asked for contains it. The shell runs on, nothing written."""
    script = (f"{' '.join(map(str, coldsnap_argv('dump', '-t', '$$', '-D', tmp_path / 'd')))}; "
              "echo rc=$?; grep State /proc/$$/status")
    p = subprocess.run(["sh", "-c", script], capture_output=True, text=True, timeout=60)
    assert p.stderr.startswith("coldsnap: cannot seize ") and p.stderr.endswith(
        ": it is coldsnap itself (a tree holding coldsnap cannot be dumped by it)\n"), p.stderr
    assert "rc=1" in p.stdout and "State:\tt" not in p.stdout and "State:\tT" not in p.stdout, p.stdout
    assert not (tmp_path / "d").exists()
