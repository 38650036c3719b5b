"""Every figure of a sweep report, drawn with matplotlib from ``results.ConfigRow``s.

``build_figures(rows, DIR, ...)`` writes DIR/figures/*.png:

    <task>-accuracy-tau.png         accuracy and ACT's repetitions against training steps, one
                                    line per tau and the RNN as "no ACT" (the paper's 5 and 7)
    <task>-accuracy-rho.png         accuracy against training steps, one line per rho, the RNN
                                    as rho=1 (the paper's figures 2, 6 and 8)
    <task>-solved.png               the fraction of seeds solved against training steps, one
                                    Kaplan-Meier step line per configuration
    addition-ponder-position.png    trained ACT's repetitions per input position (figure 4)
    <task>-ponder-difficulty.png    trained ACT's repetitions against input difficulty (Graves
                                    2016: harder inputs are pondered longer)
    parity-by-k.png                 trained networks' accuracy and steps per token against the
                                    number of non-zero elements k, 1 to bits, the training range
                                    shaded (parity sweeps with held-out sets beyond it)

The accuracy and ponder figures draw the paper's own curve for each configuration dashed beside
ours (``paper.figure_curve``), where the runs are the paper's problem. Curves are each run's own
smoothing (the paper's criterion), drawn thin per seed under the median
over seeds with a 25th-75th percentile band. Curves over seeds drop no seed (SPEC.md, "Statistics
over seeds"): a seed that stopped because it was solved keeps its last value to the end of the
axis (``seed_curves``), so the median after it stopped is still over all seeds, not over the
unsolved ones left. Unfinished, failed and diverged seeds are not carried: nothing says how they
would have gone on, so they end where they stopped. The last two figures probe trained
checkpoints on fresh inputs (``probe_ponder``, below).
"""

from __future__ import annotations

from pathlib import Path

import matplotlib
import numpy as np
import torch

from .. import metrics, rundir, tasks
from ..methods import METHODS, MethodSpec, method, rank
from ..rundir import RunError
from ..training import train
from ..training.engine import halting_uniforms
from . import matched, paper
from .results import ConfigRow, RunResult, quartiles

matplotlib.use("Agg")  # headless: reports are built on servers and in CI, before pyplot loads
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

FIGURES = "figures"  # the figures' folder, beside report.md
DPI = 150
DIFFICULTY_LABEL = {
    "parity": "nonzero input bits",
    "addition": "digits of the input number",
    "logic": "gates in the input token",
    "sort": "numbers in the sequence",
}
PONDER_LABEL = "ponder N(t) - 1 + R(t)"  # the paper's "repetitions", what every figure shows
CURVES_NOTE = (
    "each run smoothed as the criterion smooths it; thin lines: each seed; thick: the median over "
    "seeds, band: 25th-75th percentile. A seed stopped because it was solved keeps its last value "
    "to the end of the axis (dotted), so every step's median is over all seeds; unfinished, "
    "failed or diverged seeds end where they stopped. Dashed, in the same colour: the paper's "
    "own single run of that configuration as its figure plots it (Fojo et al. 2018, Figures 5 "
    "to 8, already smoothed), up to our axis' end, where our runs are the paper's problem"
)


def _band(curves: list[tuple[np.ndarray, np.ndarray]]) -> tuple[np.ndarray, ...]:
    """Median, 25th and 75th percentile over seeds at every step some seed logged.

    Seeds of one configuration log at the same steps; a curve that ends early leaves the later
    steps to the others, so curves over seeds pass through ``seed_curves`` first, which carries
    the seeds that stopped because they were solved to the end of the axis.
    """
    by_step: dict[int, list[float]] = {}
    for steps, values in curves:
        for s, v in zip(steps.tolist(), values.tolist(), strict=True):
            by_step.setdefault(s, []).append(v)
    grid = np.array(sorted(by_step), dtype=float)
    q = np.array([quartiles(by_step[s]) for s in sorted(by_step)])  # [steps, 3]
    return grid, q[:, 0], q[:, 1], q[:, 2]


