"""The batched multi-run engine: each member is the single run with its seed."""

import dataclasses

import pytest
import torch

from ponder import rundir
from ponder.kernels import act_rnn as fused
from ponder.methods import act
from ponder.training import engine, ensemble, train
from ponder.training.models import ModelSpec, build_model


def _close(a, b):
    torch.testing.assert_close(torch.tensor(_rows(a)), torch.tensor(_rows(b)), rtol=1e-4, atol=1e-4)


def _rows(d, keys=("loss", "task_loss", "train_accuracy", "ponder_cost", "eval_accuracy")):
    return [[r["step"], *(r[k] for k in keys)] for r in rundir.read_metrics(d)]


@pytest.mark.parametrize(
    "model, cell, task, options",
    [
        ("act", "rnn", "parity", {"bits": 6}),
        ("act", "lstm", "addition", {"numbers": 3, "digits": 2}),
        ("repeat", "gru", "parity", {"bits": 6}),
        ("repeat", "lstm", "addition", {"numbers": 3, "digits": 2}),
        ("pondernet", "lstm", "addition", {"numbers": 3, "digits": 2}),
        ("pondernet", "gru", "parity", {"bits": 6}),
        ("pondernet", "rnn", "addition", {"numbers": 3, "digits": 2}),  # kernels/pondernet_rnn.py
    ],
)
def test_forward_equals_member_networks(model, cell, task, options, tanh_form):
    sizes = (20, 33) if task == "addition" else (6, 1)
    spec = ModelSpec(*sizes, model=model, cell=cell, hidden=12, rho=3, max_ponder=8)
    nets = [build_model(spec, "tf", torch.Generator().manual_seed(s)) for s in range(3)]
    for n in nets:
        with torch.no_grad():
            if model in ("act", "pondernet"):
                n.core.halting.weight.normal_(0, 1.0)
    ens = ensemble.Ensemble(nets)
    x = torch.randn(3, 5, 3, spec.input_size)
    u = torch.rand(3, 5, 3, spec.max_ponder) if model == "pondernet" else None
    logits, info = ens(x) if u is None else ens(x, uniforms=u)
    for k, net in enumerate(nets):
        want, want_info = net(x[k]) if u is None else net(x[k], uniforms=u[k])
        torch.testing.assert_close(logits[k], want, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(info["ponder_cost"][k], want_info["ponder_cost"])
        torch.testing.assert_close(info["ponder_steps"][k], want_info["ponder_steps"])
    if model == "pondernet":  # halting varies, so later tokens start from different steps
        assert len(set(info["ponder_steps"].flatten().tolist())) > 1
    for k in range(3):
        sd = ens.member_state_dict(k)
        for name, p in nets[k].state_dict().items():
            assert torch.equal(sd[name], p)


def test_members_equal_single_runs(tiny, tmp_path):
    configs = [tiny(seed=s, tau=t, steps=40) for s, t in [(0, 0.01), (1, 0.1), (2, 0.001)]]
    dirs = [tmp_path / f"e{k}" for k in range(3)]
    train.run_group(configs, dirs)
    for k, c in enumerate(configs):
        train.run(c, tmp_path / f"s{k}")
        got, want = _rows(dirs[k]), _rows(tmp_path / f"s{k}")
        assert [r[0] for r in got] == [10, 20, 30, 40]
        torch.testing.assert_close(torch.tensor(got), torch.tensor(want), rtol=1e-4, atol=1e-4)
    # The tolerance is tight enough to tell members apart (other data, weights or tau).
    a, b = torch.tensor(_rows(dirs[0])), torch.tensor(_rows(tmp_path / "s1"))
    assert not torch.allclose(a[:, 1:], b[:, 1:], rtol=1e-4, atol=1e-4)
    same_seed_other_tau = dataclasses.replace(configs[0], tau=0.1)
    train.run(same_seed_other_tau, tmp_path / "tau")
    c = torch.tensor(_rows(tmp_path / "tau"))
    assert not torch.allclose(a[:, 1:], c[:, 1:], rtol=1e-4, atol=1e-4)


def test_k1_equals_single_run_and_checkpoints_interchange(tiny, tmp_path):
    c = tiny(model="repeat", rho=2, steps=40)
    train.run_group([c], [tmp_path / "e"], stacked=True)
    train.run(c, tmp_path / "s")
    _close(tmp_path / "e", tmp_path / "s")
    assert [r["engine"] for r in rundir.read_engine(tmp_path / "e")] == ["stacked"]
    # an ensemble checkpoint resumes in the single-run engine, and the result matches
    half = dataclasses.replace(c, steps=20)
    train.run_group([half], [tmp_path / "mix"], stacked=True)
    train.run(c, tmp_path / "mix")
    _close(tmp_path / "mix", tmp_path / "s")
    engines = [(r["from_step"], r["engine"]) for r in rundir.read_engine(tmp_path / "mix")]
    assert engines == [(0, "stacked"), (20, "single")]


def _interrupt_at_call(monkeypatch, n):
    """Make the n-th loss computation raise KeyboardInterrupt (a kill between checkpoints)."""
    real, calls = engine.objective, {"n": 0}

    def dies(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == n:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(engine, "objective", dies)
    return lambda: monkeypatch.setattr(engine, "objective", real)


def _exact_rows(d):
    return [{k: v for k, v in r.items() if k != "elapsed_s"} for r in rundir.read_metrics(d)]


@pytest.mark.parametrize("model", ["act", "rnn"])  # rnn: W_hh has no gradient on one token
def test_a_killed_group_resumes_exactly(tiny, tmp_path, monkeypatch, model):
    taus = [(0, 0.01), (1, 0.001), (2, 0.1)]
    configs = [tiny(seed=s, tau=t, steps=40, model=model) for s, t in taus]
    full = [tmp_path / f"full{k}" for k in range(3)]
    cut = [tmp_path / f"cut{k}" for k in range(3)]
    train.run_group(configs, full)
    restore = _interrupt_at_call(monkeypatch, 35)
    with pytest.raises(KeyboardInterrupt):
        train.run_group(configs, cut)
    restore()
    for d in cut:
        assert [r["step"] for r in rundir.read_metrics(d)] == [10, 20, 30]
        assert rundir.load_checkpoint(d)["step"] == 20 and rundir.read_summary(d) is None
    train.run_group(configs, cut)
    for a, b in zip(cut, full, strict=True):
        assert _exact_rows(a) == _exact_rows(b)
        assert rundir.read_summary(a)["step"] == 40
        records = rundir.read_engine(a)
        assert [(r["from_step"], r["engine"]) for r in records] == [(0, "stacked"), (20, "stacked")]
        assert records[-1]["members"] == [d.name for d in cut]


def test_a_budget_lowered_below_the_resume_point_still_finishes(tiny, tmp_path, monkeypatch):
    configs = [tiny(seed=s, steps=60) for s in range(3)]
    dirs = [tmp_path / f"r{k}" for k in range(3)]
    restore = _interrupt_at_call(monkeypatch, 45)
    with pytest.raises(KeyboardInterrupt):
        train.run_group(configs, dirs)
    restore()
    assert all(rundir.load_checkpoint(d)["step"] == 40 for d in dirs)
    # Two members' budgets drop below their checkpoint (40), one keeps training to 60.
    lowered = [dataclasses.replace(c, steps=s) for c, s in zip(configs, [20, 30, 60], strict=True)]
    summaries = train.run_group(lowered, dirs)
    assert [s["step"] for s in summaries] == [40, 40, 60]
    assert [rundir.status(d, c) for d, c in zip(dirs, lowered, strict=True)] == ["done"] * 3
    assert rundir.read_engine(dirs[2])[-1]["engine"] == "single"  # trained on alone


def test_diverged_member_is_frozen_others_go_on(tiny, tmp_path, monkeypatch):
    configs = [tiny(seed=s, steps=40) for s in range(2)]
    real = engine.objective
    calls = {"n": 0}

    def member1_nan_after_15(*args, **kwargs):
        calls["n"] += 1
        loss, tl = real(*args, **kwargs)
        if calls["n"] > 15 and loss.dim() == 2:
            loss = torch.cat([loss[:1], loss[1:] * float("nan")])
        return loss, tl

    monkeypatch.setattr(engine, "objective", member1_nan_after_15)
    summaries = train.run_group(configs, [tmp_path / "a", tmp_path / "b"])
    assert summaries[1]["diverged"] and not summaries[0]["diverged"]
    assert summaries[0]["step"] == 40 and summaries[1]["step"] == 10
    assert [r["step"] for r in rundir.read_metrics(tmp_path / "b")] == [10]
    monkeypatch.setattr(engine, "objective", real)
    train.run(configs[0], tmp_path / "ref")
    _close(tmp_path / "a", tmp_path / "ref")


def test_group_key():
    from ponder.config import RunConfig, resolve

    a = resolve(RunConfig(model="act", tau=0.1, seed=1))
    assert a.ensemble_key() == dataclasses.replace(a, tau=0.01, seed=4).ensemble_key()
    assert a.ensemble_key() != dataclasses.replace(a, hidden=64).ensemble_key()


def _mixed_ponder_nets(cell: str, biases=(5.0, -2.0, 5.0, 0.5)):
    """Networks whose halting unit ignores y: bias 5 halts every sample at step 1
    (sigmoid(5) > 1 - eps), -2 ponders 9 steps, 0.5 two; float64 so sums compare tightly."""
    spec = ModelSpec(6, 1, model="act", cell=cell, hidden=10, max_ponder=12)
    nets = [build_model(spec, "tf", torch.Generator().manual_seed(s)).double() for s in range(4)]
    for net, bias in zip(nets, biases, strict=True):
        with torch.no_grad():
            net.core.halting.weight.zero_()
            net.core.halting.bias.fill_(bias)
    return nets


@pytest.mark.parametrize("cell", ["rnn", "gru", "lstm"])
def test_members_that_ponder_differently_equal_their_networks_in_value_and_gradient(
    cell, tanh_form
):
    nets = _mixed_ponder_nets(cell)
    ens = ensemble.Ensemble(nets)
    x = torch.randn(4, 7, 3, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    logits, info = ens(x)
    (logits.square().sum() + info["ponder_cost"].sum()).backward()
    assert info["ponder_steps"][:, 0, 0].tolist() == [1.0, 9.0, 1.0, 2.0]
    for k, net in enumerate(nets):
        want, want_info = net(x[k])
        (want.square().sum() + want_info["ponder_cost"].sum()).backward()
        torch.testing.assert_close(logits[k], want, rtol=1e-12, atol=1e-12)
        for key in ("ponder_steps", "ponder_cost", "repetitions"):
            torch.testing.assert_close(info[key][k], want_info[key], rtol=1e-12, atol=1e-12)
        for name, p in net.named_parameters():
            torch.testing.assert_close(ens.p(name).grad[k], p.grad, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("cell", ["rnn", "gru"])  # the hand-written backward, and autograd's
def test_a_ponder_step_computes_only_the_members_still_pondering(monkeypatch, cell):
    nets = _mixed_ponder_nets(cell)
    ens = ensemble.Ensemble(nets)
    computed = []  # per ponder step: each member computed, with its rows

    def counting(step, *args, **kwargs):  # autograd's loop: members x rows, padded
        def counted(n, s, rows, members):
            h = s[0] if isinstance(s, tuple) else s
            ids = range(h.shape[0]) if members is None else members.tolist()
            computed.append([(int(m), h.shape[1]) for m in ids])
            return step(n, s, rows, members)

        return real_ponder_token(counted, *args, **kwargs)

    def cell_counted(rows, *args):  # the tanh RNN's ragged rows (kernels/act_rnn.py)
        computed.append([(r, end - start) for r, start, end in rows.blocks])
        return real_cell(rows, *args)

    real_cell, real_ponder_token = fused._cell, act.ponder_token
    monkeypatch.setattr(act, "ponder_token", counting)
    monkeypatch.setattr(fused, "_cell", cell_counted)
    x = torch.randn(4, 7, 2, 6, dtype=torch.float64)
    ens(x)
    # Per token: step 1 computes all 4 members x 7 samples; step 2 the two that ponder on
    # (members 1 and 3); steps 3..9 only member 1, the one that ponders 9 steps.
    per_token = [[(m, 7) for m in range(4)], [(1, 7), (3, 7)]] + [[(1, 7)]] * 7
    assert computed == per_token * 2


def test_an_ensemble_goes_on_with_its_live_members_once_one_has_stopped(
    tiny, tmp_path, monkeypatch
):
    """Members 0, 1 and 2 stop at steps 20, 30 and 40: each time the others go on as an
    ensemble of their own, and member 3 ends alone. Each equals its single run."""
    configs = [tiny(seed=s, tau=t, steps=60) for s, t in enumerate([0.01, 0.1, 0.001, 0.01])]
    dirs = [tmp_path / f"m{k}" for k in range(4)]
    stop_at = {"m0": 20, "m1": 30, "m2": 40}
    real_add = train.Member.add

    def add(self, row):
        return real_add(self, row) or row["step"] == stop_at.get(self.dir.name)

    monkeypatch.setattr(train.Member, "add", add)
    computed = []  # the runs each training step computes
    real_step = ensemble.Ensemble.forward

    def forward(self, x, *args, **kwargs):
        if self.training:  # (not the evaluations at log steps)
            computed.append(self.k)
        return real_step(self, x, *args, **kwargs)

    monkeypatch.setattr(ensemble.Ensemble, "forward", forward)
    summaries = train.run_group(configs, dirs)
    assert [s["step"] for s in summaries] == [20, 30, 40, 60]
    segments = [
        (r["from_step"], r["engine"], len(r["members"])) for r in rundir.read_engine(dirs[3])
    ]
    assert segments == [
        (0, "stacked", 4),
        (20, "stacked", 3),
        (30, "stacked", 2),
        (40, "single", 1),
    ]
    assert rundir.read_engine(dirs[2])[-1]["members"] == ["m2", "m3"]
    # training steps: 20 of four runs, 10 of three, 10 of two, then the single-run engine
    assert computed == [4] * 20 + [3] * 10 + [2] * 10
    monkeypatch.undo()
    for k in (2, 3):
        train.run(configs[k], tmp_path / f"s{k}")
        got, want = _rows(dirs[k]), _rows(tmp_path / f"s{k}")[: 6 - 2 * (k == 2)]
        torch.testing.assert_close(torch.tensor(got), torch.tensor(want), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("cell", ["rnn", "gru"])  # the hand-written backward, and autograd's
def test_pondernet_members_equal_their_networks_in_value_and_gradient(cell, tanh_form):
    """Three tokens (addition), so later tokens start from each member's sampled step."""
    spec = ModelSpec(20, 33, model="pondernet", cell=cell, hidden=10, max_ponder=6)
    nets = [build_model(spec, "tf", torch.Generator().manual_seed(s)).double() for s in range(3)]
    for net in nets:
        with torch.no_grad():
            net.core.halting.weight.normal_(0, 1.0)
    ens = ensemble.Ensemble(nets)
    gen = torch.Generator().manual_seed(5)
    x = torch.randn(3, 5, 3, 20, dtype=torch.float64, generator=gen)
    u = torch.rand(3, 5, 3, 6, dtype=torch.float64, generator=gen)
    w_logits = torch.randn(3, 5, 3, 6, 33, dtype=torch.float64, generator=gen)
    w_log_p = torch.randn(3, 5, 3, 6, dtype=torch.float64, generator=gen)

    def loss(info, k=slice(None)):  # every step's logits and log p, as PonderNet's loss uses
        return (info["step_logits"] * w_logits[k]).sum() + (info["log_p"] * w_log_p[k]).sum()

    logits, info = ens(x, uniforms=u)
    loss(info).backward()
    assert len(set(info["ponder_steps"].flatten().tolist())) > 1
    for k, net in enumerate(nets):
        want, want_info = net(x[k], uniforms=u[k])
        loss(want_info, k).backward()
        torch.testing.assert_close(logits[k], want, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(info["log_p"][k], want_info["log_p"], rtol=1e-12, atol=1e-12)
        for name, p in net.named_parameters():
            torch.testing.assert_close(ens.p(name).grad[k], p.grad, rtol=1e-10, atol=1e-12)
