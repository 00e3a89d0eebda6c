"""The choice of a pre-dump's mode and tracking lives in the library (the CLI only parses)."""
import pytest

from coldsnap.dump.plan import choose_pre_dump
from coldsnap.errors import CsError
from coldsnap.kernel.features import Features


def feats(**kw):
    base = dict(pagemap_scan=True, uffd_wp_async=True, soft_dirty=False, pidfd_getfd=True,
                clone3_set_tid=True)
    return Features(**{**base, **kw})


def test_defaults_follow_the_kernel():
    assert choose_pre_dump(None, None, feats()) == ("nofreeze", "uffd")
    assert choose_pre_dump(None, None, feats(uffd_wp_async=False, soft_dirty=True)) == ("live", "soft-dirty")
    assert choose_pre_dump(None, None, feats(uffd_wp_async=False)) == ("live", "none")
    assert choose_pre_dump("nofreeze", None, feats()) == ("nofreeze", "uffd")
    assert choose_pre_dump("live", None, feats()) == ("live", "none")
    assert choose_pre_dump("frozen", None, feats()) == ("frozen", "none")
    assert choose_pre_dump(None, "none", feats()) == ("live", "none")
    assert choose_pre_dump("live", "uffd", feats()) == ("live", "uffd")


@pytest.mark.parametrize("mode, track, words", [
    ("frozen", "uffd", "does not go with"), ("nofreeze", "none", "does not go with"),
    ("nofreeze", "soft-dirty", "does not go with"), (None, "soft-dirty", "no soft-dirty"),
    (None, "bogus", "unknown tracking"), ("bogus", None, "unknown pre-dump mode")])
def test_mismatches_are_refused_in_one_line(mode, track, words):
    with pytest.raises(CsError, match=words) as e:
        choose_pre_dump(mode, track, feats())
    assert "\n" not in str(e.value)


def test_a_held_tree_is_never_nofreeze():
    """--freeze-cgroup holds the tree: nofreeze is refused, and the default falls to live."""
    with pytest.raises(CsError, match="--freeze-cgroup holds the tree") as e:
        choose_pre_dump("nofreeze", None, feats(), held=True)
    assert "\n" not in str(e.value)
    assert choose_pre_dump(None, None, feats(), held=True) == ("live", "uffd")
    assert choose_pre_dump(None, "none", feats(), held=True) == ("live", "none")


def test_the_parked_trackings_a_chain_names(tmp_path):
    """pid -> parked userfaultfd, as a tracked pre-dump's stats name them: every process of a
    tree (pid, fd pairs), or the one process of a single pre-dump."""
    from coldsnap.dump.plan import chain_parked_fds
    from coldsnap.images.directory import ImageDir, new_inventory
    from coldsnap.images.pages import PagemapWriter
    from coldsnap.images.pb import stats_pb2

    def prev(name, **dump):
        st = stats_pb2.stats_entry()
        for k, v in dump.items():
            if k == "cs_tree_uffd_fds":
                st.dump.cs_tree_uffd_fds.extend(v)
            else:
                setattr(st.dump, k, v)
        st.dump.freezing_time = st.dump.frozen_time = st.dump.memdump_time = st.dump.memwrite_time = 0
        st.dump.pages_scanned = st.dump.pages_skipped_parent = st.dump.pages_written = 0
        st.dump.pages_lazy = 0
        with ImageDir.create(tmp_path / name) as d:
            d.write("inventory.img", [new_inventory(pre_dump_mode=2)])
            d.write("stats-dump", [st])
            with PagemapWriter(d, 10) as w:
                w.add_present(0x10000, bytes(4096))
        return ImageDir.open(tmp_path / name)

    assert chain_parked_fds(prev("tree", cs_tree_uffd_fds=[10, 900, 11, 901])) == {10: 900, 11: 901}
    assert chain_parked_fds(prev("one", cs_uffd_fd=905)) == {10: 905}
    assert chain_parked_fds(prev("none")) == {}
