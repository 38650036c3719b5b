"""Tables and figures of a sweep, our runs over seeds beside Fojo et al. 2018's published numbers.

``build_report(DIR)`` reads every run directory under DIR (config.yaml, metrics.csv, summary.json,
checkpoint.pt and error.txt, as ``ponder train`` and ``ponder sweep`` leave them), groups the runs
that differ only in their seed into configurations, and writes:

    DIR/report.md        one table per task in the paper's format (Table 1 parity, Table 2
                         addition: model | solved | steps to 98% | average repetitions) with the
                         paper's numbers beside ours, what was run, and links to the figures
    DIR/report.csv       one row per configuration
    DIR/figures/*.png    accuracy (and ACT's ponder) against training steps per tau and per rho
                         (the paper's figures 2 and 5-8), ACT's ponder per input position in
                         addition (figure 4), ponder against input difficulty (Graves 2016)

Steps to solve are recomputed from metrics.csv with each run's own criterion (``metrics.py``), so
unfinished runs count with what they have logged so far. The paper reports one run per row; we
report the median over seeds and the interquartile range (numpy's 25th-75th percentile).
"""

from __future__ import annotations

import csv
import io
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import matplotlib
import numpy as np
import torch

from . import metrics, rundir, tasks, train
from .config import TASK_DEFAULTS, RunConfig
from .rundir import RunError

matplotlib.use("Agg")  # headless: reports are built on servers and in CI, before pyplot loads
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

REPORT_MD = "report.md"
REPORT_CSV = "report.csv"
FIGURES = "figures"
DPI = 150
PAPER_BUDGET = 2_000_000
CHUNK = 250  # sequences per forward pass when probing trained networks

# The problems the papers trained on (SPEC.md); the task classes' defaults are the same values.
PAPER_TASK_OPTIONS: dict[str, dict[str, int]] = {
    "parity": {"bits": 64},
    "addition": {"numbers": 5, "digits": 5},
    "logic": {"max_length": 10, "gates": 10},
    "sort": {"max_length": 15, "min_length": 2},
}
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
OTHER_CELL = "n/a (other cell)"
DIFFICULTY_LABEL = {
    "parity": "nonzero input bits",
    "addition": "digits of the input number",
    "logic": "gates in the input token",
    "sort": "numbers in the sequence",
}
PONDER_LABEL = "ponder N(t) - 1 + R(t)"  # the paper's "repetitions", what every figure shows
STATUSES = ("finished", "diverged", "failed", "unfinished")


# --------------------------------------------------------------------------------------------
# Runs and configurations


@dataclass
class RunResult:
    """What the report needs of one run directory, read once."""

    path: Path
    config: RunConfig
    status: str  # one of STATUSES
    steps: np.ndarray  # logged steps, [L]
    accuracy: np.ndarray  # training accuracy per log, [L]
    ponder: np.ndarray  # the repetitions column (N - 1 + R for ACT, rho otherwise), [L]
    steps_to_solve: int | None  # paper criterion, recomputed from metrics.csv
    eval_steps_to_solve: int | None  # first log with held-out accuracy >= threshold
    repetitions: float | None  # the repetitions of the last logged row
    mean_n: float | None  # mean N(t) of the last logged row (ACT only)
    error: str = ""  # first line of error.txt for a failed run


@dataclass
class ConfigRow:
    """One configuration (runs that differ only in seed) aggregated: a row of the tables."""

    task: str
    task_options: dict[str, int]
    model: str
    cell: str
    tau: float | None  # ACT only
    rho: int | None  # Repeat's rho; 1 for the plain RNN; None for ACT
    variant: str  # other settings that differ between this task's configurations
    runs: list[RunResult] = field(default_factory=list)
    solved: int = 0
    median_steps: float | None = None
    q25_steps: float | None = None
    q75_steps: float | None = None
    eval_solved: int = 0
    eval_median_steps: float | None = None
    eval_q25_steps: float | None = None
    eval_q75_steps: float | None = None
    median_repetitions: float | None = None
    median_mean_n: float | None = None
    counts: dict[str, int] = field(default_factory=dict)  # runs per status
    paper: tuple[str, str, str] = ("", "", "")  # solved, steps to 98%, average repetitions

    @property
    def label(self) -> str:
        """The paper's name for the row: RNN / LSTM, ACT tau=1e-2, Repeat rho=2."""
        name = {"act": "ACT ", "repeat": "Repeat "}.get(self.model, "") + self.short_label
        return f"{name} ({self.variant})" if self.variant else name

    @property
    def short_label(self) -> str:
        """tau=1e-2, rho=2, or the cell's name for the RNN: a legend entry."""
        if self.model == "act":
            return f"tau={fmt_tau(self.tau)}"
        if self.model == "repeat":
            return f"rho={self.rho}"
        return self.cell.upper()

    @property
    def legend(self) -> str:
        return f"{self.short_label} ({self.variant})" if self.variant else self.short_label


