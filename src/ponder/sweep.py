"""Experiment grids -> runs -> executors.

A grid is a YAML file a person can read::

    name: parity-table
    description: Table 1 of Fojo et al. (2018)
    base: {task: parity}           # a run config; the rest of its fields take their defaults
    seeds: 5                       # runs per configuration, seeds 0..seeds-1
    budget: 2000000                # training steps per run (the paper's)
    stop_when_solved: true
    axes:                          # groups of configurations; a list value is an axis
      - {model: rnn}
      - {model: act, tau: [0.1, 0.01, 0.005, 0.001]}
      - {model: repeat, rho: [2, 3, 5, 8]}

Each group expands to the product of its axes, times the seeds. A run's directory is named from
its model and the values its group varies (``act-tau0.01-seed3``). Running the same sweep again
skips finished runs and resumes interrupted ones from their checkpoints.

Execution is a plain function of (config, run directory): ``execute_job`` trains the runs of one
job in the calling process, and an executor decides where jobs run. ``LocalExecutor`` starts one
``python -m ponder.sweep`` process per job, ``--jobs`` at a time, so a crashed run cannot take
the sweep down with it.
"""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys
import threading
import traceback
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, Protocol

from . import rundir
from .config import ConfigError, RunConfig, from_dict, load_yaml, resolve, run_name
from .rundir import RunError, atomic_write

GRID_KEYS = {"name", "description", "base", "seeds", "budget", "stop_when_solved", "axes", "note"}


@dataclass(frozen=True)
class Run:
    """One run of a sweep: its directory name and its resolved config."""

    name: str
    config: RunConfig


@dataclass
class Grid:
    name: str
    runs: list[Run]
    description: str = ""
    note: str = ""


# --------------------------------------------------------------------------------------------
# Grids


def builtin_grid(name: str) -> Path:
    """Path of a grid shipped with ponder (``parity-table`` ...), by name."""
    path = Path(str(resources.files("ponder") / "configs" / f"{name}.yaml"))
    if not path.exists():
        known = ", ".join(sorted(builtin_grids()))
        raise ConfigError(f"no built-in grid {name!r} (known: {known})")
    return path


def builtin_grids() -> list[str]:
    folder = Path(str(resources.files("ponder") / "configs"))
    return sorted(p.stem for p in folder.glob("*.yaml"))


