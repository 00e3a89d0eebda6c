"""What a final dump records of a process's memory, seen from outside: the vDSO's pages (CRIU's
restore compares them with the running vDSO) and page counts that fit the process."""
from __future__ import annotations

import json
import sys

from coldsnap.kernel.procfs import read_maps

from predump_helpers import PG, coldsnap, image_pages

IDLE = "import sys; b = bytearray(1 << 20); print('ready', flush=True); sys.stdin.read()"


def test_a_dump_holds_every_vdso_page_and_counts_that_fit_the_process(spawn, tmp_path):
    w = spawn([sys.executable, "-c", IDLE])
    maps = read_maps(w.pid)
    run = coldsnap("dump", "--json", "-t", w.pid, "-D", tmp_path / "img", "--leave-running", check=True)
    stats = json.loads(run.stdout)["stats"]
    vdso = [(m.start, m.end) for m in maps if m.path == "[vdso]"]
    assert len(vdso) == 1
    pages = image_pages(tmp_path / "img", w.pid)
    start, end = vdso[0]
    assert [a for a in range(start, end, PG) if a not in pages] == []
    mapped = sum(m.end - m.start for m in maps) // PG
    assert 256 <= stats["pages_written"] <= stats["pages_scanned"] <= mapped, (stats, mapped)
