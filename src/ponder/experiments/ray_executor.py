"""Run the jobs of a sweep as Ray tasks, on this machine or across a Ray cluster.

``RayExecutor`` implements the sweep's ``Executor`` protocol. Each job becomes one Ray task that
asks for ``cpus_per_job`` CPUs and ``gpus_per_job`` GPUs (a fraction lets several small jobs
share one GPU) and calls ``executors.execute_job`` in a Ray worker process. Configs travel as
plain dicts and run directories as strings, so every node must have ponder installed and see the
sweep directory at the same path (a shared filesystem).

Failures:

* a run that raises is recorded in its ``error.txt`` by ``execute_job``, as everywhere else;
* a worker process that dies (killed, out of memory, its node lost) is retried by Ray up to
  ``max_retries`` times, and the retry resumes each run from its checkpoint, because training
  resumes by itself;
* once the retries are spent, each unfinished run of that job gets an ``error.txt`` with one line
  saying why, and the other jobs go on. ``run`` never raises for one failed job.

While a task trains, each of its run directories holds ``.worker_pid`` (``PID HOST``), the
process that trains it, so a person (or a test) can find it; the file is removed when the task
ends, and a stale one is overwritten by the next attempt.

With ``gpus_per_job == 0`` the task hides the GPUs from PyTorch, so ``device: auto`` means "the
devices Ray gave this job" whatever the Ray version (newer Ray no longer hides them itself).
Worker output (warnings, progress bars) is appended to ``log.txt`` in the job's first run
directory, as the local executor does.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .. import rundir
from ..config import ConfigError, RunConfig
from ..methods import PLUGINS_ENV
from ..rundir import atomic_write
from .sweep import run_status

PID_FILE = rundir.WORKER_PID
NEEDS_RAY = "the Ray executor needs Ray: pip install 'ponder[ray]'"

Job = list[tuple[RunConfig, Path]]


def available() -> bool:
    """Whether Ray can be imported here."""
    try:
        import ray  # noqa: F401
    except ImportError:
        return False
    return True


def _import_ray() -> Any:
    try:
        import ray
    except ImportError:
        raise ConfigError(NEEDS_RAY) from None
    return ray


@dataclass
class RayExecutor:
    """Every job as a Ray task; ``address`` None starts a local Ray instance for the sweep.

    None always starts a new instance, even where ``RAY_ADDRESS`` is set or ``ray start`` ran on
    this machine: joining a cluster is asked for by name. ``address`` may be ``"auto"`` (the
    cluster this machine belongs to, started with ``ray start``), ``"HOST:PORT"`` or
    ``"ray://HOST:10001"`` (Ray Client). A Ray instance this executor started is shut down at
    the end, one it joined is only disconnected from, and one this process had already
    initialized (the caller's) is left as it is.
    """

    address: str | None = None
    cpus_per_job: float = 1.0
    gpus_per_job: float = 0.0
    max_retries: int = 2  # retries of a job whose worker died; -1 retries without end

    def __post_init__(self) -> None:
        _import_ray()
        if not self.cpus_per_job > 0:
            raise ConfigError(f"--cpus-per-job must be > 0, got {self.cpus_per_job}")
        if self.gpus_per_job < 0:
            raise ConfigError(f"--gpus-per-job must be >= 0, got {self.gpus_per_job}")
        if self.gpus_per_job > 1 and self.gpus_per_job != int(self.gpus_per_job):
            raise ConfigError(
                f"--gpus-per-job above 1 must be a whole number, got {self.gpus_per_job}"
            )
        if self.max_retries < -1:
            raise ConfigError(f"--retries must be >= 0 (or -1: no limit), got {self.max_retries}")

    def on_gpu(self, device: str) -> bool:
        """Whether a job whose runs ask for ``device`` trains on a GPU: its runs see a GPU
        exactly when the job asked Ray for one (``gpus_per_job`` > 0). Nothing here asks
        this process's CUDA: the driver (a head node) may have no GPU."""
        if device != "auto":
            return device == "cuda"
        return self.gpus_per_job > 0

    @property
    def threads(self) -> int:
        """PyTorch threads of one job: the whole CPUs it asked for, at least one."""
        return max(1, math.floor(self.cpus_per_job))

    def run(self, jobs: list[Job], sweep_dir: Path) -> None:
        if not jobs:
            return  # nothing to train: do not pay for starting Ray
        if self.gpus_per_job == 0 and any(c.device == "cuda" for job in jobs for c, _ in job):
            raise ConfigError(
                "runs ask for device cuda but each Ray job gets no GPU: "
                "give each job a share, e.g. --gpus-per-job 0.25"
            )
        ray = _import_ray()
        connected_here = not ray.is_initialized()
        if connected_here:
            try:
                ray.init(
                    address=self.address or "local",  # not a `ray start` cluster, nor RAY_ADDRESS
                    ignore_reinit_error=True,
                    log_to_driver=False,
                    logging_level=logging.WARNING,
                )
            except (ConnectionError, ValueError) as e:
                where = f"Ray at {self.address}" if self.address else "a local Ray instance"
                raise ConfigError(f"cannot start or join {where}: {_first_line(e)}") from None
        try:
            self._check_fits(ray)
            task = ray.remote(
                num_cpus=self.cpus_per_job,
                num_gpus=self.gpus_per_job,
                max_retries=self.max_retries,
                retry_exceptions=False,  # a run's own errors are recorded, not retried
            )(_train_job)
            plugins = os.environ.get(PLUGINS_ENV, "")  # the workers import them too
            pending = {
                task.remote(_plain(job), self.threads, self.gpus_per_job > 0, plugins): job
                for job in jobs
            }
            try:
                while pending:
                    ready, _ = ray.wait(list(pending), num_returns=1)
                    for ref in ready:
                        job = pending.pop(ref)
                        try:
                            ray.get(ref)
                        except ray.exceptions.RayError as e:
                            _record_failure(job, self._reason(ray, e))
            except BaseException:  # Ctrl-C: stop the workers too, then let it through
                for ref, job in pending.items():
                    with contextlib.suppress(Exception):
                        ray.cancel(ref, force=True)
                    for _, run_dir in job:  # a killed worker leaves them; the run resumes
                        rundir.mark_running(run_dir, False)
                        (run_dir / PID_FILE).unlink(missing_ok=True)
                raise
        finally:
            if connected_here:
                ray.shutdown()  # stops a local instance we started; only disconnects otherwise

    def _check_fits(self, ray: Any) -> None:
        """Refuse a job size no node has: Ray would wait for it forever."""
        try:
            nodes = [n["Resources"] for n in ray.nodes() if n.get("Alive")]
        except Exception:  # some connection modes cannot list nodes: let Ray decide
            return
        if any(
            r.get("CPU", 0) >= self.cpus_per_job and r.get("GPU", 0) >= self.gpus_per_job
            for r in nodes
        ):
            return
        largest = max(nodes, key=lambda r: (r.get("GPU", 0), r.get("CPU", 0)), default={})
        raise ConfigError(
            f"no Ray node has {self.cpus_per_job:g} CPUs and {self.gpus_per_job:g} GPUs for a job "
            f"(largest: {largest.get('CPU', 0):g} CPUs, {largest.get('GPU', 0):g} GPUs); "
            "lower --cpus-per-job / --gpus-per-job"
        )

    def _reason(self, ray: Any, error: Exception) -> str:
        """One line for error.txt saying why a job's task ended without finishing."""
        if isinstance(error, ray.exceptions.RayTaskError):  # raised outside execute_job
            cause = error.cause if error.cause is not None else error
            return f"the Ray task raised {type(cause).__name__}: {_first_line(cause)}"
        if isinstance(error, ray.exceptions.TaskCancelledError):
            return "the Ray task was cancelled"
        tries = "no retries" if self.max_retries == 0 else f"{self.max_retries} retries"
        return (
            f"the Ray worker training this job failed ({type(error).__name__}: "
            f"{_first_line(error)}) after {tries}"
        )


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else "(no message)"


def _plain(job: Job) -> list[dict[str, Any]]:
    """A job as plain data for the task: config dicts and directory strings."""
    return [{"config": c.to_dict(), "dir": str(d)} for c, d in job]


def _record_failure(job: Job, reason: str) -> None:
    for config, run_dir in job:
        if run_status(run_dir, config) not in ("done", "diverged"):
            rundir.write_error(run_dir, reason)


def _train_job(
    items: list[dict[str, Any]], threads: int, uses_gpu: bool, plugins: str = ""
) -> None:
    """The body of one Ray task: train a job's runs in this worker process, with the methods
    the sweep's process loaded (``plugins``: modules importable on the worker's node)."""
    if not uses_gpu:  # before anything initializes CUDA in this process
        os.environ["CUDA_VISIBLE_DEVICES"] = ""
    os.environ["OMP_NUM_THREADS"] = os.environ["MKL_NUM_THREADS"] = str(threads)
    import torch

    from ..config import from_dict
    from ..methods import load_plugins
    from .sweep import execute_job

    load_plugins(plugins)
    torch.set_num_threads(threads)
    job = [(from_dict(i["config"]), Path(i["dir"])) for i in items]
    stamp = f"{os.getpid()} {socket.gethostname()}\n"
    for _, run_dir in job:
        run_dir.mkdir(parents=True, exist_ok=True)
        atomic_write(run_dir / PID_FILE, stamp)
    try:
        with (
            rundir.log_path(job[0][1]).open("a") as log,
            contextlib.redirect_stdout(log),
            contextlib.redirect_stderr(log),
        ):
            execute_job(job)
    finally:
        for _, run_dir in job:
            (run_dir / PID_FILE).unlink(missing_ok=True)


__all__ = ["PID_FILE", "RayExecutor", "available"]
