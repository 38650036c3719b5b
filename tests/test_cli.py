"""The `ponder` command as a user runs it: one-line errors, a smoke run, kill and resume."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from ponder import rundir
from ponder.cli import main

TINY = ["--task", "parity", "--bits", "4", "--hidden", "8", "--batch-size", "16",
        "--log-every", "10", "--eval-size", "32", "--device", "cpu", "--no-progress"]  # fmt: skip


def _one_line_error(capsys, argv, match):
    code = main(argv)
    err = capsys.readouterr().err
    assert code != 0
    assert err.startswith("ponder: error:") and err.count("\n") == 1, err
    assert match in err, err
    assert "Traceback" not in err


@pytest.mark.parametrize(
    "argv, match",
    [
        (["--task", "chess"], "unknown task 'chess'"),
        (["--model", "transformer"], "unknown model"),
        (["--tau", "-0.1"], "tau must be >= 0"),
        (["--rho", "0"], "rho must be >= 1"),
        (["--max-ponder", "0"], "max_ponder must be >= 1"),
        (["--epsilon", "0"], "epsilon must be in (0, 1)"),
        (["--epsilon", "1.5"], "epsilon must be in (0, 1)"),
        (["--bits", "0"], "bits"),
        (["--task", "addition", "--digits", "0"], "digits must be an integer in 1..17, got 0"),
        (["--task", "addition", "--numbers", "1"], "numbers must be an integer in 2..10, got 1"),
        (["--task", "addition", "--hidden", "0"], "hidden must be >= 1"),
        (["--config", "/nonexistent/run.yaml"], "config file not found"),
        (["--steps", "x"], "invalid int value"),
    ],
)
def test_bad_input_is_one_line(capsys, tmp_path, argv, match):
    _one_line_error(capsys, ["train", "--out", str(tmp_path / "r"), *argv], match)
    assert not (tmp_path / "r").exists()


def test_bad_config_files(capsys, tmp_path):
    broken = tmp_path / "broken.yaml"
    broken.write_text("task: parity\n  model: [act\n")
    _one_line_error(capsys, ["train", "--config", str(broken)], "not valid YAML")
    wrong = tmp_path / "wrong.yaml"
    wrong.write_text("task: parity\nbogus: 1\n")
    _one_line_error(capsys, ["train", "--config", str(wrong)], "unknown config key(s): bogus")
    typed = tmp_path / "typed.yaml"
    typed.write_text("task: parity\nhidden: lots\n")
    _one_line_error(capsys, ["train", "--config", str(typed)], "hidden must be int")
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "config.yaml").write_bytes(b"task: par")  # truncated
    _one_line_error(capsys, ["train", *TINY, "--out", str(run_dir)], "different config")


def test_cuda_without_gpu(capsys, tmp_path):
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    _one_line_error(capsys, ["train", "--device", "cuda", "--out", str(tmp_path)], "no CUDA GPU")


def test_different_config_and_corrupt_checkpoint(capsys, tmp_path):
    out = str(tmp_path / "r")
    assert main(["train", *TINY, "--steps", "20", "--out", out]) == 0
    capsys.readouterr()
    _one_line_error(capsys, ["train", *TINY, "--steps", "20", "--tau", "0.5", "--out", out],
                    "different config")  # fmt: skip
    (tmp_path / "r" / "checkpoint.pt").write_bytes(b"not a checkpoint")
    _one_line_error(capsys, ["train", *TINY, "--steps", "40", "--out", out], "corrupt")


def test_config_file_and_flags(tmp_path, capsys):
    cfg = tmp_path / "run.yaml"
    cfg.write_text("task: parity\nmodel: repeat\nrho: 3\ntask_options: {bits: 4}\nsteps: 20\n")
    out = tmp_path / "r"
    assert main(["train", "--config", str(cfg), *TINY, "--rho", "2", "--out", str(out)]) == 0
    resolved = (out / "config.yaml").read_text()
    assert "rho: 2" in resolved and "model: repeat" in resolved and "bits: 4" in resolved
    assert "hidden: 8" in resolved and "max_ponder: 100" in resolved  # paper default filled
    assert "repetitions 2.000" in capsys.readouterr().out


def test_smoke_run_as_subprocess_then_sigkill_and_resume(tmp_path):
    out = tmp_path / "r"
    argv = [sys.executable, "-m", "ponder.cli", "train", *TINY, "--model", "act",
            "--checkpoint-every", "1", "--out", str(out)]  # fmt: skip
    proc = subprocess.Popen([*argv, "--steps", "100000"], stdout=subprocess.PIPE)
    deadline = time.time() + 600
    while time.time() < deadline and len(rundir.read_metrics(out)) < 3:
        time.sleep(0.2)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    killed_at = torch.load(out / "checkpoint.pt", weights_only=True)["step"]
    assert killed_at >= 20
    done = subprocess.run(
        [*argv, "--steps", str(killed_at + 20)], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    steps = [r["step"] for r in rundir.read_metrics(out)]
    assert steps == list(range(10, killed_at + 21, 10))
    assert json.loads((out / "summary.json").read_text())["step"] == killed_at + 20
    assert "held-out accuracy" in done.stdout


def test_train_default_out_is_named_as_a_sweep_names_its_runs(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    for tau in ("0.1", "0.01"):  # a second tau is another run, not a clash
        assert main(["train", *TINY, "--model", "act", "--tau", tau, "--steps", "10"]) == 0
    assert main(["train", *TINY, "--model", "repeat", "--rho", "3", "--steps", "10"]) == 0
    runs = tmp_path / "runs"
    for name in ("parity-act-tau0.1-seed0", "parity-act-tau0.01-seed0", "parity-repeat-rho3-seed0"):
        assert (runs / name / rundir.SUMMARY).exists(), name
    assert "-> runs/parity-repeat-rho3-seed0" in capsys.readouterr().out


def _help(capsys, *argv) -> str:
    assert main([*argv, "--help"]) == 0
    return " ".join(capsys.readouterr().out.split())  # argparse wraps to the terminal's width


def test_help_texts(capsys):
    top = _help(capsys)
    assert "``" not in top and "Adaptive Computation Time and Repeat-RNN experiments" in top
    train_help = _help(capsys, "train")
    assert "held-out accuracy has reached the threshold" in train_help  # --stop-when-solved
    assert "runs/parity-act-tau0.01-seed0" in train_help  # --out's default
    reproduce_help = _help(capsys, "reproduce")
    assert "2 to 4 minutes on 2 CPU cores" in reproduce_help and "10 min" not in reproduce_help
    assert "OUT/parity and OUT/addition" in reproduce_help
    assert "--budget" in reproduce_help and "smaller budget cannot reproduce" in reproduce_help
    assert "Write report.md" in _help(capsys, "report")
    for command in ("sweep", "reproduce"):
        assert "--no-cuda-graphs" in _help(capsys, command)


BAD_EXECUTOR_FLAGS = [
    ("--jobs", "0", "argument --jobs: must be >= 1, got 0"),
    ("--batch", "0", "argument --batch: must be >= 1, got 0"),
    ("--batch", "-1", "argument --batch: must be >= 1, got -1"),
    ("--seeds", "0", "argument --seeds: must be >= 1, got 0"),
    ("--budget", "0", "argument --budget: must be >= 1, got 0"),
    ("--retries", "-2", "argument --retries: must be >= -1, got -2"),
    ("--cpus-per-job", "0", "argument --cpus-per-job: must be > 0, got 0"),
    ("--gpus-per-job", "-1", "argument --gpus-per-job: must be >= 0, got -1"),
    ("--gpus-per-job", "inf", "argument --gpus-per-job: must be >= 0, got inf"),
    ("--jobs", "two", "argument --jobs: invalid int value: 'two'"),
]


@pytest.mark.parametrize("command", ["sweep", "reproduce"])
@pytest.mark.parametrize("flag, value, match", BAD_EXECUTOR_FLAGS)
def test_bad_executor_flags_are_one_line(
    capsys, tmp_path, monkeypatch, tiny_grid, command, flag, value, match
):
    from ponder.experiments import reproduce, sweep

    grid_file = tmp_path / "tiny.yaml"
    grid_file.write_text(tiny_grid)
    tiny = sweep.load_grid(grid_file, seeds=1, budget=10, progress=False)
    # were a bad flag let through, it would train this tiny stand-in, not the paper's grid
    monkeypatch.setattr(reproduce, "full_grid", lambda task, seeds=None, budget=None: tiny)
    nothing = reproduce.Estimate(0.0, 1, 1, 1, "cpu", None)
    monkeypatch.setattr(reproduce, "estimate", lambda *a: nothing)
    out = tmp_path / "out"
    target = [str(grid_file)] if command == "sweep" else ["parity"]
    code = main([command, *target, "--out", str(out), flag, value])
    err = capsys.readouterr().err
    assert code == 2 and err == f"ponder: error: {match}\n", err
    assert not out.exists()