def carried(run: RunResult) -> bool:
    """Whether a run's curve is carried to the end of the axis: it stopped because it was solved
    (finished, and solved by the paper's criterion). A seed that stopped otherwise (unfinished,
    failed, diverged) is not: its later values are unknown."""
    return run.status == "finished" and run.steps_to_solve is not None


def seed_curves(
    runs: list[RunResult], column: str, end: int
) -> list[tuple[np.ndarray, np.ndarray, int]]:
    """Each run's ``column`` curve ("accuracy" or "repetitions_curve"), smoothed as the paper's
    criterion smooths it (its own window), as (steps, values, logged points).

    A ``carried`` run keeps its last value at every later step that another of ``runs`` logged
    and at ``end`` (the axis' end): its curve then covers the whole axis, and ``_band`` takes
    its percentiles over all seeds. The first ``logged points`` values are the run's own.
    """
    grid = np.unique(np.concatenate([r.steps for r in runs] + [np.array([end], dtype=np.int64)]))
    out = []
    for r in runs:
        if not len(r.steps):
            continue
        values = metrics.smooth(getattr(r, column), r.config.solve_window)
        steps = r.steps
        if carried(r):
            later = grid[grid > r.last_step]
            steps = np.concatenate([steps, later])
            values = np.concatenate([values, np.full(len(later), values[-1])])
        out.append((steps, values, len(r.steps)))
    return out


def _plot_seeds(ax, runs: list[RunResult], column: str, end: int, label: str, color) -> None:
    """Thin per-seed lines (dotted where carried) under the median and its band."""
    curves = seed_curves(runs, column, end)
    if not curves:
        return
    for steps, values, own in curves:
        ax.plot(steps[:own], values[:own], color=color, lw=0.6, alpha=0.4)
        if own < len(steps):
            ax.plot(steps[own - 1 :], values[own - 1 :], color=color, lw=0.8, alpha=0.5, ls=":")
    x, mid, lo, hi = _band([(s, v) for s, v, _ in curves])
    ax.plot(x, mid, color=color, label=label, lw=1.8)
    ax.fill_between(x, lo, hi, color=color, alpha=0.15, lw=0)


def _plot_paper(
    ax, row: ConfigRow, panel: str, end: int, color, drawn: set[int], as_repeat: bool = False
) -> None:
    """The paper's plotted curve for ``row``'s configuration, dashed in the row's colour, up to
    ``end`` (our runs' axis); nothing where the runs are not the paper's problem. The first
    curve of each paper figure carries the legend entry "Fojo et al. 2018, Fig. N"."""
    config = row.runs[0].config if row.runs and end > 0 else None
    c = None if config is None else paper.figure_curve(config, panel, as_repeat)
    if c is None or c.steps[0] > end:  # nothing of it inside our axis
        return
    keep = c.steps <= end
    steps, values = c.steps[keep], c.values[keep]
    if len(steps) < len(c.steps):  # end the dashed line at the axis' end, interpolated
        steps = np.append(steps, end)
        values = np.append(values, np.interp(end, c.steps, c.values))
    label = f"{c.label} (dashed)" if c.figure not in drawn else None
    drawn.add(c.figure)
    ax.plot(steps, values, color=color, lw=1.2, ls="--", alpha=0.9, label=label)


def _axis_end(rows: list[ConfigRow]) -> int:
    """The last step any run of ``rows`` logged: where carried curves end."""
    return max((r.last_step for row in rows for r in row.runs), default=0)


def _save(fig, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=DPI, bbox_inches="tight")
    plt.close(fig)


def _legend(ax) -> None:
    if ax.get_legend_handles_labels()[0]:  # no empty legend (and no warning) without lines
        ax.legend(fontsize="small")


