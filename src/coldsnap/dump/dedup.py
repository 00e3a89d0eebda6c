"""--auto-dedup: free the parent chain's copies of pages a new image wrote again."""
from __future__ import annotations

from pathlib import Path

from ..images.chain import punch_superseded
from ..images.directory import ImageDir
from ..images.pages import PE_PRESENT, PagemapReader


def dedup_parents(images_dir: str | Path, pid: int) -> int:
    """Punch holes in every ancestor for the pages written here; returns bytes freed."""
    d = ImageDir.open(images_dir)
    if d.parent is None:
        return 0
    with PagemapReader(d, pid) as r:
        written = r.spans(PE_PRESENT)
    return punch_superseded(d.parent, pid, written) if len(written) else 0
