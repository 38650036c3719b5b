"""``ponder reproduce``: the paper's sweeps and report in one call.

The full protocol merges, per task, the table grid and the two figure grids (tau and rho) into
one sweep, so a configuration they share (ACT tau = 0.01, Repeat rho = 2, ...) trains once, and
then writes the report. ``quick`` is a reduced parity experiment sized for a laptop CPU: fewer
input bits, fewer steps and a shorter smoothing window, with enough seeds to show the spread.
"""

from __future__ import annotations

from dataclasses import dataclass

from . import bench
from . import sweep as sweeps
from .config import RunConfig, from_dict, resolve, run_name
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
