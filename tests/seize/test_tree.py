"""The tree model on a real process tree: who is held, pgid/sid, and shared-object ids as
kcmp sees them; the pstree/ids images written from it decode with crit and read back equal."""
from __future__ import annotations

import itertools
import json
import os
import sys
from pathlib import Path

import pytest

from coldsnap.dump.metadata import write_inventory
from coldsnap.dump.metadata import write_tree_images
from coldsnap.dump.task_state import dump_task_state
from coldsnap.errors import AccessDenied, ImageError
from coldsnap.images.directory import ImageDir
from coldsnap.kernel import kcmp
from coldsnap.restore.images import read_tree
from coldsnap.seize.freezer import freeze, freeze_tree
from coldsnap.seize.tree import KCMP_KINDS, ObjectIds, Task
from procs import proc_state
from seize_helpers import assert_frozen_by_us, assert_running_untraced, wait_until

sys.path.insert(0, str(Path(__file__).parents[1] / "images"))
from imgtools import CRIT, crit_decode_all  # noqa: E402


@pytest.fixture
def family(spawn, workload_bin):
    """(workload, {name: pid}) of tests/workloads/tree_family.c."""
    w = spawn([workload_bin("tree_family")])
    words = w.ready.split()
    assert words[0] == "ready", w.ready
    pids = dict(zip(("main", "a", "a1", "b", "c"), map(int, words[1:])))
    yield w, pids
    w.proc.stdin.close()                  # main kills its tree and reaps its children
    w.proc.wait(timeout=10)
    wait_until(lambda: all(proc_state(pid)[0] in ("", "Z") for pid in pids.values()),
               what="the family to be gone")


def proc_stat(pid: int) -> dict[str, int]:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return {"ppid": int(fields[1]), "pgid": int(fields[2]), "sid": int(fields[3])}


def test_freeze_tree_holds_every_thread_of_every_process(family):
    w, p = family
    with freeze_tree(p["main"]) as held:
        assert sorted(held.tasks) == sorted(p.values())
        assert list(held.tasks)[0] == p["main"]
        assert len(held.task(p["main"]).tids) == 3
        for pid, task in held.tasks.items():
            assert_frozen_by_us(pid, task.tids)
    assert held.resumed and all(t.resumed for t in held.tasks.values())
    for pid in p.values():
        assert_running_untraced(pid)


def test_one_task_resumed_early_the_rest_at_the_end(family):
    w, p = family
    with freeze_tree(p["main"]) as held:
        held.task(p["a1"]).resume()
        assert_running_untraced(p["a1"])
        assert_frozen_by_us(p["a"], held.task(p["a"]).tids)
        assert not held.resumed
    for pid in p.values():
        assert_running_untraced(pid)


def test_ids_are_equal_exactly_where_kcmp_says_shared(family):
    w, p = family
    with freeze_tree(p["main"]) as held:
        tree = held.tree
    m, a, a1, b, c = (tree.task(p[k]) for k in ("main", "a", "a1", "b", "c"))
    assert (m.vm_id, m.files_id, m.fs_id, m.sighand_id) == (1, 1, 1, 1)   # the root numbers first
    assert (b.files_id, b.fs_id) == (m.files_id, m.fs_id) and b.vm_id != m.vm_id      # CLONE_FILES|FS
    assert c.vm_id == m.vm_id and c.files_id != m.files_id and c.sighand_id != m.sighand_id  # CLONE_VM
    assert {a.vm_id, a.files_id, a.fs_id, a.sighand_id}.isdisjoint({1})               # plain fork
    for x, y in itertools.combinations(tree, 2):       # every pair as the kernel says
        for name, kind in KCMP_KINDS:
            assert (getattr(x, name) == getattr(y, name)) == kcmp.same(x.pid, y.pid, kind), (x, y, name)
    for name, _ in KCMP_KINDS:                         # small integers from 1, no gaps
        ids = {getattr(t, name) for t in tree}
        assert ids == set(range(1, len(ids) + 1))
    assert m.ns_ids and all(t.ns_ids == m.ns_ids for t in tree)    # one set of namespaces


def test_threads_share_their_leaders_objects_a_forked_child_does_not(family):
    w, p = family
    main = p["main"]
    tids = sorted(int(t) for t in os.listdir(f"/proc/{main}/task"))
    for name, kind in KCMP_KINDS:
        ids = ObjectIds(kind)
        assert ids.id_of(main) == 1
        assert [ids.id_of(t) for t in tids] == [1] * len(tids)
        assert ids.id_of(p["a"]) == 2 and ids.id_of(p["a1"]) == 3 and ids.id_of(p["a"]) == 2


def test_pgid_sid_ppid_match_proc_after_setsid_and_setpgid(family):
    w, p = family
    with freeze_tree(p["main"]) as held:
        tree = held.tree
        for t in tree:
            assert {"ppid": t.ppid, "pgid": t.pgid, "sid": t.sid} == proc_stat(t.pid)
    a, a1 = tree.task(p["a"]), tree.task(p["a1"])
    assert a.sid == a.pgid == a.pid                     # setsid()
    assert a1.pgid == a1.pid and a1.sid == a.pid        # setpgid(0, 0) inside a's session
    assert tree.root == p["main"] and tree.image_ppid(tree.root_task) == 0
    assert tree.image_ppid(a1) == a.pid and [t.pid for t in tree.children(a.pid)] == [a1.pid]
    assert {t.pid for t in tree.children(p["main"])} == {p["a"], p["b"], p["c"]}


