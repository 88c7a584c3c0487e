"""Imports flow one way: every module of ``p2pfl`` imports only from its own layer and below.

The table below is the architecture: a module may import from its own
layer and the layers under it, never from one above. Every import counts: module-level,
inside functions, under ``if TYPE_CHECKING:``, ``import p2pfl.x``, ``from p2pfl.x import y``,
relative imports and ``importlib.import_module("p2pfl.x")`` with a literal name. A
module the table does not place is an error too: put a new package in its layer.
"""

from __future__ import annotations

import ast
import shutil
import textwrap
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

import p2pfl

PACKAGE_DIR = Path(p2pfl.__file__).parent

#: Lowest layer first. An entry names a module or package under ``p2pfl`` (dotted below
#: it for a finer placement); the longest matching entry places a module.
LAYERS: tuple[tuple[str, ...], ...] = (
    # 0: errors, generic config loading, the settings schema, tiny utilities
    ("errors", "config", "settings", "_files", "_toml", "_lazy"),
    # 1: the building blocks; they know nothing of nodes, runs or consortia
    ("wire", "security", "topology", "data", "learning", "discovery", "transport"),
    # 2: how a node combines models (the Aggregator protocol lives here)
    ("aggregation",),
    # 3: one node: lifecycle, round loop, the exchange interface and plain exchanges
    ("node",),
    # 4: what plugs into a node: DP and secure aggregation; Byzantine attackers
    ("privacy", "attacks"),
    # 5: builds a node (link security, secure aggregation, aggregator) for 6
    ("assembly",),
    # 6: the two ways to run nodes; they never import each other (see SIBLINGS_APART)
    ("simulation", "deploy"),
    # 7: a consortium: description, bundles, rehearsal (uses deploy and simulation)
    ("consortium",),
    # 8: entry points and conveniences (``__init__`` is the package's lazy exports)
    ("cli", "report", "report_compare", "examples", "testing", "netfault", "__main__", "__init__"),
)

#: Same layer, yet neither may import the other.
SIBLINGS_APART: frozenset[tuple[str, str]] = frozenset({("simulation", "deploy"), ("deploy", "simulation")})

#: Edges the layers would allow but the design does not: (importer prefix, imported prefix, why).
FORBIDDEN: tuple[tuple[str, str, str], ...] = (
    ("p2pfl.examples", "p2pfl.simulation.setup", "an example learner is built like a member's own: data + learning"),
)


@dataclass(frozen=True)
class Edge:
    importer: str  # dotted module name
    imported: str  # dotted module name (a submodule when ``from pkg import submodule``)
    line: int

    def __str__(self) -> str:
        return f"{self.importer}:{self.line} imports {self.imported}"