def read_run(run_dir: Path) -> RunResult:
    """Read one run directory; raises ``RunError`` if its config.yaml is unreadable."""
    run_dir = Path(run_dir)
    config = rundir.read_config(run_dir)
    rows = rundir.read_metrics(run_dir)

    def column(name: str) -> np.ndarray:
        return np.array([r.get(name, math.nan) for r in rows], dtype=float)

    steps = np.array([r["step"] for r in rows], dtype=np.int64)
    accuracy, ponder = column("train_accuracy"), column("repetitions")
    stp = metrics.steps_to_solve(
        steps.tolist(), accuracy.tolist(), config.solve_threshold, config.solve_window
    )
    i = metrics.first_crossing(column("eval_accuracy"), config.solve_threshold)

    error = rundir.read_error(run_dir)
    if error is not None:
        status = "failed"
    else:
        error = ""
        try:
            summary = rundir.read_summary(run_dir)
        except RunError:
            summary = None  # a corrupt summary: the run has to finish again
        if summary is None:
            status = "unfinished"
        elif summary.get("diverged"):
            status = "diverged"
        else:
            status = "finished"
    last = rows[-1] if rows else {}
    return RunResult(
        path=run_dir,
        config=config,
        status=status,
        steps=steps,
        accuracy=accuracy,
        ponder=ponder,
        steps_to_solve=stp,
        eval_steps_to_solve=None if i is None else int(steps[i]),
        repetitions=last.get("repetitions"),
        mean_n=last.get("ponder_steps") if config.model == "act" else None,
        error=error,
    )


def load_runs(sweep_dir: Path) -> tuple[list[RunResult], list[str]]:
    """Every run under ``sweep_dir`` and a line per sub-directory that could not be read.

    A sub-directory without config.yaml is not a run and is ignored. ``sweep_dir`` may also be
    a single run directory (it has a config.yaml itself): the report then covers that run.
    """
    sweep_dir = Path(sweep_dir)
    if not sweep_dir.is_dir():
        raise RunError(f"sweep directory not found: {sweep_dir}")
    if (sweep_dir / rundir.CONFIG).exists():
        candidates = [sweep_dir]
    else:
        candidates = sorted(p for p in sweep_dir.iterdir() if (p / rundir.CONFIG).is_file())
    runs, skipped = [], []
    for path in candidates:
        try:
            runs.append(read_run(path))
        except RunError as e:
            skipped.append(f"{path.name}: {e}")
    if not runs:
        why = f" ({len(skipped)} with an unreadable config.yaml)" if skipped else ""
        raise RunError(f"{sweep_dir} holds no run (no sub-directory with a config.yaml){why}")
    return runs, skipped


def config_key(config: RunConfig) -> dict[str, Any]:
    """What makes runs one configuration: the config without seed, budget, device and fields
    the model ignores (tau etc. for non-ACT, rho for non-Repeat); task options flattened in."""
    d = config.identity(ignore=("seed",))
    options = d.pop("task_options")
    return {
        k: v for k, v in {**d, **options}.items() if v is not None
    }  # option names (bits, digits, ...) are not RunConfig fields


def paper_values(config: RunConfig) -> tuple[str, str, str]:
    """The paper's (solved, steps to 98%, average repetitions) for this run's row, if it has one.

    Empty strings where the paper has no such row; "n/a (reduced problem)" where it has the row
    but our problem is smaller than the paper's; "n/a (other cell)" for another recurrent cell.
    """
    table = PAPER_TABLES.get(config.task)
    if table is None:
        return ("", "", "")
    if config.model == "act":
        hit = next((k for k in table if k[0] == "act" and math.isclose(k[1], config.tau)), None)
    elif config.model == "repeat":
        hit = ("repeat", config.rho) if ("repeat", config.rho) in table else None
    else:
        hit = ("rnn", None)
    if hit is None:
        return ("", "", "")
    if config.task_options != PAPER_TASK_OPTIONS[config.task]:
        return (REDUCED,) * 3
    if config.cell != TASK_DEFAULTS[config.task]["cell"]:
        return (OTHER_CELL,) * 3
    return table[hit]


