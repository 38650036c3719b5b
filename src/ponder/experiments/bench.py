"""``ponder bench``: training throughput of ponder against a naive PyTorch reference.

For each case (parity with the paper's RNN of 128 units, batch 128; addition with an LSTM of 512
units, batch 32, M = 20) three things train from the same TensorFlow-style initial weights:

1. the **naive reference**, written below the way a user would write it in plain PyTorch: ACT as a
   module around an ``nn.RNNCell``/``nn.LSTMCell`` with a Python loop over ponder steps per token,
   per-sample masks and an ``.any()`` check every step; PonderNet as a module around a cell that
   unrolls its N steps, takes p as lambda times a cumulative product of (1 - lambda) and the KL
   to the prior as sum p (log p - log p_G); Repeat-RNN (and the plain RNN, rho = 1) as
   ``nn.RNN``/``nn.LSTM`` over the ``repeat_interleave``-d sequence with a flag column; data made
   on the host and moved to the device every step; Adam.
2. ponder's **single-run path**: the training loop's step for one run (``engine.Single``:
   ``task.sample`` on a device generator, ``net(x)``, ``engine.objective``, Adam, the on-device
   metric window; replayed from CUDA graphs on a GPU).
3. ponder's **ensemble path** at K = 1, 16, 64: K runs (seeds 0..K-1) as one ``Ensemble``, the
   loop's step for a group (``ensemble.Stacked``); reported as run-steps/s = K x steps/s.

Each path warms up first (ACT's ponder length moves in the first steps; on a GPU the CUDA graphs
are recorded), then the paths of a case are timed in turn, round after round: a rate is the
median over the rounds, a ratio the median of each round's ratio to the naive reference.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import platform
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..config import RunConfig, resolve
from ..training import threads as choose_threads
from ..training.engine import (
    matmul_precision,
    resolve_device,
)
from .timing import (
    FULL,
    QUICK,
    Timing,
    ensemble_step,
    failure,
    measure,
    measure_against,
    naive_step,
    single_step,
)

ADDITION_CONFIGS, ADDITION_SEEDS, ADDITION_STEPS = 9, 5, 2_000_000
NEIGHBOUR_LIMIT = 1.3  # a single run beside one busy loop: at most this much slower
BUSY_WARNING = (
    "other work kept a core or more of this machine busy during the bench: its numbers are "
    "lower, and noisier, than a quiet machine's"
)


def projected_hours(rate: float) -> float:
    """Hours for the addition table (Table 2's grid at the paper's budget) at ``rate``
    run-steps/s."""
    return ADDITION_CONFIGS * ADDITION_SEEDS * ADDITION_STEPS / rate / 3600


@dataclass(frozen=True)
class Case:
    """One benchmarked configuration: ``RunConfig`` fields and the ensemble sizes to time."""

    label: str
    fields: dict = field(default_factory=dict)
    ks: tuple[int, ...] = (1, 16, 64)
    quick_ks: tuple[int, ...] = (1, 16, 64)

    @property
    def task(self) -> str:
        return self.fields.get("task", "parity")

    def config(self, device: str, cuda_graphs: bool = True) -> RunConfig:
        fields = {"device": device, "progress": False, "init": "tf", "cuda_graphs": cuda_graphs}
        return resolve(RunConfig(**{**fields, **self.fields}))


CASES = [
    Case("act tau=1e-3", {"task": "parity", "model": "act", "tau": 1e-3}),
    Case("repeat rho=2", {"task": "parity", "model": "repeat", "rho": 2}),
    Case("repeat rho=8", {"task": "parity", "model": "repeat", "rho": 8}),
    Case("rnn", {"task": "parity", "model": "rnn"}),
    Case(
        "pondernet lambda_p=0.2",
        {"task": "parity", "model": "pondernet", "lambda_p": 0.2},
        ks=(1, 16),
        quick_ks=(1, 16),
    ),
    Case("act tau=1e-2", {"task": "addition", "model": "act", "tau": 1e-2}, quick_ks=(1, 16)),
    Case("repeat rho=5", {"task": "addition", "model": "repeat", "rho": 5}, quick_ks=(1, 16)),
]


# ACT ensembles by how their members ponder: (label, each member's halting bias). The halting
# unit's weights are set to zero before every timed step, so h = sigmoid(bias) on every ponder
# step: +5 halts every sample at the first (h > 1 - eps), -1.6 after six (6 x 0.168 >= 0.99).
# -10 never reaches 1 - eps, so it ponders to the cap M = 100: the tail that tau = 1e-3 runs
# show late in training, where a step waits for a few samples that ponder to M.
HALT_AT_ONCE, PONDER_SIX, PONDER_TO_M = 5.0, -1.6, -10.0
PROFILES = [
    ("every member halts at once", (HALT_AT_ONCE,) * 16),
    ("every member ponders 6 steps", (PONDER_SIX,) * 16),
    ("15 halt at once, 1 ponders 6", (HALT_AT_ONCE,) * 15 + (PONDER_SIX,)),
    ("15 halt at once, 1 ponders to M", (HALT_AT_ONCE,) * 15 + (PONDER_TO_M,)),
]
PROFILE_CASE = Case("act tau=1e-3", {"task": "parity", "model": "act", "tau": 1e-3})

# A single run beside a busy loop (``neighbour_rows``); --quick times the first only.
NEIGHBOURS = [
    Case("repeat rho=2", {"task": "parity", "model": "repeat", "rho": 2}),
    Case("repeat rho=5", {"task": "addition", "model": "repeat", "rho": 5}),
]


def profile_rows(
    device: torch.device, timing: Timing, case: Case = PROFILE_CASE, cuda_graphs: bool = True
) -> list[list[str]]:
    """ACT ensembles of ``PROFILES``: each one's step time, its rate, its ratio to the ensemble
    whose members all halt at once, and to a naive sweep training its members one by one."""
    config = case.config(device.type, cuda_graphs)
    choose_threads.use(choose_threads.for_config(config))
    naive = {b: naive_step(config, device, b) for b in {b for _, bs in PROFILES for b in bs}}
    steps = {label: ensemble_step(config, device, len(bs), bs) for label, bs in PROFILES}
    got = measure_against({**steps, **{f"naive {b}": f for b, f in naive.items()}},
                          PROFILES[0][0], device, timing)  # fmt: skip
    rows = []
    for label, biases in PROFILES:
        rate, vs_at_once = got[label]
        # a naive sweep of these members: one naive step per member, one after another
        sweep_s = sum(1.0 / got[f"naive {b}"][0] for b in biases)
        cells = [label, f"{1000 / rate:.1f}", _rate(len(biases) * rate)]
        cells += [f"{1 / vs_at_once:.2f}x", _ratio(rate * sweep_s)]
        print(f"parity ACT K={len(biases)} {label:<30} {cells[1]:>7} ms/step "
              f"({cells[3]} the at-once case, {cells[4]} a naive sweep)", flush=True)  # fmt: skip
        rows.append(cells)
    return rows


# --------------------------------------------------------------------------------------------
# Running and reporting


def _rate(x: float) -> str:
    return f"{x:,.0f}" if x >= 100 else f"{x:,.1f}" if x >= 10 else f"{x:,.2f}"


def _ratio(r: float) -> str:
    return f"{r:,.0f}x" if r >= 10 else f"{r:.1f}x"


def _machine(device: torch.device) -> str:
    cpu = platform.processor() or platform.machine()
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    return (
        f"{cpu} ({platform.machine()}), {os.cpu_count()} CPUs ({choose_threads.usable_cpus()} "
        f"usable), torch {torch.__version__}, device: {device.type} ({name})"
    )


@contextlib.contextmanager
def busy_loop() -> Iterator[subprocess.Popen]:
    """A second process spinning on one core for the block (the neighbour of ``neighbours``);
    ended, by its handle, when the block ends."""
    # It spins while its parent lives: a bench killed outright leaves no loop behind.
    spin = "import os\nparent = os.getppid()\nwhile os.getppid() == parent: pass"
    proc = subprocess.Popen([sys.executable, "-c", spin])
    try:
        time.sleep(0.5)  # started, and seen by the load sample that chooses the threads
        yield proc
    finally:
        proc.kill()
        proc.wait()


def neighbour_rows(
    device: torch.device, timing: Timing, cases: list[Case], threads: int | None, graphs_on: bool
) -> list[list[str]]:
    """A single run's steps/s on a quiet machine and beside one busy loop, its threads chosen
    each time as ``ponder train`` chooses them then (``ponder.threads``)."""
    rows = []
    for case in cases:
        config = case.config(device.type, graphs_on)
        got = []
        for beside in (contextlib.nullcontext(), busy_loop()):
            with beside:
                load = choose_threads.busy_cores()
                chosen = choose_threads.use(choose_threads.for_config(config, threads))
                rate = measure(single_step(config, device), device, timing)
                got.append((rate, f"{_threads(chosen)}, {load:.1f} cores busy"))
        (quiet, q_how), (busy, b_how) = got
        slowdown = quiet / busy
        within = "yes" if slowdown <= NEIGHBOUR_LIMIT else "**no**"
        name = f"{case.task} {case.label}"
        cells = [name, f"{_rate(quiet)} ({q_how})", f"{_rate(busy)} ({b_how})"]
        cells += [f"{slowdown:.2f}x", within]
        print(f"{name:<24} beside a busy loop: {slowdown:.2f}x slower "
              f"({cells[1]} -> {cells[2]} steps/s)", flush=True)  # fmt: skip
        rows.append(cells)
    return rows


def _threads(choice: choose_threads.Choice) -> str:
    return f"{choice.threads} thread" + ("s" if choice.threads > 1 else "")


@dataclass
class Bench:
    """What ``run_bench`` measured: the markdown it wrote, and the cases that failed (each
    ``"name: reason"``)."""

    text: str
    failed: list[str]


def run_bench(
    quick: bool = False,
    device: str = "auto",
    out: Path = Path("BENCHMARKS.md"),
    cuda_graphs: bool = True,
    threads: int | None = None,
    *,
    _cases: list[Case] | None = None,
    _timing: Timing | None = None,
    _ks: tuple[int, ...] | None = None,
    _profile_case: Case | bool = PROFILE_CASE,
    _neighbours: list[Case] | None = None,
) -> Bench:
    """Time every case, print a line per measurement, write ``out`` after every case.

    A case that fails (a graph that cannot be recorded, memory, anything) is one line with its
    reason, on the console and in its row; the others run. The machine's load is measured at
    the start and the end and stated; each case runs with the threads ``ponder train`` would
    choose for it (``threads`` overrides), and the TF32 switches set as training sets them.
    """
    dev = resolve_device(device)
    timing = _timing or (QUICK if quick else FULL)
    cases = _cases if _cases is not None else CASES
    neighbours = _neighbours if _neighbours is not None else NEIGHBOURS[: 1 if quick else None]
    report = Report(quick, dev, _ks or (1, 16, 64), cuda_graphs, threads, len(cases))
    print(f"ponder bench on {_machine(dev)}", flush=True)
    report.load = choose_threads.busy_cores()
    print(f"load: {choose_threads.describe_load(report.load)}", flush=True)
    if choose_threads.is_busy(report.load):
        print(f"ponder bench: warning: {BUSY_WARNING}", file=sys.stderr, flush=True)
    kept_threads = torch.get_num_threads()
    try:
        for case in cases:
            name = f"{case.task} {case.label}"
            try:
                case_row(report, case, timing)
            except Exception as e:  # noqa: BLE001 - any failure is this case's, the rest run
                report.fail(case, name, failure(e))
            report.write(out)
        if _profile_case is not False:
            try:
                with matmul_precision(False):
                    report.profiles = profile_rows(dev, timing, _profile_case, cuda_graphs)
            except Exception as e:  # noqa: BLE001
                report.fail(None, "ACT ponder profiles", failure(e))
        if dev.type == "cpu":
            try:
                report.neighbours = neighbour_rows(dev, timing, neighbours, threads, cuda_graphs)
            except Exception as e:  # noqa: BLE001
                report.fail(None, "beside a busy loop", failure(e))
        report.load_end = choose_threads.busy_cores()
        report.done = True
        text = report.write(out)
    finally:
        torch.set_num_threads(kept_threads)
    print(f"wrote {out} ({report.elapsed():.0f} s)", flush=True)
    return Bench(text, report.failed)


def case_row(report: Report, case: Case, timing: Timing) -> None:
    """Time one case's paths and add its row to ``report``."""
    quick, dev, all_ks = report.quick, report.device, report.ks
    config = case.config(dev.type, report.cuda_graphs)
    task_name = config.task
    name = f"{task_name} {case.label}"
    ks = [k for k in all_ks if k in (case.quick_ks if quick else case.ks)]
    chosen = choose_threads.use(choose_threads.for_config(config, report.threads))
    with matmul_precision(config.tf32):
        steps = {"naive": naive_step(config, dev), "single": single_step(config, dev)}
        steps.update({f"K={k}": ensemble_step(config, dev, k) for k in ks})
        got = measure_against(steps, "naive", dev, timing)
        del steps  # free the ensembles before the next case builds its own
    naive, single = got["naive"][0], got["single"][0]
    print(f"{name:<24} naive  {_rate(naive):>8} steps/s ({_threads(chosen)})", flush=True)
    print(f"{name:<24} single {_rate(single):>8} steps/s ({_ratio(got['single'][1])})")
    label = f"{case.label} ({_threads(chosen)})"
    cells = [label, _rate(naive), f"{_rate(single)} ({_ratio(got['single'][1])})"]
    run_rates = []
    for k in all_ks:
        if k not in ks:
            cells.append("skipped (quick)" if quick else "skipped")
            print(f"{name:<24} K={k:<4} skipped{' (quick)' if quick else ''}", flush=True)
            continue
        rate, ratio = k * got[f"K={k}"][0], got[f"K={k}"][1] * k
        run_rates.append(rate)
        cells.append(f"{_rate(rate)} ({_ratio(ratio)})")
        print(f"{name:<24} K={k:<4} {_rate(rate):>8} run-steps/s ({_ratio(ratio)})", flush=True)
    report.rows.setdefault(task_name, []).append(cells)
    # the rate a sweep gets: the faster of one run at a time and the best ensemble
    report.best_ensemble.setdefault(task_name, []).append(max([single, *run_rates]))


