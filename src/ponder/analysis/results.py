"""Reading and aggregating a sweep: our runs over seeds, and Fojo et al. 2018's published numbers.

``load_runs(DIR)`` reads every run directory under DIR (through ``rundir``) into a ``RunResult``;
``aggregate`` groups the runs that differ only in their seed into configurations (``config_key``,
built on ``RunConfig.identity``) and gives each a ``ConfigRow``: seeds solved (k/n with its 95%
Wilson interval), the median and quartiles of steps to solve over all seeds, the median of the
last logged "average repetitions", whether the numbers are provisional and, beside them, the
paper's row (``paper_values``).

Steps to solve are recomputed from metrics.csv with each run's own criterion (``metrics.py``), so
unfinished runs count with what they have logged so far. Over seeds they are censored data
(SPEC.md, "Statistics over seeds"): a seed that did not solve counts as not solved within the
steps it ran (``RunResult.censored_at``), and the quartiles are Kaplan-Meier quantiles over all
seeds, None ("not reached") where too few seeds solved. The paper reports one run per row; we
report the median over seeds.

The quantities keep metrics.csv's names: ``repetitions`` is the paper's "average repetitions"
(N(t) - 1 + R(t) for ACT, rho for Repeat and the RNN), ``ponder_steps`` is ACT's N(t).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .. import metrics, rundir, tasks
from ..config import RunConfig, ponder_fields
from ..methods import METHODS, method, rank
from ..rundir import RunError
from .paper import figure_steps, mean_floor, paper_values

STATUSES = ("finished", "diverged", "failed", "unfinished")
# A run directory's status (``rundir.status``) as the report names it.
REPORT_STATUS = {
    "done": "finished",
    "diverged": "diverged",
    "failed": "failed",
    "damaged": "failed",
    "partial": "unfinished",
    "new": "unfinished",
}


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
    repetitions_curve: np.ndarray  # the repetitions column per log, [L]
    steps_to_solve: int | None  # paper criterion, recomputed from metrics.csv
    eval_steps_to_solve: int | None  # first log with held-out accuracy >= threshold
    repetitions: float | None  # the repetitions of the last logged row
    # A smoothed crossing only in the last half window, unconfirmed (``metrics.crossings``):
    # not a solve; the run is censored at its last step and its row marked provisional.
    edge_crossing_at: int | None
    ponder_steps: float | None  # N(t) (ACT) or the sampled halting step (PonderNet), last row
    expected_steps: float | None = None  # PonderNet's sum_n n p^n of the last logged row
    # The last logged row per held-out set ("eval", then the config's eval_sets): accuracy,
    # steps (per token, computed at evaluation) and ponder_cost; a value None if not logged.
    held_out: dict[str, dict[str, float | None]] = field(default_factory=dict)
    error: str = ""  # first line of error.txt for a failed run
    writer: int | None = None  # the PID of the process writing the run as it was read

    @property
    def floor_repetitions(self) -> float | None:
        """The paper's "average repetitions" statistic of this run: the mean over its logged
        steps of floor(repetitions) (``paper.mean_floor``), None before the first log. The
        paper's runs all trained 2M steps; a run stopped once solved averages up to its stop."""
        logged = np.isfinite(self.repetitions_curve)
        if not logged.any():
            return None
        return mean_floor(self.steps[logged], self.repetitions_curve[logged], self.config.log_every)

    @property
    def last_step(self) -> int:
        """The last logged step (0 before the first log)."""
        return int(self.steps[-1]) if len(self.steps) else 0

    @property
    def censored_at(self) -> int:
        """The step up to which the run is known not to have solved, if it did not: its budget
        once it finished (it trained to the end), else the last step it logged (an unfinished,
        failed or diverged run stopped there)."""
        if self.status == "finished":
            return max(self.config.steps, self.last_step)
        return self.last_step

    def time_to_solve(self) -> tuple[int, bool]:
        """(steps, solved): steps to solve by the paper's criterion, or the censoring step."""
        if self.steps_to_solve is not None:
            return self.steps_to_solve, True
        return self.censored_at, False

    def eval_time_to_solve(self) -> tuple[int, bool]:
        """(steps, solved) for the held-out criterion, as ``time_to_solve``."""
        if self.eval_steps_to_solve is not None:
            return self.eval_steps_to_solve, True
        return self.censored_at, False


