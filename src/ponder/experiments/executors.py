"""Executors: where the jobs of a sweep train.

Execution is a plain function of (config, run directory): ``execute_job`` trains the runs of one
job in the calling process, and an executor decides where jobs run. ``InlineExecutor`` runs
them here, one after another; ``LocalExecutor`` starts one ``python -m
ponder.experiments.executors`` process per job, ``--jobs`` at a time, so a crashed run cannot
take the sweep down with it. Interrupted (Ctrl-C), it starts no further job and ends the
workers it started (SIGTERM, then SIGKILL after ``STOP_GRACE_S``); every run resumes from its
checkpoint when the same sweep runs again. ``ray_executor.RayExecutor`` beside it runs jobs on
a Ray cluster.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from .. import rundir
from ..config import (
    ConfigError,
    RunConfig,
    from_dict,
)
from ..memory import keep_freed_memory
from ..methods import load_plugins
from ..rundir import atomic_write

# --------------------------------------------------------------------------------------------
# Running one job (in whatever process an executor chose)


def run_status(run_dir: Path, config: RunConfig) -> str:
    """``done``, ``diverged``, ``failed``, ``partial`` (has progress) or ``new``."""
    return rundir.status(run_dir, config)


def execute_job(runs: list[tuple[RunConfig, Path]]) -> None:
    """Train the runs of one job here: one run alone, several as one batched ensemble.

    A run (or ensemble) that raises is recorded in ``error.txt`` and the sweep goes on.
    """
    from ..training import train

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


@dataclass(eq=False)
class _Worker:
    """A ``python -m ponder.experiments.executors JOB.json`` process training one job."""

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
                [sys.executable, "-m", "ponder.experiments.executors", str(job_file)],
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


def _job_main(argv: list[str]) -> int:
    """Entry of a local worker process: ``python -m ponder.experiments.executors JOB.json``.
    SIGTERM (the sweep stopping, or dying) ends it through ``execute_job``'s clean-up, like
    Ctrl-C."""

    def terminated(signum: int, frame: Any) -> None:
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, terminated)
    _die_with_parent()
    load_plugins()  # the sweep's own methods ($PONDER_METHODS, inherited)
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
