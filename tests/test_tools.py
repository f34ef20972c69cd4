"""tools/ is imported by nothing in the library; every tool answers --help; the old module paths are gone."""

import ast
import os

import pytest

from tests.conftest import REPO, run_cli

LIBRARY = ("data", "model", "util", "engine")
# (the tool, an option only that tool has); the old paths data.check, data.prepare_voc, data.synthetic and
# util.benchmark were removed
TOOLS = [("tools.check", "--max-problems"), ("tools.prepare_voc", "--voc-tar"), ("tools.synthetic", "--preset"),
         ("tools.benchmark", "--peak-tflops"), ("tools.cost", "--rounds"), ("tools.equal_cost", "--match")]
OLD = ["data/check.py", "data/prepare_voc.py", "data/synthetic.py", "util/benchmark.py"]


def _is_main_guard(node: ast.stmt) -> bool:
    test = getattr(node, "test", None)
    return (isinstance(node, ast.If) and isinstance(test, ast.Compare) and isinstance(test.left, ast.Name)
            and test.left.id == "__name__")


def _imports_outside_main_guard(path: str) -> list[str]:
    """Every module imported by ``path`` (at any depth) except under ``if __name__ == "__main__":``."""
    with open(path, encoding="utf-8") as f:
        tree = ast.parse(f.read(), path)
    names, todo = [], [n for n in tree.body if not _is_main_guard(n)]
    while todo:
        node = todo.pop()
        if isinstance(node, ast.Import):
            names += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.append(node.module)
        todo.extend(ast.iter_child_nodes(node))
    return names


def test_the_library_never_imports_tools():
    offenders = []
    for package in LIBRARY:
        for dirpath, _, files in os.walk(os.path.join(REPO, package)):
            for name in sorted(f for f in files if f.endswith(".py")):
                path = os.path.join(dirpath, name)
                offenders += [f"{os.path.relpath(path, REPO)} imports {m}" for m in _imports_outside_main_guard(path)
                              if m == "tools" or m.startswith("tools.")]
    assert not offenders


def test_the_old_command_paths_are_gone():
    assert [p for p in OLD if os.path.exists(os.path.join(REPO, p))] == []


@pytest.mark.slow
@pytest.mark.parametrize("tool, option", TOOLS)
def test_every_tool_answers_help(tool, option):
    r = run_cli("-m", tool, "--help", timeout=120)
    assert r.returncode == 0, (tool, r.stderr)
    assert r.stdout.startswith("usage:") and option in r.stdout, tool
