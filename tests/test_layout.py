"""The package layout is the pipeline: each layer imports only the ones below it, nothing
imports in a circle, and no module grows past what one reader can hold."""

from __future__ import annotations

import ast
from graphlib import CycleError, TopologicalSorter
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1] / "station"
MAX_LINES = 400
# Lowest first. A module belongs to the entry that is the longest prefix of its name and
# may import from its own layer and any below it.
LAYERS: list[tuple[str, ...]] = [
    ("station", "station.errors"),
    ("station.dicom",),
    ("station.config",),
    (
        "station.ops.metrics",
        "station.ops.logs",
        "station.ops.systemd",
        "station.ops.install",
        "station.ops.preflight",
    ),
    ("station.store",),
    ("station.series", "station.ops.status", "station.ops.trace"),
    ("station.routing",),
    ("station.receive", "station.dispatch"),
    ("station.service", "station.conformance", "station.preview", "station.testing"),
    ("station.cli", "station.__main__"),
]


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(path): path for path in sorted(ROOT.rglob("*.py"))}


def layer(module: str) -> int:
    best, rank = "", -1
    for index, prefixes in enumerate(LAYERS):
        for prefix in prefixes:
            if (module == prefix or module.startswith(prefix + ".")) and len(prefix) > len(best):
                best, rank = prefix, index
    assert rank >= 0, f"{module} is in no layer of tests/test_layout.py"
    return rank


def imports(module: str) -> set[str]:
    """The station modules ``module`` imports, at the top or inside functions."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(MODULES[module].read_text())):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [f"{node.module}.{alias.name}" for alias in node.names] + [node.module]
        else:
            continue
        found |= {name for name in names if name in MODULES and name != module}
    return found


GRAPH = {module: imports(module) for module in MODULES}


@pytest.mark.parametrize("module", sorted(MODULES))
def test_a_module_imports_only_its_own_layer_and_those_below(module: str) -> None:
    upward = sorted(target for target in GRAPH[module] if layer(target) > layer(module))
    assert not upward, f"{module} (layer {layer(module)}) imports higher layers: {upward}"


def test_no_import_cycles() -> None:
    try:
        tuple(TopologicalSorter(GRAPH).static_order())
    except CycleError as exc:
        pytest.fail("import cycle: " + " -> ".join(exc.args[1]))


@pytest.mark.parametrize("module", sorted(MODULES))
def test_a_module_fits_in_one_reading(module: str) -> None:
    lines = len(MODULES[module].read_text().splitlines())
    assert lines <= MAX_LINES, f"{MODULES[module]} has {lines} lines (at most {MAX_LINES})"
