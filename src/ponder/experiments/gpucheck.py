"""``python -m ponder.experiments.gpucheck``: what only a GPU can show, in one command of about 6
minutes.

A GPU is at hand rarely and briefly (15 minutes, machine start included, at most 10 minutes a
command), so one run must bring back every number needed, and a stage that fails or hangs must
not take the others with it. Each stage runs in a process of its own under a time limit (the
limits add up to ``sum(s.limit for s in STAGES)`` = 400 s); a stage ends itself a few seconds
before its limit with what it has measured, and writes its numbers after every measurement, so
even a killed stage leaves them. What comes back, in ``--out`` (default ``gpu-check/``):

- ``report.md``: versions, each stage's status, exit status and seconds, and every table;
- ``results.json``: the same numbers, for a program;
- ``pytest.log``: the full log of the CUDA tests (per-test timeout, long tracebacks);
- ``stages.log``: everything the stages printed;
- ``BENCHMARKS-cuda.md``: ``ponder bench --quick`` on the GPU (naive reference ratios).

The stages: ``versions`` (torch, CUDA, cuDNN, driver, GPU); ``record`` (PonderNet recorded as
a CUDA graph with K = 1 and 16 runs, the recording that failed before); ``pytest``;
``graphs`` (every bench case, one run and an ensemble of 16, graphed against eager: ms per step
from CUDA events, peak memory, capture time, ACT's recordings, overflows and final U);
``parity`` (16-bit parity, Repeat, trained graphed and eager for 4,000 steps: both must learn,
and their largest differences in logits and parameters are numbers); ``addition`` (ensemble
throughput at K = 1 to 128, ACT tau=1e-2 and Repeat rho=5, and the projected Table 2 time);
``unroll`` (ACT at a forced unroll U of 4 to 100 against eager compaction, K = 1, 16, 64);
``overflow`` (the cost of one step that overflows U); ``bench``.

Without CUDA every CUDA stage says "skipped: no CUDA" with its status. ``--device cpu`` runs
the stages' measuring code on the CPU instead (graphs emulated, ``graphs.Emulated``), and
``--reduced`` makes every network tiny: the tests run it so that a GPU meets no error a CPU
could have found.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime as dt
import json
import math
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from .. import rundir
from ..config import RunConfig, resolve
from ..methods import method
from ..training import engine, graphs, train
from ..training import threads as choose_threads
from . import bench, timing

TIMED_OUT = 124  # the exit status `timeout` gives a command it killed
MARGIN_S = 8.0  # a stage stops measuring this long before its limit (its start-up counts)


@dataclass(frozen=True)
class Stage:
    """One stage: its name, its time limit, and whether it needs CUDA."""

    name: str
    limit: float
    cuda: bool = True
    doc: str = ""


STAGES = [
    Stage("versions", 20, cuda=False, doc="torch, CUDA, cuDNN, driver, GPU"),
    Stage("record", 25, doc="PonderNet recorded as a CUDA graph, K = 1 and 16"),
    Stage("pytest", 75, doc="the CUDA tests, full log in pytest.log"),
    Stage("graphs", 60, doc="each bench case graphed against eager"),
    Stage("parity", 90, doc="a small parity graphed and eager: both learn, how far apart"),
    Stage("addition", 40, doc="addition throughput by K and the projected Table 2 time"),
    Stage("unroll", 45, doc="ACT at a forced unroll U against eager compaction"),
    Stage("overflow", 25, doc="the cost of one step that overflows ACT's unroll"),
    Stage("bench", 60, doc="ponder bench --quick: ratios to the naive reference"),
]
# The CUDA tests alone (the CPU ones of these files run in CI), from the source tree's root
# wherever the check is started.
_TESTS = Path(__file__).resolve().parents[2] / "tests"
PYTEST_ARGS = [
    str(_TESTS / "test_graphs.py"),
    str(_TESTS / "test_tasks.py") + "::test_cuda_sampling_stays_on_device",
    "-k", "cuda",
]  # fmt: skip


@dataclass(frozen=True)
class Sizes:
    """What the stages measure: the paper's networks, or (``--reduced``) tiny ones."""

    ks: tuple[int, ...] = (1, 16)
    unroll_ks: tuple[int, ...] = (1, 16, 64)
    unrolls: tuple[int, ...] = (4, 8, 16, 32, 100)
    addition_ks: tuple[int, ...] = (1, 4, 16, 32, 64, 128)
    parity: tuple[tuple[str, Any], ...] = (("task_options", {"bits": 16}), ("steps", 3000))
    fields: tuple[tuple[str, dict], ...] = ()  # extra config fields per task
    seconds: float = 0.3  # one timing's length


