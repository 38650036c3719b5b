"""Grids, run naming, skipping and resuming, failures, and the `ponder sweep` command."""

import dataclasses
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from ponder import rundir
from ponder.cli import main
from ponder.config import ConfigError
from ponder.experiments import sweep
from ponder.training import train


@pytest.fixture
def grid_file(tmp_path, tiny_grid):
    path = tmp_path / "tiny.yaml"
    path.write_text(tiny_grid)
    return path


def test_expansion_and_names(grid_file):
    grid = sweep.load_grid(grid_file)
    names = [r.name for r in grid.runs]
    assert names == [
        "rnn-seed0", "rnn-seed1", "act-tau0.1-seed0", "act-tau0.1-seed1",
        "act-tau0.01-seed0", "act-tau0.01-seed1", "repeat-rho2-seed0", "repeat-rho2-seed1",
        "repeat-rho3-seed0", "repeat-rho3-seed1",
    ]  # fmt: skip
    by_name = {r.name: r.config for r in grid.runs}
    assert by_name["act-tau0.01-seed1"].tau == 0.01 and by_name["act-tau0.01-seed1"].seed == 1
    assert by_name["repeat-rho3-seed0"].rho == 3
    assert all(c.steps == 40 and c.hidden == 8 for c in by_name.values())
    more = sweep.load_grid(grid_file, seeds=3, budget=100)
    assert len(more.runs) == 15 and more.runs[0].config.steps == 100


def test_nested_axes_and_extra_names(tmp_path):
    path = tmp_path / "g.yaml"
    path.write_text(
        "base: {task: parity}\nseeds: 1\n"
        "axes:\n  - {model: act, tau: [0.01], task_options: {bits: [8, 16]}, cell: [rnn, gru]}\n"
    )
    names = [r.name for r in sweep.load_grid(path).runs]
    assert names == [
        "act-tau0.01-bits8-cellrnn-seed0", "act-tau0.01-bits8-cellgru-seed0",
        "act-tau0.01-bits16-cellrnn-seed0", "act-tau0.01-bits16-cellgru-seed0",
    ]  # fmt: skip


def test_builtin_grids_load():
    for name in ("parity-table", "addition-table", "parity-tau", "addition-tau", "parity-rho",
                 "addition-rho"):  # fmt: skip
        grid = sweep.load_grid(sweep.builtin_grid(name))
        assert all(r.config.steps == 2_000_000 and r.config.stop_when_solved for r in grid.runs)
    table = sweep.load_grid(sweep.builtin_grid("parity-table"))
    assert len(table.runs) == 9 * 5
    assert {r.config.hidden for r in table.runs} == {128}
    addition = sweep.load_grid(sweep.builtin_grid("addition-table"))
    assert {(r.config.cell, r.config.hidden, r.config.batch_size) for r in addition.runs} == {
        ("lstm", 512, 32)
    }
    rho = sweep.load_grid(sweep.builtin_grid("parity-rho"), seeds=1)
    assert sorted(r.config.rho for r in rho.runs if r.config.model == "repeat") == list(
        range(2, 13)
    )


@pytest.mark.parametrize(
    "text, match",
    [
        ("axes: [{model: act}]\nbogus: 1\n", "unknown key"),
        ("axes: []\n", "axes must be a non-empty list"),
        ("axes: [{model: act, tau: []}]\n", "axis tau is empty"),
        ("axes: [{model: act, tau: [fast]}]\n", "tau must be a number, got 'fast'"),
        ("axes: [{model: act, hidden: 0}]\n", "hidden must be >= 1"),
        ("seeds: two\naxes: [{model: act}]\n", "seeds must be a positive integer"),
        ("axes: [{model: act, colour: [1]}]\n", "unknown config key"),
        ("axes: [5]\n", "must be a non-empty mapping"),
        ("axes: [{model: act}\n", "not valid YAML"),
    ],
)
def test_bad_grids(tmp_path, text, match):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=match):
        sweep.load_grid(path)


