"""Configuration: one identity for "the same run", and numbers as researchers write them."""

import dataclasses

import pytest

from ponder import rundir
from ponder.config import ConfigError, RunConfig, from_dict, load_yaml, resolve, run_name
from ponder.experiments import sweep


def test_identity_ignores_the_fields_a_model_ignores():
    rnn = resolve(RunConfig(model="rnn", tau=1e-3, rho=2, halting_bias=1.0))
    other = dataclasses.replace(rnn, tau=0.5, rho=7, halting_bias=-3.0, epsilon=0.1)
    assert rnn.identity() == other.identity() and rnn.key() == other.key()
    assert rnn.identity()["tau"] is None and rnn.identity()["rho"] is None
    rep = resolve(RunConfig(model="repeat", rho=3))
    assert rep.identity()["rho"] == 3 and rep.identity()["tau"] is None
    assert rep.identity() != dataclasses.replace(rep, rho=5).identity()
    act = resolve(RunConfig(model="act", tau=1e-2))
    assert act.identity()["tau"] == 1e-2 and act.identity()["rho"] is None
    assert act.identity() != dataclasses.replace(act, tau=1e-3).identity()
    # the resumable fields and the ignored ones never make two runs differ
    assert act.identity() == dataclasses.replace(act, steps=5, device="cpu").identity()
    assert act.key(ignore=("seed",)) == dataclasses.replace(act, seed=9).key(ignore=("seed",))


def test_ensemble_key_groups_seeds_and_taus_on_one_device():
    a = resolve(RunConfig(model="act", tau=0.1, seed=1))
    assert a.ensemble_key() == dataclasses.replace(a, tau=0.01, seed=4).ensemble_key()
    assert a.ensemble_key() != dataclasses.replace(a, hidden=64).ensemble_key()
    assert a.ensemble_key() != dataclasses.replace(a, device="cpu").ensemble_key()
    rep = resolve(RunConfig(model="repeat", rho=2))
    assert rep.ensemble_key() != dataclasses.replace(rep, rho=3).ensemble_key()


def test_an_rnn_run_directory_accepts_a_meaningless_tau(tmp_path):
    rnn = resolve(RunConfig(model="rnn", tau=1e-3))
    rundir.prepare(rnn, tmp_path / "r")
    rundir.check_same_run(dataclasses.replace(rnn, tau=0.5, rho=4), tmp_path / "r")
    with pytest.raises(rundir.RunError, match="different config.*hidden"):
        rundir.check_same_run(dataclasses.replace(rnn, hidden=64), tmp_path / "r")


def test_scientific_notation_in_every_float_field(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text(
        "tau: 1e-3\nlr: 5e-4\nepsilon: 1e-2\nhalting_bias: -1e0\nsolve_threshold: 9.8e-1\n"
    )
    config = resolve(from_dict(load_yaml(path)))
    assert (config.tau, config.lr, config.epsilon) == (1e-3, 5e-4, 1e-2)
    assert (config.halting_bias, config.solve_threshold) == (-1.0, 0.98)
    assert isinstance(config.tau, float)
    with pytest.raises(ConfigError, match="tau must be a number, got 'fast'"):
        from_dict({"tau": "fast"})
    with pytest.raises(ConfigError, match="hidden must be int"):
        from_dict({"hidden": "1e2"})  # an int field stays an int


def test_a_grid_takes_scientific_notation(tmp_path):
    path = tmp_path / "g.yaml"
    path.write_text(
        "base: {task: parity, task_options: {bits: 4}}\nseeds: 1\n"
        "axes:\n  - {model: act, tau: [1e-1, 5e-3]}\n"
    )
    grid = sweep.load_grid(path)
    assert [r.config.tau for r in grid.runs] == [0.1, 0.005]
    assert [r.name for r in grid.runs] == ["act-tau0.1-seed0", "act-tau0.005-seed0"]


def test_run_name():
    c = resolve(RunConfig(model="act", tau=0.01, seed=3))
    assert run_name(c) == "act-tau0.01-seed3"
    assert run_name(dataclasses.replace(c, model="repeat", rho=2)) == "repeat-rho2-seed3"
    assert run_name(c, {"hidden": 64, "lr": 5e-4}) == "act-tau0.01-hidden64-lr0.0005-seed3"
