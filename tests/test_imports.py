"""What each command imports: a command's start-up is part of its wall time (issue 13).

The CLI imports a command's module only after parsing; `--help`, `check` and `show` never
load numpy; no command loads what only another command needs. Run in a fresh interpreter
each, since this test process has imported everything already."""
from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

SRC = Path(__file__).parents[1] / "src"

HEAVY = ("numpy", "google.protobuf", "concurrent.futures")
TRACKING = ("coldsnap.memory.tracking", "coldsnap.memory.softdirty", "coldsnap.kernel.uffd")


def modules_after(code: str) -> set[str]:
    """sys.modules of a fresh interpreter (this tree's sources first) after running code."""
    probe = f"import sys\ntry:\n{_indent(code)}\nexcept SystemExit:\n    pass\n" \
            "print('MODULES', *sorted(sys.modules))"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH", "")])}
    p = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, env=env, timeout=60)
    assert p.returncode == 0, p.stderr
    line = next(x for x in p.stdout.splitlines() if x.startswith("MODULES "))
    return set(line.split()[1:])


def _indent(code: str) -> str:
    return "\n".join("    " + x for x in code.splitlines())


def loaded(mods: set[str], *names: str) -> list[str]:
    """Which of the packages/modules `names` (or their submodules) are in mods."""
    return sorted(m for m in mods for n in names if m == n or m.startswith(n + "."))


def test_cli_imports_no_command():
    mods = modules_after("import coldsnap.cli")
    assert loaded(mods, *HEAVY, "coldsnap.dump", "coldsnap.restore", "coldsnap.memory",
                  "coldsnap.images", "coldsnap.kernel", "coldsnap.seize", "coldsnap.files") == []


@pytest.mark.parametrize("argv", [["--help"], ["restore", "--help"], ["dump", "--help"]])
def test_help_imports_no_command(argv):
    mods = modules_after(f"from coldsnap.cli import main\nmain({argv!r})")
    assert loaded(mods, *HEAVY, "coldsnap.dump", "coldsnap.restore", "coldsnap.memory",
                  "coldsnap.images") == []


def test_check_needs_no_numpy():
    mods = modules_after("from coldsnap.cli import main\nmain(['check'])")
    assert "coldsnap.kernel.features" in mods
    assert loaded(mods, *HEAVY, "coldsnap.dump", "coldsnap.restore", "coldsnap.memory",
                  "coldsnap.images") == []


def test_show_needs_no_numpy():
    mods = modules_after("import coldsnap.show")
    assert loaded(mods, "numpy", "concurrent.futures", "coldsnap.dump", "coldsnap.restore",
                  "coldsnap.memory") == []


def test_restore_needs_no_dump_nor_tracking():
    """Arrows point down: restore imports nothing of dump/, nor the write-tracking modules,
    nor a thread pool it only starts for more than one batch of pages, nor what only images
    with SysV IPC or memfds, a dump's fdinfo or a migration's prebuilt memory need, nor the
    socket module (its enums cost ~9 M instructions to build)."""
    mods = modules_after("import coldsnap.restore.restore")
    assert loaded(mods, "coldsnap.dump", *TRACKING, "concurrent.futures", "coldsnap.transport", *SYSV_MEMFD,
                  "coldsnap.restore.prebuild", "socket") == []


def test_dump_restore_and_pre_dump_modules_load_no_numpy():
    """Page plans, pagemaps and page writes use plain ints and array('Q') (issue 13: numpy
    alone cost ~60 ms of every command); numpy stays for the soft-dirty tracking's collect, the
    lazy-restore server (not the restore command that starts it) and very long range lists,
    imported there."""
    mods = modules_after("import coldsnap.dump.dump, coldsnap.dump.predump, coldsnap.restore.restore, "
                         "coldsnap.memory.tracking, coldsnap.memory.softdirty, coldsnap.restore.lazy")
    assert loaded(mods, "numpy") == []


def _command_modules(argv: list[str]) -> set[str]:
    """sys.modules after coldsnap's main(ARGV) ran in a fresh interpreter (it must succeed)."""
    mods = modules_after(f"from coldsnap.cli import main\nassert main({argv!r}) == 0")
    return mods


# what a process without sockets (nor epoll, eventfd, signalfd, timerfd, inotify, memfd)
# never needs: each kind's module is imported for a process that has such files only
SOCKET_KINDS = ("coldsnap.files.inet", "coldsnap.files.unix", "coldsnap.files.sockopts", "coldsnap.files.epoll",
                "coldsnap.files.eventfd", "coldsnap.files.anon", "coldsnap.connections.lock",
                "coldsnap.connections.tcp", "coldsnap.kernel.tcp_repair", "coldsnap.kernel.nftables",
                "coldsnap.kernel.unixdiag")