def _colors(n: int) -> list:
    return [plt.get_cmap("viridis")(x) for x in np.linspace(0.0, 0.9, max(n, 1))][:n]


def _plain(rows: list[ConfigRow], task: str) -> list[ConfigRow]:
    """The rows of ``task`` whose method has no knob: the plain network."""
    return [r for r in rows if r.task == task and method(r.model).knob is None]


def plot_accuracy_adaptive(rows: list[ConfigRow], task: str, path: Path, spec: MethodSpec) -> bool:
    """Accuracy (top) and ponder (bottom) against steps for an adaptive method, one line per
    knob value plus the plain network as "no ACT": for ACT the paper's figures 5 and 7 (for
    PonderNet one line per lambda_p, the sampled halting step below). Returns False (and
    writes nothing) without such runs."""
    act = [r for r in rows if r.task == task and r.model == spec.name]
    if not act:
        return False
    name = spec.title
    plain = _plain(rows, task)
    fig, (top, bottom) = plt.subplots(
        2, 1, sharex=True, figsize=(8, 7), gridspec_kw={"height_ratios": [2, 1]}
    )
    end = _axis_end(act + plain)
    drawn: set[int] = set()  # the paper figures already in each panel's legend
    drawn_bottom: set[int] = set()
    for row, color in zip(act, _colors(len(act)), strict=True):
        _plot_seeds(top, row.runs, "accuracy", end, row.legend, color)
        _plot_seeds(bottom, row.runs, "repetitions_curve", end, row.legend, color)
        _plot_paper(top, row, "accuracy", end, color, drawn)
        _plot_paper(bottom, row, "ponder", end, color, drawn_bottom)
    for row in plain:
        label = f"no {name}" + (f" ({row.variant})" if row.variant else "")
        _plot_seeds(top, row.runs, "accuracy", end, label, "black")
        _plot_paper(top, row, "accuracy", end, "black", drawn)
    top.set_title(
        f"{task}: {name}, median over all seeds (band: 25th-75th percentile), smoothed;\n"
        "solved seeds keep their last value (dotted)",
        fontsize="medium",
    )
    top.set_ylabel("training accuracy")
    _legend(top)
    top.grid(alpha=0.3)
    bottom.set_xlabel("training step")
    bottom.set_ylabel(spec.repetitions_label)
    _legend(bottom)
    bottom.grid(alpha=0.3)
    _save(fig, path)
    return True


def plot_accuracy_fixed(rows: list[ConfigRow], task: str, path: Path, spec: MethodSpec) -> bool:
    """Accuracy against steps for a fixed method, one line per knob value (a method that is
    the same computation at one value, the RNN as Repeat's rho=1, as that value): for Repeat
    the paper's figures 2, 6, 8. Returns False (and writes nothing) without such runs."""
    repeat = [r for r in rows if r.task == task and r.model == spec.name]
    if not repeat:
        return False
    alike = {
        s.name: s.same_as[1][spec.knob.field]
        for s in METHODS.values()
        if s.same_as is not None and s.same_as[0] == spec.name
    }
    lines = [r for r in rows if r.task == task and r.model in alike] + repeat
    fig, ax = plt.subplots(figsize=(8, 5))
    end = _axis_end(lines)
    drawn: set[int] = set()
    for row, color in zip(lines, _colors(len(lines)), strict=True):
        at = alike.get(row.model)
        label = row.legend if at is None else f"{spec.knob.symbol}={at} ({row.legend})"
        _plot_seeds(ax, row.runs, "accuracy", end, label, color)
        _plot_paper(ax, row, "accuracy", end, color, drawn, as_repeat=True)
    ax.set_title(
        f"{task}: {spec.title}, median over all seeds (band: 25th-75th percentile), smoothed;\n"
        "solved seeds keep their last value (dotted)",
        fontsize="medium",
    )
    ax.set_xlabel("training step")
    ax.set_ylabel("training accuracy")
    _legend(ax)
    ax.grid(alpha=0.3)
    _save(fig, path)
    return True


