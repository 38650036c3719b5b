"""Fixed or adaptive at equal cost: the compute-matched comparison (SPEC.md, "Compute accounting
and the compute-matched comparison").

A run's inference cost on a held-out set is the recurrent steps per token its evaluation
actually computed: rho for Repeat (1 for the RNN), N(t) for ACT, the sampled halting step for
PonderNet (its expected steps are logged beside). For an adaptive configuration whose mean cost
per token on a set is c (its seeds' last evaluations), the fixed baselines at equal cost are
Repeat at rho = floor(c) and ceil(c) (the RNN at 1): one computes a little less, one a little
more. On that set the difference in final accuracy (adaptive - fixed) over seeds gets a 95%
interval: paired by seed where both have the seed (a t interval on the per-seed differences,
n - 1 degrees of freedom), Welch's interval otherwise. "better" or "worse" is said only where
the interval excludes zero, else "no difference detected at n seeds".
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import stats

from .. import metrics
from ..methods import method
from .results import ConfigRow, RunResult


def held_out_sets(rows: list[ConfigRow]) -> list[str]:
    """The held-out sets the runs logged: "eval" (in distribution) first, then the others."""
    names = dict.fromkeys(["eval"])
    for row in rows:
        for r in row.runs:
            names.update(dict.fromkeys(r.held_out))
    return [n for n in names if any(n in r.held_out for row in rows for r in row.runs)]


def set_title(name: str) -> str:
    return "in distribution" if name == "eval" else name


def cost(run: RunResult, name: str = "eval") -> float | None:
    """Mean steps per token the run's last evaluation on set ``name`` computed."""
    value = run.held_out.get(name, {}).get("steps")
    return None if value is None or math.isnan(value) else float(value)


def logged_costs(row: ConfigRow, name: str = "eval") -> list[float]:
    """The costs on set ``name`` of the configuration's seeds that logged one."""
    return [c for c in (cost(r, name) for r in row.runs) if c is not None]


def accuracy(run: RunResult, name: str) -> float | None:
    value = run.held_out.get(name, {}).get("accuracy")
    return None if value is None or math.isnan(value) else float(value)


@dataclass
class Side:
    """One configuration's accuracy on one held-out set over its seeds."""

    solved: int  # seeds at or above the threshold
    runs: int
    interval: tuple[float, float]  # 95% Wilson interval of solved / runs
    median: float | None
    q25: float | None
    q75: float | None

    def text(self) -> str:
        if not self.runs:
            return "-"
        lo, hi = self.interval
        acc = "" if self.median is None else (
            f"; {self.median:.1%} [{self.q25:.1%}, {self.q75:.1%}]"
        )  # fmt: skip
        return f"{self.solved}/{self.runs} [{lo:.2f}, {hi:.2f}]{acc}"


def side(row: ConfigRow, name: str) -> Side:
    values = [a for a in (accuracy(r, name) for r in row.runs) if a is not None]
    threshold = row.runs[0].config.solve_threshold
    solved = sum(a >= threshold for a in values)
    if not values:
        return Side(0, 0, (0.0, 1.0), None, None, None)
    q25, q50, q75 = (float(q) for q in np.percentile(values, [25, 50, 75]))
    return Side(solved, len(values), metrics.wilson_interval(solved, len(values)), q50, q25, q75)


def set_columns(rows: list[ConfigRow]) -> list[str]:
    """report.csv's columns for the held-out sets: per set, the mean steps per token computed
    and the median final accuracy over seeds, and the seeds at or above the threshold."""
    return [
        f"{name}_{c}"
        for name in held_out_sets(rows)
        for c in ("mean_steps", "median_accuracy", "solved")
    ]


def set_values(row: ConfigRow, names: list[str]) -> dict[str, str]:
    """One configuration's ``set_columns`` values, as strings ("" where not logged)."""
    out = {}
    for name in names:
        costs = logged_costs(row, name)
        s = side(row, name)
        out[f"{name}_mean_steps"] = f"{np.mean(costs):.4g}" if costs else ""
        out[f"{name}_median_accuracy"] = "" if s.median is None else f"{s.median:.4g}"
        out[f"{name}_solved"] = f"{s.solved}/{s.runs}" if s.runs else ""
    return out


