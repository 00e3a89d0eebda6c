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


# Writing an image file: only ImageDir decides where (the staging directory), with which
# mode (0600) and when it is fsynced; framing holds the writer it hands out.
IMAGE_WRITERS = {"images/directory.py", "images/framing.py"}
NOT_IMAGES = {"demo.py",                         # the demo workload's own log file
              "restore/lazy_start.py",            # the lazy-pages server's --lazy-log
              "files/ghost.py",                   # restore makes deleted files again (ghosts)
              "service/server.py",                # the service's --pidfile
              "cli.py"}                           # -o FILE, CRIU's log option: the result line
_WRITE_CALLS = {"write_image", "ImageWriter", "create_image_file", "write_bytes", "write_text"}


def _file_writes(tree: ast.AST) -> list[tuple[int, str]]:
    """(line, what) of every call that creates or writes a file by path: os.open with
    O_CREAT, open() in a writing mode, and the image writers of framing."""
    out = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        f = node.func
        name = f.attr if isinstance(f, ast.Attribute) else f.id if isinstance(f, ast.Name) else ""
        text = ast.unparse(node)
        if name in _WRITE_CALLS:
            out.append((node.lineno, name))
        elif name == "open" and isinstance(f, ast.Attribute) and "O_CREAT" in text:
            out.append((node.lineno, "os.open O_CREAT"))
        elif name == "open" and isinstance(f, ast.Name):
            modes = [a.value for a in node.args[1:2] + [k.value for k in node.keywords if k.arg == "mode"]
                     if isinstance(a, ast.Constant) and isinstance(a.value, str)]
            if any(set(m) & set("wax+") for m in modes):
                out.append((node.lineno, f"open {modes[0]!r}"))
    return out


def test_images_written_only_through_imagedir():
    found = [(rel, line, what)
             for p in sorted(SRC.rglob("*.py"))
             if (rel := str(p.relative_to(SRC))) not in IMAGE_WRITERS | NOT_IMAGES
             and p.relative_to(SRC).parts[0] != "kernel"
             for line, what in _file_writes(ast.parse(p.read_text()))]
    assert found == []


def test_the_check_sees_file_writes():
    code = ('os.open(p, os.O_WRONLY | os.O_CREAT, 0o600)\nopen(p, "ab")\nopen(p, mode="w")\n'
            'open(p)\nos.open(p, os.O_RDONLY)\nwrite_image(p, None, [])\nd.write("x.img", [])\n')
    assert [what for _, what in _file_writes(ast.parse(code))] == [
        "os.open O_CREAT", "open 'ab'", "open 'w'", "write_image"]


# Foreign calls (the shared libc handle of kernel/libc.py) are kernel bindings: they live in
# kernel/. These still call it from above, each for a reason of its own (a blank child right
# after clone, an epoll or prctl made for the restored process); no new one.
LIBC_CALLERS = {"creds.py", "files/epoll.py", "restore/blank.py"}


def _libc_uses(tree: ast.AST) -> list[tuple[int, str]]:
    """(line, name) of every attribute taken of a name `libc` (libc.fallocate, libc.syscall)."""
    return [(node.lineno, node.attr) for node in ast.walk(tree)
            if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "libc"]


def test_libc_called_only_in_kernel():
    found = [(rel, line, name)
             for p in sorted(SRC.rglob("*.py"))
             if (rel := str(p.relative_to(SRC))) not in LIBC_CALLERS and p.relative_to(SRC).parts[0] != "kernel"
             for line, name in _libc_uses(ast.parse(p.read_text()))]
    assert found == []
    still = {rel for rel in LIBC_CALLERS if _libc_uses(ast.parse((SRC / rel).read_text()))}
    assert still == LIBC_CALLERS, f"moved into kernel/: drop {sorted(LIBC_CALLERS - still)} from LIBC_CALLERS"
