"""CRIU's crit (3.17) must decode every image we write, extension fields included."""
from __future__ import annotations

import base64
import json

import pytest

from coldsnap.images.directory import ImageDir
from coldsnap.images.framing import kind_for, read_image
from coldsnap.images.pages import PagemapWriter
from imgtools import PID, page_bytes, sample_images
from procs import crit, crit_decode_all


@pytest.fixture
def full_dir(tmp_path):
    """A directory with one image of every kind; the task pagemap comes from PagemapWriter."""
    samples = sample_images()
    with ImageDir.create(tmp_path / "dump") as d:
        for name, entries in samples.items():
            if name != f"pagemap-{PID}.img":
                d.write(name, entries)
        with PagemapWriter(d, PID) as w:
            w.add_present(0x600000, page_bytes(0x600000, 3))
            w.add_skipped(0x603000, 1)
            w.add_parent(0x604000, 2)
            w.add_present(0x606000, page_bytes(0x606000, 1), lazy=True)
    return tmp_path / "dump", samples


def _hex(v):
    return int(v, 16) if isinstance(v, str) else v


def test_crit_decodes_every_kind(need_crit, full_dir):
    root, samples = full_dir
    files = sorted(p for p in root.iterdir() if kind_for(p).message is not None)
    assert {p.name for p in files} == set(samples)
    results = crit_decode_all(files)
    for path, (rc, out, err) in results.items():
        assert rc == 0, f"crit failed on {path.name}: {err}"
        img = json.loads(out)
        assert img["magic"] == kind_for(path).name, path.name
        assert len(img["entries"]) == len(read_image(path)), path.name

    pm = json.loads(results[root / f"pagemap-{PID}.img"][1])["entries"]
    assert pm[0] == {"pages_id": 1}  # cs_skipped (field 1000) is skipped by crit
    # crit 3.17 reads the count from field 2, which we fill as well as field 5.
    runs = [(_hex(e["vaddr"]), e["nr_pages"]) for e in pm[1:]]
    assert runs == [(0x600000, 3), (0x604000, 2), (0x606000, 1)]
    ours = read_image(root / f"pagemap-{PID}.img")
    assert [(r.vaddr, r.nr_pages) for r in ours[0].cs_skipped] == [(0x603000, 1)]

    stats = json.loads(results[root / "stats-dump"][1])["entries"][0]["dump"]
    assert stats["pages_written"] == 40 and not any(k.startswith("cs_") for k in stats)
    assert read_image(root / "stats-dump")[0].dump.cs_track_backend == "uffd-wp"

    pipes = json.loads(results[root / "pipes-data.img"][1])["entries"]
    assert [base64.b64decode(e["extra"]) for e in pipes] == [b"hello", b"\x00\xff\x01"]

    core = json.loads(results[root / f"core-{PID}.img"][1])["entries"][0]
    assert len(core["tc"]["sigactions"]) == 62 and core["tc"]["comm"] == "sample"
    assert core["thread_core"]["rseq_entry"]["signature"] == 0x53053053


def test_crit_explores_directory(need_crit, full_dir):
    root, _ = full_dir
    out = {what: crit("x", root, what) for what in ("ps", "fds", "mems", "rss")}
    for what, res in out.items():
        assert res.returncode == 0, f"crit x {what}: {res.stderr}"
    assert "sample" in out["ps"].stdout
    assert "pipe[777]" in out["fds"].stdout and "cwd: /" in out["fds"].stdout
    assert "/usr/bin/sample" in out["mems"].stdout
    assert "600000" in out["rss"].stdout


def test_crit_refuses_raw_pages(need_crit, full_dir):
    root, _ = full_dir
    res = crit("decode", "-i", root / "pages-1.img")
    assert res.returncode != 0 and "raw data" in res.stdout + res.stderr


def test_every_magic_is_the_one_crit_knows():
    """The magic of each image kind, against the table of the installed crit (Debian's
    CRIU): a wrong one makes CRIU refuse, or misread, an image kind no test of ours writes."""
    import os
    import subprocess
    from coldsnap.images.framing import MAGICS
    if not os.path.isdir("/usr/lib/python3/dist-packages/pycriu"):
        pytest.skip("crit's python package (Debian package criu) is not installed")
    out = subprocess.run(["/usr/bin/python3", "-c", "import json; from pycriu.images import magic; "
                          "print(json.dumps(magic.by_name))"], capture_output=True, text=True, check=True)
    theirs = json.loads(out.stdout)
    common = sorted(set(MAGICS) & set(theirs))
    assert len(common) >= 60, common
    assert {k: hex(MAGICS[k]) for k in common} == {k: hex(theirs[k]) for k in common}
