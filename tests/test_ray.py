"""The Ray executor: results equal a local sweep's, skipping, resuming after a killed worker,
failures recorded without stopping the others, and a clear message without Ray.

One local Ray instance (2 CPUs) serves the whole module. A test kills a training worker by the
PID the executor writes in the run directory (``ray_executor.PID_FILE``) while the run trains.
"""

import logging
import os
import signal
import subprocess
import sys
import threading
import time

import pytest

ray = pytest.importorskip("ray")

from ponder import rundir  # noqa: E402
from ponder.config import ConfigError, RunConfig, resolve  # noqa: E402
from ponder.experiments import ray_executor, sweep  # noqa: E402
from ponder.experiments.ray_executor import RayExecutor  # noqa: E402
from ponder.training import train  # noqa: E402


@pytest.fixture(scope="module", autouse=True)
def local_ray():
    ray.init(
        address="local",
        num_cpus=2,
        include_dashboard=False,
        log_to_driver=False,
        logging_level=logging.ERROR,
    )
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def grid(tmp_path_factory, tiny_grid):
    path = tmp_path_factory.mktemp("grid") / "tiny.yaml"
    path.write_text(tiny_grid)
    return sweep.load_grid(path, seeds=1, progress=False)


@pytest.fixture(scope="module")
def ray_sweep(grid, tmp_path_factory):
    """The tiny grid swept once with Ray: (result, sweep directory)."""
    out = tmp_path_factory.mktemp("ray") / "s"
    return sweep.sweep(grid, out, RayExecutor(), progress=False), out


def _rows(d):
    return [{k: v for k, v in r.items() if k != "elapsed_s"} for r in rundir.read_metrics(d)]


def _long(steps=600, **overrides) -> RunConfig:
    """A run of a few seconds that checkpoints at every log, every 10 steps."""
    base = dict(
        task="parity", task_options={"bits": 4}, model="rnn", hidden=8, steps=steps,
        log_every=10, checkpoint_every=1, eval_size=32, batch_size=16, device="cpu",
        progress=False,
    )  # fmt: skip
    base.update(overrides)
    return resolve(RunConfig(**base))


def _start(executor, jobs, sweep_dir) -> threading.Thread:
    thread = threading.Thread(target=executor.run, args=(jobs, sweep_dir), daemon=True)
    thread.start()
    return thread


def _kill_worker_once_checkpointed(run_dir, timeout=600.0) -> int:
    """SIGKILL the worker training ``run_dir`` once it has a checkpoint; returns its PID."""
    deadline = time.time() + timeout
    pid_file = run_dir / ray_executor.PID_FILE
    while not (pid_file.exists() and (run_dir / rundir.CHECKPOINT).exists()):
        assert time.time() < deadline, "the run never started"
        time.sleep(0.05)
    pid = int(pid_file.read_text().split()[0])
    assert not (run_dir / rundir.SUMMARY).exists(), "the run finished before the kill"
    os.kill(pid, signal.SIGKILL)
    return pid


def test_results_equal_a_local_sweep(grid, ray_sweep, tmp_path):
    result, out = ray_sweep
    assert result.all_finished, result.statuses
    local = sweep.sweep(grid, tmp_path / "local", sweep.InlineExecutor(), progress=False)
    assert local.all_finished
    for r in grid.runs:
        rows = _rows(out / r.name)
        assert [row["step"] for row in rows] == [10, 20, 30, 40], r.name
        assert rows == _rows(tmp_path / "local" / r.name), r.name
        assert not (out / r.name / ray_executor.PID_FILE).exists()
        assert not (out / r.name / rundir.RUNNING).exists()


def test_rerun_skips_finished_runs(grid, ray_sweep):
    _, out = ray_sweep
    stamps = {r.name: (out / r.name / "summary.json").stat().st_mtime_ns for r in grid.runs}
    again = sweep.sweep(grid, out, RayExecutor(), progress=False)
    assert again.all_finished
    for name, stamp in stamps.items():
        assert (out / name / "summary.json").stat().st_mtime_ns == stamp, name


def test_killed_worker_is_retried_and_resumes_from_the_checkpoint(tmp_path):
    config = _long()
    train.run(config, tmp_path / "ref")  # uninterrupted, in this process
    run_dir = tmp_path / "s" / "run"
    thread = _start(RayExecutor(max_retries=2), [[(config, run_dir)]], tmp_path / "s")
    killed = _kill_worker_once_checkpointed(run_dir)
    thread.join(timeout=600)
    assert not thread.is_alive()
    assert sweep.run_status(run_dir, config) == "done", (run_dir / "error.txt").read_text()
    rows = _rows(run_dir)
    assert [r["step"] for r in rows] == list(range(10, 610, 10))
    assert rows == _rows(tmp_path / "ref")
    with pytest.raises(ProcessLookupError):
        os.kill(killed, 0)  # that worker is gone: the retry ran elsewhere


