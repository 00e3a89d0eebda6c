"""bin/coldsnap, the `coldsnap` command as installed: Python without `site`, coldsnap found
where an install put it, through the service or in the caller with the site directories."""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest


REPO = Path(__file__).parents[2]
LAUNCHER = REPO / "bin" / "coldsnap"


def make_env(where: Path, *, system_site: bool, coldsnap: str | None) -> Path:
    """A virtual environment in WHERE with the launcher installed in its bin; coldsnap in
    its site directory as an editable install leaves it ("editable": a .pth naming the
    sources) or as a package ("package"), or not at all (None). Its bin directory."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip",
                    *(["--system-site-packages"] if system_site else []), str(where)], check=True)
    site_dir = next((where / "lib").glob("python3*/site-packages"))
    if coldsnap == "editable":
        (site_dir / "__editable__.coldsnap-0.1.0.pth").write_text(f"{REPO / 'src'}\n")
    elif coldsnap == "package":
        (site_dir / "coldsnap").symlink_to(REPO / "src" / "coldsnap")
    shutil.copy(LAUNCHER, where / "bin" / "coldsnap")
    return where / "bin"


def run(argv: list, **env: str) -> subprocess.CompletedProcess:
    environ = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    return subprocess.run(list(map(str, argv)), capture_output=True, text=True, timeout=60,
                          env={**environ, **env})


@pytest.mark.parametrize("layout", ["editable", "package"])
def test_the_installed_command_goes_through_the_service_without_site(layout, service, tmp_path):
    # an environment without the system's packages: no protobuf, so the command cannot have
    # run in the client, and `site` found nothing for it
    # run and a .pth whose code marks that `site` ran
    bin_dir = make_env(tmp_path / "env", system_site=False, coldsnap=layout)
    marker = tmp_path / "site-ran"
    site_dir = next((tmp_path / "env" / "lib").glob("python3*/site-packages"))
    (site_dir / "marker.pth").write_text(f"import pathlib; pathlib.Path({str(marker)!r}).touch()\n")
    done = run([bin_dir / "coldsnap", "check"], COLDSNAP_SERVICE=str(service.address))
    assert done.returncode == 0, done.stderr
    assert "pagemap_scan" in done.stdout
    service.wait_log(lambda ln: "(check) exited 0" in ln, "worker line of the check")
    assert not marker.exists()


@pytest.mark.parametrize("site_dir", ["lib/python3/dist-packages", "lib/python{v}/dist-packages"])
def test_a_prefix_s_own_site_directory_is_found_from_a_relative_path(site_dir, service, tmp_path):
    # a prefix as Debian lays it out (the interpreter's own site directory elsewhere), the
    # command started by a relative path: the launcher makes it absolute and finds the
    # package in the site directory of the prefix whose bin holds it
    prefix = tmp_path / "prefix"
    where = prefix / site_dir.format(v="%d.%d" % sys.version_info[:2])
    where.mkdir(parents=True)
    (where / "__editable__.coldsnap-0.1.0.pth").write_text(f"{REPO / 'src'}\n")
    (prefix / "bin").mkdir()
    (prefix / "bin" / "python3").symlink_to(sys.executable)
    shutil.copy(LAUNCHER, prefix / "bin" / "coldsnap")
    done = subprocess.run(["bin/coldsnap", "check"], capture_output=True, text=True, timeout=60, cwd=prefix,
                          env={**{k: v for k, v in os.environ.items() if k != "PYTHONPATH"},
                               "COLDSNAP_SERVICE": str(service.address)})
    assert done.returncode == 0, done.stderr
    service.wait_log(lambda ln: "(check) exited 0" in ln, "worker line of the check")


def test_ctrl_c_while_a_command_run_in_the_caller_starts_ends_it_by_sigint_quietly(tmp_path):
    # a coldsnap whose cli module takes its time to import: SIGINT lands in the command's
    # start, before its own handlers
    bin_dir = make_env(tmp_path / "env", system_site=True, coldsnap=None)
    ready = tmp_path / "in-start"
    package = tmp_path / "src" / "coldsnap"
    package.mkdir(parents=True)
    for f in (REPO / "src" / "coldsnap").iterdir():
        if f.name != "cli.py":
            (package / f.name).symlink_to(f)
    future = "from __future__ import annotations\n"
    (package / "cli.py").write_text((REPO / "src" / "coldsnap" / "cli.py").read_text().replace(
        future, f"{future}import pathlib, time\npathlib.Path({str(ready)!r}).touch()\ntime.sleep(30)\n", 1))
    site_dir = next((tmp_path / "env" / "lib").glob("python3*/site-packages"))
    (site_dir / "__editable__.coldsnap-0.1.0.pth").write_text(f"{package.parent}\n")
    environ = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    p = subprocess.Popen([bin_dir / "coldsnap", "check"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         text=True, env={**environ, "COLDSNAP_SERVICE": ""},
                         preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        deadline = time.monotonic() + 30
        while not ready.exists():
            assert time.monotonic() < deadline and p.poll() is None, "the command never started"
            time.sleep(0.01)
        p.send_signal(signal.SIGINT)
        out, err = p.communicate(timeout=30)
    finally:
        p.kill()
        p.wait()
    assert p.returncode == -signal.SIGINT, (p.returncode, err)
    assert "Traceback" not in err and out == ""


def test_a_command_run_in_the_caller_gets_the_site_directories_but_runs_no_pth_code(tmp_path):
    # no service: the client runs `show` itself, which needs protobuf from the system's
    # site directory, reached only through the site directories the launcher skipped; the
    # code of other packages' .pth files is their start-up, not the command's
    bin_dir = make_env(tmp_path / "env", system_site=True, coldsnap="editable")
    marker = tmp_path / "site-ran"
    site_dir = next((tmp_path / "env" / "lib").glob("python3*/site-packages"))
    (site_dir / "marker.pth").write_text(f"import pathlib; pathlib.Path({str(marker)!r}).touch()\n")
    missing = tmp_path / "a dir with * and spaces"
    done = run([bin_dir / "coldsnap", "show", missing], COLDSNAP_SERVICE="")
    assert done.returncode == 6
    assert done.stderr.splitlines() == [f"coldsnap: {missing}: cannot open images directory: No such file or directory"]
    assert not marker.exists()


def test_without_a_python_beside_it_the_command_takes_python3_from_path(tmp_path):
    bin_dir = make_env(tmp_path / "env", system_site=True, coldsnap="editable")
    alone = tmp_path / "elsewhere"
    alone.mkdir()
    shutil.copy(LAUNCHER, alone / "coldsnap")
    done = run([alone / "coldsnap", "show", tmp_path / "none"], COLDSNAP_SERVICE="",
               PATH=f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    assert done.returncode == 6, done.stderr
    assert "cannot open images directory" in done.stderr


def test_a_link_to_the_command_takes_the_python3_beside_the_command_itself(tmp_path):
    bin_dir = make_env(tmp_path / "env", system_site=True, coldsnap="editable")
    links = make_env(tmp_path / "other", system_site=False, coldsnap=None)     # a python3 without it
    (links / "coldsnap").unlink()
    (links / "coldsnap").symlink_to(bin_dir / "coldsnap")
    done = run([links / "coldsnap", "show", tmp_path / "none"], COLDSNAP_SERVICE="")
    assert done.returncode == 6, done.stderr
    assert "cannot open images directory" in done.stderr


def test_a_python_without_coldsnap_says_so_in_one_line(tmp_path):
    bin_dir = make_env(tmp_path / "env", system_site=False, coldsnap=None)
    done = run([bin_dir / "coldsnap", "check"], COLDSNAP_SERVICE="")
    assert done.returncode == 1
    assert done.stderr.splitlines() == [f"coldsnap: the coldsnap package is not installed for {bin_dir / 'python3'}"]
