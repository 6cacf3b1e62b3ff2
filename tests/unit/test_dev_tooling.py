"""Dev tooling lives in one place: sandbox/ starts the stack for ``make run``, the tests and
the benchmarks (sandbox/devserver.py, sandbox/launcher.py, sandbox/process_stack.py).

A second ``free_port``, a second dev-server command line or TOML writer, or a benchmark
that reaches into tests/ fails here."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DEVSERVER = ROOT / "sandbox" / "devserver.py"
TOML_WRITER = ROOT / "sandbox" / "toml_writer.py"
# Words of a `temporal server start-dev` command line (as string literals).
DEV_SERVER_WORDS = {
    "start-dev",
    "--sqlite-pragma",
    "--dynamic-config-value",
    "--search-attribute",
    "--db-filename",
    "--ui-codec-endpoint",
    "--headless",
}
TOML_WRITERS = {"toml_value", "to_toml", "toml_table", "_toml_table"}
SKIPPED_DIRS = {"build", "node_modules", "__pycache__"}


def _python_files() -> list[Path]:
    """Every .py file of the repository (not the venv, caches or build output)."""
    return sorted(
        p
        for p in ROOT.rglob("*.py")
        if not any(
            part.startswith(".") or part in SKIPPED_DIRS for part in p.relative_to(ROOT).parts
        )
    )


FILES = {p: ast.parse(p.read_text(), filename=str(p)) for p in _python_files()}


def _rel(path: Path) -> str:
    return str(path.relative_to(ROOT))


def test_the_walk_sees_the_tooling():
    assert DEVSERVER in FILES and TOML_WRITER in FILES
    assert ROOT / "bench" / "common.py" in FILES and Path(__file__).resolve() in FILES


def test_benchmarks_import_nothing_from_tests():
    for path, tree in FILES.items():
        if path.relative_to(ROOT).parts[0] != "bench":
            continue
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names = [node.module]
            elif isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            else:
                continue
            assert not [n for n in names if n.split(".")[0] == "tests"], (_rel(path), names)


def test_one_free_port():
    found = [
        (_rel(path), node.name)
        for path, tree in FILES.items()
        for node in ast.walk(tree)
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
        and "free_port" in node.name
        and not node.name.startswith("test_")
    ]
    assert found == [(_rel(DEVSERVER), "free_port")]


def test_one_dev_server_command_line():
    here = Path(__file__).resolve()
    found = {
        _rel(path)
        for path, tree in FILES.items()
        if path != here
        for node in ast.walk(tree)
        if isinstance(node, ast.Constant) and node.value in DEV_SERVER_WORDS
    }
    assert found == {_rel(DEVSERVER)}


def test_one_toml_writer():
    found = {
        (_rel(path), node.name)
        for path, tree in FILES.items()
        for node in tree.body
        if isinstance(node, ast.FunctionDef) and node.name in TOML_WRITERS
    }
    assert {where for where, _ in found} == {_rel(TOML_WRITER)}


def test_the_moved_modules_left_no_copies_in_tests():
    for name in ("temporal_harness.py", "process_stack.py", "toml_writer.py"):
        assert not (ROOT / "tests" / "support" / name).exists(), name