def _quartiles(values: list[float]) -> tuple[float | None, float | None, float | None]:
    """Median, 25th and 75th percentile (numpy's linear interpolation), or Nones."""
    if not values:
        return None, None, None
    q50, q25, q75 = np.percentile(np.asarray(values, dtype=float), [50, 25, 75])
    return float(q50), float(q25), float(q75)


def _median(values: list[float | None]) -> float | None:
    kept = [v for v in values if v is not None and not math.isnan(v)]
    return float(np.median(kept)) if kept else None


def _order(row: ConfigRow) -> tuple:
    """The paper's order: tasks as in tasks.TASKS, the RNN, ACT by decreasing tau, Repeat by rho."""
    task_rank = list(tasks.TASKS).index(row.task) if row.task in tasks.TASKS else len(tasks.TASKS)
    model_rank = {"rnn": 0, "act": 1, "repeat": 2}.get(row.model, 3)
    within = -(row.tau or 0.0) if row.model == "act" else (row.rho or 0)
    return (task_rank, row.task, model_rank, within, row.variant)


def aggregate(runs: list[RunResult]) -> list[ConfigRow]:
    """Group ``runs`` into configurations and aggregate each, in the paper's order."""
    groups: dict[str, list[RunResult]] = {}
    keys: dict[str, dict[str, Any]] = {}
    for run in runs:
        key = config_key(run.config)
        k = json.dumps(key, sort_keys=True, default=str)
        groups.setdefault(k, []).append(run)
        keys[k] = key

    # Settings beyond task/model/tau/rho that take several values within a task name the rows.
    varying: dict[str, list[str]] = {}
    for task in {key["task"] for key in keys.values()}:
        same = [key for key in keys.values() if key["task"] == task]
        names = list(dict.fromkeys(n for key in same for n in key))
        varying[task] = [
            n
            for n in names
            if n not in ("task", "model", "tau", "rho")
            and len({json.dumps(key[n]) for key in same if n in key}) > 1
        ]

    rows = []
    for k, members in groups.items():
        key, c = keys[k], members[0].config
        members.sort(key=lambda r: (r.config.seed, r.path.name))
        variant = ", ".join(f"{n}={key[n]}" for n in varying[c.task] if n in key)
        row = ConfigRow(
            task=c.task,
            task_options=dict(c.task_options),
            model=c.model,
            cell=c.cell,
            tau=c.tau if c.model == "act" else None,
            rho={"repeat": c.rho, "rnn": 1}.get(c.model),
            variant=variant,
            runs=members,
            paper=paper_values(c),
        )
        solved = [r.steps_to_solve for r in members if r.steps_to_solve is not None]
        row.solved = len(solved)
        row.median_steps, row.q25_steps, row.q75_steps = _quartiles(solved)
        held_out = [r.eval_steps_to_solve for r in members if r.eval_steps_to_solve is not None]
        row.eval_solved = len(held_out)
        row.eval_median_steps, row.eval_q25_steps, row.eval_q75_steps = _quartiles(held_out)
        row.median_repetitions = _median([r.repetitions for r in members])
        if c.model == "act":
            row.median_mean_n = _median([r.mean_n for r in members])
        row.counts = {s: sum(r.status == s for r in members) for s in STATUSES}
        rows.append(row)
    return sorted(rows, key=_order)


# --------------------------------------------------------------------------------------------
# Formatting


def fmt_tau(tau: float | None) -> str:
    """tau as the paper writes it: 1e-2, 5e-3 (0 for no penalty)."""
    if tau is None:
        return ""
    if tau == 0:
        return "0"
    mantissa, exponent = f"{tau:e}".split("e")
    return f"{float(mantissa):g}e{int(exponent)}"


def fmt_steps(steps: float | None) -> str:
    """A step count as the paper writes it: 53k; exact below 1,000 steps; "-" for none."""
    if steps is None:
        return "-"
    if steps < 1000:
        return f"{steps:g}"
    return f"{round(steps / 1000, 1):g}k"