# what a pre-dump (memory, pstree and ids only) never needs: nor the message modules of the
# images it does not write (framing imports an image kind's module on its first entry)
MEMORY_ONLY = ("coldsnap.files", "coldsnap.dump.task_state", "coldsnap.creds", "coldsnap.images.pb.core_pb2",
               "coldsnap.images.pb.fdinfo_pb2", "coldsnap.kernel.fdstate")
# what a restore of images without SysV IPC nor memfds never needs, nor its fdinfo parsers
SYSV_MEMFD = ("coldsnap.restore.sysv", "coldsnap.kernel.sysv", "coldsnap.files.memfd", "coldsnap.kernel.fdstate",
              "coldsnap.images.pb.ipc_shm_pb2", "coldsnap.images.pb.ipc_sem_pb2")


@pytest.mark.parametrize("track", ["none", "uffd"])
def test_a_dump_and_a_restore_of_a_process_load_no_numpy(spawn, workload_bin, tmp_path, track):
    """The real commands, not only their imports: nothing on the way loads numpy late, nor
    the operations of file kinds the process does not have; a pre-dump nothing of the files
    or of the task state. With uffd, the pre-dump parks its tracking and the dump adopts and
    collects it."""
    import signal
    import time
    w = spawn([str(workload_bin("rst_still"))], stderr=subprocess.DEVNULL)
    d, pre = tmp_path / "d", tmp_path / "pre"
    assert loaded(_command_modules(["pre-dump", "-t", str(w.pid), "-D", str(pre), "--track-mem", track]),
                  "numpy", *SOCKET_KINDS, *MEMORY_ONLY) == []
    assert loaded(_command_modules(["dump", "-t", str(w.pid), "-D", str(d), "--prev-images-dir", str(pre)]),
                  "numpy", *SOCKET_KINDS, "coldsnap.memory.drain") == []
    with _pid_freed_then_restored_killed(w):
        assert loaded(_command_modules(["restore", "-D", str(d), "-d"]), "numpy", "socket", *SOCKET_KINDS,
                      *SYSV_MEMFD) == []


@contextlib.contextmanager
def _pid_freed_then_restored_killed(w):
    """W was dumped (and killed): wait until its PID is free for a restore, and kill what the
    restore brought back under that PID when the block ends."""
    w.proc.wait(timeout=10)
    deadline = time.monotonic() + 5
    while os.path.exists(f"/proc/{w.pid}") and time.monotonic() < deadline:
        time.sleep(0.005)
    try:
        yield
    finally:
        try:
            os.kill(w.pid, signal.SIGKILL)
            os.waitpid(w.pid, 0)
        except (ProcessLookupError, ChildProcessError):
            pass


# The standard library a dump or a restore run in the caller may load, with what these modules
# import themselves (worked out in the interpreter that runs the test) and what protobuf's
# runtime imports: a module beyond these, an import that came back, fails the test below.
COMMAND_STDLIB = ("argparse", "dataclasses", "pathlib", "ctypes", "signal", "gc", "errno", "resource", "fcntl",
                  "mmap", "array", "select", "bisect", "heapq", "__future__", "site",
                  "_socket")      # the C module alone (restore/lazy_name.py), not socket's enums
PROTOBUF = ("google.protobuf.descriptor_pool", "google.protobuf.internal.builder", "google.protobuf.symbol_database",
            "google.protobuf.runtime_version")