FULL = Sizes()
REDUCED = Sizes(
    ks=(1, 2),
    unroll_ks=(1, 2),
    unrolls=(2, 4),
    addition_ks=(1, 2),
    parity=(("task_options", {"bits": 4}), ("hidden", 8), ("steps", 60), ("batch_size", 16)),
    fields=(
        ("parity", {"task_options": {"bits": 6}, "hidden": 8, "batch_size": 8}),
        ("addition", {"task_options": {"numbers": 2, "digits": 2}, "hidden": 8, "batch_size": 4}),
    ),
    seconds=0.02,
)


# --------------------------------------------------------------------------------------------
# Measuring


class Part:
    """One stage's results: rows and values, written to ``path`` after every addition, so
    that a stage killed at its limit still leaves what it measured."""

    def __init__(self, path: Path, deadline: float) -> None:
        self.path, self.deadline = path, deadline
        self.data: dict[str, Any] = {"rows": []}
        self.failures = 0

    def add(self, row: dict[str, Any]) -> None:
        self.data["rows"].append(row)
        self.failures += "error" in row
        print(" ".join(f"{k}={_show(v)}" for k, v in row.items()), flush=True)
        self._write()

    def set(self, **values: Any) -> None:
        self.data.update(values)
        for k, v in values.items():
            print(f"{k}: {_show(v)}", flush=True)
        self._write()

    def time_left(self) -> bool:
        return time.perf_counter() < self.deadline

    def _write(self) -> None:
        rundir.atomic_write(self.path, json.dumps(self.data, indent=1) + "\n")


def _show(v: Any) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def ms_per_step(step: Callable[[], None], device: torch.device, seconds: float) -> float:
    """Milliseconds per call of ``step`` over about ``seconds`` (3 to 200 calls): from CUDA
    events on a GPU (the device's time, not the host's), the host clock on a CPU."""
    _sync(device)
    t0 = time.perf_counter()
    step()
    _sync(device)
    n = int(min(200, max(3, seconds / max(time.perf_counter() - t0, 1e-6))))
    if device.type == "cuda":
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(n):
            step()
        end.record()
        end.synchronize()
        return start.elapsed_time(end) / n
    t0 = time.perf_counter()
    for _ in range(n):
        step()
    return 1000 * (time.perf_counter() - t0) / n


def timed(step: Callable[[], None], device: torch.device) -> float:
    """Seconds of one call of ``step``, the device finished."""
    _sync(device)
    t0 = time.perf_counter()
    step()
    _sync(device)
    return time.perf_counter() - t0


def reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def peak_mib(device: torch.device) -> float | None:
    """The most device memory allocated since ``reset_peak``, MiB (None on a CPU)."""
    if device.type != "cuda":
        return None
    return torch.cuda.max_memory_allocated(device) / 2**20


@contextlib.contextmanager
def recording(device: torch.device) -> Iterator[None]:
    """On a CPU, graphed configs run ``graphs.Emulated`` (the logic around the graphs, eagerly,
    under ``graphs.HostData``); on a GPU, nothing changes."""
    if device.type == "cuda":
        yield
        return
    uses, graph = engine.uses_graphs, graphs.CudaGraph
    engine.uses_graphs = lambda config, device: config.cuda_graphs
    graphs.CudaGraph = graphs.Emulated
    try:
        yield
    finally:
        engine.uses_graphs, graphs.CudaGraph = uses, graph


