"""Fojo, Campos and Giro-i-Nieto (2018): the paper's numbers, its protocol and its curves.

The tables (``PAPER_TABLES``: one run per row), the problems and budget they were measured on,
how a run's protocol departs from the paper's (``protocol_differences``, ``paper_values``), and
every training curve of the paper's Figures 2 and 5 to 8 as data (``curve``, ``curves``).

The curves ship as package data (``data/fojo2018/``, with their provenance and the authors' MIT
licence). They were read from the PDF's vector paths, so each is the plotted line itself:
already smoothed by the authors (Savitzky-Golay, window 71, cubic), with vertices 1k to 23k
steps apart where matplotlib simplified the path. So a crossing is read by interpolating between
vertices (``first_step_at``), never by smoothing again.

The tables and the figures disagree (SPEC.md, "The published numbers"): the plotted runs reach
98% much later than the tables say, and some rows the tables call solved never reach it in the
plot. A report shows both, named as such.
"""

from __future__ import annotations

import csv
import gzip
import io
import math
from dataclasses import dataclass, fields
from functools import cache
from importlib import resources

import numpy as np

from ..config import HALTING_BIAS, TASK_DEFAULTS, RunConfig
from ..methods import method

# The problems the papers trained on (SPEC.md); the task classes' defaults are the same values.
PAPER_TASK_OPTIONS: dict[str, dict[str, int]] = {
    "parity": {"bits": 64},
    "addition": {"numbers": 5, "digits": 5},
    "logic": {"max_length": 10, "gates": 10},
    "sort": {"max_length": 15, "min_length": 2},
}
PAPER_BUDGET = 2_000_000  # training steps per run
# Fojo et al. 2018, Table 1 (parity, tanh RNN 128) and Table 2 (addition, LSTM 512): one run each.
# Keys: ("rnn", None), ("act", tau), ("repeat", rho); values: (solved, steps to 98%, repetitions).
PAPER_TABLES: dict[str, dict[tuple[str, float | None], tuple[str, str, str]]] = {
    "parity": {
        ("rnn", None): ("no", "-", "1.00"),
        ("act", 1e-1): ("no", "-", "1.00"),
        ("act", 1e-2): ("yes", "53k", "1.81"),
        ("act", 5e-3): ("yes", "356k", "2.03"),
        ("act", 1e-3): ("yes", "55k", "2.04"),
        ("repeat", 2): ("yes", "22k", "2"),
        ("repeat", 3): ("yes", "49k", "3"),
        ("repeat", 5): ("yes", "27k", "5"),
        ("repeat", 8): ("yes", "26k", "8"),
    },
    "addition": {
        ("rnn", None): ("no", "-", "1.00"),
        ("act", 1e-1): ("no", "-", "1.01"),
        ("act", 1e-2): ("yes", "899k", "5.08"),
        ("act", 5e-3): ("yes", "988k", "6.74"),
        ("act", 1e-3): ("no", "-", "11.91"),
        ("repeat", 2): ("no", "-", "2"),
        ("repeat", 3): ("yes", "997k", "3"),
        ("repeat", 5): ("yes", "514k", "5"),
        ("repeat", 8): ("yes", "576k", "8"),
    },
}
PAPER_TABLE_TITLE = {
    "parity": "Fojo et al. Table 1: parity, tanh RNN with 128 units",
    "addition": "Fojo et al. Table 2: addition, LSTM with 512 cells",
}
REDUCED = "n/a (reduced problem)"
DIFFERS = "differs: "  # + the settings that are not the paper's protocol, e.g. "init=torch"
# The training protocol of the Fojo paper beyond the task's network (config.TASK_DEFAULTS): the
# RunConfig defaults are the paper's values (SPEC.md, "Training protocol of the Fojo paper").
PROTOCOL_FIELDS = ("init", "lr", "epsilon", "halting_bias", "ponder_loss")


