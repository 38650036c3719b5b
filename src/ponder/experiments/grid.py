"""Experiment grids -> runs.

A grid is a YAML file a person can read::

    name: parity-table
    description: Table 1 of Fojo et al. (2018)
    base: {task: parity}           # a run config; the rest of its fields take their defaults
    seeds: 5                       # runs per configuration, seeds 0..seeds-1
    budget: 2000000                # training steps per run (the paper's)
    stop_when_solved: true
    axes:                          # groups of configurations; a list value is an axis
      - {model: rnn}
      - {model: act, tau: [0.1, 0.01, 0.005, 0.001]}
      - {model: repeat, rho: [2, 3, 5, 8]}

Each group expands to the product of its axes, times the seeds. A run's directory is named from
its model and the values its group varies (``act-tau0.01-seed3``).
"""

from __future__ import annotations

import dataclasses
import itertools
import json
from collections.abc import Iterable
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from .. import rundir
from ..config import (
    RESUMABLE_FIELDS,
    ConfigError,
    RunConfig,
    from_dict,
    load_yaml,
    resolve,
    run_name,
)

GRID_KEYS = {"name", "description", "base", "seeds", "budget", "stop_when_solved", "axes", "note"}


@dataclass(frozen=True)
class Run:
    """One run of a sweep: its directory name and its resolved config."""

    name: str
    config: RunConfig


@dataclass
class Grid:
    name: str
    runs: list[Run]
    description: str = ""
    note: str = ""


# --------------------------------------------------------------------------------------------
# Grids


def builtin_grid(name: str) -> Path:
    """Path of a grid shipped with ponder (``parity-table`` ...), by name."""
    path = Path(str(resources.files("ponder") / "configs" / f"{name}.yaml"))
    if not path.exists():
        known = ", ".join(sorted(builtin_grids()))
        raise ConfigError(f"no built-in grid {name!r} (known: {known})")
    return path


def builtin_grids() -> list[str]:
    folder = Path(str(resources.files("ponder") / "configs"))
    return sorted(p.stem for p in folder.glob("*.yaml"))


def load_grid(
    path: str | Path,
    seeds: int | None = None,
    budget: int | None = None,
    stop_when_solved: bool | None = None,
    **overrides: Any,
) -> Grid:
    """Read and expand a grid file; every expanded config is validated (``ConfigError``).
    ``seeds``, ``budget`` and ``stop_when_solved`` replace the file's own values."""
    path = Path(path)
    data = load_yaml(path)
    where = f"grid {path.name}"
    unknown = sorted(set(data) - GRID_KEYS)
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {', '.join(unknown)}")
    base = data.get("base") or {}
    if not isinstance(base, dict):
        raise ConfigError(f"{where}: base must be a mapping of run config keys")
    axes = data.get("axes")
    if not isinstance(axes, list) or not axes:
        raise ConfigError(f"{where}: axes must be a non-empty list of mappings")
    n_seeds = data.get("seeds", 5) if seeds is None else seeds
    steps = data.get("budget", base.get("steps", 2_000_000)) if budget is None else budget
    for key, value in (("seeds", n_seeds), ("budget", steps)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ConfigError(f"{where}: {key} must be a positive integer, got {value!r}")
    stop = data.get("stop_when_solved", base.get("stop_when_solved", True))
    if stop_when_solved is not None:
        stop = stop_when_solved
    if not isinstance(stop, bool):
        raise ConfigError(f"{where}: stop_when_solved must be true or false")
    runs: dict[str, Run] = {}
    for i, group in enumerate(axes):
        if not isinstance(group, dict) or not group:
            raise ConfigError(f"{where}: axes[{i}] must be a non-empty mapping")
        for point, varied in _expand(group, f"{where}: axes[{i}]"):
            for seed in range(n_seeds):
                data_run = _merge(base, point)
                data_run.update(seed=seed, steps=steps, stop_when_solved=stop, **overrides)
                try:
                    config = resolve(from_dict(data_run))
                except ConfigError as e:
                    raise ConfigError(f"{where}: axes[{i}]: {e}") from None
                name = run_name(config, varied)
                if name in runs and runs[name].config != config:
                    raise ConfigError(f"{where}: two different runs would be named {name}")
                runs[name] = Run(name, config)
    return Grid(
        name=str(data.get("name", path.stem)),
        runs=list(runs.values()),
        description=str(data.get("description", "")),
        note=str(data.get("note", "")),
    )


def merge_grids(grids: Iterable[Grid], name: str) -> Grid:
    """One sweep from several grids; a run they share (same name and config) runs once."""
    runs: dict[str, Run] = {}
    for g in grids:
        for r in g.runs:
            if r.name in runs and runs[r.name].config != r.config:
                raise ConfigError(f"grids {name}: two different runs would be named {r.name}")
            runs.setdefault(r.name, r)
    return Grid(name=name, runs=list(runs.values()))


def override(grid: Grid, **fields: Any) -> Grid:
    """``grid`` with ``fields`` set in every run's config. Only fields that do not change what a
    run computes (``RESUMABLE_FIELDS``: device, cuda_graphs, ...) may be set, so the runs keep
    their names and resume in the directories they had."""
    wrong = sorted(set(fields) - set(RESUMABLE_FIELDS))
    if wrong:
        raise ValueError(f"override: {', '.join(wrong)} would change what the runs compute")
    runs = [Run(r.name, resolve(dataclasses.replace(r.config, **fields))) for r in grid.runs]
    return dataclasses.replace(grid, runs=runs)


def check_grid(grid: Grid, sweep_dir: str | Path) -> None:
    """Raise ``RunError`` if a run directory under ``sweep_dir`` holds another run than the
    grid's run of that name (a changed grid must not mix with the runs already there)."""
    for r in grid.runs:
        rundir.check_same_run(r.config, Path(sweep_dir) / r.name)


def _flatten(mapping: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in mapping.items():
        if isinstance(v, dict):
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def _expand(group: dict[str, Any], where: str):
    """Yield ``(overrides, varied)`` for the product of a group's list-valued keys."""
    flat = _flatten(group)
    keys = list(flat)
    values = []
    for k in keys:
        v = flat[k]
        if isinstance(v, list):
            if not v:
                raise ConfigError(f"{where}: axis {k} is empty")
            values.append(v)
        else:
            values.append([v])
    varied = [k for k in keys if isinstance(flat[k], list)]
    for combo in itertools.product(*values):
        point = dict(zip(keys, combo, strict=True))
        yield point, {k: point[k] for k in varied}


def _merge(base: dict[str, Any], point: dict[str, Any]) -> dict[str, Any]:
    out = json.loads(json.dumps(base))  # a deep copy of plain YAML data
    for dotted, v in point.items():
        *parents, leaf = dotted.split(".")
        node = out
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = v
    return out