def test_tree_of_one_is_the_same_model(family):
    w, p = family
    with freeze(p["a"]) as task:
        assert list(task.tree.tasks) == [p["a"]]
        model = task.model
    assert model.pid == model.pgid == model.sid == p["a"] and model.ppid == p["main"]
    assert (model.vm_id, model.files_id, model.fs_id, model.sighand_id) == (1, 1, 1, 1)


def test_images_decode_with_crit_and_equal_the_model(family, tmp_path):
    if not os.path.exists(CRIT):
        pytest.skip("crit is not installed")
    w, p = family
    with freeze_tree(p["main"]) as held:
        tree = held.tree
    with ImageDir.create(tmp_path / "img") as d:
        names = write_tree_images(tree, d)
        write_inventory(d, pre_dump=False)
    img = tmp_path / "img"
    decoded = {Path(k).name: v for k, v in crit_decode_all([img / n for n in names]).items()}
    assert all(rc == 0 for rc, _, _ in decoded.values()), decoded
    entries = json.loads(decoded["pstree.img"][1])["entries"]
    assert [e["pid"] for e in entries] == list(tree.tasks)
    for e in entries:
        t = tree.task(e["pid"])
        assert (e["ppid"], e["pgid"], e["sid"], e["threads"]) == (tree.image_ppid(t), t.pgid, t.sid, t.tids)
        ids = json.loads(decoded[f"ids-{t.pid}.img"][1])["entries"][0]
        assert {k: ids[k] for k in ("vm_id", "files_id", "fs_id", "sighand_id")} == \
            {"vm_id": t.vm_id, "files_id": t.files_id, "fs_id": t.fs_id, "sighand_id": t.sighand_id}
        assert {k[:-6]: v for k, v in ids.items() if k.endswith("_ns_id")} == t.ns_ids
    back = read_tree(ImageDir.open(img))                 # restore reads the same model
    assert back.root == tree.root and list(back.tasks) == list(tree.tasks)
    for t in tree:
        want = {**vars(t), "ppid": tree.image_ppid(t)}
        assert vars(back.task(t.pid)) == want


def test_dump_of_a_session_leader_records_its_pgid_and_sid(family, tmp_path):
    w, p = family
    with ImageDir.create(tmp_path / "img") as d:
        dump_task_state(p["a1"], d)
        write_inventory(d, pre_dump=False)
    back = read_tree(ImageDir.open(tmp_path / "img"))
    t = back.root_task
    real = proc_stat(p["a1"])
    assert (t.pid, t.ppid, t.pgid, t.sid) == (p["a1"], 0, real["pgid"], real["sid"])
    assert t.sid == p["a"] and t.pgid == p["a1"] and t.files_id == 1
    assert_running_untraced(p["a1"])


def test_a_descendant_that_cannot_be_seized_lets_every_other_one_go(family, holder):
    w, p = family
    holder(p["a1"])                                    # another tracer holds a1
    with pytest.raises(AccessDenied, match=f"cannot seize {p['a1']}: already traced by"):
        with freeze_tree(p["main"]):
            pass
    for name in ("main", "a", "b", "c"):
        assert_running_untraced(p[name])


def test_restore_plans_the_sessions_and_groups_of_a_dumped_tree(family):
    from coldsnap.restore.sessions import JOIN, OWN_GROUP, SETSID, SessionStep, creation_order, plan_sessions
    w, p = family
    with freeze_tree(p["main"]) as held:
        tree = held.tree
    steps = plan_sessions(tree)
    assert creation_order(tree)[:3] == [p["main"], p["a"], p["a1"]]      # depth first
    assert steps[p["a"]] == SessionStep(SETSID) and steps[p["a1"]] == SessionStep(OWN_GROUP)
    assert steps[p["b"]] == steps[p["c"]] == SessionStep()
    # a1's sibling joining a1's group is made after it: it can join
    tree.tasks[99999] = Task(99999, p["a"], p["a1"], p["a"], [99999])
    assert plan_sessions(tree)[99999] == SessionStep(JOIN, p["a1"])
    tree.tasks[99999].sid = 12345
    with pytest.raises(ImageError, match=r"^process 99999: its session 12345 is neither its own nor"):
        plan_sessions(tree)




def test_a_held_process_that_exits_is_dropped_from_the_model(family):
    """A process killed while held (an exiting one in a forking tree, seen once: its
    /proc/PID/ns links answer EACCES or ENOENT from then on) is no living task of the model
    but one of the zombies; the rest of the tree is modelled and resumed as usual."""
    import signal
    w, p = family
    with freeze_tree(p["main"]) as held:
        os.kill(p["a1"], signal.SIGKILL)
        wait_until(lambda: proc_state(p["a1"])[0] == "Z", what="a1 to be a zombie")
        tree = held.tree
        assert p["a1"] not in tree.tasks and p["a1"] in held.zombies
        assert sorted(tree.tasks) == sorted(v for k, v in p.items() if k != "a1")
        assert all(tree.task(pid).ns_ids for pid in tree.tasks)
    for k in ("main", "a", "b", "c"):
        assert_running_untraced(p[k])
