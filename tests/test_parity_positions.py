"""Parity's ``positions`` option and the guard against held-out sets training never covers."""

from __future__ import annotations

import math

import pytest
import torch

from ponder.cli import main
from ponder.config import ConfigError, from_dict, resolve
from ponder.tasks import Parity


def test_first_positions_are_unchanged_bit_for_bit():
    # Checksums of the sample the code drew before the option existed (Table 1's problem).
    x, y = Parity(bits=64).sample(256, torch.Generator().manual_seed(7))
    w = torch.arange(1, 65, dtype=torch.float64)
    rows = torch.arange(1, 257, dtype=torch.float64)
    assert int((x[:, 0].double() @ w * rows).sum()) == 665586
    assert int((y[:, 0] * torch.arange(256)).sum()) == 14948
    again = Parity(bits=64, positions="first").sample(256, torch.Generator().manual_seed(7))
    assert torch.equal(again[0], x) and torch.equal(again[1], y)


def test_random_positions_set_every_column_at_the_rate_of_k():
    bits, low, high, n = 16, 1, 8, 40_000
    x, _ = Parity(bits=bits, min_nonzero=low, max_nonzero=high, positions="random").sample(
        n, torch.Generator().manual_seed(0)
    )
    set_ = x[:, 0] != 0  # (n, bits)
    k = set_.sum(-1)
    assert int(k.min()) == low and int(k.max()) == high  # k is still the drawn count
    rate = (low + high) / 2 / bits  # E[k] / bits = 0.28125
    se = math.sqrt(rate * (1 - rate) / n)  # about 0.0022
    freq = set_.float().mean(0)
    # every column at the same rate, within 5 standard errors (a bound a wrong sampler, such as
    # the first k, breaks by a factor of 100: its last columns are never set)
    assert torch.all((freq - rate).abs() < 5 * se), freq
    # and positions are not tied to each other: columns 0 and 1 together at the rate of
    # E[k(k-1)] / (bits (bits-1))
    pair = (set_[:, 0] & set_[:, 1]).float().mean()
    ks = torch.arange(low, high + 1, dtype=torch.float64)
    expect = float((ks * (ks - 1)).mean() / (bits * (bits - 1)))
    assert abs(float(pair) - expect) < 5 * math.sqrt(expect / n)


def test_random_positions_target_the_parity_of_the_plus_ones():
    task = Parity(bits=24, positions="random")
    x, y = task.sample(2000, torch.Generator().manual_seed(3))
    assert torch.equal(y[:, 0], (x[:, 0] == 1).sum(-1) % 2)
    assert set(x.unique().tolist()) == {-1.0, 0.0, 1.0}
    # signs: -1 and +1 equally often among the set positions
    plus = (x == 1).sum() / (x != 0).sum()
    assert abs(float(plus) - 0.5) < 0.02


def test_random_positions_stack_like_single_draws():
    task = Parity(bits=40, max_nonzero=20, positions="random")
    gens = [torch.Generator().manual_seed(s) for s in (1, 2, 3)]
    xs, ys = task.sample_many(32, gens)
    for i, s in enumerate((1, 2, 3)):
        x, y = task.sample(32, torch.Generator().manual_seed(s))
        assert torch.equal(xs[i], x) and torch.equal(ys[i], y)


def test_held_out_sets_inherit_positions():
    c = resolve(from_dict({
        "task": "parity", "task_options": {"bits": 8, "max_nonzero": 4, "positions": "random"},
        "eval_sets": {"extrapolation": {"min_nonzero": 5, "max_nonzero": 8}},
    }))  # fmt: skip
    assert c.eval_sets["extrapolation"]["positions"] == "random"


def test_nonzero_features():
    assert list(Parity(bits=8, max_nonzero=3).nonzero_features()) == [0, 1, 2]
    assert list(Parity(bits=8, max_nonzero=3, positions="random").nonzero_features()) == list(
        range(8)
    )


EXTRAPOLATION = {
    "task": "parity",
    "task_options": {"bits": 96, "max_nonzero": 48},
    "eval_sets": {"extrapolation": {"min_nonzero": 49, "max_nonzero": 96}},
}


def test_the_old_extrapolation_config_is_refused_with_the_features_and_the_fix():
    with pytest.raises(ConfigError) as e:
        resolve(from_dict(EXTRAPOLATION))
    message = str(e.value)
    assert "\n" not in message
    assert "49-96" in message and "positions: random" in message
    # a held-out set inside what training covers is fine with first positions
    inside = {**EXTRAPOLATION, "eval_sets": {"hard": {"min_nonzero": 40}}}
    assert resolve(from_dict(inside)).eval_sets["hard"]["min_nonzero"] == 40


def test_train_refuses_it_and_writes_nothing(tmp_path, capsys):
    import yaml

    path = tmp_path / "ex.yaml"
    path.write_text(yaml.safe_dump(EXTRAPOLATION))
    out = tmp_path / "run"
    assert main(["train", "--config", str(path), "--out", str(out), "--steps", "5"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "49-96" in err
    assert not out.exists()


@pytest.mark.parametrize(
    "flags, words",
    [
        (["--positions", "diagonal"], "positions"),
        (["--bits", "0"], "bits"),
        (["--bits", "8", "--positions", "random", "--eval-size", "0"], "eval_size"),
    ],
)
def test_bad_positions_and_sizes_are_one_line(tmp_path, capsys, flags, words):
    code = None
    try:
        code = main(["train", "--task", "parity", "--out", str(tmp_path / "r"), *flags])
    except SystemExit as e:  # argparse refuses an unknown flag itself
        code = e.code
    assert code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    if words:
        assert words in err
    assert not (tmp_path / "r").exists()
