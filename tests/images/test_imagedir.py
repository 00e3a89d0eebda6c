"""ImageDir: staging + atomic commit, permissions, parent links and chain errors."""
from __future__ import annotations

import os
import stat
import subprocess
import sys

import pytest

from coldsnap.errors import ImageError
from coldsnap.images.directory import ImageDir, new_inventory
from coldsnap.images.pb import pstree_pb2
from imgtools import make_dir


def _inv(d: ImageDir) -> None:
    d.write("inventory.img", [new_inventory()])


def test_commit_is_atomic_and_private(tmp_path):
    target = tmp_path / "1"
    with ImageDir.create(target) as d:
        _inv(d)
        assert not target.exists()          # nothing visible before commit
        staging = d.root
        assert staging.parent == tmp_path and stat.S_IMODE(staging.stat().st_mode) == 0o700
        assert d.next_pages_id() == 1 and d.next_pages_id() == 2
    assert not staging.exists()
    assert stat.S_IMODE(target.stat().st_mode) == 0o700
    assert stat.S_IMODE((target / "inventory.img").stat().st_mode) == 0o600
    assert d.root == target and d.path("x.img") == target / "x.img"
    assert ImageDir.open(target).inventory.img_version == 2
    assert sorted(os.listdir(tmp_path)) == ["1"]


def test_failure_leaves_nothing(tmp_path):
    target = tmp_path / "1"
    with pytest.raises(RuntimeError):
        with ImageDir.create(target) as d:
            _inv(d)
            raise RuntimeError("dump failed")
    assert os.listdir(tmp_path) == []
    # A failure inside an image write (bad entry) cleans up the same way.
    with pytest.raises(ImageError):
        with ImageDir.create(target) as d:
            _inv(d)
            d.write("pstree.img", [pstree_pb2.pstree_entry(pid=1)])
    assert os.listdir(tmp_path) == []


def test_target_rules(tmp_path):
    full = tmp_path / "full"
    full.mkdir()
    (full / "old.img").write_bytes(b"x")
    with pytest.raises(ImageError, match="not empty"):
        ImageDir.create(full)
    assert sorted(os.listdir(tmp_path)) == ["full"]   # refused before writing anything
    (tmp_path / "file").write_bytes(b"")
    with pytest.raises(ImageError, match="not a directory"):
        ImageDir.create(tmp_path / "file")
    with pytest.raises(ImageError, match="no such directory"):
        ImageDir.create(tmp_path / "missing" / "1")
    empty = tmp_path / "empty"
    empty.mkdir(mode=0o755)
    with ImageDir.create(empty) as d:
        _inv(d)
    assert os.listdir(empty) == ["inventory.img"]
    assert stat.S_IMODE(empty.stat().st_mode) == 0o700


def test_a_symlink_to_a_directory_takes_the_images_and_stays(tmp_path):
    """-D a symlink to an empty directory, as CRIU users have (/var/lib/ckpt -> /big/ckpt):
    the images go into that directory and the link stays (it was refused as 'not a
    directory'); a dangling link, or one to a file, is refused naming what it points to."""
    real = tmp_path / "real"
    real.mkdir()
    (tmp_path / "link").symlink_to("real")
    with ImageDir.create(tmp_path / "link") as d:
        _inv(d)
    assert os.readlink(tmp_path / "link") == "real"
    assert os.listdir(real) == ["inventory.img"]
    assert sorted(os.listdir(tmp_path)) == ["link", "real"]
    assert ImageDir.open(tmp_path / "link").inventory.img_version == 2
    with pytest.raises(ImageError, match="not empty"):      # the rules of the directory it names
        ImageDir.create(tmp_path / "link")
    (tmp_path / "dangling").symlink_to("nowhere")
    (tmp_path / "file").write_bytes(b"")
    (tmp_path / "tofile").symlink_to("file")
    for name, to in (("dangling", "nowhere"), ("tofile", "file")):
        with pytest.raises(ImageError, match=f"{name}: a symbolic link to '{to}', which is no directory"):
            ImageDir.create(tmp_path / name)
    assert sorted(os.listdir(tmp_path)) == ["dangling", "file", "link", "real", "tofile"]


def test_target_filled_during_dump_is_not_clobbered(tmp_path):
    target = tmp_path / "t"
    target.mkdir()
    with pytest.raises(ImageError, match="not empty"):
        with ImageDir.create(target) as d:
            _inv(d)
            (target / "other.img").write_bytes(b"someone else")
    assert os.listdir(target) == ["other.img"]
    assert sorted(os.listdir(tmp_path)) == ["t"]