def cost_text(costs: list[float], runs: int) -> str:
    """The mean of ``costs``, saying how many of ``runs`` seeds logged one when not all did
    (runs logged before the steps per token were recorded)."""
    if not costs:
        return "-"
    text = f"{np.mean(costs):.2f}"
    return text if len(costs) == runs else f"{text} ({len(costs)} of {runs} seeds)"


def _section(title: str, text: str, head: list[str]) -> list[str]:
    """A report.md section's opening: its title, what it shows, and its table's head."""
    return [
        "",
        f"## {title}",
        "",
        text,
        "",
        "| " + " | ".join(head) + " |",
        "|" + "---|" * len(head),
    ]


def held_out_markdown(rows: list[ConfigRow]) -> list[str]:
    """Every configuration on every held-out set (report.md lines; [] when the runs logged no
    steps per token): cost and accuracy side by side."""
    if not any(logged_costs(row) for row in rows if method(row.model).adaptive):
        return []
    names = held_out_sets(rows)
    head = ["configuration"]
    for name in names:
        head += [f"{set_title(name)}: steps per token", f"{set_title(name)}: accuracy"]
    lines = _section(
        "Held-out sets",
        "Each configuration's last evaluation on every held-out set: steps per token computed "
        "(mean over seeds) and accuracy (seeds at or above the solve threshold, k/n [95% Wilson "
        "interval]; median [25th, 75th percentile] over seeds).",
        head,
    )
    for row in rows:
        cells = [row.label]
        for name in names:
            cells += [cost_text(logged_costs(row, name), len(row.runs)), side(row, name).text()]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


@dataclass
class Difference:
    """Adaptive minus fixed final accuracy on one set over seeds: the mean and its 95%
    interval (``paired``: over the seeds both have, else Welch's over each side's seeds)."""

    mean: float
    low: float
    high: float
    n: int  # seeds: the pairs, or the smaller side for Welch's
    paired: bool

    def verdict(self) -> str:
        if self.low == self.high:  # every seed differs by the same amount: no spread to judge
            if self.mean == 0:
                return f"the same on all {self.n} seeds"
            way = "higher" if self.mean > 0 else "lower"
            return f"{way} by the same amount on all {self.n} seeds (no spread to judge)"
        if self.low > 0:
            return "better"
        if self.high < 0:
            return "worse"
        return f"no difference detected at n = {self.n} seeds"

    def text(self) -> str:
        kind = "paired" if self.paired else "Welch"
        return f"{self.mean:+.1%} [{self.low:+.1%}, {self.high:+.1%}] ({kind}, n = {self.n})"


def _accuracies(row: ConfigRow, name: str) -> dict[int, float]:
    return {
        r.config.seed: a for r in row.runs if (a := accuracy(r, name)) is not None
    }  # fmt: skip


def difference(adaptive: dict[int, float], fixed: dict[int, float]) -> Difference | None:
    """The 95% interval of adaptive - fixed accuracy (per seed: seed -> accuracy); None when
    there are too few seeds for one (fewer than 2 pairs, and fewer than 2 on a side)."""
    common = sorted(set(adaptive) & set(fixed))
    if len(common) >= 2:
        d = np.array([adaptive[s] - fixed[s] for s in common])
        n = len(d)
        half = stats.t.ppf(0.975, n - 1) * d.std(ddof=1) / math.sqrt(n)
        return Difference(float(d.mean()), float(d.mean() - half), float(d.mean() + half), n, True)
    a, f = np.array(list(adaptive.values())), np.array(list(fixed.values()))
    if len(a) < 2 or len(f) < 2:
        return None
    va, vf = a.var(ddof=1) / len(a), f.var(ddof=1) / len(f)
    mean = float(a.mean() - f.mean())
    se = math.sqrt(va + vf)
    if se == 0:
        return Difference(mean, mean, mean, min(len(a), len(f)), False)
    dof = (va + vf) ** 2 / (va**2 / (len(a) - 1) + vf**2 / (len(f) - 1))
    half = stats.t.ppf(0.975, dof) * se
    return Difference(mean, mean - half, mean + half, min(len(a), len(f)), False)


@dataclass
class Neighbour:
    """The fixed configuration at one integer side of an adaptive cost, and how they compare."""

    rho: int
    fixed: ConfigRow | None
    difference: Difference | None


@dataclass
class Matched:
    """An adaptive configuration on one held-out set, beside Repeat at floor and ceil of its
    cost there (one neighbour when the cost is a whole number)."""

    adaptive: ConfigRow
    set_name: str
    cost: float  # mean over seeds of the steps per token on this set
    cost_range: tuple[float, float]
    neighbours: list[Neighbour]