def test_missing_grid_file_is_one_line(tmp_path, capsys):
    assert main(["sweep", str(tmp_path / "none.yaml"), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "not found" in err


def test_skip_finished_and_failures_do_not_stop_others(grid_file, tmp_path, monkeypatch):
    grid = sweep.load_grid(grid_file, seeds=1)
    out = tmp_path / "s"
    real = train.run_group

    def fails_for_rho3(configs, run_dirs):
        if configs[0].model == "repeat" and configs[0].rho == 3:
            raise RuntimeError("boom")
        return real(configs, run_dirs)

    monkeypatch.setattr(train, "run_group", fails_for_rho3)
    result = sweep.sweep(grid, out, sweep.InlineExecutor(), progress=False)
    assert result.statuses["repeat-rho3-seed0"] == "failed"
    assert not result.all_finished
    assert sum(s == "done" for s in result.statuses.values()) == 4
    assert "boom" in (out / "repeat-rho3-seed0" / "error.txt").read_text()

    monkeypatch.setattr(train, "run_group", real)
    stamps = {n: (out / n / "summary.json").stat().st_mtime_ns for n in result.statuses
              if result.statuses[n] == "done"}  # fmt: skip
    again = sweep.sweep(grid, out, sweep.InlineExecutor(), progress=False)
    assert again.all_finished
    assert not (out / "repeat-rho3-seed0" / "error.txt").exists()
    for n, stamp in stamps.items():  # finished runs were skipped, not retrained
        assert (out / n / "summary.json").stat().st_mtime_ns == stamp


def _rows(d):
    return [{k: v for k, v in r.items() if k != "elapsed_s"} for r in rundir.read_metrics(d)]


def test_sweep_killed_midway_resumes_to_the_same_result(tmp_path, tiny_grid):
    small = tmp_path / "small.yaml"
    small.write_text(
        tiny_grid.replace("tau: [0.1, 0.01]", "tau: [0.1]").replace("rho: [2, 3]", "rho: [2]")
    )
    cmd = [sys.executable, "-m", "ponder.cli", "sweep", str(small), "--seeds", "1",
           "--budget", "150", "--jobs", "2"]  # fmt: skip
    ref = subprocess.run([*cmd, "--out", str(tmp_path / "ref")], capture_output=True, timeout=300)
    assert ref.returncode == 0, ref.stderr.decode()[-2000:]

    out = tmp_path / "cut"
    proc = subprocess.Popen([*cmd, "--out", str(out)], start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    deadline = time.time() + 600
    while time.time() < deadline and not list(out.glob("*/checkpoint.pt")):
        time.sleep(0.1)
    os.killpg(proc.pid, signal.SIGKILL)  # the sweep and its workers, mid-way
    proc.wait()
    assert len(list(out.glob("*/summary.json"))) < 3
    again = subprocess.run([*cmd, "--out", str(out)], capture_output=True, timeout=300)
    assert again.returncode == 0, again.stderr.decode()[-2000:]
    for run in (tmp_path / "ref").glob("*-seed0"):
        assert _rows(out / run.name) == _rows(run), run.name
    assert b"3 done" in again.stdout


def test_plan_batches_runs_of_one_shape(grid_file, tmp_path):
    grid = sweep.load_grid(grid_file, seeds=3)
    jobs = sweep.plan_jobs(grid.runs, tmp_path, batch=16)
    by_size = sorted(len(j) for j in jobs)
    # rnn (3 seeds), act (2 taus x 3 seeds, one shape), repeat rho 2 and rho 3 (3 seeds each)
    assert by_size == [3, 3, 3, 6]
    assert len(sweep.plan_jobs(grid.runs, tmp_path, batch=1)) == 15
    # ceil(6 / 4) = 2 ACT ensembles of 3, the seeds of one tau together (largest tau first)
    four = sweep.plan_jobs(grid.runs, tmp_path, batch=4)
    assert sorted(len(j) for j in four) == [3, 3, 3, 3, 3]
    act = [[(c.tau, c.seed) for c, _ in j] for j in four if j[0][0].model == "act"]
    assert act == [[(0.01, 0), (0.01, 1), (0.01, 2)], [(0.1, 0), (0.1, 1), (0.1, 2)]]
    # the costliest jobs start first: ACT (bounded by M, the smallest tau first), then Repeat by
    # rho, then the plain RNN
    knob = {"act": "tau", "repeat": "rho"}
    order = [(c.model, getattr(c, knob.get(c.model, "seed"))) for c, _ in (j[0] for j in four)]
    assert order == [("act", 0.01), ("act", 0.1), ("repeat", 3), ("repeat", 2), ("rnn", 0)]
    five = [len(j) for j in sweep.plan_jobs(grid.runs, tmp_path, batch=5) if j[0][0].model == "act"]
    assert five == [3, 3]  # near-equal sizes, not 5 and 1
    # an LSTM of 512 cells trains alone on a CPU, where batching it is slower
    big = sweep.load_grid(sweep.builtin_grid("addition-table"), seeds=2, device="cpu")
    assert all(len(j) == 1 for j in sweep.plan_jobs(big.runs, tmp_path, batch=16))


def _live_processes(marker: str) -> list[int]:
    """PIDs of live (not zombie) processes whose command line contains ``marker``."""
    pids = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            state = (proc / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except (OSError, IndexError):
            continue  # ended meanwhile
        if marker in cmdline and state != "Z":
            pids.append(int(proc.name))
    return pids


INTERRUPTED = "ponder: interrupted; run the same command again to resume"


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "kill"])
def test_ctrl_c_ends_the_workers_starts_no_job_and_the_same_command_resumes(
    tmp_path, tiny_grid, sig
):
    small = tmp_path / "small.yaml"
    small.write_text(  # three RNN runs of a few seconds each, trained one after another
        tiny_grid.replace("seeds: 2", "seeds: 3").replace("budget: 40", "budget: 1000")
        .replace("  - {model: act, tau: [0.1, 0.01]}\n", "")
        .replace("  - {model: repeat, rho: [2, 3]}\n", "")
    )  # fmt: skip
    out = tmp_path / "s"
    cmd = [sys.executable, "-m", "ponder.cli", "sweep", str(small), "--out", str(out),
           "--jobs", "1", "--batch", "1"]  # fmt: skip

    # As from a terminal: SIGINT at its default even where the tests run as a background job,
    # which starts with it ignored (and Python then installs no KeyboardInterrupt for it).
    def as_from_a_terminal() -> None:
        signal.signal(signal.SIGINT, signal.SIG_DFL)

    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=as_from_a_terminal)  # fmt: skip
    first, queued = out / "rnn-seed0", [out / "rnn-seed1", out / "rnn-seed2"]
    deadline = time.time() + 600
    while not rundir.read_metrics(first):
        assert proc.poll() is None and time.time() < deadline, "the first run never logged"
        time.sleep(0.05)
    # `python -m ponder.experiments.executors S/.jobs/job0.json`
    workers = _live_processes(f"{out}{os.sep}.jobs")
    assert len(workers) == 1, workers
    proc.send_signal(sig)  # the sweep only, as `kill -INT` (or `kill`); not its workers
    try:
        _, err = proc.communicate(timeout=120)  # a liveness bound, not a timing
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        pytest.fail("the sweep did not stop within 120 s of Ctrl-C")
    assert proc.returncode == 130, err[-2000:]
    assert err.splitlines().count(INTERRUPTED) == 1 and "Traceback" not in err, err[-2000:]
    assert err.rstrip("\n").endswith(INTERRUPTED)
    assert _live_processes(f"{out}{os.sep}.jobs") == []  # the worker was ended, not orphaned
    assert not (first / rundir.SUMMARY).exists()  # stopped mid-run...
    assert not (first / rundir.ERROR).exists()  # ...and not recorded as failed
    assert not list(out.glob(f"*/{rundir.RUNNING}"))
    for run_dir in queued:  # no queued job started
        assert not (run_dir / rundir.METRICS).exists(), run_dir.name
    if sig != signal.SIGINT:
        return  # resuming is the same after either

    again = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr[-2000:]
    assert "3 done" in again.stdout
    for run_dir in [first, *queued]:  # the first resumed from its checkpoint, without gaps
        assert [r["step"] for r in rundir.read_metrics(run_dir)] == list(range(10, 1010, 10))


def test_bad_jobs_and_batch_are_config_errors(grid_file, tmp_path):
    grid = sweep.load_grid(grid_file, seeds=1)
    for jobs in (0, -1):
        with pytest.raises(ConfigError, match="--jobs must be >= 1"):
            sweep.LocalExecutor(jobs=jobs)
    for batch in (0, -1):
        with pytest.raises(ConfigError, match="--batch must be >= 1"):
            sweep.plan_jobs(grid.runs, tmp_path, batch=batch)
        with pytest.raises(ConfigError, match="--batch must be >= 1"):
            sweep.sweep(grid, tmp_path / "s", sweep.InlineExecutor(), progress=False, batch=batch)
    assert not (tmp_path / "s").exists()


class _Planned:
    """An executor that records the jobs it is given and trains nothing."""

    def __init__(self, gpu: bool = False) -> None:
        self.gpu, self.jobs, self.dir = gpu, None, None

    def on_gpu(self, device: str) -> bool:
        return device == "cuda" or (device == "auto" and self.gpu)

    def run(self, jobs, sweep_dir):
        self.jobs, self.dir = jobs, sweep_dir


def test_a_relative_out_reaches_the_executor_as_an_absolute_path(grid_file, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    executor = _Planned()
    sweep.sweep(sweep.load_grid(grid_file, seeds=1), "rel/s", executor, progress=False)
    assert executor.dir == tmp_path / "rel" / "s"
    assert executor.jobs and all(d.is_absolute() for job in executor.jobs for _, d in job)


def test_planning_asks_the_executor_not_this_machines_cuda(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # a head node without a GPU
    addition = sweep.load_grid(sweep.builtin_grid("addition-table"), seeds=2, device="cuda")
    executor = _Planned(gpu=True)
    sweep.sweep(addition, tmp_path / "s", executor, progress=False)  # must not ask CUDA here
    # on a GPU every shape batches: rnn, repeat's 4 rhos (2 seeds each), act's 4 taus x 2 seeds
    assert sorted(len(j) for j in executor.jobs) == [2, 2, 2, 2, 2, 8]
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # and the reverse
    auto = sweep.load_grid(sweep.builtin_grid("addition-table"), seeds=2)
    cpu_jobs = _Planned(gpu=False)
    sweep.sweep(auto, tmp_path / "t", cpu_jobs, progress=False)
    assert all(len(j) == 1 for j in cpu_jobs.jobs)  # an LSTM of 512 alone, as on a CPU


def test_no_cuda_graphs_sets_every_run_and_keeps_their_directories(
    grid_file, tmp_path, monkeypatch
):
    monkeypatch.setattr(sweep, "LocalExecutor", lambda jobs=1: sweep.InlineExecutor())
    out = tmp_path / "s"
    argv = ["sweep", str(grid_file), "--seeds", "1", "--budget", "10", "--out", str(out)]
    assert main([*argv, "--no-cuda-graphs"]) == 0
    for r in sweep.load_grid(grid_file, seeds=1).runs:
        assert rundir.read_config(out / r.name).cuda_graphs is False, r.name
    assert main([*argv, "--budget", "20"]) == 0  # without the flag, the same runs resume
    assert all(rundir.read_config(d).cuda_graphs for d in out.glob("*-seed0"))


def test_override_refuses_fields_that_change_the_runs(grid_file):
    grid = sweep.load_grid(grid_file, seeds=1)
    eager = sweep.override(grid, cuda_graphs=False)
    assert [r.name for r in eager.runs] == [r.name for r in grid.runs]
    assert all(not r.config.cuda_graphs for r in eager.runs)
    assert all(r.config == dataclasses.replace(e.config, cuda_graphs=True)
               for r, e in zip(grid.runs, eager.runs, strict=True))  # fmt: skip
    with pytest.raises(ValueError, match="tau"):
        sweep.override(grid, tau=0.5)


def _values(run_dir):
    keys = ("loss", "task_loss", "train_accuracy", "ponder_cost", "eval_accuracy")
    return [[r[k] for k in keys] for r in rundir.read_metrics(run_dir)]
