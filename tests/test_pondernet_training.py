"""PonderNet as a method of the training stack: its loss, ensembles, resume, CLI and report."""

import dataclasses

import pytest
import torch
import torch.nn.functional as F
from sweeps import make_run, read_csv

from ponder import rundir
from ponder.analysis import report
from ponder.cli import main
from ponder.config import ConfigError, RunConfig, resolve
from ponder.tasks import make
from ponder.tasks.base import IGNORE
from ponder.training import engine, train
from ponder.training.models import ModelSpec, build_model


def _prior(lambda_p: float, n: int) -> list[float]:
    weights = [lambda_p * (1 - lambda_p) ** k for k in range(n)]
    return [w / sum(weights) for w in weights]


def test_loss_is_the_expected_task_loss_plus_beta_kl_per_token():
    """The objective against a loop over samples and tokens (logic: sequences of 1 to 10
    tokens, the missing ones IGNORE), written from SPEC.md's formulas in float64."""
    task = make("logic")
    spec = ModelSpec(task.input_size, task.output_size, model="pondernet", hidden=6, max_ponder=4)
    net = build_model(spec, "tf", torch.Generator().manual_seed(0)).double()
    x, y = task.sample(5, torch.Generator().manual_seed(1))
    assert (y == IGNORE).any() and (y != IGNORE).any(-1).all()
    u = torch.rand(5, task.seq_len, 4, generator=torch.Generator().manual_seed(2)).double()
    with torch.no_grad():
        logits, info = net(x.double(), uniforms=u)
    beta, lam = 0.07, 0.3
    with torch.no_grad():
        weights = {"beta": beta, "lambda_p": lam}
        loss, rec = engine.objective(net.method, task, logits, y, info, weights)
    prior = _prior(lam, 4)
    for b in range(5):
        rec_terms, kl_terms = [], []
        for t in range(task.seq_len):
            p = info["log_p"][b, t].exp()
            kl_terms.append(sum(p[n] * torch.log(p[n] / prior[n]) for n in range(4)))
            if y[b, t] == IGNORE:
                continue
            bce = [
                F.binary_cross_entropy_with_logits(
                    info["step_logits"][b, t, n, 0], y[b, t].double()
                )
                for n in range(4)
            ]
            rec_terms.append(sum(p[n] * bce[n] for n in range(4)))
        want_rec = sum(rec_terms) / len(rec_terms)
        want = want_rec + beta * sum(kl_terms) / len(kl_terms)
        assert rec[b].item() == pytest.approx(float(want_rec), rel=1e-9)
        assert loss[b].item() == pytest.approx(float(want), rel=1e-9)
    # the prediction is the one at the sampled halting step
    n_star = info["ponder_steps"].long() - 1
    picked = info["step_logits"].gather(-2, n_star[..., None, None]).squeeze(-2)
    assert torch.equal(logits, picked)


def test_members_equal_single_runs_with_their_own_prior_and_beta(tiny, tmp_path):
    pond = dict(model="pondernet", max_ponder=5, steps=40, hidden=12)
    configs = [
        tiny(seed=s, lambda_p=lam, beta=b, **pond)
        for s, lam, b in [(0, 0.2, 0.01), (1, 0.5, 0.1), (2, 0.1, 0.0)]
    ]
    dirs = [tmp_path / f"e{k}" for k in range(3)]
    train.run_group(configs, dirs)
    assert rundir.read_engine(dirs[0])[0]["engine"] == "stacked"
    keys = ("loss", "task_loss", "train_accuracy", "ponder_cost", "ponder_steps")
    for k, c in enumerate(configs):
        train.run(c, tmp_path / f"s{k}")
        got = [[r[n] for n in keys] for r in rundir.read_metrics(dirs[k])]
        want = [[r[n] for n in keys] for r in rundir.read_metrics(tmp_path / f"s{k}")]
        torch.testing.assert_close(torch.tensor(got), torch.tensor(want), rtol=1e-4, atol=1e-4)
    # members differ where their prior differs: same seed, another lambda_p, another loss
    other = dataclasses.replace(configs[0], lambda_p=0.9)
    train.run(other, tmp_path / "other")
    a = [r["loss"] for r in rundir.read_metrics(tmp_path / "s0")]
    b = [r["loss"] for r in rundir.read_metrics(tmp_path / "other")]
    assert not torch.allclose(torch.tensor(a), torch.tensor(b), rtol=1e-4, atol=1e-4)


