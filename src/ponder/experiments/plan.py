"""Job planning: which runs of a sweep train together, as one stacked ensemble, and in which
order the jobs start. A plan depends on the runs alone, never on timing, so the same sweep
gives the same numbers however busy the machine is."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from .. import rundir
from ..config import (
    ConfigError,
    RunConfig,
)
from ..methods import method
from ..methods.common import GATES
from ..rundir import RunError
from .executors import on_gpu_here, run_status
from .grid import Run


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
    check_batch(batch)
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
    """Jobs start in this order, the costliest first (``job_cost``): with fewer workers than
    jobs, the sweep then ends on short jobs instead of waiting on one long job started last
    (longest processing time first). ACT's real ponder is unknown before it trains, so its
    bound ranks it first, the smallest tau (which ponders most) ahead
    (``MethodSpec.ponder_pressure``)."""
    pressure = [method(c.model).ponder_pressure(c) for c, _ in job]
    return -job_cost(job), min(pressure, default=0.0)


def job_cost(job: list[tuple[RunConfig, Path]]) -> float:
    """A bound on a job's work: its runs' steps x the recurrent steps a training step can take
    (Repeat's rho, ACT's cap M, PonderNet's N) x a recurrent step's multiply-adds."""

    def cost(c: RunConfig) -> float:
        return c.steps * method(c.model).max_steps(c) * c.hidden * c.hidden * GATES[c.cell]

    return sum(cost(c) for c, _ in job)


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


def check_batch(batch: int) -> None:
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


def spread(
    jobs: list[list[tuple[RunConfig, Path]]], workers: int
) -> list[list[tuple[RunConfig, Path]]]:
    """``jobs`` with ensembles split so that the sweep ends sooner: the costliest ensemble goes
    on as two of about equal size (its runs in the plan's order), again and again until no
    ensemble is left, and of the plans on the way the first whose makespan (``job_cost``s
    started longest first over ``workers``) is within a tenth of the least is kept.

    Addition's quick grid needed this: one ACT ensemble of 12 runs held one core for hours
    while the other had finished everything else. Looking past the first split matters: with
    two equal ensembles and four workers, splitting one alone gains nothing, both halve the
    time. The tenth's margin keeps ensembles whole where splitting them would gain little, for
    the cost bound does not see what each ensemble pays per step on its own. A function of the
    plan alone: the sweep trains the same groups, so the same numbers, whatever the load."""
    plan = sorted([list(j) for j in jobs], key=_longest_first)
    plans = [plan]
    while any(len(j) > 1 for j in plan):
        job = next(j for j in plan if len(j) > 1)  # the costliest: the plan is sorted
        i = plan.index(job)
        half = -(-len(job) // 2)
        plan = sorted([*plan[:i], job[:half], job[half:], *plan[i + 1 :]], key=_longest_first)
        plans.append(plan)
    spans = [_makespan(p, workers) for p in plans]
    least = min(spans)
    return next(p for p, span in zip(plans, spans, strict=True) if span <= 1.1 * least)


def _makespan(jobs: list[list[tuple[RunConfig, Path]]], workers: int) -> float:
    return makespan([job_cost(j) for j in jobs], workers, in_order=True)


def makespan(durations: list[float], workers: int, in_order: bool = False) -> float:
    """The wall time of jobs on ``workers`` workers, each started on the first worker free:
    in the order given (``in_order``, as a sweep starts its plan) or longest first."""
    free = [0.0] * max(1, workers)
    for d in durations if in_order else sorted(durations, reverse=True):
        i = free.index(min(free))
        free[i] += d
    return max(free)
