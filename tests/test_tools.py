"""tools/ is imported by nothing in the library, and every command keeps working under its old module path too."""

import ast
import os

import pytest

from tests.conftest import REPO, run_cli

LIBRARY = ("data", "model", "util", "engine")
# (old module path kept as an alias, the tool it runs, an option only that tool has)
ALIASES = [("data.check", "tools.check", "--max-problems"), ("data.prepare_voc", "tools.prepare_voc", "--voc-tar"),
           ("data.synthetic", "tools.synthetic", "--preset"), ("util.benchmark", "tools.benchmark", "--peak-tflops")]


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


@pytest.mark.slow
@pytest.mark.parametrize("module, tool, option", ALIASES)
def test_old_and_new_command_paths_both_run(module, tool, option):
    for path in (module, tool):
        r = run_cli("-m", path, "--help", timeout=120)
        assert r.returncode == 0, (path, r.stderr)
        assert r.stdout.startswith("usage:") and option in r.stdout, path