def _num(x: float | int | None) -> str:
    """A number for the CSV: integral values without ".0", others to 6 decimals, "" for none."""
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return ""
    if float(x).is_integer():
        return str(int(x))
    return str(round(float(x), 6))


def _options(options: dict[str, int]) -> str:
    return ", ".join(f"{k}={v}" for k, v in options.items())


def _cell(text: str) -> str:
    """Text safe inside a markdown table cell."""
    return text.replace("|", "\\|").replace("\n", " ")


def _status_note(row: ConfigRow) -> str:
    return ", ".join(f"{row.counts[s]} {s}" for s in STATUSES[1:] if row.counts.get(s))


CSV_COLUMNS = [
    "task", "task_options", "model", "cell", "tau", "rho", "variant", "runs", "seeds",
    "solved", "median_steps_to_solve", "iqr25_steps_to_solve", "iqr75_steps_to_solve",
    "eval_solved", "median_eval_steps_to_solve", "iqr25_eval_steps_to_solve",
    "iqr75_eval_steps_to_solve", "median_repetitions", "median_mean_n", "finished", "diverged",
    "failed", "unfinished", "budget", "paper_solved", "paper_steps_to_solve",
    "paper_repetitions",
]  # fmt: skip


def csv_rows(rows: list[ConfigRow]) -> list[dict[str, str]]:
    """report.csv's rows: one per configuration, every value a string (see ``CSV_COLUMNS``)."""
    out = []
    for row in rows:
        n = len(row.runs)
        out.append({
            "task": row.task,
            "task_options": _options(row.task_options),
            "model": row.model,
            "cell": row.cell,
            "tau": "" if row.tau is None else repr(row.tau),
            "rho": _num(row.rho),
            "variant": row.variant,
            "runs": str(n),
            "seeds": " ".join(str(r.config.seed) for r in row.runs),
            "solved": f"{row.solved}/{n}",
            "median_steps_to_solve": _num(row.median_steps),
            "iqr25_steps_to_solve": _num(row.q25_steps),
            "iqr75_steps_to_solve": _num(row.q75_steps),
            "eval_solved": f"{row.eval_solved}/{n}",
            "median_eval_steps_to_solve": _num(row.eval_median_steps),
            "iqr25_eval_steps_to_solve": _num(row.eval_q25_steps),
            "iqr75_eval_steps_to_solve": _num(row.eval_q75_steps),
            "median_repetitions": _num(row.median_repetitions),
            "median_mean_n": _num(row.median_mean_n),
            **{s: str(row.counts.get(s, 0)) for s in STATUSES},
            "budget": " ".join(str(b) for b in sorted({r.config.steps for r in row.runs})),
            "paper_solved": row.paper[0],
            "paper_steps_to_solve": row.paper[1],
            "paper_repetitions": row.paper[2],
        })  # fmt: skip
    return out


def write_csv(rows: list[ConfigRow], path: Path) -> None:
    """report.csv, written atomically so a reader never sees half a table."""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, CSV_COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(csv_rows(rows))
    rundir.atomic_write(Path(path), buf.getvalue())


def _steps_cell(median: float | None, q25: float | None, q75: float | None, k: int) -> str:
    if median is None:
        return "-"
    if k == 1:
        return fmt_steps(median)
    return f"{fmt_steps(median)} [{fmt_steps(q25)}-{fmt_steps(q75)}]"


def _span(values: list[int], fmt=str) -> str:
    lo, hi = min(values), max(values)
    return fmt(lo) if lo == hi else f"{fmt(lo)} to {fmt(hi)}"


def reduced_reasons(runs: list[RunResult]) -> list[str]:
    """How these runs differ from the papers' experiments, one phrase each (empty: they don't)."""
    reasons = []
    for task in dict.fromkeys(r.config.task for r in runs):
        configs = [r.config for r in runs if r.config.task == task]
        paper = PAPER_TASK_OPTIONS.get(task, {})
        for options in dict.fromkeys(_options(c.task_options) for c in configs):
            mine = next(c.task_options for c in configs if _options(c.task_options) == options)
            if mine != paper:
                reasons.append(f"{task} with {options} (paper: {_options(paper)})")
        for name, value in TASK_DEFAULTS.get(task, {}).items():
            others = sorted({getattr(c, name) for c in configs} - {value}, key=str)
            if others:
                said = ", ".join(str(o) for o in others)
                reasons.append(f"{task} with {name} {said} (paper: {value})")
    short = sorted({r.config.steps for r in runs if r.config.steps < PAPER_BUDGET})
    if short:
        budgets = ", ".join(f"{s:,}" for s in short)
        reasons.append(f"a budget of {budgets} training steps (paper: {PAPER_BUDGET:,})")
    return reasons