def test_exhausted_retries_and_failed_runs_do_not_stop_the_others(tmp_path):
    out = tmp_path / "s"
    killed, short, clash = _long(), _long(steps=40), _long(steps=40, seed=1)
    (out / "clash").mkdir(parents=True)
    train.run(_long(steps=20, seed=1, hidden=4), out / "clash")  # a different run lives there
    jobs = [[(killed, out / "killed")], [(short, out / "short")], [(clash, out / "clash")]]
    thread = _start(RayExecutor(max_retries=0), jobs, out)
    _kill_worker_once_checkpointed(out / "killed")
    thread.join(timeout=600)
    assert not thread.is_alive()
    assert sweep.run_status(out / "killed", killed) == "failed"
    error = (out / "killed" / rundir.ERROR).read_text()
    assert error.startswith("the Ray worker training this job failed") and "no retries" in error
    assert error.count("\n") == 1
    assert sweep.run_status(out / "short", short) == "done"
    assert sweep.run_status(out / "clash", clash) == "failed"
    assert "different config" in (out / "clash" / rundir.ERROR).read_text()


def test_an_instance_it_starts_is_shut_down(tmp_path, tiny_grid):
    """`ponder sweep --executor ray` without --address: a private instance, gone afterwards."""
    (tmp_path / "g.yaml").write_text(tiny_grid.replace("rho: [2, 3]", "rho: [2]"))
    script = (
        "import ray; from ponder.experiments import sweep\n"
        "from ponder.experiments.ray_executor import RayExecutor\n"
        f"g = sweep.load_grid({str(tmp_path / 'g.yaml')!r}, seeds=1, budget=20, progress=False)\n"
        "g.runs = g.runs[-1:]\n"
        f"r = sweep.sweep(g, {str(tmp_path / 's')!r}, RayExecutor(), progress=False)\n"
        "assert r.all_finished, r.statuses\n"
        "assert not ray.is_initialized()\n"
    )
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, timeout=600)
    assert proc.returncode == 0, proc.stderr.decode()[-2000:]
    assert (tmp_path / "s" / "repeat-rho2-seed0" / "summary.json").exists()


def test_job_sizes_no_node_has_are_refused(tmp_path):
    jobs = [[(_long(steps=20), tmp_path / "r")]]
    with pytest.raises(ConfigError, match="no Ray node has 64 CPUs"):
        RayExecutor(cpus_per_job=64).run(jobs, tmp_path)
    with pytest.raises(ConfigError, match="gpus-per-job"):
        RayExecutor().run([[(_long(steps=20, device="cuda"), tmp_path / "r")]], tmp_path)
    with pytest.raises(ConfigError, match="whole number"):
        RayExecutor(gpus_per_job=1.5)
    assert not (tmp_path / "r").exists()


def test_without_ray_the_message_is_one_clear_line(monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)
    assert not ray_executor.available()
    with pytest.raises(ConfigError) as e:
        RayExecutor(address="auto")
    assert str(e.value) == "the Ray executor needs Ray: pip install 'ponder[ray]'"


class _Planned(RayExecutor):
    """A RayExecutor that records the jobs the sweep plans for it and trains nothing."""

    def run(self, jobs, sweep_dir):
        self.planned = jobs


def test_planning_asks_the_executor_not_the_drivers_cuda(tmp_path, monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # a head node without a GPU
    assert RayExecutor(gpus_per_job=0.25).on_gpu("auto")
    assert RayExecutor(gpus_per_job=0.25).on_gpu("cuda") and RayExecutor().on_gpu("cuda")
    assert not RayExecutor().on_gpu("auto") and not RayExecutor(gpus_per_job=1).on_gpu("cpu")
    addition = sweep.load_grid(sweep.builtin_grid("addition-table"), seeds=2, device="cuda")
    gpu = _Planned(gpus_per_job=0.5)
    sweep.sweep(addition, tmp_path / "cuda", gpu, progress=False)  # no "no CUDA GPU" here
    # on a GPU every shape batches: rnn, repeat's 4 rhos (2 seeds each), act's 4 taus x 2 seeds
    assert sorted(len(j) for j in gpu.planned) == [2, 2, 2, 2, 2, 8]

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # the driver's GPU is no sign
    cpu = _Planned(gpus_per_job=0)
    sweep.sweep(sweep.load_grid(sweep.builtin_grid("addition-table"), seeds=2), tmp_path / "a", cpu,
                progress=False)  # fmt: skip
    assert all(len(j) == 1 for j in cpu.planned)  # an LSTM of 512 cells alone, as on a CPU
    parity = sweep.load_grid(sweep.builtin_grid("parity-table"), seeds=2)
    sweep.sweep(parity, tmp_path / "p", cpu, progress=False)
    assert sorted(len(j) for j in cpu.planned) == [2, 2, 2, 2, 2, 8]  # small nets batch


def test_a_relative_out_reaches_the_workers_absolute(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    grid = sweep.Grid("one", [sweep.Run("run", _long(steps=20))])
    executor = _Planned()
    sweep.sweep(grid, "rel", executor, progress=False)
    ((_, run_dir),) = executor.planned[0]
    assert run_dir == tmp_path / "rel" / "run"