@dataclass
class Report:
    """The bench's results so far; ``write`` renders and writes them (after every case)."""

    quick: bool
    device: torch.device
    ks: tuple[int, ...]
    cuda_graphs: bool
    threads: int | None
    cases: int
    rows: dict[str, list[list[str]]] = field(default_factory=dict)
    best_ensemble: dict[str, list[float]] = field(default_factory=dict)
    profiles: list[list[str]] = field(default_factory=list)
    neighbours: list[list[str]] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    load: float = 0.0
    load_end: float | None = None
    done: bool = False
    started: float = field(default_factory=time.perf_counter)

    def elapsed(self) -> float:
        return time.perf_counter() - self.started

    def fail(self, case: Case | None, name: str, reason: str) -> None:
        """Record a failed case (its row says why) and print its one line."""
        print(f"{name:<24} failed: {reason}", flush=True)
        self.failed.append(f"{name}: {reason}")
        if case is not None:
            cell = "failed: " + reason.replace("|", "/")
            row = [case.label, cell, *[""] * (1 + len(self.ks))]
            self.rows.setdefault(case.task, []).append(row)

    def write(self, out: Path) -> str:
        text = _markdown(self)
        Path(out).write_text(text)
        return text


def _markdown(r: Report) -> str:
    now = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    command = "ponder bench" + (" --quick" if r.quick else "") + f" --device {r.device.type}"
    command += "" if r.cuda_graphs else " --no-cuda-graphs"
    command += "" if r.threads is None else f" --threads {r.threads}"
    load = f"{choose_threads.describe_load(r.load)} when it started"
    if r.load_end is not None:
        load += f", {r.load_end:.1f} when it ended"
    done = sum(len(rows) for rows in r.rows.values())
    lines = [
        "# ponder benchmarks",
        "",
        f"- date: {now}",
        f"- machine: {_machine(r.device)}",
        f"- command: `{command}` ({r.elapsed():.0f} s"
        + ("" if r.done else f", in progress: {done} of {r.cases} cases so far")
        + ")",
        f"- load: {load}; the threads of each case are those `ponder train` chooses",
    ]
    if choose_threads.is_busy(max(r.load, r.load_end or 0.0)):
        lines.append(f"- **warning**: {BUSY_WARNING}")
    if r.failed:
        lines.append(f"- **failed** ({len(r.failed)}): " + "; ".join(r.failed))
    lines.append("")
    headers = ["case", "naive steps/s", "single steps/s (ratio)"]
    headers += [f"K={k} run-steps/s (ratio)" for k in r.ks]
    for task_name, task_rows in r.rows.items():
        lines += [f"## {task_name}", ""]
        lines.append("| " + " | ".join(headers) + " |")
        lines.append("|" + "---|" * len(headers))
        lines += ["| " + " | ".join(row) + " |" for row in task_rows]
        lines.append("")
    if r.best_ensemble.get("addition"):
        rate = min(r.best_ensemble["addition"])  # the slowest addition case's best path
        hours = projected_hours(rate)
        lines += [
            f"**Projected time for the addition table**: {ADDITION_CONFIGS} configurations x "
            f"{ADDITION_SEEDS} seeds x {ADDITION_STEPS:,} steps / {_rate(rate)} run-steps/s "
            "(the slowest addition case's best measured path, single run or ensemble) = "
            f"{hours:,.1f} hours. "
            "This is an upper bound: runs stop when solved, most long before 2M steps.",
            "",
        ]
    if r.profiles:
        k = len(PROFILES[0][1])
        lines += [
            f"## parity ACT ensembles of {k} by how their members ponder",
            "",
            "| members | ms per step | run-steps/s | step time / all halt at once | "
            "rate vs a naive sweep of the same runs |",
            "|---|---|---|---|---|",
            *("| " + " | ".join(row) + " |" for row in r.profiles),
            "",
            "Before every timed step each member's halting unit is set to h = sigmoid(bias) "
            f"whatever its input (weights zero; bias {HALT_AT_ONCE:g}: halts at the first ponder "
            f"step, {PONDER_SIX:g}: after six, {PONDER_TO_M:g}: at the cap M), so the profile "
            "holds while it is timed. "
            "A ponder step computes only the members and samples still pondering, so one "
            "slow member no longer makes the others pay for its steps. The naive sweep trains "
            "the same members one after another with the naive reference.",
            "",
        ]
    if r.neighbours:
        lines += [
            "## A single run beside a busy loop",
            "",
            "| case | quiet steps/s | beside one busy loop steps/s | slowdown | "
            f"within {NEIGHBOUR_LIMIT}x |",
            "|---|---|---|---|---|",
            *("| " + " | ".join(row) + " |" for row in r.neighbours),
            "",
            "The single-run step (`ponder train`'s) timed on the machine as it is, then beside "
            'a second process spinning on one core (`python -c "while True: pass"`), with the '
            "threads chosen each time as `ponder train` chooses them then: one for networks "
            "too small for a second thread to pay (parity's), whatever the load, and for larger "
            "ones as many as pay and are free (`ponder/threads.py`). The target: within "
            f"{NEIGHBOUR_LIMIT}x of the quiet speed. It means something only where the busy "
            "loop finds a core of its own: with every core already busy, it halves the run's "
            "share of the machine whatever the threads.",
            "",
        ]
    lines += [
        "## What the numbers mean",
        "",
        "Every path trains the same network from the same TensorFlow-style initial weights with "
        "Adam on fresh random batches. *naive* is a straightforward plain-PyTorch "
        "implementation (in `ponder/methods/naive.py`): ACT as a Python loop over ponder steps "
        "with per-sample masks and an `.any()` check per step, Repeat-RNN as `nn.RNN`/`nn.LSTM` "
        "over the `repeat_interleave`-d sequence, PonderNet as a loop over its N steps with p from "
        "a "
        "cumulative product, data made on the host. *single* is the training "
        "step of `ponder train`. *K=...* is the batched ensemble that trains K runs (seeds) as "
        "one model, reported in run-steps/s: K times its steps/s, i.e. how fast a sweep of "
        "many runs advances. Every path is timed in turn in each of several rounds after "
        "warm-up steps; a rate is the median over the rounds, and a ratio the median over the "
        "rounds of that round's rate over the naive reference's (so that a machine whose speed "
        "drifts, such as a shared VM, does not favour whichever path ran at a fast moment).",
        "",
        "Targets: on 2 CPU cores, an ensemble of 16 parity Repeat rho=2 runs >= 5x the naive "
        "reference in run-steps/s, ensembles of 16 parity ACT runs and of 16 parity PonderNet "
        "runs >= 3x, and the single-run "
        "paths no slower than the reference (>= 1x); on one H100, single-run parity Repeat "
        ">= 10x and ACT >= 5x, an ensemble of 64 >= 100x, and the addition table projected "
        "at <= 1 hour.",
        "",
    ]
    return "\n".join(lines)