def _as_installed(argv: list[str]) -> set[str]:
    """sys.modules after ARGV ran the way the installed script runs a command in the caller:
    Python without `site`, the site directories added (client.add_site_dirs), cli.main."""
    probe = (f"import sys\nsys.path.insert(0, {str(SRC)!r})\nfrom coldsnap.service.client import add_site_dirs\n"
             f"add_site_dirs()\nfrom coldsnap.cli import main\nassert main({argv!r}) == 0\n"
             "print('MODULES', *sorted(sys.modules))")
    p = subprocess.run([sys.executable, "-S", "-c", probe], capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr
    return set(next(x for x in p.stdout.splitlines() if x.startswith("MODULES ")).split()[1:])


def _stdlib_allowed(*more: str) -> set[str]:
    code = ("import sys\nfrom coldsnap.service.client import add_site_dirs\nadd_site_dirs()\n"
            f"for m in {COMMAND_STDLIB + PROTOBUF + more!r}:\n    __import__(m)\nprint('MODULES', *sorted(sys.modules))")
    p = subprocess.run([sys.executable, "-S", "-c", code], capture_output=True, text=True, timeout=60,
                       env={**os.environ, "PYTHONPATH": str(SRC)})
    assert p.returncode == 0, p.stderr
    return set(next(x for x in p.stdout.splitlines() if x.startswith("MODULES ")).split()[1:])


def test_a_dump_and_a_restore_run_in_the_caller_load_only_the_standard_library_they_need(spawn, workload_bin,
                                                                                           tmp_path):
    """The start of a command run without the service is most of its wall time at 8 MiB
    (issue 13): no module of the standard library beyond COMMAND_STDLIB (and theirs), so
    that an import cut (shutil and tempfile for a staging directory or argparse's terminal
    width, socket for a process without sockets, other packages' .pth code) does not come back
    unnoticed."""
    w = spawn([str(workload_bin("rst_still"))], stderr=subprocess.DEVNULL)
    d = tmp_path / "d"
    dumped = _as_installed(["dump", "-t", str(w.pid), "-D", str(d)])
    with _pid_freed_then_restored_killed(w):
        restored = _as_installed(["restore", "-D", str(d), "-d"])
    allowed = _stdlib_allowed()
    for mods in (dumped, restored):
        assert sorted(m for m in mods - allowed if not m.startswith(("coldsnap.", "google."))) == []
    # nor the messages of images it does not have (pb.NAME_pb2 on first use)
    assert loaded(restored, "coldsnap.images.pb.ghost_file_pb2", "coldsnap.images.pb.remap_file_path_pb2") == []


def test_a_first_tracked_pre_dump_loads_no_numpy(spawn, workload_bin, tmp_path):
    """A first tracked pre-dump arms the tracking and collects nothing: numpy (the collect's)
    is for the runs after it."""
    w = spawn([str(workload_bin("rst_still"))], stderr=subprocess.DEVNULL)
    assert loaded(_command_modules(["pre-dump", "-t", str(w.pid), "-D", str(tmp_path / "d")]),
                  "numpy", *SOCKET_KINDS, *MEMORY_ONLY) == []


def test_the_lazy_server_imports_no_numpy():
    # forked before the transplant, it must have its imports done by the process's first fault
    mods = modules_after("import coldsnap.restore.lazy_server, coldsnap.restore.lazy_guardian")
    assert loaded(mods, "numpy") == []


def test_the_probe_sees_imports():
    assert loaded(modules_after("pass"), "json", "numpy") == []
    assert loaded(modules_after("import json.scanner"), "json", "numpy") == ["json", "json.decoder",
                                                                          "json.encoder", "json.scanner"]


def test_range_arithmetic_leaves_numpy_ma_alone():
    """np.unique imports numpy.ma on first use (~9 ms of every dump): the interval library
    does without it."""
    mods = modules_after("from coldsnap.memory.scan import warm_up\nwarm_up(numpy=True)")
    assert "numpy" in mods and loaded(mods, "numpy.ma") == []


def test_dump_loads_no_thread_pool():
    """The frozen copy starts threads only for large copies, and imports the pool then."""
    mods = modules_after("import coldsnap.dump.dump, coldsnap.dump.predump")
    assert loaded(mods, "concurrent.futures") == []


@pytest.mark.parametrize("argv, short", [
    (["dump", "-t", "1", "-D", "d"], True), (["restore", "-D", "d", "-d"], True),
    (["pre-dump", "-t", "1", "-D", "d"], True), (["show", "d"], True),
    (["pre-dump", "-t", "1", "-D", "d", "--iterations", "3"], False),
    (["restore", "-D", "d", "--lazy-pages"], False), (["demo"], False)])
def test_only_one_shot_commands_go_without_the_garbage_collector(argv, short):
    from coldsnap.cli import build_parser, one_shot
    assert one_shot(build_parser().parse_args(argv)) is short


def test_the_garbage_collector_stays_on_for_callers_of_main():
    """main() called as a library (tests, other programs) leaves the collector alone."""
    code = "import gc\nfrom coldsnap.cli import main\nmain(['check'])\nprint('GC', gc.isenabled())"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH", "")])}
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=60)
    assert "GC True" in p.stdout, p.stderr


@pytest.mark.parametrize("argv, collector", [(["restore", "-D", "d", "-d"], False),
                                             (["restore", "-D", "d", "--lazy-pages"], True)])
def test_the_collector_the_client_turned_off_comes_back_for_commands_that_are_not_one_shot(monkeypatch, argv,
                                                                                          collector):
    """The in-process client imports and parses without the collector (client.command);
    main(own_process=True) keeps it off for a one-shot command and turns it back on for one
    that lasts (a lazy restore's, a series, the service)."""
    import gc
    from coldsnap import cli
    monkeypatch.setattr(cli, "run", lambda args: 0)
    handlers = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGHUP)}
    gc.disable()
    try:
        assert cli.main(argv, own_process=True) == 0
        assert gc.isenabled() is collector
    finally:
        gc.enable()
        for sig, handler in handlers.items():
            signal.signal(sig, handler)