def protocol_differences(config: RunConfig) -> list[str]:
    """How ``config`` departs from the paper's protocol for its task, one "name=value" each.

    The protocol: the task's network (``TASK_DEFAULTS``: cell, hidden, batch_size, max_ponder)
    and ``PROTOCOL_FIELDS`` at RunConfig's defaults (init tf, lr 1e-3, epsilon 0.01, ponder_loss
    mean, halting_bias 1). Fields the model ignores (None in ``identity``: ACT's for the RNN and
    Repeat) never differ. Budget, logging and the solve criterion are not compared here.
    """
    defaults = {f.name: f.default for f in fields(RunConfig)}
    defaults["halting_bias"] = HALTING_BIAS  # Graves' and the authors' b_h = 1
    protocol = {**TASK_DEFAULTS.get(config.task, {}), **{k: defaults[k] for k in PROTOCOL_FIELDS}}
    identity = config.identity()
    out = []
    for name, paper in protocol.items():
        mine = identity.get(name)
        if mine is None:
            continue
        same = math.isclose(mine, paper) if isinstance(paper, float) else mine == paper
        if not same:
            out.append(f"{name}={mine:g}" if isinstance(mine, float) else f"{name}={mine}")
    return out


def _departure(config: RunConfig) -> str:
    """Why ``config`` is not the paper's problem, as a report cell: ``REDUCED`` where the task's
    problem is another size than the paper's, "differs: ..." (``protocol_differences``) where
    its network or training protocol is not the paper's, "" where it is the paper's problem.
    The problem comes first: a reduced problem is not the paper's whatever else differs."""
    if config.task_options != PAPER_TASK_OPTIONS.get(config.task):
        return REDUCED
    differs = protocol_differences(config)
    return DIFFERS + ", ".join(differs) if differs else ""


def paper_values(config: RunConfig) -> tuple[str, str, str]:
    """The paper's (solved, steps to 98%, average repetitions) for this run's row, if it has one.

    Empty strings where the paper has no such row; ``REDUCED`` where it has the row but our
    problem is smaller than the paper's; "differs: init=torch" (``DIFFERS`` and
    ``protocol_differences``) where the run's network or training protocol is not the paper's.
    """
    table = PAPER_TABLES.get(config.task)
    if table is None:
        return ("", "", "")
    knob = method(config.model).knob_value(config)  # the Fojo paper has no PonderNet row
    hit = next((k for k in table if k[0] == config.model and _same_knob(k[1], knob)), None)
    if hit is None:
        return ("", "", "")
    departure = _departure(config)
    return (departure,) * 3 if departure else table[hit]


# --------------------------------------------------------------------------------------------
# The paper's curves

CURVES_FILE = "data/fojo2018/figure_curves.csv.gz"
CITATION = "Fojo et al. 2018"


@dataclass(frozen=True)
class Curve:
    """One plotted series of the paper: ``values`` at ``steps`` (ascending vertices)."""

    figure: int
    task: str
    method: str  # rnn | act | repeat, as our configs name them (the CSV's lstm is rnn here)
    knob: float | None  # tau for ACT, rho for Repeat, None for the plain network
    panel: str  # "accuracy", or "ponder" (ACT's N(t) - 1 + R(t))
    steps: np.ndarray
    values: np.ndarray

    @property
    def label(self) -> str:
        """The legend entry a report gives it: "Fojo et al. 2018, Fig. 5"."""
        return f"{CITATION}, Fig. {self.figure}"


@cache
def _rows() -> tuple[tuple[int, str, str, str, str, int, float], ...]:
    blob = resources.files("ponder").joinpath(CURVES_FILE).read_bytes()
    text = gzip.decompress(blob).decode("utf-8")
    out = []
    for r in csv.DictReader(io.StringIO(text)):
        fig = int(r["figure"])
        if fig == 2:  # the same drawing as Figure 8
            continue
        name = "rnn" if r["method"] == "lstm" else r["method"]  # the plain network
        out.append(
            (fig, r["task"], name, r["param"], r["panel"], int(r["step"]), float(r["value"]))
        )
    return tuple(out)