@dataclass
class ConfigRow:
    """One configuration (runs that differ only in seed) aggregated: a row of the tables."""

    task: str
    task_options: dict[str, int]
    model: str
    cell: str
    tau: float | None  # ACT only
    rho: int | None  # Repeat's rho; 1 for the plain RNN; None for ACT and PonderNet
    variant: str  # other settings that differ between this task's configurations
    runs: list[RunResult] = field(default_factory=list)
    # Seeds solved and steps to solve over ALL seeds (censored, ``metrics.censored_quartiles``):
    # a quantile is None when not reached, i.e. > ``followed_steps``.
    solved: int = 0
    solved_interval: tuple[float, float] = (0.0, 1.0)  # 95% Wilson interval of solved / runs
    median_steps: float | None = None
    q25_steps: float | None = None
    q75_steps: float | None = None
    eval_solved: int = 0
    eval_solved_interval: tuple[float, float] = (0.0, 1.0)
    eval_median_steps: float | None = None
    eval_q25_steps: float | None = None
    eval_q75_steps: float | None = None
    followed_steps: int = 0  # the most steps any seed was followed for (solved or censored)
    median_repetitions: float | None = None
    median_ponder_steps: float | None = None  # ACT's N(t), PonderNet's sampled halting step
    median_expected_steps: float | None = None  # PonderNet only
    lambda_p: float | None = None  # PonderNet only
    counts: dict[str, int] = field(default_factory=dict)  # runs per status
    provisional: str = ""  # why the numbers may still change ("" when they will not)
    paper: tuple[str, str, str] = ("", "", "")  # solved, steps to 98%, average repetitions
    paper_figure: str = ""  # the paper's plotted curve: first step at 98% (paper.figure_steps)
    # The tables' statistic of "average repetitions": the mean over training of floor(value)
    # (paper.mean_floor), median over seeds; ``median_repetitions`` is the last logged value.
    median_floor_repetitions: float | None = None

    @property
    def label(self) -> str:
        """The paper's name for the row: RNN / LSTM, ACT tau=1e-2, Repeat rho=2."""
        name = method(self.model).label(self)
        return f"{name} ({self.variant})" if self.variant else name

    @property
    def short_label(self) -> str:
        """tau=1e-2, rho=2, or the cell's name for the RNN: a legend entry."""
        return method(self.model).short_label(self)

    @property
    def legend(self) -> str:
        return f"{self.short_label} ({self.variant})" if self.variant else self.short_label


def read_run(run_dir: Path) -> RunResult:
    """Read one run directory; raises ``RunError`` if its config is unreadable."""
    run_dir = Path(run_dir)
    config = rundir.read_config(run_dir)
    spec = method(config.model)
    rows = rundir.read_metrics(run_dir)

    def column(name: str) -> np.ndarray:
        return np.array([r.get(name, math.nan) for r in rows], dtype=float)

    steps = np.array([r["step"] for r in rows], dtype=np.int64)
    accuracy = column("train_accuracy")
    # the paper's criterion (``metrics.steps_to_solve``) and an unconfirmed edge crossing, from
    # one smoothing
    solve, edge = metrics.crossings(accuracy, config.solve_threshold, config.solve_window)
    i = metrics.first_crossing(column("eval_accuracy"), config.solve_threshold)

    raw = rundir.status(run_dir, config)
    if raw == "damaged":  # summary.json unreadable: read_summary says why, in one line
        rundir.read_summary(run_dir)
    status = REPORT_STATUS[raw]
    error = (rundir.read_error(run_dir) or "") if status == "failed" else ""
    last = rows[-1] if rows else {}
    return RunResult(
        path=run_dir,
        config=config,
        status=status,
        steps=steps,
        accuracy=accuracy,
        repetitions_curve=column("repetitions"),
        steps_to_solve=None if solve is None else int(steps[solve]),
        eval_steps_to_solve=None if i is None else int(steps[i]),
        repetitions=last.get("repetitions"),
        edge_crossing_at=None if edge is None else int(steps[edge]),
        ponder_steps=last.get("ponder_steps") if spec.adaptive else None,
        expected_steps=last.get("ponder_cost") if spec.expected_steps else None,
        held_out=_held_out(config, last),
        error=error,
        writer=rundir.writer_pid(run_dir),
    )


