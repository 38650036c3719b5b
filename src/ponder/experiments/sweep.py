"""A sweep: a grid's runs planned into jobs (``plan``), trained by an executor
(``executors``), watched (``monitor``). Running the same sweep again skips finished runs and
resumes interrupted ones from their checkpoints.

The names a sweep's user needs are here too (``load_grid``, ``InlineExecutor`` ...), so that
``from ponder.experiments import sweep`` is enough to run one.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from .. import rundir
from ..config import run_name
from ..rundir import RunError, atomic_write
from .executors import Executor, InlineExecutor, LocalExecutor, execute_job, on_gpu_here, run_status
from .grid import (
    Grid,
    Run,
    builtin_grid,
    builtin_grids,
    check_grid,
    load_grid,
    merge_grids,
    override,
)
from .monitor import Monitor
from .plan import check_batch, plan_jobs, spread

# --------------------------------------------------------------------------------------------
# The sweep


@dataclass
class SweepResult:
    statuses: dict[str, str]

    @property
    def all_finished(self) -> bool:
        return all(s in ("done", "diverged") for s in self.statuses.values())

    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for s in self.statuses.values():
            out[s] = out.get(s, 0) + 1
        return out

    @property
    def unfinished(self) -> list[str]:
        return [n for n, s in self.statuses.items() if s not in ("done", "diverged")]


def sweep(
    grid: Grid,
    sweep_dir: str | Path,
    executor: Executor | None = None,
    progress: bool = True,
    batch: int = 16,
) -> SweepResult:
    """Run every run of ``grid`` under ``sweep_dir``; returns each run's final status.

    ``batch``: the most runs trained together as one ensemble (1 trains every run alone).
    ``sweep_dir`` is made absolute first, so that workers started elsewhere (Ray) see it.
    """
    check_batch(batch)
    sweep_dir = Path(os.path.abspath(sweep_dir))
    rundir.check_out_dir(sweep_dir)
    check_grid(grid, sweep_dir)
    executor = executor or LocalExecutor()
    _check_devices(grid, executor)
    with rundir.Lock(sweep_dir, "sweep"):
        return _sweep_locked(grid, sweep_dir, executor, progress, batch)


def _check_devices(grid: Grid, executor: Executor) -> None:
    """Refuse runs that ask for CUDA where the executor's jobs find none, before a worker
    starts (the executor knows: a Ray cluster's workers may have GPUs this process lacks)."""
    if any(r.config.device == "cuda" for r in grid.runs) and not executor.on_gpu("cuda"):
        raise RunError("--device cuda was asked for but PyTorch sees no CUDA GPU here")


def _sweep_locked(
    grid: Grid, sweep_dir: Path, executor: Executor, progress: bool, batch: int
) -> SweepResult:
    busy = [(r.name, pid) for r in grid.runs if (pid := rundir.writer_pid(sweep_dir / r.name))]
    if busy:
        name, pid = busy[0]
        raise rundir.Busy(
            f"{sweep_dir / name} is being written by process {pid} (a ponder train, or a "
            "worker of a sweep that was killed); wait for it to end"
        )
    rundir.clear_running(sweep_dir)  # markers left by a sweep that was killed
    rundir.remove_stale_tmp(sweep_dir)
    damaged = _damaged(grid, sweep_dir)
    for name, why in damaged.items():
        print(f"sweep {grid.name}: run {name} is damaged and left as it is: {why}", flush=True)
    manifest = {
        "name": grid.name,
        "description": grid.description,
        "note": grid.note,
        "runs": {r.name: r.config.to_dict() for r in grid.runs},
    }
    atomic_write(sweep_dir / "sweep.json", json.dumps(manifest, indent=1))
    todo = [r for r in grid.runs if r.name not in damaged]
    jobs = plan_jobs(todo, sweep_dir, batch, getattr(executor, "on_gpu", on_gpu_here))
    workers = getattr(executor, "workers", 1)
    jobs = spread(jobs, workers if isinstance(workers, int) else 1)
    skipped = len(todo) - sum(len(j) for j in jobs)
    if progress:
        print(
            f"sweep {grid.name}: {len(grid.runs)} runs, {skipped} already finished, "
            f"{sum(len(j) for j in jobs)} to run in {sweep_dir}",
            flush=True,
        )
    monitor = Monitor(grid.runs, sweep_dir, enabled=progress)
    monitor.start()
    try:
        executor.run(jobs, sweep_dir)
    finally:
        monitor.stop()
    statuses = {r.name: run_status(sweep_dir / r.name, r.config) for r in grid.runs}
    return SweepResult({**statuses, **{name: "damaged" for name in damaged}})


def _damaged(grid: Grid, sweep_dir: Path) -> dict[str, str]:
    """The runs still to train whose files cannot be read whole, and why (one line each):
    the sweep leaves them as they are and trains the others."""
    out = {}
    for r in grid.runs:
        run_dir = sweep_dir / r.name
        try:
            if run_status(run_dir, r.config) not in ("done", "diverged"):
                rundir.check_readable(run_dir)
        except rundir.DamagedRun as e:
            out[r.name] = str(e)
    return out


def run_sweep(
    grid: Grid, sweep_dir: str | Path, executor: Executor | None = None, batch: int = 16
) -> int:
    """``sweep`` as the commands run it, with its outcome on stdout; returns the exit status:
    0 when every run finished (done or diverged), 1 when some did not."""
    result = sweep(grid, sweep_dir, executor, batch=batch)
    counts = ", ".join(f"{n} {s}" for s, n in sorted(result.counts().items()))
    print(f"sweep {grid.name}: {counts} -> {sweep_dir}")
    if result.unfinished:
        names = ", ".join(result.unfinished)
        print(f"not finished: {names} (see {rundir.ERROR} in their directories)")
    return 0 if result.all_finished else 1


__all__ = [
    "Executor",
    "Grid",
    "InlineExecutor",
    "LocalExecutor",
    "Run",
    "SweepResult",
    "builtin_grid",
    "builtin_grids",
    "check_grid",
    "execute_job",
    "load_grid",
    "merge_grids",
    "on_gpu_here",
    "override",
    "plan_jobs",
    "run_name",
    "run_status",
    "run_sweep",
    "spread",
    "sweep",
]
