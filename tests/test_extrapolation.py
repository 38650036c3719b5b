"""Extrapolation and the compute-matched comparison (SPEC.md, "Extrapolation" and "Compute
accounting and the compute-matched comparison"): parity's range of non-zero entries, several
held-out sets per run, the steps per token each evaluation computed, the pairing of adaptive
configurations with Repeat at equal cost, and the grids that run it."""

from __future__ import annotations

import csv
import json
import math

import numpy as np
import pytest
import torch
from sweeps import make_run, read_csv

from ponder import rundir
from ponder.analysis import figures, matched, report, results
from ponder.cli import main
from ponder.config import ConfigError, RunConfig, from_dict, resolve
from ponder.experiments import reproduce
from ponder.tasks.parity import Parity
from ponder.training import engine, train

CPU = torch.device("cpu")
BASE_COLUMNS = [
    "step", "loss", "task_loss", "train_accuracy", "ponder_cost", "ponder_steps", "repetitions",
    "eval_accuracy", "eval_ponder_cost", "eval_repetitions", "eval_steps", "elapsed_s",
]  # fmt: skip


def nonzero(x: torch.Tensor) -> torch.Tensor:
    """Non-zero entries per sample of parity inputs [B, 1, bits]."""
    return (x[:, 0] != 0).sum(-1)


# ------------------------------------------------------------------ parity's range of k


def test_parity_draws_k_uniformly_in_its_range_and_zeros_after_position_k():
    task = Parity(bits=12, min_nonzero=5, max_nonzero=9)
    x, y = task.sample(2000, torch.Generator().manual_seed(0))
    assert x.shape == (2000, 1, 12) and y.shape == (2000, 1)
    k = nonzero(x)
    assert int(k.min()) >= 5 and int(k.max()) <= 9
    counts = torch.bincount(k, minlength=13).tolist()
    assert [c > 0 for c in counts] == [False] * 5 + [True] * 5 + [False] * 3
    # uniform: 400 expected per value, binomial sd ~18; 5 sd either side
    assert all(300 < c < 500 for c in counts[5:10]), counts
    positions = torch.arange(12)
    present = positions < k[:, None]
    assert bool(((x[:, 0] != 0) == present).all()), "non-zero exactly at the first k positions"
    assert set(x.unique().tolist()) == {-1.0, 0.0, 1.0}
    assert torch.equal(y[:, 0], (x[:, 0] == 1).sum(-1) % 2)


def test_parity_default_range_is_one_to_bits():
    task = Parity(bits=6)
    k = nonzero(task.sample(600, torch.Generator().manual_seed(1))[0])
    assert sorted(set(k.tolist())) == [1, 2, 3, 4, 5, 6]


def test_parity_records_the_range_only_when_given():
    def options(**o):
        return resolve(RunConfig(task="parity", task_options=o)).task_options

    assert options(bits=64) == {"bits": 64}
    assert options(bits=96, max_nonzero=48) == {"bits": 96, "max_nonzero": 48}
    assert options(bits=8, min_nonzero=3) == {"bits": 8, "min_nonzero": 3}
    assert options(bits=8, min_nonzero=2, max_nonzero=5) == {
        "bits": 8, "min_nonzero": 2, "max_nonzero": 5,
    }  # fmt: skip
    # a papers' parity run keeps its identity: giving nothing differs from giving the defaults
    # only in what is recorded, and runs without the options are the same run as before
    old = resolve(RunConfig(task="parity", task_options={"bits": 64}))
    assert "min_nonzero" not in old.identity()["task_options"]


@pytest.mark.parametrize(
    "options",
    [
        {"bits": 8, "min_nonzero": 6, "max_nonzero": 5},  # min > max
        {"bits": 8, "max_nonzero": 9},  # max > bits
        {"bits": 8, "min_nonzero": 9},  # min > bits (max defaults to bits)
        {"bits": 8, "min_nonzero": 0},
        {"bits": 8, "max_nonzero": 0},
        {"bits": 8, "max_nonzero": 2.5},
    ],
)
def test_parity_bad_ranges_are_config_errors(options):
    with pytest.raises(ConfigError):
        resolve(RunConfig(task="parity", task_options=options))


# ------------------------------------------------------------------ several held-out sets

SETS = {"extrapolation": {"min_nonzero": 5, "max_nonzero": 8}, "all": {"min_nonzero": 1}}
SET_COLUMNS = [
    "extrapolation_accuracy", "extrapolation_steps", "extrapolation_ponder_cost",
    "all_accuracy", "all_steps", "all_ponder_cost",
]  # fmt: skip


def sets_run(tiny, steps=40, eval_sets=SETS, **over):
    options = {"bits": 8, "max_nonzero": 4, "positions": "random"}
    base = dict(model="repeat", rho=2, task_options=options, steps=steps)
    return tiny(**(base | {"eval_sets": eval_sets} | over))


def header(run_dir):
    with (run_dir / rundir.METRICS).open(newline="") as f:
        return next(csv.reader(f))