def solved_fraction(runs: list[RunResult]) -> tuple[np.ndarray, np.ndarray]:
    """The Kaplan-Meier fraction of ``runs`` solved against training steps, as the corners of a
    step line (x, y) from (0, 0) to the last step any run was followed (solved or censored);
    draw it with ``where="post"``. Runs that stopped unsolved are censored at their last step,
    runs that trained to their budget at the budget (``RunResult.censored_at``)."""
    times, solved = zip(*(r.time_to_solve() for r in runs), strict=True)
    t, f = metrics.kaplan_meier(times, solved)
    end = max(times)
    x = np.concatenate([[0.0], t, [end]])
    y = np.concatenate([[0.0], f, [f[-1] if len(f) else 0.0]])
    return x, y


def plot_solved_fraction(rows: list[ConfigRow], task: str, path: Path) -> bool:
    """The fraction of seeds solved against training steps, a Kaplan-Meier step line per
    configuration, censoring marked "+" (SPEC.md, "Statistics over seeds"). Returns False (and
    writes nothing) without runs of ``task``."""
    mine = [r for r in rows if r.task == task]
    if not mine:
        return False
    fig, ax = plt.subplots(figsize=(8, 5))
    end = max(r.time_to_solve()[0] for row in mine for r in row.runs)
    for row, color in zip(mine, _colors(len(mine)), strict=True):
        if method(row.model).knob is None:  # the plain network keeps its own colour
            color = method(row.model).color
        x, y = solved_fraction(row.runs)
        if y[-1] >= 1.0 - 1e-9 and x[-1] < end:  # every seed solved: nothing left to change
            x, y = np.append(x, end), np.append(y, 1.0)
        label = f"{row.label}: {len(row.runs)} seed{'s' if len(row.runs) > 1 else ''}"
        ax.step(x, y, where="post", color=color, lw=1.5, label=label)
        # censored seeds: a mark at the step each stopped, at the fraction solved by then
        censored = [r.censored_at for r in row.runs if r.steps_to_solve is None]
        if censored:
            at = np.searchsorted(x, censored, side="right") - 1
            ax.plot(censored, y[at], "+", color=color, ms=8, mew=1.2)
    ax.set_ylim(-0.03, 1.03)
    ax.set_title(
        f"{task}: fraction of seeds solved (Kaplan-Meier; +: a seed stopped unsolved)",
        fontsize="medium",
    )
    ax.set_xlabel("training step")
    ax.set_ylabel("fraction of seeds solved")
    ax.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.01, 1.0))  # up to 19 lines
    ax.grid(alpha=0.3)
    _save(fig, path)
    return True


def plot_ponder_position(
    rows: list[ConfigRow], probes: dict[Path, tuple[np.ndarray, np.ndarray]], path: Path
) -> bool:
    """Box plot of the adaptive methods' ponder per input position in addition, one panel per
    configuration, pooled over seeds (for ACT the paper's figure 4: the first input is
    pondered least)."""
    act = [r for r in rows if r.task == "addition" and method(r.model).adaptive]
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
        ax.set_title(f"{row.label}, {len(ponders)} seed(s) pooled", fontsize="medium")
        ax.set_xlabel("input position")
        ax.grid(alpha=0.3, axis="y")
    axes[0][0].set_ylabel(PONDER_LABEL)
    samples = panels[0][1][0].shape[0]
    fig.suptitle(f"addition: ponder per input position ({samples} fresh sequences per net)")
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
    act = [r for r in rows if r.task == task and method(r.model).adaptive]
    act = [row for row in act if any(r.path in probes for r in row.runs)]
    if not act:
        return False
    fig, ax = plt.subplots(figsize=(8, 5))
    for row, color in zip(act, _colors(len(act)), strict=True):
        curves = []
        for r in row.runs:
            if r.path not in probes:
                continue
            repetitions, difficulty = probes[r.path]
            levels = np.unique(difficulty[difficulty > 0])  # 0: a step without input
            means = np.array([repetitions[difficulty == d].mean() for d in levels])
            curves.append((levels, means))
        curves = [c for c in curves if len(c[0])]
        if not curves:
            continue
        x, mid, lo, hi = _band(curves)
        ax.plot(x, mid, marker="o", ms=3, color=color, label=row.label)
        ax.fill_between(x, lo, hi, color=color, alpha=0.2, lw=0)
    ax.set_title(f"{task}: trained networks' ponder against input difficulty (median over seeds)")
    ax.set_xlabel(DIFFICULTY_LABEL.get(task, "difficulty"))
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylabel(f"mean {PONDER_LABEL}\n(PonderNet: sampled halting step)")
    _legend(ax)
    ax.grid(alpha=0.3)
    _save(fig, path)
    return True