def fixed_row(rows: list[ConfigRow], like: ConfigRow, rho: int) -> ConfigRow | None:
    """The Repeat row at ``rho`` (the RNN at 1) of ``like``'s task and problem."""
    for row in rows:
        same = row.task == like.task and row.task_options == like.task_options
        if same and not method(row.model).adaptive and row.rho == rho:
            return row
    return None


def neighbours_of(c: float) -> list[int]:
    """The integer costs on both sides of ``c`` (one when ``c`` is whole; never below 1)."""
    low, high = max(1, math.floor(c)), max(1, math.ceil(c))
    return [low] if low == high else [low, high]


def matched_rows(rows: list[ConfigRow]) -> list[Matched]:
    """Every adaptive configuration with a measured cost on a set, per set, with Repeat at
    floor(cost) and ceil(cost) there."""
    out = []
    for name in held_out_sets(rows):
        for row in rows:
            if not method(row.model).adaptive:
                continue
            costs = logged_costs(row, name)
            if not costs:
                continue
            c = float(np.mean(costs))
            mine = _accuracies(row, name)
            sides = []
            for rho in neighbours_of(c):
                fixed = fixed_row(rows, row, rho)
                diff = None if fixed is None else difference(mine, _accuracies(fixed, name))
                sides.append(Neighbour(rho, fixed, diff))
            out.append(Matched(row, name, c, (min(costs), max(costs)), sides))
    return out


def markdown(rows: list[ConfigRow]) -> list[str]:
    """The equal-cost comparison as report.md lines ([] when no adaptive run has a cost)."""
    pairs = matched_rows(rows)
    if not pairs:
        return []
    head = ["adaptive configuration", "held-out set", "steps per token c (range)",
            "adaptive accuracy", "fixed at equal cost", "fixed accuracy",
            "adaptive - fixed [95% interval]", "reading"]  # fmt: skip
    lines = _section(
        "Compute-matched comparison",
        "Each adaptive configuration on each held-out set beside Repeat at rho = floor(c) and "
        "ceil(c), c its mean inference cost on that set (steps per token its last evaluation "
        "computed, mean over seeds): one baseline computes a little less, one a little more. "
        "Accuracy cells: seeds whose final accuracy reaches the solve threshold, k/n [95% "
        "Wilson interval]; median final accuracy [25th, 75th percentile]. The difference is "
        "the mean over seeds of adaptive - fixed final accuracy with its 95% interval: paired "
        "by seed (a t interval, n - 1 degrees of freedom) where both have the seed, Welch's "
        'otherwise. "better" or "worse" only where the interval excludes zero.',
        head,
    )
    missing: dict[int, list[str]] = {}
    for m in pairs:
        lo, hi = m.cost_range
        logged = len(logged_costs(m.adaptive, m.set_name))
        runs = len(m.adaptive.runs)
        of = "" if logged == runs else f"; {logged} of {runs} seeds"
        first = [m.adaptive.label, set_title(m.set_name), f"{m.cost:.2f} ({lo:.2f}-{hi:.2f}{of})",
                 side(m.adaptive, m.set_name).text()]  # fmt: skip
        for n in m.neighbours:
            if n.fixed is None:
                missing.setdefault(n.rho, []).append(
                    f"{m.adaptive.label} ({set_title(m.set_name)})"
                )
                cells = [f"none at rho={n.rho}", "-", "-", "-"]
            elif n.difference is None:
                cells = [n.fixed.label, side(n.fixed, m.set_name).text(), "-",
                         "too few seeds for an interval"]  # fmt: skip
            else:
                cells = [n.fixed.label, side(n.fixed, m.set_name).text(), n.difference.text(),
                         n.difference.verdict()]  # fmt: skip
            lines.append("| " + " | ".join(first + cells) + " |")
    for rho in sorted(missing):
        who = ", ".join(dict.fromkeys(missing[rho]))
        axis = "{model: rnn}" if rho == 1 else f"{{model: repeat, rho: [{rho}]}}"
        lines += [
            "",
            f"No Repeat run at rho={rho} in this sweep (a neighbour of {who}): add `{axis}` to "
            "the grid's axes (or the rho to its Repeat line) and run the same sweep command "
            "again.",
        ]
    return lines