def without_elapsed(run_dir):
    return [{k: v for k, v in r.items() if k != "elapsed_s"} for r in rundir.read_metrics(run_dir)]


def test_eval_sets_resolve_to_full_task_options(tiny):
    c = sets_run(tiny)
    assert c.task_options == {"bits": 8, "max_nonzero": 4, "positions": "random"}
    # each set is the training options with its changes, as the full task options
    assert c.eval_sets == {
        "extrapolation": {"bits": 8, "min_nonzero": 5, "max_nonzero": 8, "positions": "random"},
        "all": {"bits": 8, "min_nonzero": 1, "max_nonzero": 4, "positions": "random"},
    }
    assert resolve(c) == c  # resolving twice changes nothing


def test_every_set_is_logged_at_every_log_and_summarised(tiny, tmp_path):
    summary = train.run(sets_run(tiny), tmp_path)
    # the base columns, then each set's (in the config's order)
    assert header(tmp_path) == BASE_COLUMNS + SET_COLUMNS
    rows = rundir.read_metrics(tmp_path)
    assert [r["step"] for r in rows] == [10, 20, 30, 40]
    for r in rows:
        for name in ("eval", "extrapolation", "all"):
            acc = r[f"{name}_accuracy"]
            assert 0 <= acc <= 1 and (acc * 32) == pytest.approx(round(acc * 32))  # eval_size 32
            assert r[f"{name}_steps"] == 2.0  # Repeat rho=2 computes 2 steps per token
            assert r[f"{name}_ponder_cost"] == 2.0
    last = rows[-1]
    assert summary["eval_steps"] == 2.0
    assert summary["final_extrapolation_accuracy"] == last["extrapolation_accuracy"]
    assert summary["final_all_accuracy"] == last["all_accuracy"]
    assert summary["extrapolation_steps"] == 2.0 and summary["all_steps"] == 2.0
    assert json.loads((tmp_path / rundir.SUMMARY).read_text()) == summary

    # each column is its own set's accuracy: the trained network, evaluated here by hand
    net, task, config = train.load_model(tmp_path)
    sets = engine.eval_sets(task, config, CPU)
    with torch.no_grad():
        for name, (x, y) in sets.items():
            logits, _ = net(x)
            acc = ((logits[..., 0] > 0).long() == y).float().mean().item()
            assert last[f"{name}_accuracy"] == pytest.approx(acc), name


def test_the_extra_sets_do_not_change_training_or_the_in_distribution_set(tiny, tmp_path):
    train.run(sets_run(tiny), tmp_path / "sets")
    train.run(sets_run(tiny, eval_sets={}), tmp_path / "plain")
    assert header(tmp_path / "plain") == rundir.COLUMNS
    plain = without_elapsed(tmp_path / "plain")
    sets = without_elapsed(tmp_path / "sets")
    assert [{k: r[k] for k in p} for p, r in zip(plain, sets, strict=True)] == plain


def test_resumed_run_with_sets_equals_uninterrupted(tiny, tmp_path):
    train.run(sets_run(tiny), tmp_path / "full")
    train.run(sets_run(tiny, steps=20), tmp_path / "cut")
    assert [r["step"] for r in rundir.read_metrics(tmp_path / "cut")] == [10, 20]
    train.run(sets_run(tiny), tmp_path / "cut")
    assert header(tmp_path / "cut") == header(tmp_path / "full")
    cut, full = without_elapsed(tmp_path / "cut"), without_elapsed(tmp_path / "full")
    assert all(set(SET_COLUMNS) <= set(r) for r in cut)
    assert cut == full


