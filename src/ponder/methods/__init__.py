"""The table of methods: one ``MethodSpec`` per method, one file per method beside it.

``method(name)`` is the only way the rest of ponder reaches a method by the name a config
gives: a name the table does not have raises ``UnknownMethod`` there, never falls through to
another method's code. The order of the table is the paper's order of rows in reports.

Adding a method: write its file (equations, one-run module, ``build``, ``forward``,
``stacked``, ``loss`` and a ``SPEC``, as act.py does) and ``register(SPEC)``; README.md,
"Adding a method", gives the recipe.
"""

from __future__ import annotations

from . import act, pondernet, repeat
from .act import ACT
from .pondernet import PonderNet
from .repeat import Repeat
from .spec import Knob, MethodSpec, UnknownMethod, fmt_tau

METHODS: dict[str, MethodSpec] = {
    spec.name: spec for spec in (repeat.RNN, act.SPEC, repeat.REPEAT, pondernet.SPEC)
}


def method(name: str) -> MethodSpec:
    """The record of the method a config names ``name``; ``UnknownMethod`` if there is none."""
    try:
        return METHODS[name]
    except KeyError:
        known = ", ".join(METHODS)
        raise UnknownMethod(f"unknown model {name!r} (known: {known})") from None


def register(spec: MethodSpec) -> MethodSpec:
    """Add ``spec`` to the table (after the built-in methods); its name must be new."""
    if spec.name in METHODS:
        raise ValueError(f"a method named {spec.name!r} is already in the table")
    METHODS[spec.name] = spec
    return spec


def unregister(name: str) -> None:
    """Take a registered method out of the table again (tests)."""
    METHODS.pop(name, None)


def rank(name: str) -> int:
    """The method's position in the table: the paper's order of rows (unknown names last)."""
    names = list(METHODS)
    return names.index(name) if name in names else len(names)


__all__ = [
    "ACT",
    "METHODS",
    "Knob",
    "MethodSpec",
    "PonderNet",
    "Repeat",
    "UnknownMethod",
    "fmt_tau",
    "method",
    "rank",
    "register",
    "unregister",
]