def test_unwritable_parent_dir(tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    if os.geteuid() == 0:
        # root ignores modes; /proc refuses new directories for everyone
        where = "/proc/self"
    else:
        ro.chmod(0o500)
        where = ro
    with pytest.raises(ImageError, match="cannot create images"):
        ImageDir.create(os.path.join(where, "images"))


def test_parent_link_and_listing(tmp_path):
    make_dir(tmp_path / "1", runs=[("present", 0x1000, 1)])
    sub = tmp_path / "sub"
    sub.mkdir()
    d = make_dir(sub / "2", parent=tmp_path / "1", runs=[("parent", 0x1000, 1)])
    assert os.readlink(sub / "2" / "parent") == "../../1"   # relative, like --prev-images-dir
    assert d.parent.root == tmp_path / "1" or os.path.samefile(d.parent.root, tmp_path / "1")
    assert [x.root.name for x in d.chain()] == ["2", "1"]
    assert d.pagemap_ids() == [4242] and d.shmem_pagemap_ids() == []
    with pytest.raises(ImageError, match="read-only"):
        d.next_pages_id()


def test_chain_errors(tmp_path):
    make_dir(tmp_path / "1")
    make_dir(tmp_path / "2", parent=tmp_path / "1")
    make_dir(tmp_path / "3", parent=tmp_path / "2")
    # Broken link: the parent directory disappeared.
    os.rename(tmp_path / "1", tmp_path / "gone")
    with pytest.raises(ImageError, match="broken parent link"):
        ImageDir.open(tmp_path / "3")
    assert ImageDir.open(tmp_path / "3", follow_parent=False).parent is None
    # Loop: 1 -> 3 -> 2 -> 1.
    os.rename(tmp_path / "gone", tmp_path / "1")
    os.symlink("../3", tmp_path / "1" / "parent")
    with pytest.raises(ImageError, match="loops"):
        ImageDir.open(tmp_path / "3")
    # Creating on top of a looping chain is refused before anything is written.
    with pytest.raises(ImageError, match="loops"):
        ImageDir.create(tmp_path / "4", parent=tmp_path / "3")
    assert not (tmp_path / "4").exists()
    # A parent that is not an images directory.
    os.unlink(tmp_path / "1" / "parent")
    (tmp_path / "1" / "inventory.img").unlink()
    with pytest.raises(ImageError, match="not an images directory"):
        ImageDir.open(tmp_path / "3")
    with pytest.raises(ImageError, match="cannot open"):
        ImageDir.open(tmp_path / "nope")


def test_the_inventory_says_what_current_criu_writes(tmp_path):
    """CRIU's restore reads fd info and namespaces per id only when the inventory says so."""
    with ImageDir.create(tmp_path / "img") as d:
        d.write("inventory.img", [new_inventory(pre_dump_mode=2, dump_uptime=7)])
    inv = ImageDir.open(tmp_path / "img").inventory
    assert (inv.img_version, inv.fdinfo_per_id, inv.ns_per_id) == (2, True, True)
    assert (inv.pre_dump_mode, inv.dump_uptime) == (2, 7)
    plain = new_inventory()
    assert not plain.HasField("pre_dump_mode") and not plain.HasField("dump_uptime")


def test_opening_a_file_says_it_is_not_a_directory(tmp_path):
    (tmp_path / "f").write_bytes(b"")
    with pytest.raises(ImageError, match=r"f: not a directory$"):
        ImageDir.open(tmp_path / "f")


MOUNTED = r"""
import os, sys
from coldsnap.images.directory import ImageDir, new_inventory
target = sys.argv[1]
with ImageDir.create(target) as d:
    d.write("inventory.img", [new_inventory()])
    os.close(d.create_file("pages-1.img"))
    print(d.root.parent == d.target, flush=True)    # staged inside: the same file system
print(sorted(os.listdir(target)), ImageDir.open(target).inventory.img_version)
try:
    with ImageDir.create(target) as d:
        pass
except Exception as e:
    print(type(e).__name__)
os.unlink(os.path.join(target, "inventory.img"))
os.unlink(os.path.join(target, "pages-1.img"))
try:
    with ImageDir.create(target) as d:
        d.write("inventory.img", [new_inventory()])
        raise RuntimeError
except RuntimeError:
    print(os.listdir(target))
"""


def test_an_empty_mount_point_takes_the_images(tmp_path):
    """-D on a file system mounted for the images (a tmpfs, as with CRIU): nothing can be
    renamed onto a mount point (EBUSY, found once the whole dump was done) and a sibling is
    on another file system; the images are staged inside it and moved in, the inventory
    last. Here in a mount namespace of its own."""
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    script = f'mount -t tmpfs -o size=1m none {mnt} && exec "$0" -c "$1" {mnt}'
    p = subprocess.run(["unshare", "--mount", "--propagation", "private", "sh", "-c", script,
                        sys.executable, MOUNTED], capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr
    assert p.stdout.splitlines() == ["True", "['inventory.img', 'pages-1.img'] 2", "ImageError", "[]"]


def test_a_full_disk_names_the_images_directory(tmp_path):
    """A write of the images failing (ENOSPC from a pages file, say) was 'coldsnap: No space
    left on device' alone: the error names the images directory; nothing is left."""
    import errno
    target = tmp_path / "1"
    with pytest.raises(ImageError, match=f"^{target}: cannot write images: No space left on device$"):
        with ImageDir.create(target) as d:
            _inv(d)
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    assert os.listdir(tmp_path) == []
    with pytest.raises(OSError) as e:       # one that names its file keeps its words
        with ImageDir.create(target):
            raise FileNotFoundError(errno.ENOENT, "No such file or directory", "/x")
    assert not isinstance(e.value, ImageError)


def test_a_signal_during_the_commit_leaves_nothing(tmp_path, monkeypatch):
    """Ctrl-C while the commit fsyncs the pages (seconds for a large dump) left the staging
    directory behind."""
    import coldsnap.images.directory as directory

    def interrupted(*a, **kw):
        raise KeyboardInterrupt
    with pytest.raises(KeyboardInterrupt):
        with ImageDir.create(tmp_path / "1") as d:
            _inv(d)
            monkeypatch.setattr(directory, "_fsync_path", interrupted)
    assert os.listdir(tmp_path) == []
