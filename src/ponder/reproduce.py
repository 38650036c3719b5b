"""``ponder reproduce``: the paper's sweeps and report in one call (``reproduce``).

The full protocol merges, per task, the table grid and the two figure grids (tau and rho) into
one sweep, so a configuration they share (ACT tau = 0.01, Repeat rho = 2, ...) trains once, and
then writes the report. ``quick`` is a reduced parity experiment sized for a laptop CPU: fewer
input bits, fewer steps and a shorter smoothing window, with enough seeds to show the spread.
``all`` sweeps each task into its own directory, ``OUT/parity`` and ``OUT/addition``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from . import bench
from . import sweep as sweeps
from .config import ConfigError, RunConfig, from_dict, resolve, run_name
from .engine import resolve_device

FULL_GRIDS = {
    "parity": ["parity-table", "parity-tau", "parity-rho"],
    "addition": ["addition-table", "addition-tau", "addition-rho"],
}


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


def full_grid(task: str, seeds: int | None = None) -> sweeps.Grid:
    grids = [
        sweeps.load_grid(sweeps.builtin_grid(name), seeds=seeds, progress=False)
        for name in FULL_GRIDS[task]
    ]
    return sweeps.merge_grids(grids, f"{task}-full")


def measure_steps_per_second(config: RunConfig, steps: int = 5) -> float:
    """Training steps per second of ``config`` on its device: ``train.run``'s step (CUDA graphs
    on a GPU), timed after warm-up."""
    device = resolve_device(config.device)
    timing = bench.Timing(warmup=1, repeats=1, seconds=1e9, max_steps=steps)
    return bench.measure(bench.single_step(config, device), device, timing)


def estimate_hours(grid: sweeps.Grid, jobs: int) -> float:
    """Worst-case hours (every run to its full budget) from a short timing of each config."""
    seen: dict[str, float] = {}
    total = 0.0
    for r in grid.runs:
        key = r.config.key(ignore=("seed",))
        if key not in seen:
            seen[key] = measure_steps_per_second(r.config)
        total += r.config.steps / seen[key]
    return total / 3600 / max(1, jobs)


def reproduce(
    what: str,
    out: str | Path,
    *,
    quick: bool = False,
    seeds: int | None = None,
    executor: sweeps.Executor | None = None,
    jobs: int = 1,
    batch: int = 16,
    cuda_graphs: bool | None = None,
) -> int:
    """Sweep ``what`` (parity, addition or all) and write its report; returns the exit status
    (0 when every run finished, 1 when some did not).

    One task sweeps into ``out``; ``all`` sweeps each task into ``out/TASK`` and writes each
    report there. Every task's directory is checked before anything trains, so a clash with
    runs already there is a ``RunError`` at once. ``jobs``: the runs trained at once, for the
    time estimate of the full protocol. ``cuda_graphs=False`` trains every step eagerly (a
    resumable setting: the runs keep their directories).
    """
    from .report import build_report

    if what not in (*FULL_GRIDS, "all"):
        raise ConfigError(f"unknown experiment {what!r} (known: {', '.join(FULL_GRIDS)}, all)")
    names = list(FULL_GRIDS) if what == "all" else [what]
    if quick and names != ["parity"]:
        raise ConfigError("--quick reproduces parity only: use `ponder reproduce parity --quick`")
    if quick and seeds is not None:
        raise ConfigError(f"--quick runs {QUICK.seeds} seeds; --seeds is for the full protocol")
    out = Path(out)
    plans = []
    for task in names:
        grid = quick_grid() if quick else full_grid(task, seeds=seeds)
        if cuda_graphs is not None:
            grid = sweeps.override(grid, cuda_graphs=cuda_graphs)
        plans.append((task, grid, out / task if what == "all" else out))
    for _, grid, sweep_dir in plans:  # refuse a clash before any training
        sweeps.check_grid(grid, sweep_dir)
    for task, grid, _ in plans:
        _announce(task, grid, quick, jobs)
    code = 0
    for _, grid, sweep_dir in plans:
        code = max(code, sweeps.run_sweep(grid, sweep_dir, executor, batch=batch))
        path = build_report(sweep_dir, note=grid.note or None)
        print(f"report: {path}", flush=True)
    return code


def _announce(task: str, grid: sweeps.Grid, quick: bool, jobs: int) -> None:
    """What is about to run, and for the full protocol how long it may take here."""
    if quick:
        print(f"ponder reproduce {task} --quick: a reduced experiment, "
              f"{len(grid.runs)} runs, about 4 minutes on 2 CPU cores", flush=True)  # fmt: skip
        return
    print(f"ponder reproduce {task}: the paper's protocol at full scale, "
          f"{len(grid.runs)} runs of up to 2,000,000 steps; a GPU is recommended. "
          "Measuring throughput...", flush=True)  # fmt: skip
    hours = estimate_hours(grid, jobs)
    print(f"expect up to {hours:,.1f} hours here with --jobs {jobs} (less: runs stop once "
          "solved); Ctrl-C and the same command resumes", flush=True)  # fmt: skip
