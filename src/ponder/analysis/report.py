"""The report of a sweep: report.md and report.csv, our runs over seeds beside Fojo et al. 2018.

``build_report(DIR)`` reads the runs under DIR (``results``), draws the figures (``figures``) and
writes the tables:

    DIR/report.md        one table per task in the paper's format (Table 1 parity, Table 2
                         addition: model | solved | steps to 98% | average repetitions) with the
                         paper's numbers beside ours, what was run, and links to the figures
    DIR/report.csv       one row per configuration (``CSV_COLUMNS``)
    DIR/figures/*.png    see ``figures.py``

The paper reports one run per row; we report k/n seeds solved with its 95% Wilson interval and
the median and quartiles of steps to solve over all seeds, a seed that did not solve counted as
not solved within the steps it ran (Kaplan-Meier; "> 2000k" where fewer seeds solved than the
quantile needs), mark the configurations whose numbers may still change (provisional), and say
plainly where the experiment is smaller than or differs from the paper's.
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Callable
from pathlib import Path

from .. import rundir
from ..config import TASK_DEFAULTS
from ..methods import METHODS
from . import matched
from .figures import build_figures
from .paper import DIFFERS, PAPER_BUDGET, PAPER_TABLE_TITLE, PAPER_TABLES, PAPER_TASK_OPTIONS
from .results import STATUSES, ConfigRow, RunResult, aggregate, load_runs

REPORT_MD = "report.md"
REPORT_CSV = "report.csv"


# --------------------------------------------------------------------------------------------
# Formatting


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


def _interval(interval: tuple[float, float]) -> str:
    return f"[{interval[0]:.2f}, {interval[1]:.2f}]"


def _status_note(row: ConfigRow) -> str:
    return ", ".join(f"{row.counts[s]} {s}" for s in STATUSES[1:] if row.counts.get(s))


# --------------------------------------------------------------------------------------------
# The tables


# Steps-to-solve quantiles are over all seeds (censored, Kaplan-Meier) and empty when not
# reached: the quantile is then beyond ``steps_followed``, the most steps any seed ran.
# ``provisional`` says why the row's numbers may still change (empty when they will not).
CSV_COLUMNS = [
    "task", "task_options", "model", "cell", "tau", "rho", "lambda_p", "variant", "runs", "seeds",
    "solved", "solved_k", "solved_n", "solved_wilson_low", "solved_wilson_high",
    "median_steps_to_solve", "iqr25_steps_to_solve", "iqr75_steps_to_solve",
    "eval_solved", "eval_solved_wilson_low", "eval_solved_wilson_high",
    "median_eval_steps_to_solve", "iqr25_eval_steps_to_solve", "iqr75_eval_steps_to_solve",
    "steps_followed", "median_repetitions", "median_floor_repetitions", "median_ponder_steps",
    "median_expected_steps", "finished",
    "diverged", "failed", "unfinished", "provisional", "budget", "paper_solved",
    "paper_steps_to_solve", "paper_repetitions", "paper_figure_steps_to_solve",
]  # fmt: skip


def _mean_steps(row: ConfigRow) -> str:
    """ACT's N(t); PonderNet's sampled / expected steps; empty for the fixed models."""
    if row.median_ponder_steps is None:
        return ""
    text = f"{row.median_ponder_steps:.2f}"
    if row.median_expected_steps is not None:
        text += f" / {row.median_expected_steps:.2f}"
    return text


def _reps(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


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
            "lambda_p": "" if row.lambda_p is None else repr(row.lambda_p),
            "variant": row.variant,
            "runs": str(n),
            "seeds": " ".join(str(r.config.seed) for r in row.runs),
            "solved": f"{row.solved}/{n}",
            "solved_k": str(row.solved),
            "solved_n": str(n),
            "solved_wilson_low": _num(round(row.solved_interval[0], 4)),
            "solved_wilson_high": _num(round(row.solved_interval[1], 4)),
            "median_steps_to_solve": _num(row.median_steps),
            "iqr25_steps_to_solve": _num(row.q25_steps),
            "iqr75_steps_to_solve": _num(row.q75_steps),
            "eval_solved": f"{row.eval_solved}/{n}",
            "eval_solved_wilson_low": _num(round(row.eval_solved_interval[0], 4)),
            "eval_solved_wilson_high": _num(round(row.eval_solved_interval[1], 4)),
            "median_eval_steps_to_solve": _num(row.eval_median_steps),
            "iqr25_eval_steps_to_solve": _num(row.eval_q25_steps),
            "iqr75_eval_steps_to_solve": _num(row.eval_q75_steps),
            "steps_followed": str(row.followed_steps),
            "median_repetitions": _num(row.median_repetitions),
            "median_floor_repetitions": _num(row.median_floor_repetitions),
            "median_ponder_steps": _num(row.median_ponder_steps),
            "median_expected_steps": _num(row.median_expected_steps),
            **{s: str(row.counts.get(s, 0)) for s in STATUSES},
            "provisional": row.provisional,
            "budget": " ".join(str(b) for b in sorted({r.config.steps for r in row.runs})),
            "paper_solved": row.paper[0],
            "paper_steps_to_solve": row.paper[1],
            "paper_repetitions": row.paper[2],
            "paper_figure_steps_to_solve": row.paper_figure,
        })  # fmt: skip
    return out


def write_csv(rows: list[ConfigRow], path: Path) -> None:
    """report.csv, written atomically so a reader never sees half a table."""
    buf = io.StringIO()
    sets = matched.set_columns(rows)  # per held-out set, after the fixed columns
    names = [c[: -len("_mean_steps")] for c in sets if c.endswith("_mean_steps")]
    writer = csv.DictWriter(buf, CSV_COLUMNS + sets, lineterminator="\n")
    writer.writeheader()
    writer.writerows(
        {**line, **matched.set_values(row, names)}
        for line, row in zip(csv_rows(rows), rows, strict=True)
    )
    rundir.atomic_write(Path(path), buf.getvalue())


def steps_cell(
    median: float | None, q25: float | None, q75: float | None, followed: int, n: int
) -> str:
    """Steps to solve over ``n`` seeds as report.md shows it: "30k [20k, 40k]" (median [25th,
    75th percentile]); a quantile not reached is "> T", T the most steps any seed ran, so a
    configuration few of whose seeds solved never reads as fast. "> T" alone when not even the
    25th percentile is reached; the median alone for a single seed."""

    def q(x: float | None) -> str:
        return f"> {fmt_steps(followed)}" if x is None else fmt_steps(x)

    if n == 0:
        return "-"
    if n == 1 or (median is None and q25 is None):
        return q(median)
    return f"{q(median)} [{q(q25)}, {q(q75)}]"


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
            if name == "max_ponder":  # ACT's M against Fojo's, PonderNet's N against Banino's
                for spec in METHODS.values():
                    if name not in spec.fields:
                        continue
                    paper_n = spec.defaults.get(name, value)
                    says = f"{spec.title}'s {spec.symbols.get(name, name)}"
                    mine = {c.max_ponder for c in configs if c.model == spec.name} - {paper_n}
                    if mine:
                        said = ", ".join(str(o) for o in sorted(mine))
                        reasons.append(f"{task} with {says} {said} (paper: {paper_n})")
                continue
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
        "*solved*: seeds whose training accuracy, smoothed with a cubic Savitzky-Golay filter, "
        f"reaches the threshold (the paper's criterion; {crit}) with half a window of later "
        "logged points to confirm it (in the last half window the filter extrapolates a cubic, "
        "so a crossing there is counted as not solved within the budget and the row is marked "
        "provisional), k/n [95% Wilson interval]. "
        "*steps to 98%*: median [25th, 75th percentile] over all seeds, a seed that did not "
        "solve counted as not solved within the steps it ran (censored: at its budget, or at its "
        'last step if it stopped before; Kaplan-Meier quantiles); "> T": fewer seeds solved '
        "than that quantile needs, within T steps, the most any seed ran. *held-out*: the same "
        "for the first log whose accuracy on the fixed held-out set reaches the threshold. "
        "Near the threshold the paper's criterion is noisy by nature: on simulated "
        "training-batch accuracy (binomial, batch 128, 300 logged points, window 71) a plateau "
        "at 97.5% is called solved in about 58% of runs, one at 97% in 7%, one at 96% in 0.4% "
        "(2,000 runs each); read it beside the held-out column, whose set is fixed. "
        "*average repetitions: last*: median over runs of the last logged N(t) - 1 + R(t) for "
        "ACT, rho for Repeat, the sampled halting step for PonderNet; *paper's statistic*: the "
        "median over runs of the mean over training of floor(N(t) - 1 + R(t)) at every log, "
        "what the paper's tables report (their numbers match it on the paper's own curves; the "
        "paper's runs trained 2,000,000 steps, a run of ours stopped once solved averages up to "
        "its stop); "
        "*paper table*: the paper's Tables 1 and 2, one run per row; *paper figure*: the first "
        "step at which the paper's plotted curve for the same configuration (its Figures 5 to "
        "8, already smoothed; read between its vertices) reaches 98%. The tables and the "
        "figures disagree: the plotted runs solve much later. *mean N*: "
        "ACT's mean ponder steps N(t), PonderNet's mean sampled halting step (what an inference "
        "that stops at the halt computes) and, after the slash, its expected steps sum_n n p_n. "
        "A model "
        "marked * has provisional numbers (see below its table). The paper reports a single run "
        'per row; "differs: ..." in its columns: our runs\' network or training protocol is not '
        "the paper's (the settings named).",
    ]

    for task in dict.fromkeys(row.task for row in rows):
        mine = [row for row in rows if row.task == task]
        has_paper = task in PAPER_TABLES
        lines += ["", f"## {task}", ""]
        if has_paper:
            lines += [f"Beside: {PAPER_TABLE_TITLE[task]}.", ""]
        else:
            lines += ["The Fojo et al. paper has no table for this task.", ""]
        head = ["model", "solved", "steps to 98%", "held-out"]
        head += ["average repetitions: last", "average repetitions: paper's statistic", "mean N"]
        head += ["diverged / failed / unfinished"]
        if has_paper:
            head += ["paper table: solved", "paper table: steps to 98%"]
            head += ["paper table: average repetitions", "paper figure: first step at 98%"]
        lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for row in mine:
            n = len(row.runs)
            cells = [
                row.label + ("*" if row.provisional else ""),
                f"{row.solved}/{n} {_interval(row.solved_interval)}",
                steps_cell(row.median_steps, row.q25_steps, row.q75_steps, row.followed_steps, n),
                steps_cell(
                    row.eval_median_steps,
                    row.eval_q25_steps,
                    row.eval_q75_steps,
                    row.followed_steps,
                    n,
                ),
                _reps(row.median_repetitions),
                _reps(row.median_floor_repetitions),
                _mean_steps(row),
                _status_note(row),
            ]
            if has_paper:
                # said once, not in all three columns
                # "n/a (reduced problem)" or "differs: ..." said once, for table and figure
                said = [
                    t for t in (row.paper[0], row.paper_figure) if t.startswith(("n/a", DIFFERS))
                ]
                if said:
                    cells += [said[0], "", "", ""]
                else:
                    cells += [*row.paper, row.paper_figure]
            lines.append("| " + " | ".join(_cell(c) for c in cells) + " |")
        provisional = [f"{row.label} ({row.provisional})" for row in mine if row.provisional]
        if provisional:
            lines += [
                "",
                "\\* Provisional, the numbers may still change: " + "; ".join(provisional) + ".",
            ]

    lines += matched.held_out_markdown(rows)
    lines += matched.markdown(rows)

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
            if r.writer is not None:
                status += f" (being written by process {r.writer} as this was read)"
            reps = _reps(r.repetitions)
            cells = [r.path.name, str(r.config.seed), status, f"{last:,}"]
            solved = fmt_steps(r.steps_to_solve)
            if r.edge_crossing_at is not None:
                solved += f" (crosses at {fmt_steps(r.edge_crossing_at)}, unconfirmed)"
            cells += [solved, fmt_steps(r.eval_steps_to_solve), reps]
            lines.append("| " + " | ".join(_cell(c) for c in cells) + " |")
    if skipped:
        lines += ["", f"Not read (an unreadable {rundir.CONFIG}, or damaged files):", ""]
        lines += [f"- {s}" for s in skipped]
    rundir.atomic_write(Path(path), "\n".join(lines).rstrip() + "\n")


# --------------------------------------------------------------------------------------------
# The report


def build_report(
    sweep_dir: Path,
    difficulty_samples: int = 1000,
    generator_seed: int = 0,
    note: str | None = None,
    say: Callable[[str], None] | None = None,
) -> Path:
    """Write report.md, report.csv and figures/ in ``sweep_dir``; returns report.md's path.

    ``say`` gets one line per run directory left out (an unreadable config, a damaged file).

    ``difficulty_samples`` fresh sequences, drawn from a CPU generator seeded with
    ``generator_seed``, probe each trained ACT network for the ponder figures (0: no such
    figures, a quick report). ``note`` is free text put at the top of report.md. Raises
    ``RunError`` if the directory does not exist or holds no run.
    """
    sweep_dir = Path(sweep_dir)
    runs, skipped = load_runs(sweep_dir)
    for line in skipped if say else ():
        say(line)
    rows = aggregate(runs)
    write_csv(rows, sweep_dir / REPORT_CSV)
    figures, left_out = build_figures(rows, sweep_dir, difficulty_samples, generator_seed)
    path = sweep_dir / REPORT_MD
    write_markdown(rows, figures, path, sweep_dir, note, skipped, left_out)
    return path
