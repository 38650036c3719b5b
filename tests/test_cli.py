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
        (["--config", "/nonexistent/run.yaml"], "config file not found"),
        (["--steps", "x"], "invalid int value"),
    ],
)
def test_bad_input_is_one_line(capsys, tmp_path, argv, match):
    _one_line_error(capsys, ["train", "--out", str(tmp_path / "r"), *argv], match)
    assert not (tmp_path / "r" / "metrics.csv").exists()


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
    deadline = time.time() + 60
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