def plot_frontier(rows: list[ConfigRow], task: str, path: Path) -> bool:
    """The accuracy-compute frontier: one point per run (mean inference steps per token against
    final held-out accuracy), a panel per held-out set, coloured by method, each configuration's
    median marked and named. False (nothing written) unless more than one configuration, one of
    them adaptive, has its costs logged."""
    mine = [r for r in rows if r.task == task]
    names = matched.held_out_sets(mine)
    have = [row for row in mine if matched.logged_costs(row)]
    if len(have) < 2 or not names or not any(method(row.model).adaptive for row in have):
        return False  # nothing to compare: fixed computation only
    fig, axes = plt.subplots(1, len(names), figsize=(6 * len(names), 5), squeeze=False)
    for ax, name in zip(axes[0], names, strict=True):
        seen = set()
        lowest = 0.4
        for row in have:
            color = method(row.model).color
            pts = [(matched.cost(r, name), matched.accuracy(r, name)) for r in row.runs]
            pts = [(c, a) for c, a in pts if c is not None and a is not None]
            if not pts:
                continue
            xs, ys = np.array(pts).T
            lowest = min(lowest, float(ys.min()) - 0.03)  # below chance stays in view
            title = method(row.model).title
            ax.scatter(xs, ys, s=14, alpha=0.5, color=color,
                       label=None if title in seen else title)  # fmt: skip
            seen.add(title)
            mx, my = float(np.median(xs)), float(np.median(ys))
            ax.scatter([mx], [my], s=90, marker="D", color=color, edgecolor="black", lw=0.6)
            ax.annotate(row.short_label, (mx, my), textcoords="offset points", xytext=(5, 4),
                        fontsize="x-small")  # fmt: skip
        ax.set_title(f"{task}: {matched.set_title(name)}", fontsize="medium")
        ax.set_xlabel("mean inference steps per token (computed at evaluation)")
        ax.set_ylabel("final held-out accuracy")
        ax.set_ylim(lowest, 1.02)
        ax.grid(alpha=0.3)
        _legend(ax)
    fig.suptitle("accuracy against inference cost: dots are runs, diamonds each "
                 "configuration's median", fontsize="medium")  # fmt: skip
    _save(fig, path)
    return True


BY_K_SAMPLES = 250  # fresh sequences per number of non-zero elements k