def make_engine(config: RunConfig, k: int, device: torch.device):
    """One run's engine (``k`` = 1) or an ensemble of ``k`` (seeds 0..k-1)."""
    if k == 1:
        return engine.Single(config, None, device)
    from ..training.ensemble import Stacked

    return Stacked([dataclasses.replace(config, seed=s) for s in range(k)], [None] * k, device)


def measure(
    config: RunConfig,
    k: int,
    device: torch.device,
    seconds: float,
    unroll: int | None = None,
) -> dict[str, Any]:
    """One engine's training step: ms per step, peak memory, the seconds of the step that
    records (graphed), and ACT's recordings, overflows and final U; ``unroll`` forces ACT's U
    (recorded anew after the warm-up)."""
    reset_peak(device)
    choose_threads.use(choose_threads.for_config(config))  # as `ponder train` would
    with recording(device), engine.matmul_precision(config.tf32):
        eng = make_engine(config, k, device)
        stepper = eng.stepper
        for _ in range(graphs.WARMUP):
            stepper()
        if unroll is not None and stepper.unroll is not None:
            stepper.unroll, stepper._graph = unroll, None
        first = timed(stepper, device)  # graphed: this step records
        ms = ms_per_step(stepper, device, seconds)
    row: dict[str, Any] = {"ms_per_step": ms, "run_steps_per_s": 1000 * k / ms}
    if config.cuda_graphs:
        row["capture_s"] = max(0.0, first - ms / 1000)  # the recording step less one step
    row["peak_mib"] = peak_mib(device)
    if method(config.model).halts_on_host and config.cuda_graphs:
        row.update(records=stepper.records, overflows=stepper.overflows, final_u=stepper.unroll)
    return row


def _try(part: Part, row: dict[str, Any], fn: Callable[[], dict[str, Any]]) -> None:
    """Add ``row`` with what ``fn`` measured, or with its error (one line); past the stage's
    time, with "skipped: stage time"."""
    if not part.time_left():
        part.add({**row, "skipped": "stage time"})
        return
    try:
        got = fn()
    except Exception as e:  # noqa: BLE001 - a failed measurement is a row, the rest go on
        got = {"error": timing.failure(e)}
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    part.add({**row, **got})


# --------------------------------------------------------------------------------------------
# The stages


def _config(case: bench.Case, sizes: Sizes, device: torch.device, graphed: bool) -> RunConfig:
    extra = dict(sizes.fields).get(case.fields.get("task", "parity"), {})
    return dataclasses.replace(case, fields={**case.fields, **extra}).config(device.type, graphed)


def stage_versions(part: Part, device: torch.device, sizes: Sizes) -> None:
    cuda = torch.cuda.is_available()
    values: dict[str, Any] = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda (torch built with)": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if cuda else None,
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "cuda available": cuda,
    }
    if cuda:
        props = torch.cuda.get_device_properties(0)
        values.update(
            gpu=torch.cuda.get_device_name(0),
            capability=".".join(map(str, torch.cuda.get_device_capability(0))),
            gpu_memory_gib=round(props.total_memory / 2**30, 1),
            gpus=torch.cuda.device_count(),
        )
    values["driver"] = _nvidia_smi()
    part.set(**values)


