"""Which way the imports point: the product never reaches into dev tooling, the
workflows see only records, rules and errors, and only the Temporal glue in
``pylever`` knows the workflows. A change that breaks a rule fails here."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PRODUCT = ("pylever", "workflows", "activities")
ENTRY_POINTS = ("api.py", "worker.py", "cli.py")
OURS = {*PRODUCT, "api", "worker", "cli", "sandbox", "tests", "bench"}


def _module_name(path: Path) -> str:
    return ".".join(path.relative_to(ROOT).with_suffix("").parts)


def _imports(path: Path) -> set[str]:
    """Project modules ``path`` imports (``from pylever import x`` counts as ``pylever.x``)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module.split(".")[0] not in OURS:
                continue
            if node.module in PRODUCT:  # from pylever import search_attributes
                found |= {f"{node.module}.{alias.name}" for alias in node.names}
            else:
                found.add(node.module)
        elif isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.split(".")[0] in OURS}
    return found


def _product_modules() -> dict[str, set[str]]:
    paths = [p for package in PRODUCT for p in (ROOT / package).glob("*.py")]
    paths += [ROOT / name for name in ENTRY_POINTS]
    return {_module_name(p): _imports(p) for p in paths if p.name != "__init__.py"}


MODULES = _product_modules()


def _of(prefix: str) -> dict[str, set[str]]:
    return {m: deps for m, deps in MODULES.items() if m.startswith(prefix)}


def test_the_product_never_imports_dev_tooling():
    for module, deps in MODULES.items():
        assert not {d for d in deps if d.split(".")[0] in ("sandbox", "tests", "bench")}, module


@pytest.mark.parametrize("module", sorted(_of("workflows.")))
def test_workflows_see_records_rules_errors_and_activity_signatures_only(module: str):
    allowed_pylever = {"pylever.contracts", "pylever.errors", "pylever.search_attributes"}
    for dep in MODULES[module]:
        top = dep.split(".")[0]
        if top == "pylever":
            assert dep in allowed_pylever, (module, dep)
        else:  # activity method references for typed calls, and each other
            assert top in ("workflows", "activities"), (module, dep)


def test_the_rules_and_the_records_are_pure():
    assert MODULES["workflows.decisions"] <= {"pylever.contracts"}
    assert MODULES["pylever.contracts"] == set()


@pytest.mark.parametrize("module", sorted(_of("activities.")))
def test_activities_know_no_workflow_but_the_pure_rules(module: str):
    workflow_deps = {d for d in MODULES[module] if d.split(".")[0] == "workflows"}
    assert workflow_deps <= {"workflows", "workflows.decisions"}, module


def test_only_the_temporal_glue_in_pylever_knows_the_workflows():
    knows = {
        m for m, deps in _of("pylever.").items() if any(d.startswith("workflows") for d in deps)
    }
    assert knows == {"pylever.gateway", "pylever.legacy_queues"}