def plot_by_k(
    rows: list[ConfigRow], probes: dict[Path, tuple[np.ndarray, ...]], path: Path
) -> bool:
    """Accuracy (top) and steps per token (bottom) against k, the number of non-zero elements,
    a column per method and a line per configuration (median over seeds, band 25th-75th
    percentile), the training range shaded: where does each method fail, and does adaptive
    computation spend more steps on larger k, inside and beyond the training range?"""
    mine = [row for row in rows if any(r.path in probes for r in row.runs)]
    # fixed methods first, then the adaptive ones, each in the table's order
    models = sorted({row.model for row in mine}, key=lambda m: (method(m).adaptive, rank(m)))
    methods = [method(m) for m in models]
    if not methods:
        return False
    fig, axes = plt.subplots(
        2, len(methods), figsize=(4.2 * len(methods), 7), sharex=True, squeeze=False
    )
    for col, spec in enumerate(methods):
        lines = [row for row in mine if row.model == spec.name]
        for row, color in zip(lines, _colors(len(lines)), strict=True):
            seeds = [probes[r.path] for r in row.runs if r.path in probes]
            ks = seeds[0][0]
            for panel, values in ((0, [s[1] for s in seeds]), (1, [s[2] for s in seeds])):
                q = np.percentile(np.array(values), [25, 50, 75], axis=0)
                ax = axes[panel][col]
                ax.plot(ks, q[1], marker="o", ms=2.5, color=color,
                        label=f"{row.short_label} ({len(seeds)} seeds)")  # fmt: skip
                ax.fill_between(ks, q[0], q[2], color=color, alpha=0.18, lw=0)
        task = tasks.make("parity", **lines[0].runs[0].config.task_options)
        low, high = task.min_nonzero, task.max_nonzero
        for panel in (0, 1):
            ax = axes[panel][col]
            ax.axvspan(low - 0.5, high + 0.5, color="0.85", zorder=0, lw=0)
            ax.grid(alpha=0.3)
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        axes[0][col].set_title(spec.title, fontsize="medium")
        axes[0][col].set_ylim(-0.02, 1.02)  # below chance is an answer too: systematically wrong
        axes[0][col].axhline(0.5, color="0.5", lw=0.8, ls=":")
        axes[1][col].set_xlabel("non-zero elements k")
        _legend(axes[0][col])
    axes[0][0].set_ylabel("accuracy at k")
    axes[1][0].set_ylabel("steps per token computed at k")
    fig.suptitle(
        f"parity: trained networks at every k ({BY_K_SAMPLES} fresh sequences per k), shaded: the "
        "training range; median over seeds, band 25th-75th percentile; dotted: chance",
        fontsize="medium",
    )
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
        name = f"{task}-solved.png"
        add(
            plot_solved_fraction(rows, task, root / name),
            name,
            f"{task}: fraction of seeds solved against training steps, per configuration "
            "(Kaplan-Meier: 1 - S(t); a seed that stopped unsolved is censored at its last step, "
            "one that trained to its budget at the budget, marked +; the legend gives the seeds)",
        )
        # one figure per method with a knob: the adaptive ones, then the fixed ones
        for spec in sorted(METHODS.values(), key=lambda s: (not s.adaptive, rank(s.name))):
            if spec.knob is None:
                continue
            name = f"{task}-accuracy-{spec.figure or spec.knob.symbol}.png"
            if spec.adaptive:
                ok = plot_accuracy_adaptive(rows, task, root / name, spec)
                what = f"training accuracy and {spec.title}'s {spec.repetitions_name}"
            else:
                ok = plot_accuracy_fixed(rows, task, root / name, spec)
                what = "training accuracy"
            add(ok, name, f"{task}: {what} against steps, per {spec.knob.symbol}; {CURVES_NOTE}")

        name = f"{task}-frontier.png"
        add(
            plot_frontier(rows, task, root / name),
            name,
            f"{task}: accuracy against inference cost, one point per run (its last evaluation: "
            "steps per token computed, rho for Repeat, N(t) for ACT, the sampled halting step for "
            "PonderNet), a panel per held-out set; diamonds: each configuration's median",
        )

    probes: dict[Path, tuple[np.ndarray, np.ndarray]] = {}
    for row in rows:
        if not method(row.model).adaptive or difficulty_samples < 1:
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
            f"{task}: trained ACT's {PONDER_LABEL} (PonderNet: its sampled halting step) "
            "against input difficulty",
        )

    by_k: dict[Path, tuple[np.ndarray, ...]] = {}
    beyond = [row for row in rows if row.task == "parity" and row.runs[0].config.eval_sets]
    for row in beyond if difficulty_samples > 0 else []:
        for r in row.runs:
            if rundir.has_checkpoint(r.path):
                try:
                    by_k[r.path] = probe_by_k(r.path, BY_K_SAMPLES, generator_seed)
                except RunError as e:
                    notes.append(f"{r.path.name}: {e}")
    add(
        plot_by_k(beyond, by_k, root / "parity-by-k.png"),
        "parity-by-k.png",
        "parity: trained networks' accuracy (top) and steps per token computed (bottom) against "
        "the number of non-zero elements k, inside the training range (shaded) and beyond it; "
        "a column per method, a line per configuration (median over seeds, band 25th-75th "
        "percentile)",
    )
    return figures, notes