@pytest.mark.parametrize("model", ["act", "pondernet"])
def test_a_stacked_group_logs_every_set_as_its_single_runs_do(tiny, tmp_path, model):
    """Sweeps train seeds as one stacked ensemble: each member's held-out columns, its steps per
    token included (PonderNet's sampled halting steps), are the single run's."""
    configs = [sets_run(tiny, model=model, seed=s, steps=20) for s in (0, 1)]
    dirs = [tmp_path / f"e{s}" for s in (0, 1)]
    train.run_group(configs, dirs, stacked=True)
    keys = ["eval_accuracy", "eval_steps", "eval_ponder_cost", *SET_COLUMNS]
    for c, d in zip(configs, dirs, strict=True):
        train.run(c, tmp_path / f"s{c.seed}")
        assert header(d) == BASE_COLUMNS + SET_COLUMNS
        got = [[r[k] for k in keys] for r in rundir.read_metrics(d)]
        want = [[r[k] for k in keys] for r in rundir.read_metrics(tmp_path / f"s{c.seed}")]
        assert len(got) == 2
        torch.testing.assert_close(torch.tensor(got), torch.tensor(want), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize(
    "changed",
    [
        {"extrapolation": {"min_nonzero": 6, "max_nonzero": 8}, "all": {"min_nonzero": 1}},
        {"extrapolation": {"min_nonzero": 5, "max_nonzero": 8}},  # a set dropped
        {},
    ],
)
def test_a_run_is_not_resumed_with_other_eval_sets(tiny, tmp_path, changed):
    train.run(sets_run(tiny, steps=10), tmp_path)
    before = (tmp_path / rundir.METRICS).read_text()
    with pytest.raises(rundir.RunError, match="eval_sets"):
        train.run(sets_run(tiny, steps=20, eval_sets=changed), tmp_path)
    assert (tmp_path / rundir.METRICS).read_text() == before


def test_each_set_holds_its_own_distribution_from_its_own_seed(tiny):
    config = sets_run(tiny, eval_size=400)
    task = engine.build(config)[0]
    sets = engine.eval_sets(task, config, CPU)
    assert list(sets) == ["eval", "extrapolation", "all"]
    k = {name: nonzero(x) for name, (x, _) in sets.items()}
    assert sorted(set(k["extrapolation"].tolist())) == [5, 6, 7, 8]
    assert sorted(set(k["eval"].tolist())) == [1, 2, 3, 4]
    assert sorted(set(k["all"].tolist())) == [1, 2, 3, 4]  # min_nonzero 1, the training max 4
    for name, (x, y) in sets.items():  # targets are the parity of each set's own inputs
        assert torch.equal(y[:, 0], (x[:, 0] == 1).sum(-1) % 2), name
    # "all" samples the training distribution, but from its own seed: other samples
    assert not torch.equal(sets["all"][0], sets["eval"][0])
    # the same every time, and a set's samples do not depend on the other sets
    again = engine.eval_sets(task, config, CPU)
    assert all(torch.equal(sets[n][0], again[n][0]) for n in sets)
    alone = sets_run(tiny, eval_size=400, eval_sets={"extrapolation": SETS["extrapolation"]})
    alone_sets = engine.eval_sets(task, alone, CPU)
    assert torch.equal(alone_sets["extrapolation"][0], sets["extrapolation"][0])
    assert torch.equal(alone_sets["eval"][0], sets["eval"][0])
    plain = engine.eval_sets(task, sets_run(tiny, eval_size=400, eval_sets={}), CPU)
    assert list(plain) == ["eval"] and torch.equal(plain["eval"][0], sets["eval"][0])


def test_sets_with_the_same_options_but_other_names_get_other_samples(tiny):
    same = {"a": {"max_nonzero": 8}, "b": {"max_nonzero": 8}}
    config = sets_run(tiny, eval_sets=same, eval_size=64)
    sets = engine.eval_sets(engine.build(config)[0], config, CPU)
    assert config.eval_sets["a"] == config.eval_sets["b"]
    assert not torch.equal(sets["a"][0], sets["b"][0])


@pytest.mark.parametrize(
    "eval_sets",
    [
        {"eval": {"min_nonzero": 5}},  # reserved: the in-distribution set's own name
        {"train": {"min_nonzero": 5}},
        {"Extrapolation": {"min_nonzero": 5}},  # capitals
        {"far-out": {"min_nonzero": 5}},
        {"2far": {"min_nonzero": 5}},
        {"": {"min_nonzero": 5}},
        {"wide": {"bits": 9}},  # another input size: the network cannot read it
        {"far": {"min_nonzero": 9}},  # out of range for 8 bits
        {"far": {"min_nonzero": 5, "max_nonzero": 3}},
        {"far": {"colour": 1}},  # no such option
    ],
)
def test_bad_eval_sets_are_config_errors(tiny, eval_sets):
    with pytest.raises(ConfigError):
        sets_run(tiny, eval_sets=eval_sets)


@pytest.mark.parametrize(
    "eval_sets", [["far"], {"far": 5}, {"far": None}, {"far": [5]}, {"far": "min_nonzero: 5"}]
)
def test_malformed_eval_sets_in_a_config_file_are_config_errors(eval_sets):
    """What a YAML config or grid can hold (``far:`` with nothing after it is None): a
    one-line ConfigError, never a TypeError from inside resolve."""
    data = {"task": "parity", "task_options": {"bits": 8}, "eval_sets": eval_sets}
    with pytest.raises(ConfigError):
        resolve(from_dict(data))


# ------------------------------------------------------------------ cost accounting


def hand_engine(tiny, model, bias=None, **over):
    """An engine whose network is as built, but for a halting unit of weight 0 and ``bias``."""
    config = tiny(model=model, task_options={"bits": 8}, **over)
    eng = engine.Single(config, None, CPU)
    if bias is not None:
        with torch.no_grad():
            eng.net.core.halting.weight.zero_()
            eng.net.core.halting.bias.fill_(bias)
    x, y = engine.eval_sets(eng.task, config, CPU)["eval"]
    return eng, config, x, y


@pytest.mark.parametrize("bias, n", [(-1.6, 6), (1.0, 2), (5.0, 1), (-3.0, 21)])
def test_act_steps_are_n_of_t(tiny, bias, n):
    h = 1 / (1 + math.exp(-bias))  # the halting unit's output at every step
    # N(t) = min{n : sum_{n' <= n} h >= 1 - eps}, eps = 0.01, and not near the boundary
    assert n * h >= 0.99 + 1e-3 and (n - 1) * h < 0.99 - 1e-3
    if bias == -1.6:
        assert 6 * 0.168 >= 0.99 > 5 * 0.168 and abs(h - 0.168) < 2e-4
    eng, config, x, y = hand_engine(tiny, "act", bias, eval_size=64)
    assert config.epsilon == 0.01 and config.max_ponder >= n
    out = train.evaluate(eng, eng.task, x, y, "eval")
    remainder = 1 - (n - 1) * h
    assert out["eval_steps"] == [pytest.approx(n)]
    assert out["eval_ponder_cost"] == [pytest.approx(n + remainder, abs=1e-5)]
    assert out["eval_repetitions"] == [pytest.approx(n - 1 + remainder, abs=1e-5)]
    with torch.no_grad():
        _, info = eng.net.eval()(x)
    assert torch.equal(info["ponder_steps"], torch.full((64, 1), float(n)))
    # the held-out set of another name is evaluated and named the same way
    named = train.evaluate(eng, eng.task, x, y, "extrapolation")
    assert named["extrapolation_steps"] == [pytest.approx(n)]
    assert set(named) == {
        "extrapolation_accuracy", "extrapolation_ponder_cost", "extrapolation_repetitions",
        "extrapolation_steps",
    }  # fmt: skip


def test_act_steps_stop_at_the_cap(tiny):
    eng, _, x, y = hand_engine(tiny, "act", -3.0, eval_size=16, max_ponder=7)
    assert train.evaluate(eng, eng.task, x, y)["eval_steps"] == [pytest.approx(7)]


@pytest.mark.parametrize(
    "model, rho, steps", [("repeat", 3, 3.0), ("repeat", 1, 1.0), ("rnn", 1, 1.0)]
)
def test_fixed_models_compute_rho_steps(tiny, model, rho, steps):
    eng, _, x, y = hand_engine(tiny, model, rho=rho, eval_size=16)
    out = train.evaluate(eng, eng.task, x, y)
    assert out["eval_steps"] == [steps] and out["eval_ponder_cost"] == [steps]
    assert eng.net.training  # evaluate leaves the network in the mode it found it in


def truncated_geometric(lam: float, n_max: int) -> np.ndarray:
    """p_n = lam (1 - lam)^(n-1) for n < N, p_N = (1 - lam)^(N-1): PonderNet's halting
    distribution when every step's lambda is lam (lambda_N = 1)."""
    p = [lam * (1 - lam) ** (n - 1) for n in range(1, n_max)] + [(1 - lam) ** (n_max - 1)]
    return np.array(p)


@pytest.mark.parametrize("z, n_max", [(-1.0, 8), (0.5, 5)])
def test_pondernet_steps_are_sampled_halting_steps(tiny, z, n_max):
    size = 4000
    eng, config, x, y = hand_engine(tiny, "pondernet", z, max_ponder=n_max, eval_size=size)
    lam = 1 / (1 + math.exp(-z))
    p = truncated_geometric(lam, n_max)
    assert p.sum() == pytest.approx(1.0)
    n = np.arange(1, n_max + 1)
    mean = float((n * p).sum())
    sd = math.sqrt(float((n**2 * p).sum()) - mean**2)
    out = train.evaluate(eng, eng.task, x, y)
    # the logged steps: the mean of the sampled halting steps, within 5 standard errors
    assert abs(out["eval_steps"][0] - mean) < 5 * sd / math.sqrt(size)
    # the expected steps, exact for every sample
    assert out["eval_ponder_cost"] == [pytest.approx(mean, rel=1e-5)]
    assert out["eval_repetitions"] == out["eval_steps"]

    logits, info = eng.forward(x)
    steps = info["ponder_steps"][0, :, 0]
    assert float(steps.mean()) == pytest.approx(out["eval_steps"][0])
    assert torch.allclose(info["ponder_cost"][0], torch.full((size, 1), mean), rtol=1e-5)
    values = steps.long()
    assert torch.equal(values.float(), steps) and int(values.min()) >= 1
    assert int(values.max()) <= n_max
    # every step's frequency matches p_n (5 binomial standard errors)
    freq = torch.bincount(values, minlength=n_max + 1)[1:].numpy() / size
    se = np.sqrt(p * (1 - p) / size)
    assert np.all(np.abs(freq - p) < 5 * se + 1e-9), (freq, p)
    # evaluation draws its halting steps from its own seed: the same every time
    again = train.evaluate(eng, eng.task, x, y)
    assert again == out


# ------------------------------------------------------------------ the compute-matched table

OPTS = {"task_options": {"bits": 64, "max_nonzero": 32, "positions": "random"},
        "eval_sets": {"extrapolation": {"min_nonzero": 33, "max_nonzero": 64}}}  # fmt: skip


def matched_sweep(root):
    """ACT tau=1e-2 at cost 2.4/2.6 (mean 2.5), PonderNet at 4.5/4.7 (mean 4.6), Repeat rho 2
    and 3 and the RNN; the training ponder and the held-out ponder cost are deliberately
    different from the steps per token, and so are the extrapolation set's steps."""
    sw = root / "sweep"
    act = dict(model="act", tau=0.01, ponder_steps=9.0, **OPTS)
    # in distribution 2/2 solved, extrapolation 0/2
    make_run(
        sw, "act-s0", seed=0, held_out={"eval": (1.0, 2.4), "extrapolation": (0.5, 7.0)}, **act
    )
    make_run(
        sw, "act-s1", seed=1, held_out={"eval": (0.99, 2.6), "extrapolation": (0.6, 7.0)}, **act
    )
    pn = dict(model="pondernet", lambda_p=0.2, ponder_steps=9.0, **OPTS)
    # in distribution 1/2, extrapolation 2/2
    make_run(
        sw, "pn-s0", seed=0, held_out={"eval": (1.0, 4.5, 3.0), "extrapolation": (0.99, 9.0)}, **pn
    )
    make_run(
        sw, "pn-s1", seed=1, held_out={"eval": (0.5, 4.7, 3.0), "extrapolation": (0.985, 9.0)}, **pn
    )
    # Repeat rho=3: in distribution 2/3, extrapolation 1/3
    for seed, ev, ex in [(0, 1.0, 0.985), (1, 1.0, 0.5), (2, 0.6, 0.5)]:
        make_run(sw, f"rep3-s{seed}", seed=seed, model="repeat", rho=3, repetitions=3.0,
                 held_out={"eval": (ev, 3.0), "extrapolation": (ex, 3.0)}, **OPTS)  # fmt: skip
    # Repeat rho=2 solves nothing, the RNN everything: neither may appear beside ACT
    for seed in (0, 1):
        make_run(sw, f"rep2-s{seed}", seed=seed, model="repeat", rho=2, repetitions=2.0,
                 held_out={"eval": (0.5, 2.0), "extrapolation": (0.5, 2.0)}, **OPTS)  # fmt: skip
    make_run(sw, "rnn", model="rnn", held_out={"eval": (1.0, 1.0), "extrapolation": (1.0, 1.0)},
             **OPTS)  # fmt: skip
    return sw


def config_rows(sw):
    runs, skipped = results.load_runs(sw)
    assert not skipped
    return results.aggregate(runs)


def test_held_out_reads_each_sets_last_row(tmp_path):
    run = results.read_run(matched_sweep(tmp_path) / "pn-s0")
    assert run.held_out["eval"]["accuracy"] == 1.0 and run.held_out["eval"]["steps"] == 4.5
    assert run.held_out["eval"]["ponder_cost"] == 3.0
    assert run.held_out["extrapolation"]["accuracy"] == 0.99
    assert run.held_out["extrapolation"]["steps"] == 9.0
    assert matched.cost(run) == 4.5 and matched.cost(run, "extrapolation") == 9.0


def test_matched_rows_pair_each_adaptive_cost_with_repeat_at_floor_and_ceil_per_set(tmp_path):
    pairs = {
        (m.adaptive.model, m.set_name): m
        for m in matched.matched_rows(config_rows(matched_sweep(tmp_path)))
    }
    # fixed models are not paired themselves; every adaptive configuration on every set
    assert set(pairs) == {(a, s) for a in ("act", "pondernet") for s in ("eval", "extrapolation")}
    act = pairs["act", "eval"]
    assert act.cost == pytest.approx(2.5) and act.cost_range == pytest.approx((2.4, 2.6))
    assert [n.rho for n in act.neighbours] == [2, 3]
    low, high = act.neighbours
    assert (low.fixed.model, low.fixed.rho, high.fixed.rho) == ("repeat", 2, 3)
    assert len(high.fixed.runs) == 3
    # ACT's seeds 0, 1 (1.0, 0.99) against Repeat rho=2's (0.5, 0.5): paired, +49.5 points
    assert low.difference.paired and low.difference.n == 2
    assert low.difference.mean == pytest.approx(0.495)
    pn = pairs["pondernet", "eval"]
    assert pn.cost == pytest.approx(4.6) and [n.rho for n in pn.neighbours] == [4, 5]
    assert all(n.fixed is None and n.difference is None for n in pn.neighbours)
    # on the extrapolation set the cost is the set's own: 7.0 (whole: one neighbour), 9.0
    assert [n.rho for n in pairs["act", "extrapolation"].neighbours] == [7]
    assert [n.rho for n in pairs["pondernet", "extrapolation"].neighbours] == [9]


@pytest.mark.parametrize(
    "c, rhos", [(0.4, [1]), (1.0, [1]), (1.3, [1, 2]), (2.5, [2, 3]), (3.0, [3]), (8.2, [8, 9])]
)
def test_neighbours_on_both_sides(c, rhos):
    assert matched.neighbours_of(c) == rhos


def test_the_difference_interval_is_the_paired_t_or_welchs():
    from scipy import stats

    a = {0: 0.90, 1: 0.95, 2: 0.80, 3: 0.99, 4: 0.85}
    f = {0: 0.70, 1: 0.90, 2: 0.75, 3: 0.80, 4: 0.82}
    d = matched.difference(a, f)
    diffs = np.array([a[s] - f[s] for s in a])
    lo, hi = stats.ttest_rel(list(a.values()), list(f.values())).confidence_interval(0.95)
    assert d.paired and d.n == 5 and d.mean == pytest.approx(diffs.mean())
    assert (d.low, d.high) == (pytest.approx(lo), pytest.approx(hi))
    assert d.verdict() == "better"
    assert matched.difference(f, a).verdict() == "worse"
    # no seeds in common: Welch's interval
    g = {10 + s: v for s, v in f.items()}
    w = matched.difference(a, g)
    res = stats.ttest_ind(list(a.values()), list(g.values()), equal_var=False)
    lo, hi = res.confidence_interval(0.95)
    assert not w.paired and (w.low, w.high) == (pytest.approx(lo), pytest.approx(hi))
    # an interval that spans zero says so, with n
    same = matched.difference({0: 0.9, 1: 0.8, 2: 0.85}, {0: 0.85, 1: 0.86, 2: 0.84})
    assert same.low < 0 < same.high
    assert same.verdict() == "no difference detected at n = 3 seeds"
    assert matched.difference({0: 0.9}, {0: 0.8}) is None  # one seed: no interval


def wilson(k, n, z=1.959963984540054):
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return centre - half, centre + half


def table(text):
    """The compute-matched section's table of report.md: header cells and rows of cells."""
    section = text.split("## Compute-matched comparison", 1)[1].split("\n## ", 1)[0]
    lines = [ln for ln in section.splitlines() if ln.startswith("|")]
    cells = [[c.strip() for c in ln.strip().strip("|").split("|")] for ln in lines]
    return section, cells[0], cells[2:]


def column(head, set_words, side):
    hits = [i for i, h in enumerate(head) if side in h and any(w in h for w in set_words)]
    assert len(hits) == 1, (head, set_words, side)
    return hits[0]


def test_report_shows_the_matched_table_and_the_missing_baseline(tmp_path):
    sw = matched_sweep(tmp_path)
    text = report.build_report(sw, difficulty_samples=0).read_text()
    section, head, body = table(text)
    assert head[:3] == ["adaptive configuration", "held-out set", "steps per token c (range)"]
    act = [r for r in body if r[0].startswith("ACT") and r[1] == "in distribution"]
    assert [r[4] for r in act] == ["Repeat rho=2", "Repeat rho=3"]
    assert "2.50 (2.40-2.60)" == act[0][2]
    assert act[0][3].startswith("2/2 ") and "99.5%" in act[0][3]  # the median of 1.0, 0.99
    assert act[1][5].startswith("2/3 ")
    lo, hi = wilson(2, 3)
    assert f"[{lo:.2f}, {hi:.2f}]" in act[1][5]
    assert act[0][6].startswith("+49.5%") and act[0][7] == "better"
    pn = [r for r in body if r[0].startswith("PonderNet") and r[1] == "in distribution"]
    assert [r[4] for r in pn] == ["none at rho=4", "none at rho=5"]
    assert "{model: repeat, rho: [5]}" in section and "{model: repeat, rho: [4]}" in section
    assert "{model: repeat, rho: [9]}" in section  # PonderNet's extrapolation cost, 9.0
    assert "{model: repeat, rho: [3]}" not in section
    assert (sw / "figures" / "parity-frontier.png").exists()
    assert "parity-frontier.png" in text


def test_the_report_carries_every_set_for_every_configuration(tmp_path):
    sw = matched_sweep(tmp_path)
    text = report.build_report(sw, difficulty_samples=0).read_text()
    section = text.split("## Held-out sets", 1)[1].split("\n## ", 1)[0]
    body = [ln for ln in section.splitlines() if ln.startswith("|")][2:]
    labels = [ln.strip("|").split("|")[0].strip() for ln in body]
    assert len(labels) == 5 and labels[0] == "RNN"  # every configuration, the fixed ones too
    act = next(ln for ln in body if ln.startswith("| ACT"))
    assert "| 2.50 |" in act and "2/2 " in act and "0/2 " in act
    rows = read_csv(sw)
    for row in rows:  # per set: cost, median accuracy, k/n
        for name in ("eval", "extrapolation"):
            assert {f"{name}_mean_steps", f"{name}_median_accuracy", f"{name}_solved"} <= set(row)
    act_csv = next(r for r in rows if r["model"] == "act")
    assert float(act_csv["eval_mean_steps"]) == pytest.approx(2.5)
    assert act_csv["eval_solved"] == "2/2" and act_csv["extrapolation_solved"] == "0/2"


def test_a_cost_near_one_pairs_with_the_rnn_and_repeat_2(tmp_path):
    sw = tmp_path / "sweep"
    for seed, c in [(0, 1.1), (1, 1.3)]:
        make_run(sw, f"act-s{seed}", model="act", tau=0.1, seed=seed, held_out={"eval": (1.0, c)})
    make_run(sw, "rnn", model="rnn", held_out={"eval": (0.5, 1.0)})
    make_run(sw, "rep2", model="repeat", rho=2, held_out={"eval": (0.5, 2.0)})
    (pair,) = matched.matched_rows(config_rows(sw))
    assert pair.cost == pytest.approx(1.2)
    assert [(n.fixed.model, n.rho) for n in pair.neighbours] == [("rnn", 1), ("repeat", 2)]
    assert all(n.difference is None for n in pair.neighbours)  # one fixed seed: no interval
    section = table(report.build_report(sw, difficulty_samples=0).read_text())[0]
    assert "No Repeat run" not in section and "too few seeds" in section


def test_a_missing_rnn_is_named_as_its_grid_line(tmp_path):
    sw = tmp_path / "sweep"
    make_run(sw, "act", model="act", tau=0.1, held_out={"eval": (1.0, 1.2)})
    make_run(sw, "rep2", model="repeat", rho=2, held_out={"eval": (0.5, 2.0)})
    (pair,) = matched.matched_rows(config_rows(sw))
    assert [n.rho for n in pair.neighbours] == [1, 2] and pair.neighbours[0].fixed is None
    assert "{model: rnn}" in table(report.build_report(sw, difficulty_samples=0).read_text())[0]


def test_baselines_of_another_problem_are_not_paired(tmp_path):
    sw = tmp_path / "sweep"
    make_run(sw, "act", model="act", tau=0.1, held_out={"eval": (1.0, 2.0)})
    make_run(sw, "rep2-32", model="repeat", rho=2, task_options={"bits": 32},
             held_out={"eval": (1.0, 2.0)})  # fmt: skip
    (pair,) = matched.matched_rows(config_rows(sw))
    assert [n.rho for n in pair.neighbours] == [2] and pair.neighbours[0].fixed is None


def test_old_runs_without_steps_have_no_frontier_and_no_matched_table(tmp_path):
    sw = tmp_path / "sweep"
    make_run(sw, "act-a", model="act", tau=0.01, solve_at=10_000)
    make_run(sw, "act-b", model="act", tau=0.1)
    runs, _ = results.load_runs(sw)
    assert all(r.held_out["eval"]["steps"] is None for r in runs)
    assert matched.matched_rows(results.aggregate(runs)) == []
    text = report.build_report(sw, difficulty_samples=0).read_text()
    assert "Compute-matched" not in text
    assert not (sw / "figures" / "parity-frontier.png").exists()
    assert "frontier" not in text


def test_old_fixed_runs_have_their_steps_inferred_from_rho(tmp_path):
    sw = tmp_path / "sweep"
    make_run(sw, "rep3", model="repeat", rho=3)
    make_run(sw, "rnn", model="rnn")
    runs = {r.config.model: r for r in results.load_runs(sw)[0]}
    assert matched.cost(runs["repeat"]) == 3.0 and matched.cost(runs["rnn"]) == 1.0
    # fixed computation alone is no frontier: nothing adaptive to set against it
    report.build_report(sw, difficulty_samples=0)
    assert not (sw / "figures" / "parity-frontier.png").exists()
    make_run(sw, "act", model="act", tau=0.01, held_out={"eval": (0.9, 2.4)})
    report.build_report(sw, difficulty_samples=0)
    assert (sw / "figures" / "parity-frontier.png").exists()


# ------------------------------------------------------------------ the grids


def test_quick_extrapolation_grid():
    grid = reproduce.quick_extrapolation_grid()
    configs = {}
    for run in grid.runs:
        configs.setdefault(run.config.key(ignore=("seed",)), []).append(run.config)
    # every method: the RNN, Repeat at rho 2 to 10, ACT at 2 tau, PonderNet at 2 lambda_p
    points = sorted(
        (c[0].model, c[0].rho if c[0].model == "repeat" else None,
         c[0].tau if c[0].model == "act" else None,
         c[0].lambda_p if c[0].model == "pondernet" else None)
        for c in configs.values()
    )  # fmt: skip
    assert points == sorted(
        [("rnn", None, None, None)]
        + [("repeat", r, None, None) for r in range(2, 11)]
        + [("act", None, t, None) for t in (0.01, 0.001)]
        + [("pondernet", None, None, lam) for lam in (0.2, 0.5)]
    )
    assert len(grid.runs) == len(configs) * 3
    assert all(sorted(c.seed for c in cs) == [0, 1, 2] for cs in configs.values())
    assert len({r.name for r in grid.runs}) == len(grid.runs)
    for run in grid.runs:
        c = run.config
        assert c.task == "parity"
        opts = c.task_options
        assert set(c.eval_sets) == {"extrapolation"}
        ext = c.eval_sets["extrapolation"]
        assert ext["min_nonzero"] == opts["max_nonzero"] + 1
        assert ext["max_nonzero"] == ext["bits"] == opts["bits"] > opts["max_nonzero"]
        assert opts.get("min_nonzero", 1) == 1
        assert opts["positions"] == "random" and not c.stop_when_solved
        assert resolve(c) == c


def test_quick_extrapolation_refuses_seeds_and_budget(capsys, tmp_path):
    out = tmp_path / "out"
    assert main(["reproduce", "extrapolation", "--quick", "--seeds", "2", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--seeds" in err
    assert (
        main(["reproduce", "extrapolation", "--quick", "--budget", "500", "--out", str(out)]) == 2
    )
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--budget" in err
    steps = reproduce.QUICK_EXTRAPOLATION.steps
    assert "30,000" not in err, f"the quick extrapolation trains {steps:,} steps, not parity's"
    assert not out.exists() or not any(out.iterdir())


def test_builtin_extrapolation_grid_is_pondernets_protocol_at_16_and_96_elements():
    grid = reproduce.extrapolation_grid()
    # the RNN, Repeat 2..12, ACT at 3 tau, PonderNet at 3 lambda_p; 5 seeds; the whole budget
    assert len(grid.runs) == (1 + 11 + 3 + 3) * 5
    assert sorted({r.config.rho for r in grid.runs if r.config.model == "repeat"}) == list(
        range(2, 13)
    )
    assert not any(r.config.stop_when_solved for r in grid.runs)
    for run in grid.runs:
        c = run.config
        assert c.task_options == {"bits": 16, "max_nonzero": 8, "positions": "random"}
        ext = {"bits": 16, "min_nonzero": 9, "max_nonzero": 16, "positions": "random"}
        assert c.eval_sets == {"extrapolation": ext}
    grid = reproduce.extrapolation_grid(96)
    models = sorted({r.config.model for r in grid.runs})
    assert models == ["act", "pondernet", "repeat", "rnn"]
    assert "--elements 96" in grid.note
    for run in grid.runs:
        c = run.config
        assert c.task == "parity"
        assert c.task_options == {"bits": 96, "max_nonzero": 48, "positions": "random"}
        ext = {"bits": 96, "min_nonzero": 49, "max_nonzero": 96, "positions": "random"}
        assert c.eval_sets == {"extrapolation": ext}
    task = engine.build(grid.runs[0].config)[0]
    x, _ = task.sample(500, torch.Generator().manual_seed(0))
    assert int(nonzero(x).min()) >= 1 and int(nonzero(x).max()) <= 48
    config = grid.runs[0].config
    ext = Parity(**config.eval_sets["extrapolation"])
    k = nonzero(ext.sample(500, torch.Generator().manual_seed(0))[0])
    assert int(k.min()) >= 49 and int(k.max()) <= 96


@pytest.mark.parametrize(
    "argv",
    [
        ["--elements", "0"],
        ["--elements", "1"],
        ["--elements", "ten"],
        ["--elements", "16", "--quick"],
    ],
)
def test_bad_elements_are_one_line(argv, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["reproduce", "extrapolation", "--out", str(out), *argv]) == 2
    assert capsys.readouterr().err.count("\n") == 1
    assert not out.exists()


def test_elements_only_for_extrapolation(tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["reproduce", "parity", "--elements", "16", "--out", str(out)]) == 2
    assert "--elements" in capsys.readouterr().err


def test_the_k_figure_probes_every_k_inside_and_beyond_training(tiny, tmp_path):
    sw = tmp_path / "sweep"
    over = {
        "task_options": {"bits": 6, "max_nonzero": 3, "positions": "random"},
        "eval_sets": {"extrapolation": {"min_nonzero": 4, "max_nonzero": 6}},
        "steps": 20,
    }
    for seed in (0, 1):
        train.run(tiny(model="repeat", rho=3, seed=seed, **over), sw / f"rep3-s{seed}")
        train.run(tiny(model="act", seed=seed, **over), sw / f"act-s{seed}")
    ks, acc, steps = figures.probe_by_k(sw / "rep3-s0", 40, 0)
    assert ks.tolist() == [1, 2, 3, 4, 5, 6]
    assert np.all((acc >= 0) & (acc <= 1)) and np.all(steps == 3.0)  # Repeat computes rho
    again = figures.probe_by_k(sw / "rep3-s0", 40, 0)
    assert all(np.array_equal(a, b) for a, b in zip((ks, acc, steps), again, strict=True))
    _, _, act_steps = figures.probe_by_k(sw / "act-s0", 40, 0)
    assert np.all(act_steps >= 1.0)
    text = report.build_report(sw, difficulty_samples=20).read_text()
    assert (sw / "figures" / "parity-by-k.png").exists() and "parity-by-k.png" in text


def test_no_spread_is_said_as_such():
    same = matched.difference({0: 1.0, 1: 1.0}, {0: 1.0, 1: 1.0})
    assert same.verdict() == "the same on all 2 seeds"
    up = matched.difference({0: 0.75, 1: 0.5}, {0: 0.5, 1: 0.25})
    assert up.verdict().startswith("higher by the same amount")