def test_a_resumed_run_logs_what_an_uninterrupted_one_does(tiny, tmp_path):
    """The halting draws come from the run's data stream, which checkpoints restore."""
    c = tiny(model="pondernet", max_ponder=4, steps=40)
    train.run(c, tmp_path / "whole")
    train.run(dataclasses.replace(c, steps=20), tmp_path / "halves")
    train.run(c, tmp_path / "halves")
    assert rundir.read_metrics(tmp_path / "whole") == [
        {**r, "elapsed_s": w["elapsed_s"]}
        for r, w in zip(
            rundir.read_metrics(tmp_path / "halves"),
            rundir.read_metrics(tmp_path / "whole"),
            strict=True,
        )
    ]


def test_config_defaults_identity_and_bad_values():
    c = resolve(RunConfig(task="parity", model="pondernet"))
    assert (c.max_ponder, c.halting_bias, c.lambda_p, c.beta) == (20, 0.0, 0.2, 0.01)
    act = resolve(RunConfig(task="parity", model="act"))
    assert (act.max_ponder, act.halting_bias) == (100, 1.0)
    # ACT ignores lambda_p and beta; PonderNet ignores tau and epsilon
    assert act.key() == dataclasses.replace(act, lambda_p=0.9, beta=3.0).key()
    assert c.key() == dataclasses.replace(c, tau=0.5, epsilon=0.3).key()
    assert c.key() != dataclasses.replace(c, lambda_p=0.5).key()
    assert c.ensemble_key() == dataclasses.replace(c, lambda_p=0.5, beta=0.1).ensemble_key()
    for bad in ({"lambda_p": 0.0}, {"lambda_p": 1.5}, {"beta": -1.0}):
        with pytest.raises(ConfigError, match=next(iter(bad))):
            resolve(RunConfig(task="parity", model="pondernet", **bad))


def test_cli_trains_pondernet_with_its_flags(tmp_path, capsys):
    out = tmp_path / "pn"
    argv = ["train", "--task", "parity", "--bits", "4", "--hidden", "8", "--batch-size", "16",
            "--log-every", "10", "--eval-size", "32", "--device", "cpu", "--no-progress",
            "--steps", "20", "--model", "pondernet", "--lambda-p", "0.3", "--beta", "0.05",
            "--max-ponder", "5", "--out", str(out)]  # fmt: skip
    assert main(argv) == 0
    config = rundir.read_config(out)
    assert (config.model, config.lambda_p, config.beta, config.max_ponder) == (
        "pondernet", 0.3, 0.05, 5,
    )  # fmt: skip
    rows = rundir.read_metrics(out)
    assert [r["step"] for r in rows] == [10, 20]
    for r in rows:
        assert 1.0 <= r["ponder_steps"] <= 5.0 and 1.0 <= r["ponder_cost"] <= 5.0
        assert r["repetitions"] == r["ponder_steps"]  # the sampled step, what inference computes
    assert main(["train", "--task", "parity", "--model", "pondernet", "--lambda-p", "2",
                 "--out", str(tmp_path / "bad")]) == 2  # fmt: skip
    assert "lambda_p must be in (0, 1)" in capsys.readouterr().err


def test_the_report_names_pondernet_rows_and_its_steps(tmp_path):
    for seed in range(2):
        make_run(tmp_path, f"pn{seed}", model="pondernet", lambda_p=0.2, seed=seed,
                 solve_at=20_000, repetitions=3.0, ponder_steps=3.0)  # fmt: skip
    make_run(tmp_path, "act0", model="act", tau=0.01, solve_at=30_000)
    report.build_report(tmp_path, difficulty_samples=0)
    text = (tmp_path / "report.md").read_text()
    assert "PonderNet lambda_p=0.2" in text
    rows = read_csv(tmp_path)
    pn = next(r for r in rows if r["model"] == "pondernet")
    assert pn["lambda_p"] == "0.2" and pn["tau"] == "" and pn["rho"] == ""
    assert pn["solved"] == "2/2" and pn["paper_solved"] == ""  # the Fojo paper has no PonderNet
    assert float(pn["median_ponder_steps"]) == 3.0
    assert [r["model"] for r in rows] == ["act", "pondernet"]


def test_a_reduced_pondernet_says_its_own_n_not_acts_m(tmp_path):
    make_run(tmp_path, "pn", model="pondernet", max_ponder=20)
    make_run(tmp_path, "act", model="act", tau=0.01)
    make_run(tmp_path, "rep", model="repeat", rho=2)
    text = report.build_report(tmp_path, difficulty_samples=0).read_text()
    assert "max_ponder" not in text.split("## parity")[0]  # both at their papers' values
    make_run(tmp_path, "pn10", model="pondernet", max_ponder=10, lambda_p=0.5)
    text = report.build_report(tmp_path, difficulty_samples=0).read_text()
    assert "parity with PonderNet's N 10 (paper: 20)" in text
    assert "ACT's M" not in text