# --------------------------------------------------------------------------------------------
# Trained networks

CHUNK = 250  # sequences per forward pass when probing trained networks


@torch.no_grad()
def probe_ponder(run_dir: Path, samples: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A trained network's repetitions (ACT: N(t) - 1 + R(t), PonderNet: the sampled halting
    step) and the input difficulty, both ``[S, T]``,
    on ``samples`` fresh sequences drawn from a CPU generator seeded with ``seed`` (the same
    sequences for every network of the same task options). Runs on the CPU in chunks; a missing
    or broken checkpoint is a ``RunError``."""
    net, task, config = train.load_model(run_dir, "cpu")
    gen = torch.Generator().manual_seed(seed)
    halt_gen = torch.Generator().manual_seed(seed + 1)  # PonderNet's halting draws, apart
    repetitions, difficulties = [], []
    for start in range(0, samples, CHUNK):
        x, _ = task.sample(min(CHUNK, samples - start), gen)  # [B, T, input_size]
        u = halting_uniforms(config, x.shape[:2], halt_gen)
        _, info = net(x) if u is None else net(x, uniforms=u)
        repetitions.append(info["repetitions"].float().numpy())  # [B, T]
        difficulties.append(task.difficulty(x).numpy())  # [B, T]
    return np.concatenate(repetitions), np.concatenate(difficulties)


@torch.no_grad()
def probe_by_k(run_dir: Path, samples: int, seed: int) -> tuple[np.ndarray, ...]:
    """A trained parity network's accuracy and steps per token at every number of non-zero
    elements k from 1 to ``bits`` (inside and beyond its training range; with first positions
    only up to ``max_nonzero``), on ``samples`` fresh
    sequences per k drawn at the run's positions from a CPU generator seeded with ``seed``:
    ``(ks [K], accuracy [K], steps [K])``. The steps are what inference computed (rho, N(t),
    the sampled halting step)."""
    net, task, config = train.load_model(run_dir, "cpu")
    if config.task != "parity":
        raise RunError(f"{run_dir}: probing by the number of non-zero elements is for parity")
    bits, positions = task.bits, task.positions
    gen = torch.Generator().manual_seed(seed)
    halt_gen = torch.Generator().manual_seed(seed + 1)  # PonderNet's halting draws, apart
    # With first positions, a k beyond max_nonzero sets inputs training never set (config
    # refuses such a held-out set): those k are not probed.
    ks = np.arange(1, (bits if positions == "random" else task.max_nonzero) + 1)
    acc, steps = [], []
    for k in ks.tolist():
        at_k = tasks.make("parity", bits=bits, min_nonzero=k, max_nonzero=k, positions=positions)
        x, y = at_k.sample(samples, gen)
        u = halting_uniforms(config, x.shape[:2], halt_gen)
        logits, info = net(x) if u is None else net(x, uniforms=u)
        acc.append(float(task.accuracy(logits, y)))
        steps.append(float(info["ponder_steps"].float().mean()))
    return ks, np.array(acc), np.array(steps)