def write_markdown(
    rows: list[ConfigRow],
    figures: list[tuple[str, str]],
    path: Path,
    sweep_dir: Path,
    note: str | None = None,
    skipped: list[str] | None = None,
    left_out: list[str] | None = None,
) -> None:
    """report.md: what was run, one table per task in the paper's format, figures, runs.

    ``skipped``: sub-directories whose config could not be read; ``left_out``: ACT runs missing
    from the trained-network figures (no checkpoint), one line each.
    """
    runs = [r for row in rows for r in row.runs]  # in the tables' order
    lines = [f"# ponder report: {sweep_dir.name}", ""]
    if note:
        lines += [note.strip(), ""]
    seeds = [len(row.runs) for row in rows]
    counts = {s: sum(r.status == s for r in runs) for s in STATUSES}
    lines.append(
        f"{len(runs)} runs in {len(rows)} configurations, "
        f"{_span(seeds)} seed{'s' if max(seeds) > 1 else ''} per configuration; "
        + ", ".join(f"{n} {s}" for s, n in counts.items() if n)
        + "."
    )
    budget = _span([r.config.steps for r in runs], lambda s: f"{s:,}")
    lines.append(f"Step budget: {budget} training steps per run.")
    options = dict.fromkeys(f"{r.config.task} ({_options(r.config.task_options)})" for r in runs)
    lines.append(f"Task options: {'; '.join(options)}.")
    reasons = reduced_reasons(runs)
    if reasons:
        lines += [
            "",
            "**This is a reduced experiment, not the paper's:** " + "; ".join(reasons) + ". "
            "The paper's numbers are shown only where the problem is the paper's.",
        ]
    if counts["unfinished"]:
        lines += [
            "",
            f"{counts['unfinished']} run(s) have not finished: their numbers use the metrics "
            "logged so far and may still change.",
        ]
    criteria = dict.fromkeys((r.config.solve_window, r.config.solve_threshold) for r in runs)
    crit = "; ".join(f"window of {w} logged points, threshold {t:.0%}" for w, t in criteria)
    lines += [
        "",
        "*solved*: runs whose training accuracy, smoothed with a cubic Savitzky-Golay filter, "
        f"reaches the threshold (the paper's criterion; {crit}). *steps to 98%*: median over the "
        "solved runs [25th-75th percentile]. *held-out*: the same for the first log whose "
        "accuracy on the fixed held-out set reaches the threshold. *average repetitions*: median "
        "over runs of the last logged N(t) - 1 + R(t) for ACT (the paper's column), rho for "
        "Repeat; *mean N*: ACT's mean ponder steps N(t). The paper reports a single run per row.",
    ]

    for task in dict.fromkeys(row.task for row in rows):
        mine = [row for row in rows if row.task == task]
        has_paper = task in PAPER_TABLES
        lines += ["", f"## {task}", ""]
        if has_paper:
            lines += [f"Beside: {PAPER_TABLE_TITLE[task]}.", ""]
        else:
            lines += ["The Fojo et al. paper has no table for this task.", ""]
        head = ["model", "solved", "steps to 98%", "held-out", "average repetitions", "mean N"]
        head += ["diverged / failed / unfinished"]
        if has_paper:
            head += ["paper: solved", "paper: steps to 98%", "paper: average repetitions"]
        lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for row in mine:
            n = len(row.runs)
            cells = [
                row.label,
                f"{row.solved}/{n}",
                _steps_cell(row.median_steps, row.q25_steps, row.q75_steps, row.solved),
                _steps_cell(
                    row.eval_median_steps, row.eval_q25_steps, row.eval_q75_steps, row.eval_solved
                ),
                "-" if row.median_repetitions is None else f"{row.median_repetitions:.2f}",
                "" if row.median_mean_n is None else f"{row.median_mean_n:.2f}",
                _status_note(row),
            ]
            if has_paper:
                na = row.paper[0].startswith("n/a")  # said once, not in all three columns
                cells += [row.paper[0], "", ""] if na else list(row.paper)
            lines.append("| " + " | ".join(_cell(c) for c in cells) + " |")

    if figures:
        lines += ["", "## Figures", ""]
        for rel, caption in figures:
            lines += [f"*{caption}*", "", f"![{caption}]({rel})", ""]
    if left_out:
        lines += ["", "Left out of the trained-network figures: " + "; ".join(left_out) + "."]

    lines += ["", "## Runs", ""]
    lines += ["| run | seed | status | last step | steps to 98% | held-out | repetitions |"]
    lines += ["|---|---|---|---|---|---|---|"]
    for row in rows:
        for r in row.runs:
            last = int(r.steps[-1]) if len(r.steps) else 0
            status = f"{r.status}: {r.error}" if r.error else r.status
            reps = "-" if r.repetitions is None else f"{r.repetitions:.2f}"
            cells = [r.path.name, str(r.config.seed), status, f"{last:,}"]
            cells += [fmt_steps(r.steps_to_solve), fmt_steps(r.eval_steps_to_solve), reps]
            lines.append("| " + " | ".join(_cell(c) for c in cells) + " |")
    if skipped:
        lines += ["", "Not read (unreadable config.yaml):", ""]
        lines += [f"- {s}" for s in skipped]
    rundir.atomic_write(Path(path), "\n".join(lines).rstrip() + "\n")


