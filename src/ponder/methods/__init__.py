"""The table of methods: one ``MethodSpec`` per method, one file per method beside it.

``method(name)`` is the only way the rest of ponder reaches a method by the name a config
gives: a name the table does not have raises ``UnknownMethod`` there, never falls through to
another method's code. The order of the table is the paper's order of rows in reports.

Adding a method: write its file (equations, one-run module, ``build``, ``forward``,
``stacked``, ``loss`` and a ``SPEC``, as act.py does) and ``register(SPEC)`` when it is imported;
the ``ponder`` command and a sweep's workers import the modules named in ``$PONDER_METHODS``
(``load_plugins``). README.md, "Adding a method", gives the recipe.
"""

from __future__ import annotations

import importlib
import os

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


# Modules that add methods to the table when imported, comma-separated: the ``ponder`` command
# and every worker process a sweep starts (local or Ray) import them before they read a config.
PLUGINS_ENV = "PONDER_METHODS"


def load_plugins(names: str | None = None) -> list[str]:
    """Import the modules that register methods of their own: ``names`` (comma-separated), by
    default ``$PONDER_METHODS``. Returns the modules imported; one that cannot be imported is
    ``UnknownMethod`` with the reason in one line."""
    names = os.environ.get(PLUGINS_ENV, "") if names is None else names
    loaded = []
    for name in (n.strip() for n in names.split(",")):
        if not name:
            continue
        try:
            importlib.import_module(name)
        except ImportError as e:
            raise UnknownMethod(f"{PLUGINS_ENV}: cannot import {name!r}: {e}") from None
        loaded.append(name)
    return loaded


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
    "load_plugins",
    "method",
    "rank",
    "register",
    "unregister",
]
