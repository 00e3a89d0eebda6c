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
