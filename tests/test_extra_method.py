"""A new method needs one file and one table entry: ``extra_method.py`` (ACT with a quadratic
ponder penalty) trains through ``ponder train``, a stacked ``ponder sweep`` whose worker
processes load it from ``$PONDER_METHODS``, and ``ponder report``, with nothing else changed."""

from __future__ import annotations

import csv
import importlib
import os
from pathlib import Path

import pytest
import torch

from ponder import rundir
from ponder.cli import main
from ponder.config import RunConfig, resolve
from ponder.methods import METHODS, method, register, unregister
from ponder.training import engine
from ponder.training.models import build_model

TESTS = Path(__file__).parent
SMALL = ["--task", "parity", "--bits", "8", "--hidden", "16", "--batch-size", "16"]
SMALL += ["--eval-size", "64", "--log-every", "10", "--device", "cpu", "--no-progress"]


@pytest.fixture
def actsq(monkeypatch):
    """The extra method in the table for one test (and in the workers it starts)."""
    module = importlib.import_module("extra_method")
    if module.SPEC.name not in METHODS:
        register(module.SPEC)
    monkeypatch.setenv("PONDER_METHODS", "extra_method")
    path = os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")])
    monkeypatch.setenv("PYTHONPATH", path)
    yield module.SPEC
    unregister(module.SPEC.name)


def test_its_loss_is_the_one_in_its_file(actsq):
    config = resolve(RunConfig(model="actsq", task="parity", task_options={"bits": 8}, hidden=16))
    task, spec = engine.build(config)
    net = build_model(spec, config.init, torch.Generator().manual_seed(0))
    assert net.method is actsq and type(net.core).__name__ == "ACT"
    x, y = task.sample(32, torch.Generator().manual_seed(1))
    with torch.no_grad():
        net.core.halting.bias.fill_(-1.0)  # ponder more than one step
        logits, info = net(x)
        loss, task_loss = engine.objective(actsq, task, logits, y, info, {"tau": 0.5})
        act_loss, _ = engine.objective(method("act"), task, logits, y, info, {"tau": 0.5})
    cost = info["ponder_cost"][:, 0]  # parity: one token
    assert cost.max() > 2
    torch.testing.assert_close(loss, task_loss + 0.5 * cost**2)
    torch.testing.assert_close(act_loss, task_loss + 0.5 * cost)


def test_train_sweep_and_report(actsq, tmp_path, capsys):
    # ponder train
    out = tmp_path / "one"
    args = ["train", *SMALL, "--model", "actsq", "--tau", "0.01", "--steps", "30"]
    assert main([*args, "--out", str(out)]) == 0
    act = ["train", *SMALL, "--model", "act", "--tau", "0.01", "--steps", "30"]
    assert main([*act, "--out", str(tmp_path / "act")]) == 0
    mine, acts = rundir.read_metrics(out), rundir.read_metrics(tmp_path / "act")
    assert [r["step"] for r in mine] == [10, 20, 30]
    assert mine[0]["loss"] != acts[0]["loss"]  # the same network and data, another loss

    # a stacked sweep, in worker processes that load the method from $PONDER_METHODS
    grid = tmp_path / "grid.yaml"
    grid.write_text(
        "base: {task: parity, task_options: {bits: 8}, hidden: 16, batch_size: 16, "
        "log_every: 10, eval_size: 64, device: cpu}\n"
        "seeds: 2\nbudget: 20\nstop_when_solved: false\n"
        "axes:\n  - {model: actsq, tau: [0.01, 0.001]}\n  - {model: act, tau: [0.01]}\n"
    )
    sweep_dir = tmp_path / "sweep"
    assert main(["sweep", str(grid), "--out", str(sweep_dir), "--jobs", "1", "--batch", "4"]) == 0
    engines = rundir.read_engine(sweep_dir / "actsq-tau0.01-seed0")
    assert engines[0]["engine"] == "stacked" and len(engines[0]["members"]) == 4

    # ponder report
    assert main(["report", str(sweep_dir)]) == 0
    text = (sweep_dir / "report.md").read_text()
    assert "ACT-sq tau=0.01" in text and "ACT-sq tau=0.001" in text and "ACT tau=1e-2" in text
    with (sweep_dir / "report.csv").open() as f:
        models = [row["model"] for row in csv.DictReader(f)]
    assert sorted(models) == ["act", "actsq", "actsq"]
    assert (sweep_dir / "figures" / "parity-accuracy-actsq.png").exists()
    assert (sweep_dir / "figures" / "parity-accuracy-tau.png").exists()


def test_an_unknown_method_is_one_line(tmp_path, capsys, monkeypatch):
    assert "actsq" not in METHODS
    args = ["train", *SMALL, "--model", "actsq", "--steps", "10", "--out", str(tmp_path / "a")]
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert err == "ponder: error: unknown model 'actsq' (known: rnn, act, repeat, pondernet)"
    assert not (tmp_path / "a").exists()
    monkeypatch.setenv("PONDER_METHODS", "no_such_module_here")
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [
        "ponder: error: PONDER_METHODS: cannot import 'no_such_module_here': "
        "No module named 'no_such_module_here'"
    ]
