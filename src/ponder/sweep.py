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
the sweep down with it. Interrupted (Ctrl-C), it starts no further job and ends the workers it
started (SIGTERM, then SIGKILL after ``STOP_GRACE_S``); every run resumes from its checkpoint
when the same sweep runs again.
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import json
import os
import signal
import subprocess
import sys
import threading
import time
import traceback
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, Protocol

from . import rundir
from .config import (
    RESUMABLE_FIELDS,
    ConfigError,
    RunConfig,
    from_dict,
    load_yaml,
    resolve,
    run_name,
)
from .memory import keep_freed_memory
from .methods import method
from .methods.common import GATES
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
    path: str | Path,
    seeds: int | None = None,
    budget: int | None = None,
    stop_when_solved: bool | None = None,
    **overrides: Any,
) -> Grid:
    """Read and expand a grid file; every expanded config is validated (``ConfigError``).
    ``seeds``, ``budget`` and ``stop_when_solved`` replace the file's own values."""
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
    if stop_when_solved is not None:
        stop = stop_when_solved
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


def override(grid: Grid, **fields: Any) -> Grid:
    """``grid`` with ``fields`` set in every run's config. Only fields that do not change what a
    run computes (``RESUMABLE_FIELDS``: device, cuda_graphs, ...) may be set, so the runs keep
    their names and resume in the directories they had."""
    wrong = sorted(set(fields) - set(RESUMABLE_FIELDS))
    if wrong:
        raise ValueError(f"override: {', '.join(wrong)} would change what the runs compute")
    runs = [Run(r.name, resolve(dataclasses.replace(r.config, **fields))) for r in grid.runs]
    return dataclasses.replace(grid, runs=runs)


def check_grid(grid: Grid, sweep_dir: str | Path) -> None:
    """Raise ``RunError`` if a run directory under ``sweep_dir`` holds another run than the
    grid's run of that name (a changed grid must not mix with the runs already there)."""
    for r in grid.runs:
        rundir.check_same_run(r.config, Path(sweep_dir) / r.name)


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

    keep_freed_memory()  # a training process reuses its large blocks (memory.py)
    with contextlib.ExitStack() as locks:
        try:  # the runs' locks first: another process's run is left exactly as it is
            for _, run_dir in runs:
                locks.enter_context(rundir.Lock(run_dir, "sweep worker"))
        except rundir.Busy as e:
            print(f"ponder sweep: {e}", file=sys.stderr, flush=True)
            return
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
    """Runs jobs (lists of (config, run directory)); ``run`` returns when all have ended.

    ``on_gpu(device)``: whether a job whose runs ask for ``device`` (auto, cpu, cuda) trains on a
    GPU where this executor runs it. Planning asks the executor, never this process's CUDA: a
    Ray head node may have no GPU while its workers do.
    """

    def run(self, jobs: list[list[tuple[RunConfig, Path]]], sweep_dir: Path) -> None: ...

    def on_gpu(self, device: str) -> bool: ...


def on_gpu_here(device: str) -> bool:
    """Whether runs asking for ``device`` train on a GPU when trained on this machine (False
    for ``cuda`` on a machine without one: such runs cannot train here at all)."""
    if device not in ("auto", "cuda"):
        return False
    import torch

    return torch.cuda.is_available()


@dataclass
class InlineExecutor:
    """Every job in this process, one after another: for debugging and tests."""

    def run(self, jobs: list[list[tuple[RunConfig, Path]]], sweep_dir: Path) -> None:
        for job in jobs:
            execute_job(job)

    def on_gpu(self, device: str) -> bool:
        return on_gpu_here(device)


STOP_GRACE_S = 5.0  # seconds a worker has to end after SIGTERM before it is killed
POLL_S = 0.1
PARENT_ENV = "PONDER_SWEEP_PID"  # a local worker's sweep: the worker ends when it is gone