def _held_out(config: RunConfig, last: dict[str, float]) -> dict[str, dict[str, float | None]]:
    """Each held-out set's last logged accuracy, steps per token and ponder cost. Runs logged
    before ``eval_steps`` existed: a fixed model's steps are still known (rho, 1 for the RNN)."""
    spec = method(config.model)
    fixed = None if spec.adaptive else spec.fixed_steps(config)
    out = {}
    for name in ["eval", *config.eval_sets]:
        steps = last.get(f"{name}_steps")
        if steps is None and fixed is not None and f"{name}_accuracy" in last:
            steps = float(fixed)
        out[name] = {
            "accuracy": last.get(f"{name}_accuracy"),
            "steps": steps,
            "ponder_cost": last.get(f"{name}_ponder_cost"),
        }
    return out


def load_runs(sweep_dir: Path) -> tuple[list[RunResult], list[str]]:
    """Every run under ``sweep_dir`` and a line per sub-directory that could not be read.

    A sub-directory without a config is not a run and is ignored. ``sweep_dir`` may also be a
    single run directory (it has a config itself): the report then covers that run.
    """
    sweep_dir = Path(sweep_dir)
    if not sweep_dir.is_dir():
        raise RunError(f"sweep directory not found: {sweep_dir}")
    if rundir.is_run(sweep_dir):
        candidates = [sweep_dir]
    else:
        candidates = sorted(p for p in sweep_dir.iterdir() if rundir.is_run(p))
    runs, skipped = [], []
    for path in candidates:
        try:
            runs.append(read_run(path))
        except rundir.DamagedRun as e:
            skipped.append(f"{path.name}: damaged, left as it is: {e}")
        except RunError as e:
            skipped.append(f"{path.name}: {e}")
    if not runs:
        why = f" ({len(skipped)} with an unreadable {rundir.CONFIG})" if skipped else ""
        raise RunError(f"{sweep_dir} holds no run (no sub-directory with a {rundir.CONFIG}){why}")
    return runs, skipped


def config_key(config: RunConfig) -> dict[str, Any]:
    """What makes runs one configuration: the config without seed, budget, device and fields
    the model ignores (tau etc. for non-ACT, rho for non-Repeat); task options flattened in."""
    d = config.identity(ignore=("seed",))
    options = d.pop("task_options")
    return {
        k: v for k, v in {**d, **options}.items() if v is not None
    }  # option names (bits, digits, ...) are not RunConfig fields


def provisional_reason(runs: list[RunResult]) -> str:
    """Why a configuration's numbers may still change, in a few words ("" if they will not):
    runs crossing the threshold only where the filter extrapolates (``metrics.crossings``),
    runs not finished yet, or runs with fewer logged points than their smoothing window (the
    criterion then smoothed over the shorter ``metrics.smoothing_window``; more points may move
    the crossing)."""
    reasons = []
    edge = [r for r in runs if r.edge_crossing_at is not None]
    if edge:
        at = ", ".join(f"{r.edge_crossing_at / 1000:g}k of {r.last_step / 1000:g}k" for r in edge)
        reasons.append(
            f"{len(edge)} run{'s' if len(edge) > 1 else ''} crossing the threshold only in the "
            f"last half window, not yet confirmed ({at}): counted as not solved; more steps "
            "could confirm or undo it"
        )
    unfinished = sum(r.status == "unfinished" for r in runs)
    if unfinished:
        reasons.append(f"{unfinished} run{'s' if unfinished > 1 else ''} unfinished")
    short = [r for r in runs if len(r.steps) < r.config.solve_window]
    if short:
        window = _span_text([r.config.solve_window for r in short])
        used = _span_text(
            [metrics.smoothing_window(len(r.steps), r.config.solve_window) for r in short]
        )
        reasons.append(
            f"{len(short)} run{'s' if len(short) > 1 else ''} with fewer logged points than the "
            f"{window}-point window: smoothed over {used}"
        )
    return "; ".join(reasons)


