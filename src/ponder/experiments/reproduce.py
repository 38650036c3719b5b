"""``ponder reproduce``: the paper's sweeps and report in one call (``reproduce``).

The full protocol merges, per task, the table grid and the two figure grids (tau and rho) into
one sweep, so a configuration they share (ACT tau = 0.01, Repeat rho = 2, ...) trains once, and
then writes the report. ``quick`` is a reduced parity experiment sized for a laptop CPU: fewer
input bits, fewer steps and a shorter smoothing window, with enough seeds to show the spread.
``budget`` keeps the paper's grids but trains each run for fewer steps, said in the report's note
(``budget_note``). ``all`` sweeps each task into its own directory, ``OUT/parity`` and
``OUT/addition``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

import torch

from .. import rundir
from ..analysis.paper import PAPER_BUDGET, PAPER_TABLE_TITLE, PAPER_TABLES
from ..config import ConfigError, RunConfig, from_dict, resolve, run_name
from ..methods import method
from ..training.engine import resolve_device
from . import sweep as sweeps
from . import timing
from .plan import makespan

FULL_GRIDS = {
    "parity": ["parity-table", "parity-tau", "parity-rho"],
    "addition": ["addition-table", "addition-tau", "addition-rho"],
}
# Experiments beyond the Fojo paper's tables (not part of ``all``).
EXTRA_GRIDS = {
    "pondernet": ["parity-pondernet"],
    "extrapolation": ["parity-extrapolation"],
    "parity-figures": ["parity-tau", "parity-rho"],
}


@dataclass(frozen=True)
class Protocol:
    """An experiment's own defaults where they differ from its grid files'."""

    seeds: int | None = None
    budget: int | None = None
    stop_when_solved: bool | None = None
    note: str = ""


# The paper's Figures 5 and 6 show late collapses (Repeat rho = 11 falls from 0.99 to 0.57,
# small tau is unstable) that stopping once solved would hide: every run trains its budget.
PROTOCOLS = {
    "parity-figures": Protocol(
        seeds=3,
        budget=200_000,
        stop_when_solved=False,
        note=(
            "**Figures 5 and 6 (`reproduce parity-figures`).** The paper's grids parity-tau (the "
            "RNN and ACT at 7 time penalties) and parity-rho (Repeat rho = 1 to 12) on 64-bit "
            "parity, {seeds}, {budget:,} training steps per run (the paper's: 2,000,000), "
            "and every run trains its whole budget (no stop once solved), so that "
            "late collapses stay in view. The paper's curves are its single runs over 2,000,000 "
            "steps; compare ours with them up to {budget:,}."
        ),
    ),
}


def experiments() -> dict[str, list[str]]:
    """Every experiment ``reproduce`` knows and its grids (read when called)."""
    return {**FULL_GRIDS, **EXTRA_GRIDS}


@dataclass(frozen=True)
class Quick:
    """The reduced parity experiment of ``--quick`` (see QUICK_NOTE for why these values)."""

    bits: int = 24
    steps: int = 30_000
    log_every: int = 200
    solve_window: int = 11
    seeds: int = 3
    taus: tuple[float, ...] = (0.01,)
    rhos: tuple[int, ...] = (2, 3)


QUICK = Quick()
QUICK_NOTE = (
    "**Reduced experiment (`--quick`).** Parity with {bits} input bits instead of 64, at most "
    "{steps:,} training steps instead of 2,000,000, accuracy logged every {log_every} steps and "
    "smoothed over {solve_window} points instead of 71 (cubic Savitzky-Golay, 98% criterion as in "
    "the paper), {seeds} seeds per configuration, and only the configurations: RNN, ACT tau in "
    "{taus}, Repeat rho in {rhos}. The network, batch size, optimiser and initialisation are the "
    "paper's. The paper's published numbers are for 64 bits and are not comparable step for "
    "step; the qualitative result to look for is the plain RNN failing where ACT and Repeat "
    "solve the task."
)


def quick_grid() -> sweeps.Grid:
    q = QUICK
    base = {
        "task": "parity",
        "task_options": {"bits": q.bits},
        "steps": q.steps,
        "log_every": q.log_every,
        "solve_window": q.solve_window,
        "stop_when_solved": True,
        "progress": False,
    }
    runs = []
    points = [{"model": "rnn"}]
    points += [{"model": "act", "tau": t} for t in q.taus]
    points += [{"model": "repeat", "rho": r} for r in q.rhos]
    for point in points:
        for seed in range(q.seeds):
            config = resolve(from_dict({**base, **point, "seed": seed}))
            runs.append(sweeps.Run(run_name(config), config))
    note = QUICK_NOTE.format(
        bits=q.bits, steps=q.steps, log_every=q.log_every, solve_window=q.solve_window,
        seeds=q.seeds, taus=", ".join(f"{t:g}" for t in q.taus),
        rhos=", ".join(str(r) for r in q.rhos),
    )  # fmt: skip
    return sweeps.Grid(name="parity-quick", runs=runs, note=note)


@dataclass(frozen=True)
class QuickExtrapolation:
    """The reduced experiment of ``extrapolation --quick`` (see QUICK_EXTRAPOLATION_NOTE)."""

    bits: int = 8
    train_max: int = 4  # trained with 1..4 non-zero, extrapolation 5..8
    steps: int = 4_000
    log_every: int = 100
    solve_window: int = 11
    seeds: int = 3
    max_ponder: int = 10  # PonderNet's N
    rhos: tuple[int, ...] = (2, 3, 4, 5, 6, 7, 8, 9, 10)  # both sides of every adaptive cost
    taus: tuple[float, ...] = (0.01, 0.001)
    lambdas: tuple[float, ...] = (0.2, 0.5)


QUICK_EXTRAPOLATION = QuickExtrapolation()
QUICK_EXTRAPOLATION_NOTE = (
    "**Reduced experiment (`extrapolation --quick`).** Parity with {bits} elements at random "
    "positions instead of the full grid's 16 (PonderNet's 96), trained with 1 to {train_max} "
    "non-zero and evaluated in distribution and on an extrapolation set with {lo} to {bits} "
    "non-zero; {steps:,} training steps per run (every run trains them all), accuracy logged "
    "every {log_every} steps and smoothed over {solve_window} points; {seeds} seeds per "
    "configuration; Repeat at rho in {rhos}; PonderNet with N = {max_ponder} instead of 20 and "
    "lambda_p in {lambdas}. The methods, the network (tanh RNN of 128 units, batch 128) and the "
    "optimiser are the full grid's. A run that has not learned its training distribution says "
    "nothing about extrapolation: read the in-distribution columns first."
)


def quick_extrapolation_grid() -> sweeps.Grid:
    q = QUICK_EXTRAPOLATION
    base = {
        **extrapolation_options(q.bits),
        "steps": q.steps,
        "log_every": q.log_every,
        "solve_window": q.solve_window,
        "stop_when_solved": False,
        "progress": False,
    }
    points = [{"model": "rnn"}]
    points += [{"model": "repeat", "rho": r} for r in q.rhos]
    points += [{"model": "act", "tau": t} for t in q.taus]
    points += [
        {"model": "pondernet", "lambda_p": lam, "max_ponder": q.max_ponder} for lam in q.lambdas
    ]
    runs = []
    for point in points:
        for seed in range(q.seeds):
            config = resolve(from_dict({**base, **point, "seed": seed}))
            runs.append(sweeps.Run(run_name(config), config))
    note = QUICK_EXTRAPOLATION_NOTE.format(
        bits=q.bits, train_max=q.train_max, lo=q.train_max + 1, steps=q.steps,
        log_every=q.log_every, solve_window=q.solve_window, seeds=q.seeds,
        max_ponder=q.max_ponder, rhos=", ".join(map(str, q.rhos)),
        lambdas=", ".join(f"{lam:g}" for lam in q.lambdas),
    )  # fmt: skip
    return sweeps.Grid(name="parity-extrapolation-quick", runs=runs, note=note)


def extrapolation_options(elements: int) -> dict:
    """Parity of ``elements`` at random positions, trained with 1 to elements // 2 non-zero,
    with an extrapolation set of the rest (elements // 2 + 1 to elements): run config keys."""
    if isinstance(elements, bool) or not isinstance(elements, int) or elements < 2:
        raise ConfigError(f"--elements must be an integer >= 2, got {elements!r}")
    half = elements // 2
    return {
        "task": "parity",
        "task_options": {"bits": elements, "max_nonzero": half, "positions": "random"},
        "eval_sets": {"extrapolation": {"min_nonzero": half + 1, "max_nonzero": elements}},
    }


def extrapolation_grid(
    elements: int | None = None, seeds: int | None = None, budget: int | None = None
) -> sweeps.Grid:
    """The extrapolation study's grid (parity-extrapolation), at ``elements`` if given: the
    same methods and knobs on another size of the problem, said in the grid's note."""
    path = sweeps.builtin_grid("parity-extrapolation")
    if elements is None:
        grid = sweeps.load_grid(path, seeds=seeds, budget=budget, progress=False)
        return grid
    options = extrapolation_options(elements)
    grid = sweeps.load_grid(path, seeds=seeds, budget=budget, progress=False, **options)
    half = elements // 2
    note = (
        f"**Size (`--elements {elements}`).** Parity with {elements} elements at random "
        f"positions, trained with 1 to {half} non-zero, extrapolation set {half + 1} to "
        f"{elements}; otherwise the grid parity-extrapolation."
    )
    return dataclasses.replace(grid, note=note)


@dataclass(frozen=True)
class QuickAddition:
    """The reduced addition of ``addition --quick``, calibrated on 2 CPU cores (RESULTS.md,
    "Addition on a laptop"; QUICK_ADDITION_NOTE says what was reduced)."""

    numbers: int = 2
    digits: int = 3
    hidden: int = 128
    # In calibration the plain LSTM was at 0.89 held-out accuracy at 80k steps at this size,
    # Repeat rho = 3 reached 98% near 70k and ACT tau = 1e-2 near 55k (RESULTS.md).
    steps: int = 100_000
    log_every: int = 500
    solve_window: int = 21
    seeds: int = 3
    minutes: str = "about 70"  # measured: 71 on 2 quiet cores (RESULTS.md)


QUICK_ADDITION = QuickAddition()
QUICK_ADDITION_NOTE = (
    "**Reduced experiment (`addition --quick`).** Addition of {numbers} numbers of up to "
    "{digits} digits instead of 5 of up to 5 (the same task: running-sum targets of {places} "
    'digits with the "number has ended" class, a sequence correct only if every digit of '
    "every step is), an LSTM of {hidden} cells instead of 512, at most {steps:,} training steps "
    "instead of 2,000,000, accuracy logged every {log_every} steps and smoothed over "
    "{solve_window} points instead of 71, {seeds} seeds per configuration. Table 2's nine "
    "configurations, batch size (32), ACT's M (20), optimiser and initialisation are the "
    "paper's. The paper's numbers are for the full problem and are not comparable step for "
    "step; compare the pattern: which configurations solve, and in which order."
)


def quick_addition_grid() -> sweeps.Grid:
    """Table 2's grid (addition-table) at the calibrated reduced size."""
    q = QUICK_ADDITION
    grid = sweeps.load_grid(
        sweeps.builtin_grid("addition-table"),
        seeds=q.seeds,
        budget=q.steps,
        progress=False,
        task_options={"numbers": q.numbers, "digits": q.digits},
        hidden=q.hidden,
        log_every=q.log_every,
        solve_window=q.solve_window,
    )
    note = QUICK_ADDITION_NOTE.format(
        numbers=q.numbers, digits=q.digits, places=q.digits + 1, hidden=q.hidden, steps=q.steps,
        log_every=q.log_every, solve_window=q.solve_window, seeds=q.seeds,
    )  # fmt: skip
    return dataclasses.replace(grid, name="addition-quick", note=note)


QUICK_EXPERIMENTS = ("parity", "extrapolation", "addition")
QUICK_SIZES = {"parity": QUICK, "extrapolation": QUICK_EXTRAPOLATION, "addition": QUICK_ADDITION}


def quick_grid_of(what: str) -> sweeps.Grid:
    """The reduced grid of ``--quick`` for an experiment of ``QUICK_EXPERIMENTS``."""
    grids = {
        "parity": quick_grid,
        "extrapolation": quick_extrapolation_grid,
        "addition": quick_addition_grid,
    }
    return grids[what]()


def full_grid(task: str, seeds: int | None = None, budget: int | None = None) -> sweeps.Grid:
    """The paper's grids for ``task`` as one sweep; ``budget`` training steps per run instead of
    the paper's 2,000,000 (said in the grid's note, which the report puts at its top)."""
    protocol = PROTOCOLS.get(task, Protocol())
    seeds = protocol.seeds if seeds is None else seeds
    budget = protocol.budget if budget is None else budget
    grids = [
        sweeps.load_grid(
            sweeps.builtin_grid(name),
            seeds=seeds,
            budget=budget,
            stop_when_solved=protocol.stop_when_solved,
            progress=False,
        )
        for name in experiments()[task]
    ]
    grid = sweeps.merge_grids(grids, f"{task}-full")
    if protocol.note:
        some = grid.runs[0].config
        n_seeds = len({r.config.seed for r in grid.runs})
        seeds_text = f"{n_seeds} seed{'s' if n_seeds > 1 else ''}"
        note = protocol.note.format(seeds=seeds_text, budget=some.steps)
        grid = dataclasses.replace(grid, note=note)
    elif budget is not None and budget != PAPER_BUDGET:
        note = (
            budget_note(task, budget)
            if task in FULL_GRIDS
            else (
                f"**Budget (`--budget {budget}`).** {budget:,} training steps per run instead of "
                f"the grid's {PAPER_BUDGET:,}: a configuration unsolved here may still solve later."
            )
        )
        grid = dataclasses.replace(grid, note=note)
    return grid


def _paper_steps(text: str) -> int | None:
    """A step count as the paper's tables write it ("53k") as an int; None for "-"."""
    return int(float(text[:-1]) * 1000) if text.endswith("k") else None


def budget_note(task: str, budget: int) -> str:
    """What a step budget other than the paper's 2,000,000 means for ``task``'s results: the
    rows of the paper's table it cannot reproduce, or may solve that the paper did not."""
    instead = f"The budget is {budget:,} training steps per run instead of {PAPER_BUDGET:,}"
    if budget > PAPER_BUDGET:
        return (
            f"**Longer budget (`--budget {budget}`).** {instead}: a configuration the paper did "
            f"not solve within {PAPER_BUDGET:,} steps may solve here later. Otherwise this is "
            "the paper's protocol."
        )
    later = []
    for (model, knob), (_, steps, _) in PAPER_TABLES.get(task, {}).items():
        at = _paper_steps(steps)
        if at is not None and at > budget:
            later.append(f"{method(model).label_at(knob)} at {steps}")
    where = ""
    if task in PAPER_TABLES:
        title = PAPER_TABLE_TITLE[task].split(":")[0]
        rows = ", ".join(later) if later else f"none of {title}'s solved rows took that long"
        where = f" ({title}: {rows})" if later else f" ({rows})"
    return (
        f"**Reduced budget (`--budget {budget}`).** {instead}: a configuration the paper solved "
        f"later than {budget:,} steps cannot be solved here{where}, and a configuration "
        "unsolved here may still solve with the paper's budget. Otherwise this is the paper's "
        "protocol: its grids, problem, networks and criterion."
    )


# A halting bias at which h = sigmoid(-30), about 1e-13: no token halts before the cap.
AT_CAP = -30.0


def measure_steps_per_second(
    config: RunConfig, k: int = 1, steps: int = 5, at_cap: bool = False
) -> float:
    """Training steps per second of ``config`` on its device as the sweep trains it: one run
    (``train.run``'s step) or an ensemble of ``k`` (seeds 0..k-1; CUDA graphs on a GPU),
    timed after warm-up. An ensemble step advances all ``k`` runs. ``at_cap``: with the
    halting unit held so that every token ponders to the cap (for a method whose cost
    follows its halting, ``MethodSpec.cost_follows_halting``)."""
    device = resolve_device(config.device)
    budget = timing.Timing(warmup=1, repeats=1, seconds=1e9, max_steps=steps)
    if k == 1:
        step = timing.single_step(config, device, AT_CAP if at_cap else None)
    else:
        step = timing.ensemble_step(config, device, k, (AT_CAP,) * k if at_cap else ())
    return timing.measure(step, device, budget)


@dataclass(frozen=True)
class Estimate:
    """What a sweep will take here, measured before it starts: ``hours`` of wall time if every
    run trains its whole budget (runs that stop once solved take less), the jobs as the sweep
    will build them (``plan_jobs``: ensembles of up to ``batch`` runs) started ``workers`` at
    a time, and ``peak_gib``, the most memory one job took while it was timed (GPU memory
    allocated on a GPU, the process's peak resident memory on a CPU; None if unknown).

    A method whose cost follows what its halting unit learns (ACT: ``pondering``) is timed
    twice: held at its cap, for ``hours``, a bound, and as it ponders when it starts, for
    ``hours_at_start``, what the sweep would take were it to ponder as it starts (2 steps a
    token; on the reduced additions of RESULTS.md ACT learned 2 to 12 a number of its cap of
    20, and with a large tau it falls to 1)."""

    hours: float
    jobs: int
    largest: int  # runs in the largest ensemble
    workers: int
    device: str
    peak_gib: float | None
    hours_at_start: float | None = None  # None: no job's cost follows its halting
    pondering: tuple[str, ...] = ()  # the titles of the methods timed both ways


def _peak_gib(device: torch.device) -> float | None:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    try:
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux
    except (ImportError, OSError):
        return None


def estimate(
    grid: sweeps.Grid, sweep_dir: Path, workers: int, batch: int, executor=None
) -> Estimate:
    """Time one step of every job shape the sweep will build (each configuration, at the size
    of its ensembles) on the device it will train on, and add up what is left to train."""
    on_gpu = getattr(executor, "on_gpu", sweeps.on_gpu_here)
    held = getattr(executor, "workers", None)  # what the sweep will plan with, where it says
    workers = held if isinstance(held, int) else workers
    jobs = sweeps.spread(sweeps.plan_jobs(grid.runs, sweep_dir, batch, on_gpu), workers)
    device = resolve_device(grid.runs[0].config.device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    rates: dict[tuple[str, int, bool], float] = {}
    durations, at_start, pondering = [], [], set()

    def duration(job: list, at_cap: bool) -> float:
        config, k = job[0][0], len(job)
        spec = method(config.model)
        key = (config.key(ignore=("seed", *spec.per_member)), k, at_cap)
        if key not in rates:
            rates[key] = measure_steps_per_second(config, k, at_cap=at_cap)
        return max(c.steps - _done_steps(d) for c, d in job) / rates[key]

    for job in jobs:
        spec = method(job[0][0].model)
        varies = spec.cost_follows_halting
        if varies:
            pondering.add(spec.title)
        durations.append(duration(job, at_cap=varies))
        at_start.append(duration(job, at_cap=False) if varies else durations[-1])
    return Estimate(
        hours=makespan(durations, workers, in_order=True) / 3600,  # the sweep's order
        jobs=len(jobs),
        largest=max((len(j) for j in jobs), default=0),
        workers=workers,
        device=device.type,
        peak_gib=_peak_gib(device) if jobs else None,
        hours_at_start=makespan(at_start, workers, in_order=True) / 3600 if pondering else None,
        pondering=tuple(sorted(pondering)),
    )


def _done_steps(run_dir: Path) -> int:
    """The steps a run has already logged: about where it resumes (its checkpoint is at most
    ``checkpoint_every`` logs behind), read without loading the checkpoint."""
    return rundir.last_logged_step(run_dir) if run_dir.exists() else 0


def reproduce(
    what: str,
    out: str | Path,
    *,
    quick: bool = False,
    seeds: int | None = None,
    budget: int | None = None,
    executor: sweeps.Executor | None = None,
    jobs: int = 1,
    batch: int = 16,
    cuda_graphs: bool | None = None,
    elements: int | None = None,
) -> int:
    """Sweep ``what`` (parity, addition, all, or an ``EXTRA_GRIDS`` experiment such as
    pondernet) and write its report; returns the exit status
    (0 when every run finished, 1 when some did not).

    One task sweeps into ``out``; ``all`` sweeps each task into ``out/TASK`` and writes each
    report there. Every task's directory is checked before anything trains, so a clash with
    runs already there is a ``RunError`` at once. ``seeds``, ``budget``: seeds per
    configuration and training steps per run of the full protocol (its defaults: 5 and the
    paper's 2,000,000; not with ``quick``). ``jobs``: the runs trained at once, for the
    time estimate of the full protocol. ``cuda_graphs=False`` trains every step eagerly (a
    resumable setting: the runs keep their directories). ``elements``: the size of the
    extrapolation study's parity (``extrapolation_grid``).
    """
    from ..analysis.report import build_report

    known = experiments()
    if what not in (*known, "all"):
        raise ConfigError(f"unknown experiment {what!r} (known: {', '.join(known)}, all)")
    names = list(FULL_GRIDS) if what == "all" else [what]
    if quick and (len(names) != 1 or names[0] not in QUICK_EXPERIMENTS):
        raise ConfigError(
            "--quick is for parity, extrapolation and addition: `ponder reproduce parity --quick`"
        )
    sizes = QUICK_SIZES.get(names[0], QUICK)
    if quick and seeds is not None:
        raise ConfigError(f"--quick runs {sizes.seeds} seeds; --seeds is for the full protocol")
    if quick and budget is not None:
        raise ConfigError(
            f"--quick trains {sizes.steps:,} steps per run; --budget is for the full protocol"
        )
    if elements is not None and (what != "extrapolation" or quick):
        raise ConfigError("--elements is for the full extrapolation study (without --quick)")
    out = Path(out)
    plans = []
    for task in names:
        if quick:
            grid = quick_grid_of(task)
        elif elements is not None:
            grid = extrapolation_grid(elements, seeds=seeds, budget=budget)
        else:
            grid = full_grid(task, seeds=seeds, budget=budget)
        if cuda_graphs is not None:
            grid = sweeps.override(grid, cuda_graphs=cuda_graphs)
        plans.append((task, grid, out / task if what == "all" else out))
    for _, grid, sweep_dir in plans:  # refuse a clash before any training
        sweeps.check_grid(grid, sweep_dir)
    for task, grid, sweep_dir in plans:
        _announce(task, grid, quick, jobs, sweep_dir, batch, executor)
    code = 0
    for _, grid, sweep_dir in plans:
        code = max(code, sweeps.run_sweep(grid, sweep_dir, executor, batch=batch))
        path = build_report(sweep_dir, note=grid.note or None)
        print(f"report: {path}", flush=True)
    return code


def _announce(
    task: str,
    grid: sweeps.Grid,
    quick: bool,
    jobs: int,
    sweep_dir: Path,
    batch: int,
    executor: sweeps.Executor | None,
) -> None:
    """What is about to run, and for the full protocol how long and how much memory it may
    take here (``estimate``: measured on this device, with the sweep's own ensembles)."""
    if quick:
        minutes = {"parity": "2 to 4", "addition": QUICK_ADDITION.minutes}.get(task, "under 10")
        print(f"ponder reproduce {task} --quick: a reduced experiment, "
              f"{len(grid.runs)} runs, {minutes} minutes on 2 CPU cores", flush=True)  # fmt: skip
        return
    steps = max(r.config.steps for r in grid.runs)
    if task in FULL_GRIDS:
        scale = "at full scale" if steps == PAPER_BUDGET else f"with a budget of {steps:,} steps"
        what = f"the paper's protocol {scale}"
    else:
        bits = sorted({r.config.task_options.get("bits") for r in grid.runs} - {None})
        size = f" on {bits[0]} elements" if len(bits) == 1 and task == "extrapolation" else ""
        what = f"the grid {grid.name}{size}"
    gpu = "; a GPU is recommended" if task in FULL_GRIDS else ""
    print(f"ponder reproduce {task}: {what}, {len(grid.runs)} runs of up to {steps:,} steps"
          f"{gpu}. Measuring throughput...", flush=True)  # fmt: skip
    e = estimate(grid, sweep_dir, jobs, batch, executor)
    stops = any(r.config.stop_when_solved for r in grid.runs)
    memory = "" if e.peak_gib is None else f", each taking up to about {e.peak_gib:,.1f} GiB"
    where = "GPU memory" if e.device == "cuda" else "of memory (measured here)"
    shape = "each run on its own" if e.largest == 1 else f"ensembles of up to {e.largest} runs"
    print(f"expect up to {e.hours:,.1f} hours on {e.device} with --jobs {jobs}: {e.jobs} jobs "
          f"({shape}), {e.workers} at a time{memory}"
          f"{' ' + where if memory else ''}{'; less: runs stop once solved' if stops else ''}. "
          "Ctrl-C and the same command resumes", flush=True)  # fmt: skip
    if e.hours_at_start is not None:
        who = " and ".join(e.pondering)
        print(f"  the bound holds every {who} run at its cap on every token; pondering as it "
              f"does when it starts, {e.hours_at_start:,.1f} hours. Usually the sweep falls "
              f"between; it takes less where {who} learns to ponder less than at its start or "
              "runs stop once solved", flush=True)  # fmt: skip
