"""Timing training steps: the naive reference's, one run's (``engine.Single``) and K stacked
runs' (``ensemble.Stacked``), warmed up and then measured. ``ponder bench`` reports them;
``reproduce`` and ``gpucheck`` time with the same functions."""

from __future__ import annotations

import dataclasses
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch

from ..config import RunConfig
from ..methods import method
from ..methods.naive import copy_weights, naive_model
from ..training import graphs
from ..training.engine import (
    Single,
    build,
    derive_seed,
    init_network,
)
from ..training.ensemble import Stacked


@dataclass(frozen=True)
class Timing:
    """Warm-up steps, timed repeats and the seconds one repeat aims to take."""

    warmup: int = 3
    repeats: int = 3
    seconds: float = 2.0
    max_steps: int = 200


FULL = Timing(warmup=3, repeats=3, seconds=2.0, max_steps=500)
QUICK = Timing(warmup=2, repeats=3, seconds=0.25, max_steps=50)


# --------------------------------------------------------------------------------------------
# The three training steps


def init_net(config: RunConfig, spec, seed: int):
    return init_network(dataclasses.replace(config, seed=seed), spec, None)


def holding(
    step: Callable[[], None], weight: torch.Tensor, bias: torch.Tensor, values: list[float]
) -> Callable[[], None]:
    """``step`` with the halting unit(s) set to h = sigmoid(bias) whatever y before each call
    (weights zero, biases ``values``, one per member): a ponder profile (``PROFILES``) then
    holds however long it is timed, instead of drifting as Adam trains the halting unit."""
    target = torch.tensor(values, dtype=bias.dtype, device=bias.device).view(bias.shape)

    def held() -> None:
        with torch.no_grad():
            weight.zero_()
            bias.copy_(target)
        step()

    return held


def naive_step(
    config: RunConfig, device: torch.device, halting_bias: float | None = None
) -> Callable[[], None]:
    """A training step of the method's naive reference (``methods.naive``), one run."""
    task, spec = build(config)
    reference = method(config.model).naive
    if reference is None:
        raise ValueError(f"the method {config.model!r} has no naive reference")
    model = naive_model(config, task, reference)
    model = copy_weights(model, init_net(config, spec, 0)).to(device)
    opt = torch.optim.Adam(model.parameters(), lr=config.lr)
    gen = torch.Generator().manual_seed(derive_seed(0, "data"))  # data on the host

    def step() -> None:
        x, y = task.sample(config.batch_size, gen)
        x, y = x.to(device), y.to(device)
        logits, extra = model(x)
        loss = reference.loss(task, logits, extra, y, config)
        opt.zero_grad()
        loss.backward()
        opt.step()

    if halting_bias is None:
        return step
    return holding(step, model.halt.weight, model.halt.bias, [halting_bias])


def single_step(
    config: RunConfig, device: torch.device, halting_bias: float | None = None
) -> Callable[[], None]:
    """The training loop's step for one run (``engine.Single``; CUDA graphs on a GPU); its
    halting unit held at ``halting_bias`` when given (``holding``)."""
    eng = Single(dataclasses.replace(config, seed=0), None, device)
    if halting_bias is None:
        return eng.stepper
    halting = eng.net.core.halting
    return holding(eng.stepper, halting.weight, halting.bias, [halting_bias])


def ensemble_step(
    config: RunConfig, device: torch.device, k: int, halting_biases: tuple[float, ...] = ()
) -> Callable[[], None]:
    """The training loop's step for K runs, seeds 0..K-1 (``ensemble.Stacked``); member i's
    halting unit set by ``halting_biases[i]`` when given (see ``PROFILES``)."""
    configs = [dataclasses.replace(config, seed=seed) for seed in range(k)]
    eng = Stacked(configs, [None] * k, device)
    if not halting_biases:
        return eng.stepper
    weight, bias = eng.ens.p("core.halting.weight"), eng.ens.p("core.halting.bias")
    return holding(eng.stepper, weight, bias, list(halting_biases))


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def warm_up(step: Callable[[], None], device: torch.device, timing: Timing) -> int:
    """Run ``step``'s warm-up steps; returns how many steps one timed repeat takes (about
    ``timing.seconds`` worth, at most ``timing.max_steps``)."""
    per_step = 0.0
    # On a GPU the first steps are eager and the next one records the CUDA graphs.
    warmup = timing.warmup + (graphs.WARMUP + 1 if device.type == "cuda" else 0)
    for _ in range(warmup):
        _sync(device)
        t0 = time.perf_counter()
        step()
        _sync(device)
        per_step = time.perf_counter() - t0
    return int(min(timing.max_steps, max(1, round(timing.seconds / max(per_step, 1e-6)))))


def steps_per_second(step: Callable[[], None], device: torch.device, n: int) -> float:
    _sync(device)
    t0 = time.perf_counter()
    for _ in range(n):
        step()
    _sync(device)
    return n / (time.perf_counter() - t0)


def measure(step: Callable[[], None], device: torch.device, timing: Timing) -> float:
    """Median steps/s over ``timing.repeats`` timed repeats, after warm-up steps."""
    n = warm_up(step, device, timing)
    return statistics.median(steps_per_second(step, device, n) for _ in range(timing.repeats))


def measure_against(
    steps: dict[str, Callable[[], None]], reference: str, device: torch.device, timing: Timing
) -> dict[str, tuple[float, float]]:
    """Each step's median steps/s and its median ratio to ``reference``, timed in rounds that
    take every step in turn, so that a machine whose speed drifts (a shared VM) moves the
    reference and the others alike and the ratios stay fair."""
    counts = {name: warm_up(step, device, timing) for name, step in steps.items()}
    rates: dict[str, list[float]] = {name: [] for name in steps}
    for _ in range(timing.repeats):
        for name, step in steps.items():
            rates[name].append(steps_per_second(step, device, counts[name]))
    ref = rates[reference]
    return {
        name: (
            statistics.median(r),
            statistics.median(a / b for a, b in zip(r, ref, strict=True)),
        )
        for name, r in rates.items()
    }


def failure(e: BaseException) -> str:
    """One line for a case that failed: the error's type and the first line of its message."""
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0][:300]}" if text else type(e).__name__