@cache
def curves() -> dict[tuple[str, str, float | None, str], Curve]:
    """Every curve of Figures 5 to 8, keyed by (task, method, knob, panel). The plain network
    is drawn twice: as "Without ACT" (rnn, Figures 5 and 7) and as rho = 1 (Figures 6, 8)."""
    series: dict[tuple, list[tuple[int, float]]] = {}
    figure: dict[tuple, int] = {}
    for fig, task, name, param, panel, step, value in _rows():
        knob = None if param == "" else float(param)
        key = (task, name, knob, panel)
        series.setdefault(key, []).append((step, value))
        figure[key] = fig
    out = {}
    for key, points in series.items():
        points.sort()
        steps, values = zip(*points, strict=True)
        out[key] = Curve(figure[key], *key, np.array(steps), np.array(values))
    return out


def _same_knob(a: float | None, b: float | None) -> bool:
    return a is None if b is None else (a is not None and math.isclose(a, b))


def curve(task: str, method: str, knob: float | None, panel: str = "accuracy") -> Curve | None:
    """The paper's plotted curve for one configuration, or None where the paper drew none.

    ``method`` is rnn, act or repeat (the plain network is also Repeat with rho = 1); ``knob``
    is ACT's tau or Repeat's rho (None for the plain network)."""
    for (t, m, k, p), c in curves().items():
        if (t, m, p) == (task, method, panel) and _same_knob(k, knob):
            return c
    return None


def first_step_at(c: Curve, threshold: float = 0.98) -> float | None:
    """The first step at which a plotted curve reaches ``threshold``, interpolated linearly
    between its vertices (the curve is already smoothed: no further smoothing); None when it
    never does within the plot."""
    above = np.flatnonzero(c.values >= threshold)
    if not above.size:
        return None
    i = int(above[0])
    if i == 0:
        return float(c.steps[0])
    s0, s1, v0, v1 = c.steps[i - 1], c.steps[i], c.values[i - 1], c.values[i]
    return float(s0 + (threshold - v0) / (v1 - v0) * (s1 - s0))


def mean_floor(steps: np.ndarray, values: np.ndarray, every: int = 1000) -> float | None:
    """The tables' "average repetitions" statistic: the mean over training of floor(value),
    with the value read every ``every`` steps (the authors logged every 1,000 steps) by linear
    interpolation between the given points. None for an empty curve."""
    if len(steps) == 0:
        return None
    grid = np.arange(int(steps[0]), int(steps[-1]) + 1, every)
    return float(np.floor(np.interp(grid, steps, values) + 1e-9).mean())


def _drawn_curve(config: RunConfig, panel: str, as_repeat: bool = False) -> Curve | None:
    """The paper's plotted curve of ``config``'s method and knob on its task, whatever the
    problem's size or protocol (None where the paper drew none)."""
    spec = method(config.model)
    if as_repeat and spec.same_as is not None:  # the RNN drawn as Repeat's rho = 1
        other, fields = spec.same_as
        return curve(config.task, other, fields[method(other).knob.field], panel)
    return curve(config.task, config.model, spec.knob_value(config), panel)


def figure_curve(
    config: RunConfig, panel: str = "accuracy", as_repeat: bool = False
) -> Curve | None:
    """The paper's plotted curve for ``config``'s configuration (``panel``: accuracy, or ponder
    for ACT), or None where the paper drew none or the run is not the paper's problem.
    ``as_repeat``: the plain network as the Repeat figures draw it (rho = 1)."""
    return None if _departure(config) else _drawn_curve(config, panel, as_repeat)


def figure_steps(config: RunConfig, threshold: float = 0.98) -> str:
    """The "paper figure: first step at 98%" cell for ``config``: "336k" (interpolated between
    the plotted vertices), "never (max 93.4%)" within the plotted steps, ``REDUCED`` or
    "differs: ..." where the run is not the paper's problem, "" where the paper drew no such
    curve."""
    c = _drawn_curve(config, "accuracy")
    if c is None:
        return ""
    departure = _departure(config)
    if departure:
        return departure
    at = first_step_at(c, threshold)
    if at is None:
        return f"never in {c.steps[-1] / 1000:,.0f}k (max {c.values.max():.1%})"
    return f"{round(at / 1000):,}k"