@dataclass
class LocalExecutor:
    """``jobs`` worker processes on this machine, threads split evenly between them.

    Jobs start in order, ``jobs`` at a time; what trains with what is the plan's alone
    (``plan_jobs``, ``spread``), never a matter of which worker happened to be idle when, so the
    same sweep gives the same numbers however busy the machine is. Each worker dies with the
    sweep's process, however that dies (``_job_main``). If ``run`` is interrupted
    (``KeyboardInterrupt``, or any exception) it starts no further job, ends its workers
    (SIGTERM, then SIGKILL after ``STOP_GRACE_S``), clears their runs' ``.running`` markers and
    re-raises: the runs keep their checkpoints and resume when the same sweep runs again.
    """

    jobs: int = 1

    def __post_init__(self) -> None:
        if not isinstance(self.jobs, int) or isinstance(self.jobs, bool) or self.jobs < 1:
            raise ConfigError(f"--jobs must be >= 1, got {self.jobs!r}")

    def on_gpu(self, device: str) -> bool:
        return on_gpu_here(device)

    @property
    def workers(self) -> int:
        """Jobs trained at once: the plan spreads ensembles so that each has one (``spread``)."""
        return self.jobs

    def run(self, jobs: list[list[tuple[RunConfig, Path]]], sweep_dir: Path) -> None:
        if not jobs:
            return
        threads = max(1, (os.cpu_count() or 1) // self.jobs)
        env = {
            **os.environ,
            "OMP_NUM_THREADS": str(threads),
            "MKL_NUM_THREADS": str(threads),
            PARENT_ENV: str(os.getpid()),
        }
        # This sweep's own job files (a dead sweep's are left to no one: they go first).
        folder = sweep_dir / ".jobs"
        if folder.exists():
            for stale in folder.glob("*.json"):
                stale.unlink(missing_ok=True)
        folder.mkdir(parents=True, exist_ok=True)
        queue = list(enumerate(jobs))
        workers: list[_Worker] = []
        try:
            while queue or workers:
                while queue and len(workers) < self.jobs:
                    i, job = queue.pop(0)
                    name = f"{os.getpid()}-job{i}.json"
                    workers.append(_Worker.start(folder / name, job, env))
                for w in [w for w in workers if w.proc.poll() is not None]:
                    workers.remove(w)
                    w.finish()
                time.sleep(POLL_S)
        except BaseException:  # Ctrl-C (or a bug here): no new job, end the running ones
            _stop(workers)
            raise


def spread(
    jobs: list[list[tuple[RunConfig, Path]]], workers: int
) -> list[list[tuple[RunConfig, Path]]]:
    """``jobs`` with ensembles split until every one of ``workers`` has a job from the start
    (or no ensemble is left to split): the costliest ensemble goes on as two of about equal
    size, its runs in the plan's order. A function of the plan alone: the sweep trains the
    same groups, so the same numbers, whatever the machine's load."""
    jobs = [list(j) for j in jobs]
    while len(jobs) < workers:
        multi = [j for j in jobs if len(j) > 1]
        if not multi:
            break
        job = min(multi, key=_longest_first)  # the costliest (the key sorts it first)
        i = jobs.index(job)
        half = -(-len(job) // 2)
        jobs[i : i + 1] = [job[:half], job[half:]]
    return sorted(jobs, key=_longest_first)


@dataclass(eq=False)
class _Worker:
    """A ``python -m ponder.sweep JOB.json`` process training one job."""

    proc: subprocess.Popen
    job_file: Path
    job: list[tuple[RunConfig, Path]]

    @classmethod
    def start(cls, job_file: Path, job: list[tuple[RunConfig, Path]], env: dict) -> _Worker:
        write_job(job_file, job)
        log = rundir.log_path(job[0][1])
        log.parent.mkdir(parents=True, exist_ok=True)
        with log.open("ab") as out:  # the child keeps its own copy of the descriptor
            proc = subprocess.Popen(
                [sys.executable, "-m", "ponder.sweep", str(job_file)],
                stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
            )  # fmt: skip
        return cls(proc, job_file, job)

    def finish(self, stopped: bool = False) -> None:
        """After the process ended: record a worker that died (killed, out of memory), unless
        it was stopped on purpose or interrupted, and tidy up."""
        code = self.proc.returncode
        interrupted = stopped or code == -signal.SIGINT
        if code != 0 and not interrupted:
            for config, run_dir in self.job:
                if run_status(run_dir, config) not in ("done", "diverged"):
                    rundir.write_error(run_dir, f"worker exited with status {code}")
        if interrupted:  # a worker killed mid-run leaves its marker; the run is resumable
            for _, run_dir in self.job:
                rundir.mark_running(run_dir, False)
        self.job_file.unlink(missing_ok=True)


def _stop(workers: list[_Worker]) -> None:
    """End ``workers``: SIGTERM, then SIGKILL for those still alive after ``STOP_GRACE_S``."""
    alive = [w for w in workers if w.proc.poll() is None]  # the others ended on their own
    try:
        for w in alive:
            w.proc.terminate()
        deadline = time.monotonic() + STOP_GRACE_S
        for w in alive:
            try:
                w.proc.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass
    finally:  # also after a second Ctrl-C: nothing is left running
        for w in workers:
            if w.proc.poll() is None:
                w.proc.kill()
            w.proc.wait()
            w.finish(stopped=w in alive)


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


def plan_jobs(
    runs: list[Run],
    sweep_dir: Path,
    batch: int = 1,
    on_gpu: Callable[[str], bool] = on_gpu_here,
) -> list[list[tuple[RunConfig, Path]]]:
    """The jobs of the runs that still have work to do (finished runs are skipped).

    With ``batch`` > 1, runs that share a shape (``RunConfig.ensemble_key``: the seeds of a
    configuration, ACT's tau values) and start from the same point (all new, or all resuming
    from one checkpoint step) train together as ensembles of at most ``batch`` runs, where
    that is faster (``worth_batching``). ``on_gpu(device)``: whether the executor's jobs train
    on a GPU (``Executor.on_gpu``); planning never asks this process's CUDA.
    """
    _check_batch(batch)
    groups: dict[tuple, list[tuple[RunConfig, Path]]] = {}
    for r in runs:
        run_dir = sweep_dir / r.name
        status = run_status(run_dir, r.config)
        if status in ("done", "diverged"):
            continue
        batched = batch > 1 and worth_batching(r.config, on_gpu(r.config.device))
        resume = _resume_step(run_dir) if batched else None
        key = (r.config.ensemble_key(), resume) if resume is not None else (r.name,)
        groups.setdefault(key, []).append((r.config, run_dir))
    jobs = [chunk for g in groups.values() for chunk in _ensembles(g, batch)]
    return sorted(jobs, key=_longest_first)


def _longest_first(job: list[tuple[RunConfig, Path]]) -> tuple[float, float]:
    """Jobs start in this order, the costliest first: with fewer workers than jobs, the sweep
    then ends on short jobs instead of waiting on one long job started last (longest
    processing time first). A job's cost is bounded by its runs' steps x the recurrent steps a
    training step can take (Repeat's rho, ACT's cap M, PonderNet's N) x a recurrent step's
    multiply-adds; ACT's real ponder is unknown before it trains, so its bound ranks it first,
    the smallest tau (which ponders most) ahead (``MethodSpec.ponder_pressure``)."""

    def cost(c: RunConfig) -> float:
        per_step = method(c.model).max_steps(c)
        return c.steps * per_step * c.hidden * c.hidden * GATES[c.cell]

    pressure = [method(c.model).ponder_pressure(c) for c, _ in job]
    return -sum(cost(c) for c, _ in job), min(pressure, default=0.0)


def _ensembles(
    group: list[tuple[RunConfig, Path]], batch: int
) -> list[list[tuple[RunConfig, Path]]]:
    """A group of runs that can train together, as ceil(n / batch) ensembles of near-equal size
    with the runs that ponder alike together: ACT's seeds of one tau side by side, taus from
    the largest (which ponders least) to the smallest.

    Why this split: a step of an ACT ensemble costs the kernel launches of its longest-
    pondering member plus the arithmetic of what each member ponders (``act.ponder_token``
    compacts over members too). The number of ensembles, not how taus are mixed, sets how many
    launches a sweep pays, so we keep that at its least, ceil(n / batch), and order the runs so
    that members which collapse to one ponder step (tau = 0.1, often 1e-2) do not share an
    ensemble with, and wait on the extra steps of, members that ponder 4 to 6 (tau = 1e-3).
    Near-equal sizes keep jobs that run side by side about equally long.
    """
    chunks = -(-len(group) // batch)
    size = -(-len(group) // chunks)

    def key(run: tuple[RunConfig, Path]) -> tuple:
        return (-method(run[0].model).ponder_pressure(run[0]), run[0].seed, str(run[1]))

    ordered = sorted(group, key=key)
    return [ordered[i : i + size] for i in range(0, len(ordered), size)]


def worth_batching(config: RunConfig, on_gpu: bool) -> bool:
    """Whether training runs of ``config`` as an ensemble beats training them one by one, on a
    GPU (``on_gpu``) or a CPU.

    On a GPU it always does (the step is launch-bound). On a CPU it does for the small networks
    of parity and logic, whose step is bound by per-op overhead, but not for an LSTM of 512
    cells (addition, sort), whose step is bound by arithmetic and where PyTorch's fused LSTM
    kernel beats batched matmuls (``ponder bench``: 0.5x to 0.9x on 2 cores).
    """
    if on_gpu:
        return True
    return config.hidden * GATES[config.cell] <= 512


def _check_batch(batch: int) -> None:
    if not isinstance(batch, int) or isinstance(batch, bool) or batch < 1:
        raise ConfigError(f"--batch must be >= 1, got {batch!r}")


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
    ``sweep_dir`` is made absolute first, so that workers started elsewhere (Ray) see it.
    """
    _check_batch(batch)
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
    monitor = _Monitor(grid.runs, sweep_dir, enabled=progress)
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
    """Entry of a local worker process: ``python -m ponder.sweep JOB.json``. SIGTERM (the
    sweep stopping, or dying) ends it through ``execute_job``'s clean-up, like Ctrl-C."""

    def terminated(signum: int, frame: Any) -> None:
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, terminated)
    _die_with_parent()
    execute_job(read_job(Path(argv[0])))
    return 0


def _die_with_parent() -> None:
    """SIGTERM this worker when its sweep's process dies, however it dies (SIGKILL included):
    Linux's parent-death signal, and a watch on the parent for the systems without one."""
    parent = int(os.environ.get(PARENT_ENV, "0") or 0)
    if not parent:
        return
    try:
        import ctypes

        pr_set_pdeathsig = 1
        ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, int(signal.SIGTERM))
    except (OSError, AttributeError):
        pass
    if os.getppid() != parent:  # it died before the signal was asked for
        raise SystemExit(128 + signal.SIGTERM)

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(1.0)
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=watch, daemon=True, name="parent-watch").start()


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
    "check_grid",
    "execute_job",
    "load_grid",
    "merge_grids",
    "on_gpu_here",
    "override",
    "run_name",
    "run_sweep",
    "sweep",
]