def load_grid(
    path: str | Path, seeds: int | None = None, budget: int | None = None, **overrides: Any
) -> Grid:
    """Read and expand a grid file; every expanded config is validated (``ConfigError``)."""
    path = Path(path)
    data = load_yaml(path)
    where = f"grid {path.name}"
    unknown = sorted(set(data) - GRID_KEYS)
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {', '.join(unknown)}")
    base = data.get("base") or {}
    if not isinstance(base, dict):
        raise ConfigError(f"{where}: base must be a mapping of run config keys")
    axes = data.get("axes")
    if not isinstance(axes, list) or not axes:
        raise ConfigError(f"{where}: axes must be a non-empty list of mappings")
    n_seeds = data.get("seeds", 5) if seeds is None else seeds
    steps = data.get("budget", base.get("steps", 2_000_000)) if budget is None else budget
    for key, value in (("seeds", n_seeds), ("budget", steps)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ConfigError(f"{where}: {key} must be a positive integer, got {value!r}")
    stop = data.get("stop_when_solved", base.get("stop_when_solved", True))
    if not isinstance(stop, bool):
        raise ConfigError(f"{where}: stop_when_solved must be true or false")
    runs: dict[str, Run] = {}
    for i, group in enumerate(axes):
        if not isinstance(group, dict) or not group:
            raise ConfigError(f"{where}: axes[{i}] must be a non-empty mapping")
        for point, varied in _expand(group, f"{where}: axes[{i}]"):
            for seed in range(n_seeds):
                data_run = _merge(base, point)
                data_run.update(seed=seed, steps=steps, stop_when_solved=stop, **overrides)
                try:
                    config = resolve(from_dict(data_run))
                except ConfigError as e:
                    raise ConfigError(f"{where}: axes[{i}]: {e}") from None
                name = run_name(config, varied)
                if name in runs and runs[name].config != config:
                    raise ConfigError(f"{where}: two different runs would be named {name}")
                runs[name] = Run(name, config)
    return Grid(
        name=str(data.get("name", path.stem)),
        runs=list(runs.values()),
        description=str(data.get("description", "")),
        note=str(data.get("note", "")),
    )


def merge_grids(grids: Iterable[Grid], name: str) -> Grid:
    """One sweep from several grids; a run they share (same name and config) runs once."""
    runs: dict[str, Run] = {}
    for g in grids:
        for r in g.runs:
            if r.name in runs and runs[r.name].config != r.config:
                raise ConfigError(f"grids {name}: two different runs would be named {r.name}")
            runs.setdefault(r.name, r)
    return Grid(name=name, runs=list(runs.values()))


def _flatten(mapping: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in mapping.items():
        if isinstance(v, dict):
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def _expand(group: dict[str, Any], where: str):
    """Yield ``(overrides, varied)`` for the product of a group's list-valued keys."""
    flat = _flatten(group)
    keys = list(flat)
    values = []
    for k in keys:
        v = flat[k]
        if isinstance(v, list):
            if not v:
                raise ConfigError(f"{where}: axis {k} is empty")
            values.append(v)
        else:
            values.append([v])
    varied = [k for k in keys if isinstance(flat[k], list)]
    for combo in itertools.product(*values):
        point = dict(zip(keys, combo, strict=True))
        yield point, {k: point[k] for k in varied}


def _merge(base: dict[str, Any], point: dict[str, Any]) -> dict[str, Any]:
    out = json.loads(json.dumps(base))  # a deep copy of plain YAML data
    for dotted, v in point.items():
        *parents, leaf = dotted.split(".")
        node = out
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = v
    return out


# --------------------------------------------------------------------------------------------
# Running one job (in whatever process an executor chose)


def run_status(run_dir: Path, config: RunConfig) -> str:
    """``done``, ``diverged``, ``failed``, ``partial`` (has progress) or ``new``."""
    return rundir.status(run_dir, config)


def execute_job(runs: list[tuple[RunConfig, Path]]) -> None:
    """Train the runs of one job here: one run alone, several as one batched ensemble.

    A run (or ensemble) that raises is recorded in ``error.txt`` and the sweep goes on.
    """
    from . import train

    for _, run_dir in runs:
        rundir.clear_error(run_dir)
        rundir.mark_running(run_dir, True)
    try:
        train.run_group([c for c, _ in runs], [d for _, d in runs])
    except Exception as e:  # recorded, and the sweep goes on
        text = "".join(traceback.format_exception(e))
        for config, run_dir in runs:
            if run_status(run_dir, config) not in ("done", "diverged"):
                rundir.write_error(run_dir, f"{type(e).__name__}: {e}\n\n{text}")
    finally:
        for _, run_dir in runs:
            rundir.mark_running(run_dir, False)


def write_job(path: Path, runs: list[tuple[RunConfig, Path]]) -> None:
    items = [{"config": c.to_dict(), "dir": str(d)} for c, d in runs]
    atomic_write(path, json.dumps(items, indent=1))


def read_job(path: Path) -> list[tuple[RunConfig, Path]]:
    return [(from_dict(i["config"]), Path(i["dir"])) for i in json.loads(path.read_text())]


# --------------------------------------------------------------------------------------------
# Executors


class Executor(Protocol):
    """Runs jobs (lists of (config, run directory)); ``run`` returns when all have ended."""

    def run(self, jobs: list[list[tuple[RunConfig, Path]]], sweep_dir: Path) -> None: ...


@dataclass
class InlineExecutor:
    """Every job in this process, one after another: for debugging and tests."""

    def run(self, jobs: list[list[tuple[RunConfig, Path]]], sweep_dir: Path) -> None:
        for job in jobs:
            execute_job(job)


@dataclass
class LocalExecutor:
    """``jobs`` worker processes on this machine, threads split evenly between them."""

    jobs: int = 1

    def run(self, jobs: list[list[tuple[RunConfig, Path]]], sweep_dir: Path) -> None:
        threads = max(1, (os.cpu_count() or 1) // max(1, self.jobs))
        env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
        folder = sweep_dir / ".jobs"
        folder.mkdir(parents=True, exist_ok=True)

        def launch(i: int, job: list[tuple[RunConfig, Path]]) -> None:
            job_file = folder / f"job{i}.json"
            write_job(job_file, job)
            log = rundir.log_path(job[0][1])
            log.parent.mkdir(parents=True, exist_ok=True)
            with log.open("ab") as out:
                code = subprocess.call(
                    [sys.executable, "-m", "ponder.sweep", str(job_file)],
                    stdout=out, stderr=subprocess.STDOUT, env=env,
                )  # fmt: skip
            if code != 0:  # the worker itself died (killed, out of memory): record it
                for config, run_dir in job:
                    if run_status(run_dir, config) not in ("done", "diverged"):
                        rundir.write_error(run_dir, f"worker exited with status {code}")
            job_file.unlink(missing_ok=True)

        with ThreadPoolExecutor(self.jobs) as pool:
            for f in [pool.submit(launch, i, job) for i, job in enumerate(jobs)]:
                f.result()


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


def plan_jobs(
    runs: list[Run], sweep_dir: Path, batch: int = 1
) -> list[list[tuple[RunConfig, Path]]]:
    """The jobs of the runs that still have work to do (finished runs are skipped).

    With ``batch`` > 1, runs that share a shape (``RunConfig.ensemble_key``: the seeds of a
    configuration, ACT's tau values) and start from the same point (all new, or all resuming
    from one checkpoint step) train together as ensembles of at most ``batch`` runs, where
    that is faster (``worth_batching``).
    """
    groups: dict[tuple, list[tuple[RunConfig, Path]]] = {}
    for r in runs:
        run_dir = sweep_dir / r.name
        status = run_status(run_dir, r.config)
        if status in ("done", "diverged"):
            continue
        resume = _resume_step(run_dir) if batch > 1 and worth_batching(r.config) else None
        key = (r.config.ensemble_key(), resume) if resume is not None else (r.name,)
        groups.setdefault(key, []).append((r.config, run_dir))
    return [g[i : i + batch] for g in groups.values() for i in range(0, len(g), batch)]


def worth_batching(config: RunConfig) -> bool:
    """Whether training runs of ``config`` as an ensemble beats training them one by one.

    On a GPU it always does (the step is launch-bound). On a CPU it does for the small networks
    of parity and logic, whose step is bound by per-op overhead, but not for an LSTM of 512
    cells (addition, sort), whose step is bound by arithmetic and where PyTorch's fused LSTM
    kernel beats batched matmuls (``ponder bench``: 0.5x to 0.9x on 2 cores).
    """
    from .engine import resolve_device
    from .models import GATES

    if resolve_device(config.device).type == "cuda":
        return True
    return config.hidden * GATES[config.cell] <= 512


def _resume_step(run_dir: Path) -> int | None:
    """The step a run would resume from: 0 for a new one, None for a broken checkpoint (that
    run trains, and fails with its clear error, alone)."""
    if not rundir.has_checkpoint(run_dir):
        return 0
    try:
        return int(rundir.load_checkpoint(run_dir)["step"])
    except RunError:
        return None


def sweep(
    grid: Grid,
    sweep_dir: str | Path,
    executor: Executor | None = None,
    progress: bool = True,
    batch: int = 16,
) -> SweepResult:
    """Run every run of ``grid`` under ``sweep_dir``; returns each run's final status.

    ``batch``: the most runs trained together as one ensemble (1 trains every run alone).
    """
    sweep_dir = Path(sweep_dir)
    sweep_dir.mkdir(parents=True, exist_ok=True)
    for r in grid.runs:  # a changed grid must not mix with the runs already there
        rundir.check_same_run(r.config, sweep_dir / r.name)
    rundir.clear_running(sweep_dir)  # markers left by a sweep that was killed
    manifest = {
        "name": grid.name,
        "description": grid.description,
        "note": grid.note,
        "runs": {r.name: r.config.to_dict() for r in grid.runs},
    }
    atomic_write(sweep_dir / "sweep.json", json.dumps(manifest, indent=1))
    jobs = plan_jobs(grid.runs, sweep_dir, batch)
    skipped = len(grid.runs) - sum(len(j) for j in jobs)
    if progress:
        print(
            f"sweep {grid.name}: {len(grid.runs)} runs, {skipped} already finished, "
            f"{sum(len(j) for j in jobs)} to run in {sweep_dir}",
            flush=True,
        )
    executor = executor or LocalExecutor()
    monitor = _Monitor(grid.runs, sweep_dir, enabled=progress)
    monitor.start()
    try:
        executor.run(jobs, sweep_dir)
    finally:
        monitor.stop()
    return SweepResult({r.name: run_status(sweep_dir / r.name, r.config) for r in grid.runs})


class _Monitor:
    """A progress bar over the sweep's training steps, with runs done / running / failed."""

    def __init__(self, runs: list[Run], sweep_dir: Path, enabled: bool) -> None:
        self.runs, self.dir, self.enabled = runs, sweep_dir, enabled
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def start(self) -> None:
        if self.enabled:
            self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self.enabled:
            self._thread.join()

    def _poll(self) -> tuple[int, dict[str, int]]:
        steps, counts = 0, {"done": 0, "running": 0, "failed": 0}
        for r in self.runs:
            d = self.dir / r.name
            status = run_status(d, r.config)
            if status in ("done", "diverged"):
                steps += r.config.steps
                counts["done"] += 1
            elif status == "failed":
                steps += r.config.steps
                counts["failed"] += 1
            else:
                steps += rundir.last_logged_step(d)
                counts["running"] += rundir.is_running(d)
        return steps, counts

    def _loop(self) -> None:
        from tqdm.auto import tqdm

        total = sum(r.config.steps for r in self.runs)
        steps, _ = self._poll()
        bar = tqdm(total=total, initial=steps, unit="step", unit_scale=True, dynamic_ncols=True)
        while True:
            stopping = self._stop.wait(2.0)
            new, counts = self._poll()
            bar.update(max(0, new - bar.n))
            bar.set_postfix(
                done=f"{counts['done']}/{len(self.runs)}",
                running=counts["running"],
                failed=counts["failed"],
            )
            if stopping:
                break
        bar.close()


def _job_main(argv: list[str]) -> int:
    """Entry of a local worker process: ``python -m ponder.sweep JOB.json``."""
    execute_job(read_job(Path(argv[0])))
    return 0


if __name__ == "__main__":
    sys.exit(_job_main(sys.argv[1:]))


__all__ = [
    "Executor",
    "Grid",
    "InlineExecutor",
    "LocalExecutor",
    "Run",
    "SweepResult",
    "builtin_grid",
    "execute_job",
    "load_grid",
    "merge_grids",
    "run_name",
    "sweep",
]
