"""Fixed or adaptive at equal cost: the compute-matched comparison (SPEC.md, "Compute accounting
and the compute-matched comparison").

A run's inference cost on a held-out set is the recurrent steps per token its evaluation
actually computed: rho for Repeat (1 for the RNN), N(t) for ACT, the sampled halting step for
PonderNet (its expected steps are logged beside). For an adaptive configuration whose mean cost
per token is c, the fixed baseline at equal cost is Repeat at rho = round(c) (the RNN when that
is 1). Accuracy on each held-out set is compared as k/n seeds at or above the solve threshold,
with a 95% Wilson interval, and the median accuracy with its quartiles.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from . import metrics
from .results import ADAPTIVE, ConfigRow, RunResult

METHOD_NAMES = {"rnn": "RNN", "repeat": "Repeat", "act": "ACT", "pondernet": "PonderNet"}


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
    if not any(logged_costs(row) for row in rows if row.model in ADAPTIVE):
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
class Matched:
    """An adaptive configuration and the fixed one at its cost (None when the sweep has none)."""

    adaptive: ConfigRow
    cost: float  # mean over seeds of the in-distribution steps per token
    cost_range: tuple[float, float]
    rho: int  # round(cost)
    fixed: ConfigRow | None


def round_half_up(c: float) -> int:
    return max(1, int(math.floor(c + 0.5)))


def fixed_row(rows: list[ConfigRow], like: ConfigRow, rho: int) -> ConfigRow | None:
    """The Repeat row at ``rho`` (the RNN at 1) of ``like``'s task and problem."""
    for row in rows:
        same = row.task == like.task and row.task_options == like.task_options
        if same and row.model in ("repeat", "rnn") and row.rho == rho:
            return row
    return None


def matched_rows(rows: list[ConfigRow]) -> list[Matched]:
    """Every adaptive configuration with a measured cost, paired with Repeat at round(cost)."""
    out = []
    for row in rows:
        if row.model not in ADAPTIVE:
            continue
        costs = logged_costs(row)
        if not costs:
            continue
        c = float(np.mean(costs))
        rho = round_half_up(c)
        out.append(Matched(row, c, (min(costs), max(costs)), rho, fixed_row(rows, row, rho)))
    return out


def markdown(rows: list[ConfigRow]) -> list[str]:
    """The compute-matched table as report.md lines ([] when no adaptive run has a cost)."""
    pairs = matched_rows(rows)
    if not pairs:
        return []
    names = held_out_sets(rows)
    head = ["adaptive configuration", "steps per token c (range)", "Repeat at round(c)"]
    for name in names:
        head += [f"{set_title(name)}: adaptive", f"{set_title(name)}: Repeat"]
    lines = _section(
        "Compute-matched comparison",
        "Each adaptive configuration beside Repeat at rho = round(c), c its mean inference cost "
        "in distribution (steps per token its evaluation computed, mean over seeds): at equal "
        "inference cost, which is more accurate? Cells: seeds whose final held-out accuracy "
        "reaches the solve threshold, k/n [95% Wilson interval]; median final accuracy "
        "[25th, 75th percentile] over seeds.",
        head,
    )
    missing = []
    for m in pairs:
        lo, hi = m.cost_range
        logged = len(logged_costs(m.adaptive))
        of = "" if logged == len(m.adaptive.runs) else f"; {logged} of {len(m.adaptive.runs)} seeds"
        cells = [m.adaptive.label, f"{m.cost:.2f} ({lo:.2f}-{hi:.2f}{of})"]
        if m.fixed is None:
            cells.append(f"none at rho={m.rho}")
            missing.append(m)
        else:
            cells.append(m.fixed.label)
        for name in names:
            cells.append(side(m.adaptive, name).text())
            cells.append("-" if m.fixed is None else side(m.fixed, name).text())
        lines.append("| " + " | ".join(cells) + " |")
    for rho in sorted({m.rho for m in missing}):
        who = ", ".join(m.adaptive.label for m in missing if m.rho == rho)
        axis = "{model: rnn}" if rho == 1 else f"{{model: repeat, rho: [{rho}]}}"
        lines += [
            "",
            f"No Repeat run at rho={rho} in this sweep (matched to {who}): add `{axis}` to the "
            "grid's axes (or the rho to its Repeat line) and run the same sweep command again.",
        ]
    return lines
