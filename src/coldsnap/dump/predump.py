"""`coldsnap pre-dump`: one pre-dump of a process tree in any mode, with or without write tracking."""
from __future__ import annotations

from pathlib import Path

from ..images.directory import ImageDir
from ..memory.drain import DEFAULT_BUFFER
from ..memory.scan import warm_up
from .iterate import pre_dump_tracked
from .plan import Planner, choose_pre_dump
from .sink import LOCAL, PageTarget
from .stats import DumpStats
from ..seize.tree import list_tree
from .step import save_step


def pre_dump(pid: int, images_dir: str | Path, *, mode: str = "live", track: str = "none",
             buffer_size: int = DEFAULT_BUFFER, scan: str = "auto",
             prev_images_dir: str | Path | None = None, freeze_cgroup: str | None = None,
             pages: PageTarget = LOCAL) -> DumpStats:
    """Save the memory of process `pid` and every process below it into a new images directory; returns the stats.

    mode "live" resumes the task as soon as the page plan is known and copies pages while it
    runs; "frozen" copies them before resuming (the baseline the live mode must beat);
    "nofreeze" never holds it. track "none" saves every present page; "uffd" and "soft-dirty"
    save only what was written since the previous images (see dump/iterate.py
    pre_dump_tracked). dump/plan.py choose_pre_dump says which go together. freeze_cgroup:
    hold the tree through that cgroup's freezer first ("live" and "frozen" only: "nofreeze"
    holds no tree). pages: where the pages go (a page server: transport/sink.py
    ServerPages).
    """
    mode, track = choose_pre_dump(mode, track, held=freeze_cgroup is not None)
    if track != "none":
        return pre_dump_tracked(pid, images_dir, prev_images_dir=prev_images_dir, buffer_size=buffer_size,
                                track=track, freeze_plan=mode == "live", scan=scan, freeze_cgroup=freeze_cgroup,
                                pages=pages)
    warm_up()
    with pages.session(images_dir, prev_images_dir) as session, \
            ImageDir.create(images_dir, parent=prev_images_dir) as imgdir:
        planners = {p: Planner(p, "none", scan=scan) for p in list_tree(pid)}
        return save_step(planners, imgdir, mode, buffer_size=buffer_size, freeze_cgroup=freeze_cgroup,
                         pages=session)
