"""Which way the imports point. A change that breaks a rule fails here.

contracts  <-  decisions  <-  workflows          (deterministic, no I/O)
contracts  <-  ops.logs/metrics, config  <-  clients  <-  activities
everything above  <-  temporal (gateway, worker assembly)  <-  edge (the HTTP app)
entry points (api.py, worker.py, cli.py) on top; dev tooling (sandbox, tests, bench)
never imported by the product.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PRODUCT = ("pylever", "workflows", "activities")
ENTRY_POINTS = ("api.py", "worker.py", "cli.py")
OURS = {*PRODUCT, "api", "worker", "cli", "sandbox", "tests", "bench"}
ENTRY_MODULES = {"api", "worker", "cli"}
BOTTOM_OPS = ("pylever.ops.logs", "pylever.ops.metrics")  # import nothing of ours


def _module_name(path: Path) -> str:
    return ".".join(path.relative_to(ROOT).with_suffix("").parts)


def _is_package(module: str) -> bool:
    return (ROOT / Path(*module.split(".")) / "__init__.py").is_file()


def _imports(path: Path) -> set[str]:
    """Project modules ``path`` imports (``from pylever.ops import logs`` counts as
    ``pylever.ops.logs``)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module.split(".")[0] not in OURS:
                continue
            if _is_package(node.module):
                found |= {f"{node.module}.{alias.name}" for alias in node.names}
            else:
                found.add(node.module)
        elif isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.split(".")[0] in OURS}
    return found


def _product_modules() -> dict[str, set[str]]:
    paths = [p for package in PRODUCT for p in (ROOT / package).rglob("*.py")]
    paths += [ROOT / name for name in ENTRY_POINTS]
    return {_module_name(p): _imports(p) for p in paths if p.name != "__init__.py"}


MODULES = _product_modules()


def _of(prefix: str) -> dict[str, set[str]]:
    return {m: deps for m, deps in MODULES.items() if m.startswith(prefix)}


def _outside(deps: set[str], *allowed: str) -> set[str]:
    """The dependencies that are none of ``allowed`` (a module or a package prefix)."""
    return {d for d in deps if not any(d == a or d.startswith(a + ".") for a in allowed)}


def test_the_tree_is_read_as_expected():
    # The rules below would pass vacuously if the walk found nothing.
    assert {"pylever.contracts.records", "pylever.edge.app", "workflows.invitation"} <= set(MODULES)
    assert "pylever.contracts.errors" in MODULES["workflows.calls"]


def test_the_product_never_imports_dev_tooling():
    for module, deps in MODULES.items():
        assert not _outside(deps, "pylever", "workflows", "activities", "api", "worker", "cli")
        assert not {d for d in deps if d.split(".")[0] in ("sandbox", "tests", "bench")}, module


@pytest.mark.parametrize("module", sorted(_of("workflows.")))
def test_workflows_see_only_the_contracts_and_each_other(module: str):
    # Activities are called through their stubs (pylever.contracts.activities).
    assert not _outside(MODULES[module], "pylever.contracts", "workflows"), module


def test_the_rules_and_the_records_are_pure():
    assert not _outside(MODULES["workflows.decisions"], "pylever.contracts")
    for module, deps in _of("pylever.contracts.").items():
        assert not _outside(deps, "pylever.contracts"), module


@pytest.mark.parametrize("module", sorted(_of("activities.")))
def test_activities_know_the_contracts_clients_and_config_only(module: str):
    allowed = ("pylever.contracts", "pylever.clients", "pylever.config", "pylever.ops")
    assert not _outside(MODULES[module], *allowed, "activities", "workflows.decisions"), module


@pytest.mark.parametrize("module", sorted(_of("pylever.clients.")))
def test_clients_sit_below_temporal_and_edge(module: str):
    allowed = ("pylever.contracts", "pylever.config", "pylever.clients", *BOTTOM_OPS)
    assert not _outside(MODULES[module], *allowed), module


@pytest.mark.parametrize("module", sorted(_of("pylever.config.")))
def test_config_sits_below_the_clients(module: str):
    assert not _outside(MODULES[module], "pylever.contracts", "pylever.config", *BOTTOM_OPS)


def test_only_the_temporal_glue_knows_workflows_and_activities():
    knows = {
        m
        for m, deps in _of("pylever.").items()
        if any(
            d.split(".")[0] in ("workflows", "activities") for d in deps - {"workflows.decisions"}
        )
    }
    assert knows <= set(_of("pylever.temporal.")), knows
    assert "pylever.temporal.workers" in knows and "pylever.temporal.gateway" in knows


def test_nothing_below_the_edge_imports_it():
    for module, deps in MODULES.items():
        if not module.startswith("pylever.edge.") and module not in ENTRY_MODULES:
            assert not {d for d in deps if d.startswith("pylever.edge.")}, module


def test_logs_and_metrics_import_nothing_of_ours():
    for module in BOTTOM_OPS:
        assert MODULES[module] == set(), module


def test_the_architecture_picture_names_every_module():
    # docs/architecture.md's tree is the map a newcomer reads first: a module added,
    # renamed or moved without it fails here.
    text = (ROOT / "docs" / "architecture.md").read_text()
    start = text.index("## The tree")
    picture = text[start : text.index("```\n\n", text.index("```", start) + 3)]
    missing = [
        m
        for m in MODULES
        if m.split(".")[0] in PRODUCT and f"{m.rsplit('.', 1)[1]}.py" not in picture
    ]
    assert not missing, missing
    folders = {str(p.parent.relative_to(ROOT)) for p in (ROOT / "pylever").rglob("*.py")}
    for folder in folders - {"pylever"}:
        assert f"{folder}/" in picture, folder
