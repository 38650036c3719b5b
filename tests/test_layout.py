"""The shape of the code: a method is chosen only through the table (``ponder.methods``), and no
module imports from a layer above its own (STYLE.md: data flows one way)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import ponder
from ponder.methods import METHODS

SRC = Path(ponder.__file__).parent
BUILT_IN = {"rnn", "act", "repeat", "pondernet"}

# Bottom to top; a module may import from its own layer and the ones below.
LAYERS = {
    "kernels": 0,
    "methods": 1,
    "tasks": 1,
    "config": 2,
    "rundir": 3,
    "metrics": 3,
    "memory": 3,
    "training": 4,
    "analysis": 5,
    "experiments": 6,
    "cli": 7,
}


def _modules() -> list[Path]:
    return sorted(p for p in SRC.rglob("*.py") if p.name != "__init__.py" or p.parent != SRC)


def _layer(parts: tuple[str, ...]) -> str:
    """The layer of a module (``parts`` under ``ponder``: ("training", "engine"))."""
    return parts[0].removesuffix(".py")


def _names_a_method(node: ast.AST) -> bool:
    if isinstance(node, ast.Constant) and node.value in BUILT_IN:
        return True
    if isinstance(node, (ast.Tuple, ast.List, ast.Set)):
        return any(_names_a_method(e) for e in node.elts)
    return False


def _is_cell(node: ast.AST) -> bool:
    """``config.cell`` and the like: "rnn" is also a cell's name."""
    name = node.attr if isinstance(node, ast.Attribute) else getattr(node, "id", "")
    return name in ("cell", "kind")


def _choices_by_name(tree: ast.AST) -> list[int]:
    """Lines that compare against a method's name, test a core's class, or tell a method by
    what its info holds."""
    lines = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Compare):
            sides = [node.left, *node.comparators]
            if any(_names_a_method(s) for s in sides) and not any(_is_cell(s) for s in sides):
                lines.append(node.lineno)
            if isinstance(node.left, ast.Constant) and node.left.value == "log_p":
                lines.append(node.lineno)
        if isinstance(node, ast.Call) and getattr(node.func, "id", "") == "isinstance":
            classes = node.args[1] if len(node.args) > 1 else None
            names = {getattr(e, "id", "") for e in getattr(classes, "elts", [classes])}
            if names & {"ACT", "PonderNet", "Repeat"}:
                lines.append(node.lineno)
    return lines


def test_the_methods_are_the_table():
    assert BUILT_IN <= set(METHODS)


@pytest.mark.parametrize("path", _modules(), ids=lambda p: str(p.relative_to(SRC)))
def test_only_the_methods_package_chooses_by_method_name(path: Path):
    parts = path.relative_to(SRC).parts
    if parts[0] == "methods":
        return
    lines = _choices_by_name(ast.parse(path.read_text()))
    assert not lines, f"{path.name} chooses by a method's name at lines {lines}: ask the table"


def _upward(parts: tuple[str, ...], tree: ast.AST) -> list[str]:
    """The imports of module ``parts`` (under ``ponder``) from a layer above its own."""
    here = LAYERS[_layer(parts)]
    package = parts[:-1]
    wrong = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.level:
            base = package[: len(package) - (node.level - 1)]
            target = (*base, *(node.module.split(".") if node.module else ()))
            targets = [target] if target else [(a.name,) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("ponder."):
            targets = [tuple(node.module.split(".")[1:])]
        else:
            continue
        for t in targets:
            if LAYERS.get(_layer(t), -1) > here:
                wrong.append(f"line {node.lineno}: {'.'.join(t)}")
    return wrong


@pytest.mark.parametrize("path", _modules(), ids=lambda p: str(p.relative_to(SRC)))
def test_no_module_imports_from_a_layer_above(path: Path):
    parts = path.relative_to(SRC).parts
    wrong = _upward(parts, ast.parse(path.read_text()))
    assert not wrong, f"{'/'.join(parts)} imports from a layer above it: {wrong}"


def test_the_checks_catch_what_they_look_for():
    """The two checks above would fail on the code they forbid."""
    bad = ast.parse(
        'if config.model == "act": pass\n'
        'ok = model in ("repeat", "rnn")\n'
        "core = isinstance(net.core, (ACT, PonderNet))\n"
        'is_pn = "log_p" in info\n'
        'cell = config.cell == "rnn"\n'
    )
    assert _choices_by_name(bad) == [1, 2, 3, 4]
    up = ast.parse(
        "from ..training import engine\n"  # methods -> training: up
        "from ..kernels.tanh import tanh\n"  # methods -> kernels: down
        "def f():\n    from ..analysis.results import read_run\n"  # a lazy import counts too
    )
    assert _upward(("methods", "act.py"), up) == ["line 1: training", "line 4: analysis.results"]