def _span_text(values: list[int]) -> str:
    lo, hi = min(values), max(values)
    return str(lo) if lo == hi else f"{lo} to {hi}"


def quartiles(values: list[float]) -> tuple[float | None, float | None, float | None]:
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
    return (task_rank, row.task, rank(row.model), method(row.model).order(row), row.variant)


def aggregate(runs: list[RunResult]) -> list[ConfigRow]:
    """Group ``runs`` into configurations and aggregate each, in the paper's order."""
    groups: dict[str, list[RunResult]] = {}
    keys: dict[str, dict[str, Any]] = {}
    for run in runs:
        key = config_key(run.config)
        k = json.dumps(key, sort_keys=True, default=str)
        groups.setdefault(k, []).append(run)
        keys[k] = key

    # Settings beyond task/model/tau/rho/lambda_p that take several values within a task name
    # the rows; a ponder option only among configurations of its model (ACT's M and PonderNet's
    # N differ by design).
    ponder = ponder_fields()
    knobs = [s.knob.field for s in METHODS.values() if s.knob is not None]

    def varies(name: str, task: str, model: str) -> bool:
        peers = [
            key
            for key in keys.values()
            if key["task"] == task and (name not in ponder or key["model"] == model)
        ]
        return len({json.dumps(key[name]) for key in peers if name in key}) > 1

    varying: dict[tuple[str, str], list[str]] = {}
    for task, model in {(key["task"], key["model"]) for key in keys.values()}:
        same_task = [key for key in keys.values() if key["task"] == task]
        names = list(dict.fromkeys(n for key in same_task for n in key))
        varying[task, model] = [
            n for n in names if n not in ("task", "model", *knobs) and varies(n, task, model)
        ]

    rows = []
    for k, members in groups.items():
        key, c = keys[k], members[0].config
        spec = method(c.model)
        members.sort(key=lambda r: (r.config.seed, r.path.name))
        variant = ", ".join(f"{n}={key[n]}" for n in varying[c.task, c.model] if n in key)
        row = ConfigRow(
            task=c.task,
            task_options=dict(c.task_options),
            model=c.model,
            cell=c.cell,
            tau=None,
            rho=None if spec.adaptive else spec.fixed_steps(c),  # steps every token takes
            variant=variant,
            runs=members,
            paper=paper_values(c),
            paper_figure=figure_steps(c),
        )
        if spec.knob is not None:  # what names the row: ACT's tau, Repeat's rho
            setattr(row, spec.knob.field, spec.knob_value(c))
        n = len(members)
        times, solved = zip(*(r.time_to_solve() for r in members), strict=True)
        row.solved = sum(solved)
        row.solved_interval = metrics.wilson_interval(row.solved, n)
        row.median_steps, row.q25_steps, row.q75_steps = metrics.censored_quartiles(times, solved)
        eval_times, held_out = zip(*(r.eval_time_to_solve() for r in members), strict=True)
        row.eval_solved = sum(held_out)
        row.eval_solved_interval = metrics.wilson_interval(row.eval_solved, n)
        row.eval_median_steps, row.eval_q25_steps, row.eval_q75_steps = metrics.censored_quartiles(
            eval_times, held_out
        )
        row.followed_steps = int(max(*times, *eval_times))
        row.provisional = provisional_reason(members)
        row.median_repetitions = _median([r.repetitions for r in members])
        row.median_floor_repetitions = _median([r.floor_repetitions for r in members])
        if spec.adaptive:
            row.median_ponder_steps = _median([r.ponder_steps for r in members])
        if spec.expected_steps:
            row.median_expected_steps = _median([r.expected_steps for r in members])
        row.counts = {s: sum(r.status == s for r in members) for s in STATUSES}
        rows.append(row)
    return sorted(rows, key=_order)
