"""How many CPU threads one run uses: what its network can use, on the cores that are free.

PyTorch starts one thread per installed core. For these networks that is often wrong twice:
a parity step is hundreds of small operations on [128, 128] matrices, each too small for a
second thread to pay for its wake-up, and on a machine where other work already holds a core
(a laptop, a shared server, a sweep beside it) every operation waits for the thread that shares
a core with it. Measured on 2 cores beside one busy loop, 1,000 parity Repeat steps took 20.3 s
with 2 threads and 4.1 s with 1 (3.9 s quiet).

So a run counts the multiply-adds of one cell step (batch x gates x hidden x (inputs +
hidden)) and asks for one thread per ``PER_THREAD`` of them, at least one: the parity and
logic networks get one thread whatever the machine is doing, so their results do not depend on
the load. Only a network that can use more (addition's and sort's LSTM of 512) looks at the
cores actually free: those it may run on (``os.sched_getaffinity``) less those that other
processes keep busy (sampled from /proc/stat over a fifth of a second; the one-minute load
average where there is no /proc). Thread counts can change a float sum's order, so such a run is
bitwise repeatable only with the same count: ``--threads N`` fixes it, and engine.json records
the count a run used.
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from ..methods.common import GATES

# Multiply-adds of one cell step per thread: below two of these a second thread costs more in
# waking and joining than it saves (parity's RNN of 128 at batch 128: 3.2M, one thread;
# addition's LSTM of 512 at batch 32: 37M, which measured 6.7 s with 1 thread and 5.2 s with 2
# for 100 steps on 2 quiet cores).
PER_THREAD = 1 << 23
SAMPLE_S = 0.2  # how long the free cores are sampled


@dataclass(frozen=True)
class Choice:
    """A thread count and why: ``busy`` is the cores other work kept busy when measured
    (None where the load was not looked at)."""

    threads: int
    why: str
    busy: float | None = None


def usable_cpus() -> int:
    """The cores this process may run on (its affinity; all installed ones where the platform
    has no affinity)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


def _cpu_times() -> tuple[int, int] | None:
    """(busy, total) clock ticks summed over the cores this process may run on, from
    /proc/stat; None where there is none."""
    try:
        lines = Path("/proc/stat").read_text().splitlines()
        mine = os.sched_getaffinity(0)
    except (OSError, AttributeError):
        return None
    busy = total = 0
    for line in lines:
        name, *fields = line.split()
        if not name.startswith("cpu") or name == "cpu" or int(name[3:]) not in mine:
            continue
        # user nice system idle iowait irq softirq steal (guest time is inside user)
        ticks = [int(f) for f in fields[:8]]
        idle = ticks[3] + (ticks[4] if len(ticks) > 4 else 0)
        total += sum(ticks)
        busy += sum(ticks) - idle
    return busy, total


def busy_cores(seconds: float = SAMPLE_S) -> float:
    """How many of the usable cores other work keeps busy now (this process is asleep while
    it samples): from /proc/stat over ``seconds``, else the one-minute load average."""
    before = _cpu_times()
    if before is not None:
        time.sleep(seconds)
        after = _cpu_times()
        if after is not None and after[1] > before[1]:
            return usable_cpus() * (after[0] - before[0]) / (after[1] - before[1])
    try:
        return min(float(usable_cpus()), os.getloadavg()[0])
    except (AttributeError, OSError):
        return 0.0


def step_work(cell: str, hidden: int, inputs: int, batch: int) -> int:
    """Multiply-adds of one cell step over a batch: the matmul that sets a step's cost."""
    return batch * GATES.get(cell, 1) * hidden * (inputs + hidden)


def choose(
    cell: str,
    hidden: int,
    inputs: int,
    batch: int,
    device: str = "cpu",
    override: int | None = None,
) -> Choice:
    """The thread count for a run of this network: ``override`` (``--threads``, else the
    environment's ``OMP_NUM_THREADS``) if given; one on a GPU (the host only launches
    kernels); else what the network's size can use, at most the cores free now."""
    if override is not None:
        return Choice(override, "--threads")
    if os.environ.get("OMP_NUM_THREADS", "").isdigit() and int(os.environ["OMP_NUM_THREADS"]):
        return Choice(int(os.environ["OMP_NUM_THREADS"]), "OMP_NUM_THREADS")
    if device == "cuda":
        return Choice(1, "the GPU computes; the host thread only launches its kernels")
    work = step_work(cell, hidden, inputs, batch)
    can_use = max(1, work // PER_THREAD)
    size = f"{cell} of {hidden} x batch {batch}: {work / 1e6:.1f}M multiply-adds a cell step"
    if can_use == 1:
        return Choice(1, f"{size}, too few for a second thread to pay")
    busy = busy_cores()
    cores = usable_cpus()
    free = max(1, math.floor(cores - busy + 0.25))  # a core at most a quarter busy is free
    threads = min(can_use, free)
    return Choice(threads, f"{size}; {free} of {cores} cores free", busy)


def for_config(config, override: int | None = None) -> Choice:
    """``choose`` for a resolved ``RunConfig`` (its task's input size, plus the flag)."""
    from .engine import build, resolve_device

    task, spec = build(config)
    device = resolve_device(config.device).type
    return choose(spec.cell, spec.hidden, task.input_size + 1, config.batch_size, device, override)


def use(choice: Choice) -> Choice:
    """Set PyTorch's intra-op threads to ``choice.threads``; returns it."""
    torch.set_num_threads(choice.threads)
    return choice


def describe_load(busy: float, cores: int | None = None) -> str:
    """One phrase for the bench: how busy the machine was."""
    cores = cores or usable_cpus()
    return f"{busy:.1f} of {cores} usable cores busy with other work"


def is_busy(busy: float) -> bool:
    """Whether other work held enough of the machine to slow a measurement down."""
    return busy >= 0.5
