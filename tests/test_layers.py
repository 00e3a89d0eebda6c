"""Layer rules checked on the source text: who may touch /proc."""
from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).parents[1] / "src" / "coldsnap"


def _proc_paths(tree: ast.AST) -> list[tuple[int, str]]:
    """(line, text) of every string, or literal piece of an f-string, that starts with "/proc"."""
    return [(node.lineno, node.value) for node in ast.walk(tree)
            if isinstance(node, ast.Constant) and isinstance(node.value, str)
            and node.value.startswith("/proc")]


def test_proc_read_only_in_kernel():
    """Only kernel/ builds /proc paths; every other layer calls its typed readers."""
    found = [(str(p.relative_to(SRC)), line, text)
             for p in sorted(SRC.rglob("*.py"))
             if p.relative_to(SRC).parts[0] != "kernel"
             for line, text in _proc_paths(ast.parse(p.read_text()))]
    assert found == []


def test_the_check_sees_proc_paths():
    code = 'a = f"/proc/{pid}/maps"\nb = open("/proc/cpuinfo")\nc = "see /proc/PID/maps"\n'
    assert [text for _, text in _proc_paths(ast.parse(code))] == ["/proc/", "/proc/cpuinfo"]