def _nvidia_smi() -> str | None:
    """The driver version and GPU as nvidia-smi gives them (None without nvidia-smi)."""
    if shutil.which("nvidia-smi") is None:
        return None
    query = ["nvidia-smi", "--query-gpu=driver_version,name,memory.total", "--format=csv,noheader"]
    try:
        got = subprocess.run(query, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"nvidia-smi failed: {e}"
    return got.stdout.strip() or got.stderr.strip()


def stage_record(part: Part, device: torch.device, sizes: Sizes) -> None:
    case = bench.Case("pondernet", {"task": "parity", "model": "pondernet", "lambda_p": 0.2})
    config = _config(case, sizes, device, graphed=True)
    for k in sizes.ks:
        _try(part, {"model": "pondernet", "k": k}, lambda k=k: measure(config, k, device, 0.1))


def stage_graphs(part: Part, device: torch.device, sizes: Sizes) -> None:
    for case in bench.CASES:
        for k in sizes.ks:
            row = {"case": f"{case.fields['task']} {case.label}", "k": k}
            got = {}
            for graphed in (True, False):
                config = _config(case, sizes, device, graphed)
                name = "graphed" if graphed else "eager"
                try:
                    if not part.time_left():
                        raise TimeoutError("stage time")
                    m = measure(config, k, device, sizes.seconds)
                except Exception as e:  # noqa: BLE001
                    got[f"{name}_error"] = timing.failure(e)
                    continue
                got.update({f"{name}_{key}": v for key, v in m.items()})
            if "graphed_ms_per_step" in got and "eager_ms_per_step" in got:
                got["speedup"] = got["eager_ms_per_step"] / got["graphed_ms_per_step"]
            part.add({**row, **got})


def stage_unroll(part: Part, device: torch.device, sizes: Sizes) -> None:
    for k in sizes.unroll_ks:
        for unroll in (*sizes.unrolls, None):
            graphed = unroll is not None
            config = _config(bench.PROFILE_CASE, sizes, device, graphed)
            row = {"k": k, "forced_u": unroll if graphed else "eager compaction"}
            _try(part, row, lambda c=config, k=k, u=unroll: measure(c, k, device, sizes.seconds, u))


def stage_overflow(part: Part, device: torch.device, sizes: Sizes) -> None:
    for k in sizes.ks:
        _try(part, {"k": k}, lambda k=k: _overflow(k, device, sizes))


def _overflow(k: int, device: torch.device, sizes: Sizes) -> dict[str, Any]:
    """ACT's steps before, at and after one forced overflow: the halting unit is set so that
    every sample needs U + 2 ponder steps, so the recorded unroll U overflows once, the step is
    redone eagerly and the next step records U anew."""
    config = _config(bench.PROFILE_CASE, sizes, device, graphed=True)
    with recording(device):
        eng = make_engine(config, k, device)
        stepper = eng.stepper
        for _ in range(graphs.WARMUP + 1):
            stepper()
        before = ms_per_step(stepper, device, sizes.seconds)
        u = stepper.unroll
        need = min(u + 2, config.max_ponder)
        h = 0.99 / (need - 0.5)  # n h >= 1 - eps first at n = need
        halting = eng.net.core.halting if k == 1 else None
        weight = halting.weight if halting else eng.ens.p("core.halting.weight")
        bias = halting.bias if halting else eng.ens.p("core.halting.bias")
        held = timing.holding(stepper, weight, bias, [math.log(h / (1 - h))] * k)
        overflows = stepper.overflows
        overflow_s = timed(held, device)
        rerecord_s = timed(held, device)
        after = ms_per_step(held, device, sizes.seconds)
    return {
        "unroll_before": u,
        "ms_before": before,
        "overflowed": stepper.overflows - overflows,
        "overflow_step_ms": 1000 * overflow_s,
        "rerecord_step_ms": 1000 * rerecord_s,
        "unroll_after": stepper.unroll,
        "ms_after": after,
        "extra_ms": 1000 * (overflow_s + rerecord_s) - 2 * after,
    }


def stage_addition(part: Part, device: torch.device, sizes: Sizes) -> None:
    best: dict[str, float] = {}
    for case in bench.CASES:
        if case.fields["task"] != "addition":
            continue
        config = _config(case, sizes, device, graphed=True)
        for k in sizes.addition_ks:
            row = {"case": case.label, "k": k}
            _try(part, row, lambda k=k, c=config: measure(c, k, device, sizes.seconds))
            rate = part.data["rows"][-1].get("run_steps_per_s")
            if rate:
                best[case.label] = max(best.get(case.label, 0.0), rate)
    if best:
        slowest = min(best.values())
        part.set(
            best_run_steps_per_s=best,
            projected_table2_hours=bench.projected_hours(slowest),
            projection=(
                f"{bench.ADDITION_CONFIGS} configurations x {bench.ADDITION_SEEDS} seeds x "
                f"{bench.ADDITION_STEPS:,} steps at the slower method's best rate "
                f"({slowest:,.0f} run-steps/s); an upper bound, runs stop when solved"
            ),
        )


def stage_parity(part: Part, device: torch.device, sizes: Sizes) -> None:
    """16-bit parity, Repeat rho=2, trained graphed and eager from the same seed: both must
    learn (on a CPU, eager, it reached 98% held-out accuracy in 2,000-3,000 steps, 7 s), and
    their largest differences are numbers (the graphs replay the eager step's computation, so
    they should be float rounding at most)."""
    fields = dict(task="parity", model="repeat", rho=2, log_every=250, eval_size=1000)
    fields.update(device=device.type, progress=False, stop_when_solved=False)
    fields.update(dict(sizes.parity))
    fields["log_every"] = min(fields["log_every"], max(1, fields["steps"] // 3))
    base = resolve(RunConfig(**fields))
    choose_threads.use(choose_threads.for_config(base))
    runs = tempfile.mkdtemp(prefix="ponder-gpucheck-")
    try:
        dirs = {}
        for graphed in (True, False):
            name = "graphed" if graphed else "eager"
            dirs[name] = Path(runs) / name
            config = dataclasses.replace(base, cuda_graphs=graphed)
            with recording(device):
                summary = train.run(config, dirs[name])
            last = rundir.read_metrics(dirs[name])[-1]
            part.add({"run": name, "steps": summary["step"],
                      "final_eval_accuracy": summary["final_eval_accuracy"],
                      "learned (eval >= 0.95)": summary["final_eval_accuracy"] >= 0.95,
                      "loss": last["loss"], "elapsed_s": summary["elapsed_s"]})  # fmt: skip
        part.set(**compare_runs(dirs["graphed"], dirs["eager"], device))
    finally:
        shutil.rmtree(runs, ignore_errors=True)


def compare_runs(a: Path, b: Path, device: torch.device) -> dict[str, float]:
    """The largest differences of two runs of one config: logged numbers, parameters (also
    relative to the parameter's largest magnitude) and held-out logits."""
    rows_a, rows_b = rundir.read_metrics(a), rundir.read_metrics(b)
    keys = ("loss", "train_accuracy", "eval_accuracy")
    logged = max(
        (abs(r[k] - s[k]) for r, s in zip(rows_a, rows_b, strict=True) for k in keys),
        default=0.0,
    )
    net_a, task, config = train.load_model(a, device.type)
    net_b, _, _ = train.load_model(b, device.type)
    params, relative = 0.0, 0.0
    x, _ = engine.eval_set(task, config, device)
    with torch.no_grad():
        for p, q in zip(net_a.parameters(), net_b.parameters(), strict=True):
            d = float((p - q).abs().max())
            params = max(params, d)
            relative = max(relative, d / max(float(p.abs().max()), 1e-12))
        logits = float((net_a(x)[0] - net_b(x)[0]).abs().max())
    return {
        "max_logged_difference": logged,
        "max_parameter_difference": params,
        "max_parameter_difference_relative": relative,
        "max_logit_difference": logits,
    }


STAGE_FUNCTIONS: dict[str, Callable[[Part, torch.device, Sizes], None]] = {
    "versions": stage_versions,
    "record": stage_record,
    "graphs": stage_graphs,
    "parity": stage_parity,
    "addition": stage_addition,
    "unroll": stage_unroll,
    "overflow": stage_overflow,
}


# --------------------------------------------------------------------------------------------
# Running the stages


def command(stage: Stage, args: argparse.Namespace, part: Path) -> list[str]:
    """The command line that runs ``stage`` in a process of its own."""
    py = sys.executable
    if stage.name == "pytest":
        cmd = [py, "-m", "pytest", "-rA", "--tb=long", "-p", "no:cacheprovider"]
        cmd += ["-o", "faulthandler_timeout=30"]  # a hanging test's stacks, in the log
        if _has("pytest_timeout"):
            cmd += ["--timeout", "30"]
        return cmd + PYTEST_ARGS
    if stage.name == "bench":
        out = Path(args.out) / f"BENCHMARKS-{args.device}.md"
        return [py, "-m", "ponder.cli", "bench", "--quick", "--device", args.device, "--out",
                str(out)]  # fmt: skip
    cmd = [py, "-m", "ponder.experiments.gpucheck", "--stage", stage.name, "--part", str(part)]
    cmd += ["--device", args.device, "--limit", str(stage.limit)]
    return cmd + (["--reduced"] if args.reduced else [])


def _has(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None


def run_stage(
    stage: Stage, args: argparse.Namespace, part: Path, log: Path
) -> tuple[int | None, float]:
    """Run ``stage`` (in a process of its own, or with ``args.in_process`` here); its exit
    status (``TIMED_OUT`` when killed at its limit) and seconds. Output goes to ``log``."""
    t0 = time.perf_counter()
    with log.open("a") as f:
        f.write(f"\n===== {stage.name} ({stage.doc}; limit {stage.limit:.0f} s)\n")
        f.flush()
        if args.in_process and stage.name in STAGE_FUNCTIONS:
            with contextlib.redirect_stdout(f):
                rc = _stage_here(stage.name, part, args.device, args.reduced, stage.limit)
            return rc, time.perf_counter() - t0
        try:
            env = {**os.environ, "PYTHONUNBUFFERED": "1"}
            rc = subprocess.run(
                command(stage, args, part), stdout=f, stderr=subprocess.STDOUT,
                timeout=stage.limit, env=env,
            ).returncode  # fmt: skip
        except subprocess.TimeoutExpired:
            rc = TIMED_OUT
            f.write(f"\n===== {stage.name}: killed at its limit of {stage.limit:.0f} s\n")
    return rc, time.perf_counter() - t0


def _stage_here(name: str, part: Path, device: str, reduced: bool, limit: float) -> int:
    """Run stage ``name`` in this process; 0 when every measurement worked, else 1."""
    p = Part(part, time.perf_counter() + limit - MARGIN_S)
    kept = torch.get_num_threads()  # the stages choose threads as `ponder train` does
    try:
        STAGE_FUNCTIONS[name](p, torch.device(device), REDUCED if reduced else FULL)
    except Exception:  # noqa: BLE001 - the stage's status says it failed, the log says why
        traceback.print_exc(file=sys.stdout)
        return 1
    finally:
        torch.set_num_threads(kept)
    return 1 if p.failures else 0


def skipped(stage: Stage, args: argparse.Namespace, cuda: bool) -> str | None:
    """Why ``stage`` does not run here, or None."""
    if stage.cuda and args.device == "cuda" and not cuda:
        return "skipped: no CUDA"
    if args.reduced and stage.name in ("pytest", "bench"):
        return "skipped: --reduced (the test suite covers it)"
    return None


def status(stage: Stage, rc: int) -> str:
    if rc == TIMED_OUT:
        return f"timed out (killed at {stage.limit:.0f} s)"
    return "ok" if rc == 0 else f"failed (exit {rc})"


def check(args: argparse.Namespace) -> int:
    """Every stage in turn; ``report.md`` and ``results.json`` rewritten after each. Exit
    status 0 when no stage failed (skipped ones count as done), else 1."""
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    log = out / "stages.log"
    log.write_text("")
    cuda = torch.cuda.is_available()
    results: dict[str, Any] = {
        "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "device": args.device,
        "reduced": args.reduced,
        "stages": [],
    }
    parts = Path(tempfile.mkdtemp(prefix="ponder-gpucheck-parts-"))
    try:
        for stage in STAGES:
            if args.only and stage.name not in args.only:
                continue
            part = parts / f"{stage.name}.json"
            skip = skipped(stage, args, cuda)
            rc, seconds = (None, 0.0) if skip else run_stage(stage, args, part, log)
            if stage.name == "pytest" and not skip:
                _pytest_log(log, out / "pytest.log")
            entry = {"stage": stage.name, "status": skip or status(stage, rc), "exit": rc,
                     "seconds": round(seconds, 1), "limit": stage.limit}  # fmt: skip
            results["stages"].append(entry)
            print(f"{stage.name:<9} {entry['status']} (exit {rc}, {seconds:.1f} s)", flush=True)
            if part.exists():
                results[stage.name] = json.loads(part.read_text())
            write(out, results)
    finally:
        shutil.rmtree(parts, ignore_errors=True)
    failed = [s for s in results["stages"] if s["exit"] not in (0, None)]
    return 1 if failed else 0


def _pytest_log(log: Path, to: Path) -> None:
    """Move the pytest stage's output from the stages' log to a file of its own."""
    text = log.read_text()
    start = text.rfind("\n===== pytest (")
    to.write_text(text[start + 1 :])
    log.write_text(text[:start] + "\n===== pytest: the full log is in pytest.log\n")


def write(out: Path, results: dict[str, Any]) -> None:
    rundir.atomic_write(out / "results.json", json.dumps(results, indent=1) + "\n")
    rundir.atomic_write(out / "report.md", markdown(results))


def markdown(results: dict[str, Any]) -> str:
    """The report: each stage's status, then its numbers as a table and a list."""
    lines = [
        "# ponder gpu-check",
        "",
        f"- date: {results['date']}",
        f"- device: {results['device']}" + (" (reduced sizes)" if results["reduced"] else ""),
        "",
        "| stage | status | exit | seconds | limit |",
        "|---|---|---|---|---|",
    ]
    for s in results["stages"]:
        rc = "-" if s["exit"] is None else s["exit"]
        lines.append(f"| {s['stage']} | {s['status']} | {rc} | {s['seconds']} | {s['limit']} |")
    lines.append("")
    docs = {s.name: s.doc for s in STAGES}
    for s in results["stages"]:
        data = results.get(s["stage"])
        if not data:
            continue
        lines += [f"## {s['stage']}: {docs[s['stage']]}", ""]
        lines += [f"- {k}: {_show(v)}" for k, v in data.items() if k != "rows"]
        rows = data.get("rows") or []
        if rows:
            columns = list(dict.fromkeys(k for r in rows for k in r))
            lines += ["", "| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
            for r in rows:
                cells = [_cell(r.get(c)) for c in columns]
                lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)


def _cell(v: Any) -> str:
    if v is None:
        return ""
    return _show(v).replace("|", "/")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m ponder.experiments.gpucheck",
        description="What only a GPU can show, in about 6 minutes; see the module docstring.",
    )
    p.add_argument("--out", default="gpu-check", help="folder for the few files it writes")
    p.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    p.add_argument("--reduced", action="store_true", help="tiny networks (tests, a CPU trial)")
    p.add_argument("--only", action="append", help="run only this stage (repeatable)")
    p.add_argument("--in-process", action="store_true", help="measuring stages in this process")
    p.add_argument("--stage", help=argparse.SUPPRESS)  # one stage, in its own process
    p.add_argument("--part", help=argparse.SUPPRESS)
    p.add_argument("--limit", type=float, default=60.0, help=argparse.SUPPRESS)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.stage:
        return _stage_here(args.stage, Path(args.part), args.device, args.reduced, args.limit)
    return check(args)


if __name__ == "__main__":
    sys.exit(main())