def module_names(package_dir: Path) -> dict[str, Path]:
    """Every module of the package under ``package_dir``, by dotted name."""
    root = package_dir.name
    names = {}
    for path in sorted(package_dir.rglob("*.py")):
        parts = (root, *path.relative_to(package_dir).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        names[".".join(parts)] = path
    return names


def imports_of(module: str, source: str, *, is_package: bool, known: set[str]) -> Iterator[Edge]:
    """The package-internal imports in ``source`` (the text of ``module``), wherever they are."""
    root = module.split(".")[0]
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == root:
                    yield Edge(module, alias.name, node.lineno)
        elif isinstance(node, ast.ImportFrom):
            base = _absolute(module, node, is_package=is_package)
            if base.split(".")[0] != root:
                continue
            for alias in node.names:
                candidate = f"{base}.{alias.name}"
                yield Edge(module, candidate if candidate in known else base, node.lineno)
        elif isinstance(node, ast.Call) and _is_import_call(node):
            argument = node.args[0]
            if isinstance(argument, ast.Constant) and isinstance(argument.value, str):
                if argument.value.split(".")[0] == root:
                    yield Edge(module, argument.value, node.lineno)


def _absolute(module: str, node: ast.ImportFrom, *, is_package: bool) -> str:
    if node.level == 0:
        return node.module or ""
    package = module.split(".") if is_package else module.split(".")[:-1]
    base = package[: len(package) - (node.level - 1)]
    return ".".join([*base, node.module] if node.module else base)


def _is_import_call(node: ast.Call) -> bool:
    function = node.func
    name = function.attr if isinstance(function, ast.Attribute) else getattr(function, "id", None)
    return name in ("import_module", "__import__") and bool(node.args)


def placement(module: str) -> tuple[int, str] | None:
    """(layer, table entry) for a dotted module name, or None if the table does not place it."""
    below_root = module.split(".")[1:] or ["__init__"]
    best: tuple[int, str] | None = None
    for layer, entries in enumerate(LAYERS):
        for entry in entries:
            parts = entry.split(".")
            if below_root[: len(parts)] == parts and (best is None or len(parts) > len(best[1].split("."))):
                best = (layer, entry)
    return best


def violations(package_dir: Path) -> list[str]:
    """Every import edge against the layer table (and every module it does not place)."""
    modules = module_names(package_dir)
    known = set(modules)
    found = []
    for module, path in modules.items():
        here = placement(module)
        if here is None:
            found.append(f"{module} is in no layer: add it to LAYERS")
            continue
        # one report per import line and target (``from x import a, b`` is one edge)
        edges = dict.fromkeys(imports_of(module, path.read_text(), is_package=path.name == "__init__.py", known=known))
        for edge in edges:
            there = placement(edge.imported)
            if there is None:
                found.append(f"{edge}, which is in no layer")
            elif there[0] > here[0]:
                found.append(f"{edge}: layer {here[0]} ({here[1]}) may not import layer {there[0]} ({there[1]})")
            elif (here[1].split(".")[0], there[1].split(".")[0]) in SIBLINGS_APART:
                found.append(f"{edge}: {here[1]} and {there[1]} never import each other")
            elif reasons := [why for a, b, why in FORBIDDEN if _under(module, a) and _under(edge.imported, b)]:
                found.append(f"{edge}: {reasons[0]}")
    return found


def _under(module: str, prefix: str) -> bool:
    return module == prefix or module.startswith(prefix + ".")


def test_the_package_follows_the_layers() -> None:
    assert violations(PACKAGE_DIR) == []


def test_every_top_level_module_is_placed() -> None:
    for name in sorted(module_names(PACKAGE_DIR)):
        assert placement(name) is not None, name


@pytest.fixture
def package_copy(tmp_path: Path) -> Path:
    """A copy of the real package to break on purpose."""
    copy = tmp_path / "p2pfl"
    shutil.copytree(PACKAGE_DIR, copy, ignore=shutil.ignore_patterns("__pycache__"))
    return copy


FORBIDDEN_FORMS = {
    "module level": "from p2pfl.simulation import simulator\n",
    "import statement": "import p2pfl.simulation.simulator\n",
    "in a function": "def later():\n    from p2pfl.simulation.simulator import simulate\n",
    "under TYPE_CHECKING": (
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from p2pfl.simulation.config import ExperimentConfig\n"
    ),
    "relative": "from ..simulation import simulator\n",  # from p2pfl/wire/format.py
    "several names": "from p2pfl.simulation.churn import Churn, Outage\n",
    "importlib": "import importlib\nimportlib.import_module('p2pfl.simulation.simulator')\n",
}


@pytest.mark.parametrize("form", sorted(FORBIDDEN_FORMS))
def test_a_forbidden_import_is_reported(package_copy: Path, form: str) -> None:
    """wire (layer 1) importing simulation (layer 6), written each way an import can be."""
    wire = package_copy / "wire" / "format.py"
    wire.write_text(wire.read_text() + "\n" + FORBIDDEN_FORMS[form])
    found = violations(package_copy)
    assert len(found) == 1, found
    assert found[0].startswith("p2pfl.wire.format:") and "imports p2pfl.simulation" in found[0]
    assert "layer 1 (wire) may not import layer 6 (simulation)" in found[0]


def test_a_relative_import_in_a_subpackage_is_resolved(package_copy: Path) -> None:
    (package_copy / "topology" / "extra.py").write_text("from ..node import peers\nfrom . import schedule\n")
    (package_copy / "topology" / "sub").mkdir()
    (package_copy / "topology" / "sub" / "__init__.py").write_text("from ...simulation.churn import Churn\n")
    assert violations(package_copy) == [
        "p2pfl.topology.extra:1 imports p2pfl.node.peers: layer 1 (topology) may not import layer 3 (node)",
        "p2pfl.topology.sub:1 imports p2pfl.simulation.churn: layer 1 (topology) may not import layer 6 (simulation)",
    ]


def test_the_bundled_example_may_not_use_the_simulation_setup(package_copy: Path) -> None:
    bundled = package_copy / "examples" / "bundled.py"
    bundled.write_text(bundled.read_text() + "\nfrom p2pfl.simulation.setup import build_experiment\n")
    found = violations(package_copy)
    assert len(found) == 1 and found[0].startswith("p2pfl.examples.bundled:"), found
    assert "imports p2pfl.simulation.setup: an example learner is built like a member's own" in found[0]


def test_simulation_and_deploy_stay_apart(package_copy: Path) -> None:
    runner = package_copy / "deploy" / "extra.py"
    runner.write_text("from p2pfl.simulation.recorder import model_distances\n")
    assert violations(package_copy) == [
        "p2pfl.deploy.extra:1 imports p2pfl.simulation.recorder: deploy and simulation never import each other"
    ]


def test_an_unplaced_module_is_reported(package_copy: Path) -> None:
    (package_copy / "newthing.py").write_text('"""New."""\n')
    assert violations(package_copy) == ["p2pfl.newthing is in no layer: add it to LAYERS"]


def test_importing_a_higher_layer_from_below_is_reported_without_the_allow_list(package_copy: Path) -> None:
    source = textwrap.dedent(
        """
        def build():
            from p2pfl.node.node import Node
        """
    )
    (package_copy / "learning" / "extra.py").write_text(source)
    found = violations(package_copy)
    assert any(v.startswith("p2pfl.learning.extra:3 imports p2pfl.node.node: layer 1") for v in found), found