def test_a_dump_imports_the_kinds_of_its_process_before_the_freeze():
    """files.kinds.prepare (before the freeze) loads what the process's fd links call for,
    so that collecting its fds inside the freeze imports nothing; a socket may be inet or
    unix, so both come, and the connection lock with them (a TCP socket takes it frozen)."""
    plain = modules_after("import os\nfrom coldsnap.files.kinds import prepare\nprepare([os.getpid()])")
    assert "coldsnap.files.regular" in plain and loaded(plain, *SOCKET_KINDS) == []
    sock = modules_after("import os, socket\ns = socket.socket()\nr, w = os.pipe()\n"
                         "from coldsnap.files.kinds import prepare\nprepare([os.getpid()])")
    assert {"coldsnap.files.inet", "coldsnap.files.unix", "coldsnap.files.pipes", "coldsnap.connections.lock",
            "coldsnap.connections.tcp", "coldsnap.kernel.tcp_repair"} <= sock


def test_a_run_declares_the_options_of_its_own_command_alone(capsys):
    """Declaring every command's options costs ~6 ms of each start: main() builds the
    parser of the command it runs (--help and a misspelt command still see them all)."""
    from coldsnap.cli import _command_in, build_parser
    assert _command_in(["restore", "-D", "d", "-d"]) == "restore" and _command_in(["--help"]) is None
    assert build_parser("restore").parse_args(["restore", "-D", "d", "-d"]).restore_detached
    with pytest.raises(SystemExit):
        build_parser("restore").parse_args(["dump", "-t", "1"])
    with pytest.raises(SystemExit):
        build_parser("restre").parse_args(["restre"])
    assert "'pre-dump', 'dump'" in capsys.readouterr().err
    assert build_parser().parse_args(["dump", "-t", "1"]).tree == 1


def test_parsers_built_ahead_parse_as_built_on_demand(monkeypatch):
    """A service builds every command's parser before it forks its workers: main() then
    takes its command's, with the same result as one built for the run."""
    from coldsnap import cli
    monkeypatch.setattr(cli, "_BUILT", {})
    cli.prebuild_parsers()
    assert set(cli._BUILT) == set(cli._COMMANDS)
    argv = ["restore", "-D", "d", "-d", "--json"]
    assert cli._BUILT["restore"].parse_args(argv) == cli.build_parser("restore").parse_args(argv)
    used = []
    monkeypatch.setattr(cli, "build_parser", lambda *a: used.append(a))
    monkeypatch.setattr(cli, "run", lambda args: 0 if args.restore_detached else 1)
    handlers = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGHUP)}
    try:
        assert cli.main(argv) == 0 and not used
    finally:
        for sig, handler in handlers.items():       # main() installs its own
            signal.signal(sig, handler)


def test_a_command_run_here_sets_up_the_site_directories_without_other_packages_code():
    """bin/coldsnap starts Python without `site`; a command it runs in this process puts the
    site directories (and the paths their .pth files name) on sys.path as site.main() would,
    but runs no installed package's .pth code: nothing is imported beyond `os` and `site`."""
    code = ("import sys, os\nsys.path.insert(0, sys.argv[1])\nbefore = list(sys.path)\n"
            "from coldsnap.service.client import add_site_dirs\nadd_site_dirs()\n"
            "ours = list(dict.fromkeys(os.path.abspath(p) for p in sys.path))\nloaded = set(sys.modules)\n"
            "sys.path[:] = before\nimport site\nsite.main()\n"
            "print('SAME', ours == list(dict.fromkeys(os.path.abspath(p) for p in sys.path)))\n"
            "print('EXTRA', *sorted(m for m in loaded if m != 'site' and not m.startswith('coldsnap')"
            " and m not in BASE))")
    base = subprocess.run([sys.executable, "-S", "-c", "import sys, os\nprint(*sys.modules)"], capture_output=True,
                          text=True, check=True, timeout=60).stdout.split()
    p = subprocess.run([sys.executable, "-S", "-c", f"BASE = {set(base)!r}\n{code}", str(SRC)], capture_output=True,
                       text=True, timeout=60)
    assert p.returncode == 0, p.stderr
    assert "SAME True" in p.stdout and set(p.stdout.split("EXTRA")[1].split()) <= {"_sitebuiltins", "gc"}, p.stdout
