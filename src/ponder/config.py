"""Run configuration: a typed dataclass, the papers' defaults per task, and YAML load/validate.

This module is the only place that reads user input. ``resolve`` validates a config once and fills
the per-task defaults (SPEC.md: network, batch size, max ponder M); everything after it trusts
the resolved config.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
import types
import typing
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from . import tasks
from .methods import METHODS, UnknownMethod, method
from .methods.spec import fmt_number


class ConfigError(ValueError):
    """A configuration a person wrote is wrong; the message is one line for them."""


# The papers' networks per task (SPEC.md): cell, units, batch size, max ponder steps M.
TASK_DEFAULTS: dict[str, dict[str, Any]] = {
    "parity": {"cell": "rnn", "hidden": 128, "batch_size": 128, "max_ponder": 100},
    "addition": {"cell": "lstm", "hidden": 512, "batch_size": 32, "max_ponder": 20},
    "logic": {"cell": "lstm", "hidden": 128, "batch_size": 16, "max_ponder": 100},
    "sort": {"cell": "lstm", "hidden": 512, "batch_size": 16, "max_ponder": 100},
}
CELLS = ("rnn", "gru", "lstm")
DEVICES = ("auto", "cpu", "cuda")
INITS = ("tf", "torch")
PONDER_LOSSES = ("mean", "sum")

# Fields that change what a run computes. A run directory refuses a config that differs in any of
# these; the others (budget, stopping, device, logging to screen) may change on resume.
RESUMABLE_FIELDS = ("steps", "stop_when_solved", "device", "cuda_graphs", "progress")
FLOAT_FIELDS = ("tau", "epsilon", "halting_bias", "lr", "solve_threshold", "lambda_p", "beta")
# A shared ponder field that neither the method (``MethodSpec.defaults``) nor the task sets:
# Graves' b_h = 1, so that early steps do not halt by chance.
HALTING_BIAS = 1.0


def ponder_fields() -> tuple[str, ...]:
    """Every field some method of the table reads (``MethodSpec.fields``). A method reads its
    own; ``identity`` sets the others to None, so they never make two runs differ."""
    return tuple(dict.fromkeys(f for spec in METHODS.values() for f in spec.fields))


def ensemble_member_fields() -> tuple[str, ...]:
    """What may differ between the members of one stacked ensemble (besides the resumable
    fields): the seed and each method's ``per_member`` fields (ACT's tau, PonderNet's beta and
    lambda_p)."""
    return ("seed", *dict.fromkeys(f for spec in METHODS.values() for f in spec.per_member))


@dataclass
class RunConfig:
    """One training run. ``None`` means "the paper's value for this task" (see ``resolve``)."""

    task: str = "parity"
    task_options: dict[str, int | str] = field(default_factory=dict)
    model: str = "act"
    cell: str | None = None
    hidden: int | None = None
    tau: float = 1e-3  # ACT's time penalty
    rho: int = 2  # Repeat-RNN's repeats per token
    epsilon: float = 0.01
    max_ponder: int | None = None  # M (ACT), N (PonderNet)
    halting_bias: float | None = None  # ACT: 1.0, PonderNet: 0.0
    lambda_p: float = 0.2  # PonderNet's geometric prior
    beta: float = 0.01  # PonderNet's KL weight
    init: str = "tf"  # "tf" (the authors' TensorFlow defaults) or "torch"
    ponder_loss: str = "mean"  # "mean" over time steps (authors' code) or "sum" (Graves)
    batch_size: int | None = None
    lr: float = 1e-3
    steps: int = 2_000_000
    log_every: int = 1000
    checkpoint_every: int = 5  # in log intervals
    eval_size: int = 1000
    eval_seed: int = 20180326  # the held-out set's own seed, the same for every run
    # Held-out sets beside the training distribution's: name -> task options that differ
    # (e.g. {"extrapolation": {"min_nonzero": 49, "max_nonzero": 96}}), each with its own seed.
    eval_sets: dict[str, dict[str, int | str]] = field(default_factory=dict)
    solve_threshold: float = 0.98
    solve_window: int = 71  # Savitzky-Golay window (points) of the paper's criterion
    seed: int = 0
    device: str = "auto"
    tf32: bool = False  # TF32 matmuls on a CUDA GPU: faster, about 3 decimal digits per product
    cuda_graphs: bool = True  # on a CUDA GPU, replay each training step from CUDA graphs
    stop_when_solved: bool = False
    progress: bool = True

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def identity(self, ignore: tuple[str, ...] = ()) -> dict[str, Any]:
        """What the run computes: every field but ``RESUMABLE_FIELDS`` and ``ignore``, with the
        fields its model ignores set to None. The one definition of "the same run" that run
        directories, ensembles, reports and time estimates use (``ignore=("seed",)``: the same
        configuration)."""
        d = self.to_dict()
        for k in (*RESUMABLE_FIELDS, *ignore):
            d.pop(k, None)
        used = method(self.model).fields
        for k in ponder_fields():
            if k in d and k not in used:
                d[k] = None
        return d

    def key(self, ignore: tuple[str, ...] = ()) -> str:
        """``identity(ignore)`` as one hashable, printable string."""
        return json.dumps(self.identity(ignore), sort_keys=True)

    def ensemble_key(self) -> str:
        """Runs with the same key can train as one stacked ensemble: the same computation but
        for ``ensemble_member_fields()``, on the same device and path."""
        d = self.identity(ensemble_member_fields())
        return json.dumps(
            {**d, "device": self.device, "cuda_graphs": self.cuda_graphs}, sort_keys=True
        )


def _field_type(name: str) -> type:
    """The non-None type of a RunConfig field (``int | None`` -> ``int``)."""
    hint = typing.get_type_hints(RunConfig)[name]
    if isinstance(hint, types.UnionType):
        hint = next(a for a in typing.get_args(hint) if a is not type(None))
    return typing.get_origin(hint) or hint


def _check_type(name: str, value: Any) -> Any:
    """``value`` checked against the field's type; a float field also takes a number written
    as text (YAML 1.1 reads ``1e-3`` as a string), returned as a float."""
    if value is None:
        return None
    want = _field_type(name)
    if want is float and isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            raise ConfigError(f"{name} must be a number, got {value!r}") from None
    ok = isinstance(value, want) and not (isinstance(value, bool) and want is not bool)
    if want is float and isinstance(value, int) and not isinstance(value, bool):
        ok = True
    if not ok:
        raise ConfigError(f"{name} must be {want.__name__}, got {value!r}")
    return value


def from_dict(data: dict[str, Any]) -> RunConfig:
    """A ``RunConfig`` from plain data (a YAML mapping), rejecting unknown keys and bad types."""
    if not isinstance(data, dict):
        raise ConfigError(f"a run config must be a mapping, got {type(data).__name__}")
    known = {f.name for f in fields(RunConfig)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ConfigError(f"unknown config key(s): {', '.join(unknown)}")
    data = {k: _check_type(k, v) for k, v in data.items()}
    for k in ("task_options", "eval_sets"):
        if data.get(k) is None:
            data.pop(k, None)
    for k in FLOAT_FIELDS:
        if data.get(k) is not None:
            data[k] = float(data[k])
    return RunConfig(**data)


def load_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML mapping with ``safe_load``; a missing or malformed file is a ``ConfigError``."""
    path = Path(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {path}") from None
    except OSError as e:
        raise ConfigError(f"cannot read config file {path}: {e.strerror}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"config file {path} is not text (not UTF-8)") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" (line {mark.line + 1})" if mark is not None else ""
        raise ConfigError(f"config file {path} is not valid YAML{where}") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a mapping of keys to values")
    return data


def resolve(config: RunConfig) -> RunConfig:
    """Validate ``config`` and fill the per-task defaults; raises ``ConfigError``."""
    c = dataclasses.replace(
        config,
        task_options=dict(config.task_options),
        eval_sets=(
            {k: dict(v) if isinstance(v, dict) else v for k, v in config.eval_sets.items()}
            if isinstance(config.eval_sets, dict)
            else config.eval_sets
        ),
    )
    if c.task not in TASK_DEFAULTS:
        raise ConfigError(f"unknown task {c.task!r} (known: {', '.join(TASK_DEFAULTS)})")
    try:
        task = tasks.make(c.task, **c.task_options)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"task {c.task}: {e}") from None
    c.task_options = _task_options(task, c.task_options)
    c.eval_sets = _eval_sets(c, task)
    try:
        spec = method(c.model)
    except UnknownMethod as e:
        raise ConfigError(str(e)) from None
    for k, v in spec.defaults.items():
        if getattr(c, k) is None:
            setattr(c, k, v)
    if c.halting_bias is None:
        c.halting_bias = HALTING_BIAS
    for k, v in TASK_DEFAULTS[c.task].items():
        if getattr(c, k) is None:
            setattr(c, k, v)
    checks = [
        (c.cell in CELLS, f"unknown cell {c.cell!r} (known: {', '.join(CELLS)})"),
        (c.device in DEVICES, f"unknown device {c.device!r} (known: {', '.join(DEVICES)})"),
        (c.init in INITS, f"unknown init {c.init!r} (known: {', '.join(INITS)})"),
        (c.ponder_loss in PONDER_LOSSES, f"ponder_loss must be one of {PONDER_LOSSES}"),
        (math.isfinite(c.tau) and c.tau >= 0, f"tau must be >= 0, got {c.tau}"),
        (c.rho >= 1, f"rho must be >= 1, got {c.rho}"),
        # At 1 the prior is one point (halt at step 1) and KL(p || p_G) is infinite for any
        # other p: no run trains, so 1 is refused.
        (0 < c.lambda_p < 1, f"lambda_p must be in (0, 1), got {c.lambda_p}"),
        (math.isfinite(c.beta) and c.beta >= 0, f"beta must be >= 0, got {c.beta}"),
        (math.isfinite(c.halting_bias), f"halting_bias must be finite, got {c.halting_bias}"),
        (0 < c.epsilon < 1, f"epsilon must be in (0, 1), got {c.epsilon}"),
        (c.max_ponder >= 1, f"max_ponder must be >= 1, got {c.max_ponder}"),
        (c.hidden >= 1, f"hidden must be >= 1, got {c.hidden}"),
        (c.batch_size >= 1, f"batch_size must be >= 1, got {c.batch_size}"),
        (math.isfinite(c.lr) and c.lr > 0, f"lr must be > 0, got {c.lr}"),
        (c.steps >= 1, f"steps must be >= 1, got {c.steps}"),
        (c.log_every >= 1, f"log_every must be >= 1, got {c.log_every}"),
        (c.checkpoint_every >= 1, f"checkpoint_every must be >= 1, got {c.checkpoint_every}"),
        (c.eval_size >= 1, f"eval_size must be >= 1, got {c.eval_size}"),
        (0 < c.solve_threshold <= 1, f"solve_threshold must be in (0, 1], got {c.solve_threshold}"),
        (c.solve_window >= 1 and c.solve_window % 2 == 1, "solve_window must be odd and >= 1"),
    ]
    for ok, message in checks:
        if not ok:
            raise ConfigError(message)
    return c


def _task_options(task: tasks.Task, given: dict[str, int]) -> dict[str, int]:
    """Every size option of ``task`` with its value, so config.yaml records the full problem
    (a task's ``optional_options`` only when given, so that older runs keep their identity)."""
    import inspect

    params = inspect.signature(type(task).__init__).parameters
    optional = getattr(type(task), "optional_options", ())
    return {
        k: getattr(task, k, given.get(k, p.default))
        for k, p in params.items()
        if k != "self" and (k not in optional or k in given)
    }


EVAL_SET_NAME = re.compile(r"[a-z][a-z0-9_]*")
RESERVED_SET_NAMES = ("eval", "train", "step", "loss", "task")


def _eval_sets(c: RunConfig, task: tasks.Task) -> dict[str, dict[str, int]]:
    """The extra held-out sets, each as the full task options it samples from; a set must fit
    the network (the training task's input, output and sequence sizes)."""
    if not isinstance(c.eval_sets, dict):
        raise ConfigError("eval_sets must map a set's name to the task options that differ")
    out = {}
    for name, changes in c.eval_sets.items():
        if not isinstance(name, str) or not EVAL_SET_NAME.fullmatch(name):
            raise ConfigError(f"eval set name {name!r} must be lowercase letters, digits and _")
        if name in RESERVED_SET_NAMES:
            raise ConfigError(f"eval set name {name!r} is reserved")
        if not isinstance(changes, dict):
            raise ConfigError(f"eval set {name}: give the task options that differ, a mapping")
        options = {**c.task_options, **changes}
        try:
            other = tasks.make(c.task, **options)
        except (TypeError, ValueError) as e:
            raise ConfigError(f"eval set {name}: {e}") from None
        sizes = ("input_size", "output_size", "seq_len")
        if any(getattr(other, k) != getattr(task, k) for k in sizes):
            raise ConfigError(
                f"eval set {name}: its inputs or targets have another shape than training's "
                "(change options such as min_nonzero, not the sizes)"
            )
        unseen = sorted(set(other.nonzero_features()) - set(task.nonzero_features()))
        if unseen:
            fix = task.coverage_fix()
            cause, remedy = fix or ("", "")
            raise ConfigError(
                f"eval set {name}: input features {_ranges(unseen)} are never non-zero in "
                f"training{f' ({cause})' if cause else ''}, so their weights never learn and "
                f"the set cannot be answered{f'; {remedy}' if remedy else ''}"
            )
        out[name] = _task_options(other, options)
    return out


def _ranges(indices: list[int]) -> str:
    """Sorted 0-based feature indices as 1-based ranges: [48, ..., 95] -> "49-96"."""
    spans: list[list[int]] = []
    for i in indices:
        if spans and i == spans[-1][1] + 1:
            spans[-1][1] = i
        else:
            spans.append([i, i])
    return ", ".join(f"{a + 1}" if a == b else f"{a + 1}-{b + 1}" for a, b in spans)


def run_name(config: RunConfig, varied: dict[str, Any] | None = None) -> str:
    """``act-tau0.01-seed3``: the model, its own knob, other ``varied`` values, the seed. Sweeps
    name their run directories so, and ``ponder train`` its default ``runs/TASK-NAME``."""
    spec = method(config.model)
    parts = [config.model]
    if spec.knob is not None:
        parts.append(spec.knob.name_part(getattr(config, spec.knob.field)))
    knobs = {s.knob.field for s in METHODS.values() if s.knob is not None}
    for key, value in (varied or {}).items():
        if key == "model" or key in knobs:
            continue
        leaf = key.split(".")[-1].replace("_", "")
        parts.append(f"{leaf}{fmt_number(value)}")
    parts.append(f"seed{config.seed}")
    return "-".join(parts)


def save_yaml(config: RunConfig) -> str:
    return yaml.safe_dump(config.to_dict(), sort_keys=False)