# --------------------------------------------------------------------------------------------
# Figures


def _band(curves: list[tuple[np.ndarray, np.ndarray]]) -> tuple[np.ndarray, ...]:
    """Median, 25th and 75th percentile over seeds at every step some seed logged.

    Seeds of one configuration log at the same steps; a seed that stopped early (diverged,
    unfinished) simply leaves the later steps to the others.
    """
    by_step: dict[int, list[float]] = {}
    for steps, values in curves:
        for s, v in zip(steps.tolist(), values.tolist(), strict=True):
            by_step.setdefault(s, []).append(v)
    grid = np.array(sorted(by_step), dtype=float)
    q = np.array([np.percentile(by_step[s], [50, 25, 75]) for s in sorted(by_step)])
    return grid, q[:, 0], q[:, 1], q[:, 2]


def _plot_band(ax, curves, label: str, color) -> None:
    curves = [(s, v) for s, v in curves if len(s)]
    if not curves:
        return
    x, mid, lo, hi = _band(curves)
    ax.plot(x, mid, color=color, label=label, lw=1.5)
    ax.fill_between(x, lo, hi, color=color, alpha=0.2, lw=0)


def _smoothed(run: RunResult, values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A run's curve smoothed as the paper's criterion smooths it (its own window)."""
    return run.steps, metrics.smooth(values, run.config.solve_window)


def _save(fig, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=DPI, bbox_inches="tight")
    plt.close(fig)


def _legend(ax) -> None:
    if ax.get_legend_handles_labels()[0]:  # no empty legend (and no warning) without lines
        ax.legend(fontsize="small")


def _colors(n: int) -> list:
    return [plt.get_cmap("viridis")(x) for x in np.linspace(0.0, 0.9, max(n, 1))][:n]


def plot_accuracy_tau(rows: list[ConfigRow], task: str, path: Path) -> bool:
    """Accuracy (top) and ACT's ponder (bottom) against steps, one line per tau plus the RNN as
    "no ACT": the paper's figures 5 and 7. Returns False (and writes nothing) without ACT runs."""
    act = [r for r in rows if r.task == task and r.model == "act"]
    if not act:
        return False
    plain = [r for r in rows if r.task == task and r.model == "rnn"]
    fig, (top, bottom) = plt.subplots(
        2, 1, sharex=True, figsize=(8, 7), gridspec_kw={"height_ratios": [2, 1]}
    )
    for row, color in zip(act, _colors(len(act)), strict=True):
        _plot_band(top, [_smoothed(r, r.accuracy) for r in row.runs], row.legend, color)
        _plot_band(bottom, [_smoothed(r, r.ponder) for r in row.runs], row.legend, color)
    for row in plain:
        label = "no ACT" + (f" ({row.variant})" if row.variant else "")
        _plot_band(top, [_smoothed(r, r.accuracy) for r in row.runs], label, "black")
    top.set_title(f"{task}: ACT, median over seeds (band: 25th-75th percentile), smoothed")
    top.set_ylabel("training accuracy")
    _legend(top)
    top.grid(alpha=0.3)
    bottom.set_xlabel("training step")
    bottom.set_ylabel(PONDER_LABEL)
    _legend(bottom)
    bottom.grid(alpha=0.3)
    _save(fig, path)
    return True


def plot_accuracy_rho(rows: list[ConfigRow], task: str, path: Path) -> bool:
    """Accuracy against steps, one line per rho (the RNN as rho=1): the paper's figures 2, 6, 8.
    Returns False (and writes nothing) without Repeat runs."""
    repeat = [r for r in rows if r.task == task and r.model == "repeat"]
    if not repeat:
        return False
    lines = [r for r in rows if r.task == task and r.model == "rnn"] + repeat
    fig, ax = plt.subplots(figsize=(8, 5))
    for row, color in zip(lines, _colors(len(lines)), strict=True):
        label = f"rho=1 ({row.legend})" if row.model == "rnn" else row.legend
        _plot_band(ax, [_smoothed(r, r.accuracy) for r in row.runs], label, color)
    ax.set_title(f"{task}: Repeat-RNN, median over seeds (band: 25th-75th percentile), smoothed")
    ax.set_xlabel("training step")
    ax.set_ylabel("training accuracy")
    _legend(ax)
    ax.grid(alpha=0.3)
    _save(fig, path)
    return True


@torch.no_grad()
def probe_ponder(run_dir: Path, samples: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A trained network's ponder N(t) - 1 + R(t) and the input difficulty, both ``[S, T]``,
    on ``samples`` fresh sequences drawn from a CPU generator seeded with ``seed`` (the same
    sequences for every network of the same task options). Runs on the CPU in chunks."""
    net, task, _ = train.load_model(run_dir, "cpu")
    gen = torch.Generator().manual_seed(seed)
    ponders, difficulties = [], []
    for start in range(0, samples, CHUNK):
        x, _ = task.sample(min(CHUNK, samples - start), gen)  # [B, T, input_size]
        _, info = net(x)
        ponders.append(info["repetitions"].float().numpy())  # [B, T]
        difficulties.append(task.difficulty(x).numpy())  # [B, T]
    return np.concatenate(ponders), np.concatenate(difficulties)


def plot_ponder_position(
    rows: list[ConfigRow], probes: dict[Path, tuple[np.ndarray, np.ndarray]], path: Path
) -> bool:
    """Box plot of ACT's ponder per input position in addition, one panel per tau, pooled over
    seeds (the paper's figure 4: the first input is pondered least)."""
    act = [r for r in rows if r.task == "addition" and r.model == "act"]
    panels = [(row, [probes[r.path][0] for r in row.runs if r.path in probes]) for row in act]
    panels = [(row, p) for row, p in panels if p]
    if not panels:
        return False
    fig, axes = plt.subplots(
        1, len(panels), figsize=(3.2 * len(panels) + 1, 4.5), sharey=True, squeeze=False
    )
    for ax, (row, ponders) in zip(axes[0], panels, strict=True):
        pooled = np.concatenate(ponders)  # [seeds * S, T]
        positions = np.arange(1, pooled.shape[1] + 1)
        ax.boxplot(list(pooled.T), positions=positions, flierprops={"markersize": 2})
        ax.set_xticks(positions, [str(p) for p in positions])
        ax.set_title(f"{row.legend}, {len(ponders)} seed(s) pooled", fontsize="medium")
        ax.set_xlabel("input position")
        ax.grid(alpha=0.3, axis="y")
    axes[0][0].set_ylabel(PONDER_LABEL)
    samples = panels[0][1][0].shape[0]
    fig.suptitle(f"addition: ACT's ponder per input position ({samples} fresh sequences per net)")
    _save(fig, path)
    return True


def plot_ponder_difficulty(
    rows: list[ConfigRow],
    probes: dict[Path, tuple[np.ndarray, np.ndarray]],
    task: str,
    path: Path,
) -> bool:
    """Mean ponder per input difficulty, one line per tau (median over seeds, band 25th-75th
    percentile): Graves 2016's finding that ACT ponders longer on harder inputs."""
    act = [r for r in rows if r.task == task and r.model == "act"]
    act = [row for row in act if any(r.path in probes for r in row.runs)]
    if not act:
        return False
    fig, ax = plt.subplots(figsize=(8, 5))
    for row, color in zip(act, _colors(len(act)), strict=True):
        curves = []
        for r in row.runs:
            if r.path not in probes:
                continue
            ponder, difficulty = probes[r.path]
            levels = np.unique(difficulty[difficulty > 0])  # 0: a step without input
            means = np.array([ponder[difficulty == d].mean() for d in levels])
            curves.append((levels, means))
        curves = [c for c in curves if len(c[0])]
        if not curves:
            continue
        x, mid, lo, hi = _band(curves)
        ax.plot(x, mid, marker="o", ms=3, color=color, label=row.legend)
        ax.fill_between(x, lo, hi, color=color, alpha=0.2, lw=0)
    ax.set_title(f"{task}: trained ACT's ponder against input difficulty (median over seeds)")
    ax.set_xlabel(DIFFICULTY_LABEL.get(task, "difficulty"))
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylabel(f"mean {PONDER_LABEL}")
    _legend(ax)
    ax.grid(alpha=0.3)
    _save(fig, path)
    return True


def build_figures(
    rows: list[ConfigRow], out_dir: Path, difficulty_samples: int, generator_seed: int
) -> tuple[list[tuple[str, str]], list[str]]:
    """Write every figure the runs allow under ``out_dir``; returns (relative path, caption)
    pairs for report.md and a line per run left out of the checkpoint-based figures."""
    figures: list[tuple[str, str]] = []
    notes: list[str] = []
    root = out_dir / FIGURES

    def add(ok: bool, name: str, caption: str) -> None:
        if ok:
            figures.append((f"{FIGURES}/{name}", caption))

    task_names = list(dict.fromkeys(row.task for row in rows))
    for task in task_names:
        name = f"{task}-accuracy-tau.png"
        add(
            plot_accuracy_tau(rows, task, root / name),
            name,
            f"{task}: training accuracy and ACT's ponder against steps, per tau",
        )
        name = f"{task}-accuracy-rho.png"
        add(
            plot_accuracy_rho(rows, task, root / name),
            name,
            f"{task}: training accuracy against steps, per rho",
        )

    probes: dict[Path, tuple[np.ndarray, np.ndarray]] = {}
    for row in rows:
        if row.model != "act" or difficulty_samples < 1:
            continue
        for r in row.runs:
            if not rundir.has_checkpoint(r.path):
                notes.append(f"{r.path.name}: no checkpoint")
                continue
            try:
                probes[r.path] = probe_ponder(r.path, difficulty_samples, generator_seed)
            except RunError as e:
                notes.append(f"{r.path.name}: {e}")

    name = "addition-ponder-position.png"
    add(
        plot_ponder_position(rows, probes, root / name),
        name,
        f"addition: trained ACT's {PONDER_LABEL} per input position",
    )
    for task in task_names:
        name = f"{task}-ponder-difficulty.png"
        add(
            plot_ponder_difficulty(rows, probes, task, root / name),
            name,
            f"{task}: trained ACT's {PONDER_LABEL} against input difficulty",
        )
    return figures, notes


# --------------------------------------------------------------------------------------------
# The report


def build_report(
    sweep_dir: Path,
    difficulty_samples: int = 1000,
    generator_seed: int = 0,
    note: str | None = None,
) -> Path:
    """Write report.md, report.csv and figures/ in ``sweep_dir``; returns report.md's path.

    ``difficulty_samples`` fresh sequences, drawn from a CPU generator seeded with
    ``generator_seed``, probe each trained ACT network for the ponder figures (0: no such
    figures, a quick report). ``note`` is free
    text put at the top of report.md. Raises ``RunError`` if the directory does not exist
    or holds no run.
    """
    sweep_dir = Path(sweep_dir)
    runs, skipped = load_runs(sweep_dir)
    rows = aggregate(runs)
    write_csv(rows, sweep_dir / REPORT_CSV)
    figures, left_out = build_figures(rows, sweep_dir, difficulty_samples, generator_seed)
    path = sweep_dir / REPORT_MD
    write_markdown(rows, figures, path, sweep_dir, note, skipped, left_out)
    return path
