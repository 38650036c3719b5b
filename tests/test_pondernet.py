"""PonderNet against Banino et al.'s equations (SPEC.md, "PonderNet, exactly"), computed
independently one sample, one token and one step at a time; the KL regulariser against closed
forms; the sampled halting steps against p; custom (non-torch) cells in PonderNet and in ACT."""

import math

import pytest
import torch
from cells import torch_cell
from scipy import stats
from torch import nn
from torch.nn import functional as F

import ponder
from ponder.methods.act import ACT
from ponder.methods.pondernet import PonderNet, regulariser

FEATURES, HIDDEN, STEPS, BATCH = 5, 7, 6, 4


pytestmark = pytest.mark.usefixtures("float64")  # exact comparisons (conftest.py)


# ----------------------------------------------------------------------------------------------
# Cells
# ----------------------------------------------------------------------------------------------


def _cell(kind: str, features: int = FEATURES, hidden: int = HIDDEN, seed: int = 0):
    return torch_cell(kind, features, hidden, seed)


class LayerNormGRUCell(nn.Module):
    """A layer-normalised GRU-like cell with a tensor state, following nn.RNNCell's convention.

    It insists on being given a state (no None): the wrapper must supply zeros itself."""

    def __init__(self, input_size: int, hidden_size: int) -> None:
        super().__init__()
        self.input_size, self.hidden_size = input_size, hidden_size
        self.gates = nn.Linear(input_size + hidden_size, 2 * hidden_size)
        self.norm = nn.LayerNorm(hidden_size)

    def forward(self, x: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        assert isinstance(h, torch.Tensor) and h.shape == (x.shape[0], self.hidden_size)
        u, c = self.gates(torch.cat([x, h], -1)).chunk(2, -1)
        u = torch.sigmoid(u)
        return u * h + (1 - u) * torch.tanh(self.norm(c))


class MemoryCell(nn.Module):
    """A custom cell with a tuple state (h, m) whose first element h is the output."""

    def __init__(self, input_size: int, hidden_size: int) -> None:
        super().__init__()
        self.input_size, self.hidden_size = input_size, hidden_size
        self.write = nn.Linear(input_size + hidden_size, hidden_size)
        self.read = nn.Linear(hidden_size, hidden_size)

    def forward(self, x: torch.Tensor, state: tuple[torch.Tensor, torch.Tensor]):
        h, m = state
        m_new = 0.6 * m + torch.tanh(self.write(torch.cat([x, h], -1)))
        return torch.tanh(self.read(m_new)) + 0.1 * h, m_new


def _custom(kind: str, seed: int = 0):
    torch.manual_seed(seed)
    return {"lngru": LayerNormGRUCell, "memory": MemoryCell}[kind](FEATURES + 1, HIDDEN)


def _output(state):
    return state[0] if isinstance(state, tuple) else state


def _row(state, b: int):
    if isinstance(state, tuple):
        return tuple(part[b : b + 1] for part in state)
    return state[b : b + 1]


def _zeros(cell, rows: int = 1):
    h = torch.zeros(rows, cell.hidden_size)
    return (h, h.clone()) if isinstance(cell, nn.LSTMCell) else h


def _random_state(cell, batch: int, seed: int = 11):
    g = torch.Generator().manual_seed(seed)
    h = torch.randn(batch, cell.hidden_size, generator=g)
    if isinstance(cell, (nn.LSTMCell, MemoryCell)):
        return h, torch.randn(batch, cell.hidden_size, generator=g)
    return h


def _scramble_halting(net, std: float, bias: float, seed: int = 3):
    torch.manual_seed(seed)
    with torch.no_grad():
        net.halting.weight.normal_(0, std)
        net.halting.bias.fill_(bias)


# ----------------------------------------------------------------------------------------------
# The references: the equations, literally
# ----------------------------------------------------------------------------------------------


def reference(net, x, halting_step, state=None):
    """PonderNet, one sample, one token, one step at a time.

    Token t + 1 continues from the state at token t's halting step ``halting_step[b, t]`` (the
    module's own sample: the reference checks everything given that draw)."""
    cell, big_n = net.cell, net.max_steps
    batch, time, _ = x.shape
    outs, lams, ps, logps, expect, finals = [], [], [], [], [], []
    for b in range(batch):
        s = _zeros(cell) if state is None else _row(state, b)
        o_b, l_b, p_b, lp_b, e_b = [], [], [], [], []
        for t in range(time):
            states, ys, zs = [], [], []
            for n in range(1, big_n + 1):
                flag = torch.tensor([[1.0 if n == 1 else 0.0]])
                s = cell(torch.cat([flag, x[b : b + 1, t]], 1), s)
                y = _output(s)
                states.append(s)
                ys.append(y[0])
                zs.append(net.halting(y)[0, 0])
            lam = [torch.sigmoid(z) for z in zs[:-1]] + [torch.tensor(1.0)]  # lambda^N := 1
            p, survive = [], torch.tensor(1.0)
            for n in range(big_n):
                p.append(lam[n] * survive)  # lambda^n prod_{j<n} (1 - lambda^j)
                survive = survive * (1 - lam[n])
            logp, acc = [], torch.tensor(0.0)
            for n in range(big_n):
                logp.append((F.logsigmoid(zs[n]) if n < big_n - 1 else 0.0) + acc)
                acc = acc + F.logsigmoid(-zs[n])
            o_b.append(torch.stack(ys))
            l_b.append(torch.stack(lam))
            p_b.append(torch.stack(p))
            lp_b.append(torch.stack(logp))
            e_b.append(sum((n + 1) * p[n] for n in range(big_n)))
            s = states[int(halting_step[b, t]) - 1]  # s_t^{n*}
        outs.append(torch.stack(o_b))
        lams.append(torch.stack(l_b))
        ps.append(torch.stack(p_b))
        logps.append(torch.stack(lp_b))
        expect.append(torch.stack(e_b))
        finals.append(s)
    if isinstance(finals[0], tuple):
        final = tuple(torch.cat(parts, 0) for parts in zip(*finals, strict=True))
    else:
        final = torch.cat(finals, 0)
    return {
        "outputs": torch.stack(outs),
        "lambdas": torch.stack(lams),
        "p": torch.stack(ps),
        "log_p": torch.stack(logps),
        "expected_steps": torch.stack(expect),
        "state": final,
    }


def act_reference(act, x, state=None):
    """ACT as the docstring of ponder/act.py writes it, one sample at a time."""
    cell, eps, m = act.cell, act.epsilon, act.max_steps
    outs, steps, rems, probs, finals = [], [], [], [], []
    for b in range(x.shape[0]):
        s = _zeros(cell) if state is None else _row(state, b)
        o_b, n_b, r_b, p_b = [], [], [], []
        for t in range(x.shape[1]):
            hs, states = [], []
            for n in range(1, m + 1):
                flag = torch.tensor([[1.0 if n == 1 else 0.0]])
                s = cell(torch.cat([flag, x[b : b + 1, t]], 1), s)
                hs.append(torch.sigmoid(act.halting(_output(s)))[0, 0])
                states.append(s)
                if sum(hs).item() >= 1 - eps or n == m:
                    break
            r = 1 - sum(hs[:-1], torch.tensor(0.0))
            p = hs[:-1] + [r]
            if isinstance(s, tuple):
                s = tuple(
                    sum(pi * st[i] for pi, st in zip(p, states, strict=True)) for i in range(len(s))
                )
            else:
                s = sum(pi * st for pi, st in zip(p, states, strict=True))
            o_b.append(_output(s)[0])
            n_b.append(len(hs))
            r_b.append(r)
            p_b.append(p)
        outs.append(torch.stack(o_b))
        steps.append(n_b)
        rems.append(torch.stack(r_b))
        probs.append(p_b)
        finals.append(s)
    if isinstance(finals[0], tuple):
        final = tuple(torch.cat(parts, 0) for parts in zip(*finals, strict=True))
    else:
        final = torch.cat(finals, 0)
    return torch.stack(outs), final, torch.tensor(steps), torch.stack(rems), probs


def _weights(shape, seed):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def _state_term(state, seed):
    parts = state if isinstance(state, tuple) else (state,)
    return sum((part * _weights(part.shape, seed + i)).sum() for i, part in enumerate(parts))


def _loss(outputs, state, info_or_ref):
    """A scalar that reaches every returned quantity with fixed random weights."""
    d = info_or_ref
    w_out = _weights(outputs.shape, 100)
    return (
        (d["p"].unsqueeze(-1) * outputs * w_out).sum()
        + (d["log_p"] * _weights(d["log_p"].shape, 101)).sum()
        + (d["lambdas"] * _weights(d["lambdas"].shape, 102)).sum()
        + 0.3 * d["expected_steps"].sum()
        + _state_term(state, 200)
    )


def _assert_state_close(a, b):
    assert type(a) is type(b)
    if isinstance(a, tuple):
        assert len(a) == len(b)
        for x, y in zip(a, b, strict=True):
            torch.testing.assert_close(x, y)
    else:
        torch.testing.assert_close(a, b)


def _check_against_reference(net, x, state=None, generator_seed=0):
    out, s_out, info = net(x, state, generator=torch.Generator().manual_seed(generator_seed))
    batch, time, _ = x.shape
    big_n = net.max_steps
    assert out.shape == (batch, time, big_n, net.cell.hidden_size)
    for key in ("lambdas", "p", "log_p"):
        assert info[key].shape == (batch, time, big_n), key
    assert info["expected_steps"].shape == (batch, time)
    hs = info["halting_step"]
    assert hs.shape == (batch, time) and hs.dtype == torch.int64
    assert ((hs >= 1) & (hs <= big_n)).all()

    ref = reference(net, x, hs, state)
    torch.testing.assert_close(out, ref["outputs"])
    for key in ("lambdas", "p", "log_p", "expected_steps"):
        torch.testing.assert_close(info[key], ref[key], msg=lambda m, k=key: f"{k}: {m}")
    assert (info["lambdas"][..., -1] == 1).all()  # lambda^N := 1, exactly
    torch.testing.assert_close(info["p"].sum(-1), torch.ones(batch, time))
    _assert_state_close(s_out, ref["state"])

    params = list(net.parameters())
    grads = torch.autograd.grad(_loss(out, s_out, info), params)
    ref_grads = torch.autograd.grad(_loss(ref["outputs"], ref["state"], ref), params)
    for (name, _), g, ref_g in zip(net.named_parameters(), grads, ref_grads, strict=True):
        torch.testing.assert_close(g, ref_g, msg=lambda m, k=name: f"grad {k}: {m}")
    return out, s_out, info


# ----------------------------------------------------------------------------------------------
# 1. Values and gradients against the equations
# ----------------------------------------------------------------------------------------------


def test_public_api_and_construction():
    assert ponder.PonderNet is PonderNet
    cell = _cell("gru")
    net = PonderNet(cell)
    assert net.cell is cell and net.max_steps == 20
    assert isinstance(net.halting, nn.Linear)
    assert net.halting.in_features == HIDDEN and net.halting.out_features == 1
    assert net.halting.bias.item() == 0.0
    net = PonderNet(_cell("rnn"), max_steps=3, halting_bias=-1.25)
    assert net.max_steps == 3 and net.halting.bias.item() == -1.25
    assert any(p is net.halting.weight for p in net.parameters())


@pytest.mark.parametrize("time", [1, 3])
@pytest.mark.parametrize("kind", ["rnn", "gru", "lstm"])
def test_matches_reference_equations(kind, time):
    net = PonderNet(_cell(kind), max_steps=STEPS)
    _scramble_halting(net, std=1.5, bias=-0.5)
    x = torch.randn(BATCH, time, FEATURES, generator=torch.Generator().manual_seed(7))
    out, state, info = _check_against_reference(net, x)
    hs = info["halting_step"]
    # The setup does exercise varied halting (and so, for T > 1, continuing from s^{n*} < N).
    assert 0.05 < info["lambdas"][..., :-1].min() and info["lambdas"][..., :-1].max() < 0.95
    if time > 1:
        assert (hs[:, :-1] < STEPS).any() and hs.unique().numel() > 1
    if kind == "lstm":
        assert isinstance(state, tuple) and len(state) == 2
    else:
        assert isinstance(state, torch.Tensor) and state.shape == (BATCH, HIDDEN)


@pytest.mark.parametrize("kind", ["gru", "lstm"])
def test_explicit_initial_state(kind):
    net = PonderNet(_cell(kind, seed=1), max_steps=4, halting_bias=0.3)
    _scramble_halting(net, std=1.0, bias=0.3, seed=4)
    x = torch.randn(3, 2, FEATURES, generator=torch.Generator().manual_seed(8))
    state0 = _random_state(net.cell, 3)
    _check_against_reference(net, x, state0, generator_seed=5)


def test_state_continues_from_sampled_halting_step_across_calls():
    """Two calls chained through the returned state equal the reference over the whole x."""
    net = PonderNet(_cell("lstm", seed=2), max_steps=5)
    _scramble_halting(net, std=1.5, bias=0.0, seed=5)
    x = torch.randn(BATCH, 4, FEATURES, generator=torch.Generator().manual_seed(9))
    g = torch.Generator().manual_seed(3)
    out_a, state_a, info_a = net(x[:, :2], generator=g)
    out_b, state_b, info_b = net(x[:, 2:], state_a, generator=g)
    hs = torch.cat([info_a["halting_step"], info_b["halting_step"]], 1)
    ref = reference(net, x, hs)
    torch.testing.assert_close(torch.cat([out_a, out_b], 1), ref["outputs"])
    torch.testing.assert_close(torch.cat([info_a["p"], info_b["p"]], 1), ref["p"])
    _assert_state_close(state_b, ref["state"])


def test_full_unroll_in_eval_mode_too():
    net = PonderNet(_cell("gru", seed=3), max_steps=STEPS)
    _scramble_halting(net, std=1.0, bias=2.0, seed=6)  # lambda large: would halt early if allowed
    x = torch.randn(BATCH, 2, FEATURES, generator=torch.Generator().manual_seed(10))
    train = net(x, generator=torch.Generator().manual_seed(1))
    net.eval()
    with torch.no_grad():
        evaluated = net(x, generator=torch.Generator().manual_seed(1))
    assert evaluated[0].shape == (BATCH, 2, STEPS, HIDDEN)
    torch.testing.assert_close(evaluated[0], train[0].detach())
    for key in ("p", "log_p", "lambdas", "expected_steps"):
        torch.testing.assert_close(evaluated[2][key], train[2][key].detach())
    assert torch.equal(evaluated[2]["halting_step"], train[2]["halting_step"])
    ref = reference(net, x, evaluated[2]["halting_step"])
    torch.testing.assert_close(evaluated[0], ref["outputs"].detach())


def test_expected_steps_and_log_p_consistency():
    """expected_steps = sum_n n p^n and exp(log_p) = p, on a hand-set halting unit (W = 0):
    lambda = sigmoid(b) on every step but the last, so p is a truncated geometric."""
    net = PonderNet(_cell("rnn", seed=4), max_steps=STEPS)
    b = 0.4
    with torch.no_grad():
        net.halting.weight.zero_()
        net.halting.bias.fill_(b)
    _, _, info = net(torch.randn(3, 2, FEATURES), generator=torch.Generator().manual_seed(0))
    lam = 1 / (1 + math.exp(-b))
    want = [lam * (1 - lam) ** (n - 1) for n in range(1, STEPS)] + [(1 - lam) ** (STEPS - 1)]
    want_t = torch.tensor(want).expand(3, 2, STEPS)
    torch.testing.assert_close(info["p"], want_t)
    torch.testing.assert_close(info["log_p"], torch.log(want_t))
    torch.testing.assert_close(
        info["expected_steps"], torch.full((3, 2), sum((n + 1) * w for n, w in enumerate(want)))
    )


# ----------------------------------------------------------------------------------------------
# 2. The regulariser against closed forms
# ----------------------------------------------------------------------------------------------


def prior(lambda_p: float, big_n: int) -> list[float]:
    """p_G^n = lambda_p (1 - lambda_p)^(n-1), n = 1..N, divided by 1 - (1 - lambda_p)^N."""
    z = 1 - (1 - lambda_p) ** big_n
    return [lambda_p * (1 - lambda_p) ** (n - 1) / z for n in range(1, big_n + 1)]


def kl(p: list[float], q: list[float]) -> float:
    return sum(pi * math.log(pi / qi) for pi, qi in zip(p, q, strict=True) if pi > 0)


@pytest.mark.parametrize("lambda_p", [0.05, 0.2, 0.5, 0.9])
@pytest.mark.parametrize("big_n", [1, 4, 20])
def test_regulariser_is_zero_at_the_prior(lambda_p, big_n):
    log_pg = torch.log(torch.tensor(prior(lambda_p, big_n)))
    log_p = log_pg.expand(3, 2, big_n).clone()
    got = regulariser(log_p, lambda_p)
    assert got.shape == (3, 2)
    assert got.abs().max().item() < 1e-12


@pytest.mark.parametrize("lambda_p", [0.1, 0.3, 0.75])
@pytest.mark.parametrize("elsewhere", [-1e4, -float("inf")])
def test_regulariser_one_hot_at_step_one(lambda_p, elsewhere):
    big_n = 7
    log_p = torch.full((2, 3, big_n), elsewhere)
    log_p[..., 0] = 0.0
    got = regulariser(log_p, lambda_p)
    assert torch.isfinite(got).all(), got
    want = -math.log(prior(lambda_p, big_n)[0])
    torch.testing.assert_close(got, torch.full((2, 3), want), rtol=1e-12, atol=1e-12)


def test_regulariser_direction_is_kl_p_to_prior():
    lambda_p, big_n = 0.3, 5
    p = [0.01, 0.01, 0.02, 0.06, 0.9]
    pg = prior(lambda_p, big_n)
    forward, backward = kl(p, pg), kl(pg, p)
    assert abs(forward - backward) > 0.2  # the case tells the two directions apart
    got = regulariser(torch.log(torch.tensor(p)).view(1, 1, big_n), lambda_p)
    assert got.shape == (1, 1)
    assert got.item() == pytest.approx(forward, rel=1e-12, abs=1e-12)
    assert abs(got.item() - backward) > 0.2


def test_regulariser_values_and_gradient_on_random_distributions():
    lambda_p, big_n = 0.2, 6
    logits = torch.randn(4, 3, big_n, generator=torch.Generator().manual_seed(12))
    log_p = torch.log_softmax(logits, -1).requires_grad_()
    got = regulariser(log_p, lambda_p)
    assert got.shape == (4, 3)
    pg = prior(lambda_p, big_n)
    want = torch.tensor([[kl(row.tolist(), pg) for row in plane] for plane in log_p.detach().exp()])
    torch.testing.assert_close(got, want)
    # Gradient wrt log_p: d/dl_n [e^{l_n} (l_n - log pg_n)] = e^{l_n} (l_n - log pg_n + 1).
    w = _weights((4, 3), 13)
    (g,) = torch.autograd.grad((got * w).sum(), log_p)
    lp = log_p.detach()
    want_g = w.unsqueeze(-1) * lp.exp() * (lp - torch.log(torch.tensor(pg)) + 1)
    torch.testing.assert_close(g, want_g)


def test_regulariser_accepts_any_leading_shape():
    big_n = 5
    pg = prior(0.4, big_n)
    p = torch.softmax(torch.randn(big_n, generator=torch.Generator().manual_seed(14)), -1)
    want = kl(p.tolist(), pg)
    for lead in [(), (3,), (2, 3), (2, 2, 3)]:
        got = regulariser(torch.log(p).expand(*lead, big_n).clone(), 0.4)
        assert got.shape == lead
        torch.testing.assert_close(got, torch.full(lead, want))


def test_regulariser_tensor_lambda_per_leading_index():
    big_n, k = 6, 3
    lambdas = [0.1, 0.35, 0.8]
    logits = torch.randn(k, 2, 4, big_n, generator=torch.Generator().manual_seed(15))
    log_p = torch.log_softmax(logits, -1)
    got = regulariser(log_p, torch.tensor(lambdas).view(k, 1, 1))
    assert got.shape == (k, 2, 4)
    for i, lam in enumerate(lambdas):
        pg = prior(lam, big_n)
        want = torch.tensor([[kl(r.tolist(), pg) for r in row] for row in log_p[i].exp()])
        torch.testing.assert_close(got[i], want)
        torch.testing.assert_close(got[i], regulariser(log_p[i], lam))
    # The rows really differ by their prior, not only by their p.
    same_p = log_p[:1].expand(k, 2, 4, big_n)
    per_row = regulariser(same_p, torch.tensor(lambdas).view(k, 1, 1))
    assert (per_row[0] - per_row[1]).abs().min() > 1e-3
    # A 0-d tensor lambda_p is the float.
    torch.testing.assert_close(regulariser(log_p, torch.tensor(0.35)), regulariser(log_p, 0.35))


def test_regulariser_tensor_lambda_per_token():
    """lambda_p broadcastable against the leading shape [B, T] itself: one prior per token."""
    big_n = 4
    logits = torch.randn(2, 3, big_n, generator=torch.Generator().manual_seed(16))
    log_p = torch.log_softmax(logits, -1)
    lam = torch.tensor([[0.1, 0.2, 0.3], [0.4, 0.6, 0.9]])
    got = regulariser(log_p, lam)
    for b in range(2):
        for t in range(3):
            want = kl(log_p[b, t].exp().tolist(), prior(lam[b, t].item(), big_n))
            assert got[b, t].item() == pytest.approx(want, rel=1e-10, abs=1e-12)


def test_regulariser_lambda_p_one():
    """lambda_p = 1 (in the spec's (0, 1]): p_G is one-hot at step 1; KL of that one-hot is 0."""
    log_p = torch.full((2, 5), -float("inf"))
    log_p[:, 0] = 0.0
    got = regulariser(log_p, 1.0)
    assert torch.isfinite(got).all(), got
    torch.testing.assert_close(got, torch.zeros(2))


# ----------------------------------------------------------------------------------------------
# 3. Extreme halting logits, in float32
# ----------------------------------------------------------------------------------------------


def _float32_net(seed: int, kind: str = "rnn"):
    torch.set_default_dtype(torch.float32)  # the autouse fixture restores float64 after
    return PonderNet(_cell(kind, seed=seed), max_steps=STEPS)


def _extreme_loss_checks(net, x):
    out, state, info = net(x, generator=torch.Generator().manual_seed(0))
    assert out.dtype == torch.float32 and info["p"].dtype == torch.float32
    for key in ("lambdas", "p", "log_p", "expected_steps"):
        assert torch.isfinite(info[key]).all(), (key, info[key])
    assert (info["p"] >= 0).all()
    assert (info["p"].sum(-1) - 1).abs().max().item() < 1e-6
    target = torch.randn(out.shape[:-1], generator=torch.Generator().manual_seed(1))
    rec = (info["p"] * (out.sum(-1) - target) ** 2).sum(-1)
    loss = (rec + 0.01 * regulariser(info["log_p"], 0.2)).mean() + 0.1 * state.pow(2).sum()
    assert torch.isfinite(loss)
    loss.backward()
    for name, prm in net.named_parameters():
        assert prm.grad is not None and torch.isfinite(prm.grad).all(), name
    return out, info


@pytest.mark.parametrize("bias", [60.0, -60.0])
def test_saturated_halting_logits(bias):
    net = _float32_net(seed=5)
    with torch.no_grad():
        net.halting.weight.zero_()
        net.halting.bias.fill_(bias)
    x = torch.randn(BATCH, 3, FEATURES)
    _, info = _extreme_loss_checks(net, x)
    if bias > 0:
        assert (info["p"][..., 0] > 1 - 1e-6).all()
        assert (info["halting_step"] == 1).all()
        torch.testing.assert_close(info["expected_steps"], torch.ones(BATCH, 3))
    else:
        assert (info["p"][..., -1] > 1 - 1e-6).all()  # nearly all mass at step N
        assert (info["halting_step"] == STEPS).all()
        torch.testing.assert_close(info["expected_steps"], torch.full((BATCH, 3), float(STEPS)))
        # log p^n = logsigmoid(-60) + (n - 1) logsigmoid(60), about -60, for n < N.
        torch.testing.assert_close(
            info["log_p"][..., :-1], torch.full((BATCH, 3, STEPS - 1), -60.0), rtol=1e-4, atol=1e-3
        )


def test_mixed_extreme_halting_logits_match_float64_reference():
    """A large halting weight against a varying output: logits of both signs, tens in size."""
    net = _float32_net(seed=6)
    torch.manual_seed(7)
    with torch.no_grad():
        net.halting.weight.normal_(0, 1.0)
        net.halting.weight.mul_(100.0 / net.halting.weight.abs().sum())
        net.halting.bias.zero_()
    x = 3 * torch.randn(BATCH, 2, FEATURES, generator=torch.Generator().manual_seed(8))
    out, info = _extreme_loss_checks(net, x)
    with torch.no_grad():
        z = net.halting(out).squeeze(-1)[..., :-1]
    assert z.max() > 20 and z.min() < -20  # the setup does reach saturated logits both ways
    # The float32 module against the float64 equations (same weights, same halting draws).
    torch.set_default_dtype(torch.float64)
    net64 = PonderNet(nn.RNNCell(FEATURES + 1, HIDDEN), max_steps=STEPS).double()
    net64.load_state_dict({k: v.double() for k, v in net.state_dict().items()})
    with torch.no_grad():
        ref = reference(net64, x.double(), info["halting_step"])
    torch.testing.assert_close(info["p"].double(), ref["p"], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(info["log_p"].double(), ref["log_p"], rtol=1e-4, atol=1e-3)
    assert torch.isfinite(ref["log_p"]).all()


# ----------------------------------------------------------------------------------------------
# 4. Sampled halting steps follow p
# ----------------------------------------------------------------------------------------------


def test_sampled_halting_steps_follow_p():
    """Two distinct tokens, each repeated 10000 times: each group's halting steps fit its own p
    (chi-square), so the draw is per sample and from p, not from one row's p or an argmax."""
    net = PonderNet(_cell("gru", seed=8), max_steps=STEPS)
    _scramble_halting(net, std=2.0, bias=-1.0, seed=9)
    tokens = torch.randn(2, 1, FEATURES, generator=torch.Generator().manual_seed(17))
    reps = 10000
    x = tokens.repeat_interleave(reps, 0)  # [2 * reps, 1, F]: group 0, then group 1
    with torch.no_grad():
        _, _, info = net(x, generator=torch.Generator().manual_seed(1234))
        hs = info["halting_step"][:, 0]
        ref = reference(net, tokens, torch.ones(2, 1, dtype=torch.long))
    ps = []
    for group in range(2):
        rows = slice(group * reps, (group + 1) * reps)
        ref_p = ref["p"][group, 0]
        torch.testing.assert_close(info["p"][rows, 0], ref_p.expand(reps, STEPS))
        ps.append(ref_p)
    # The setup: both p's spread over all steps (expected counts >= 50) and clearly different.
    assert min(p.min().item() for p in ps) > 0.005
    assert (ps[0] - ps[1]).abs().sum().item() > 0.2
    for group in range(2):
        h = hs[group * reps : (group + 1) * reps]
        assert h.min() >= 1 and h.max() <= STEPS
        counts = torch.bincount(h - 1, minlength=STEPS).numpy()
        expected = (ps[group] * reps).numpy()
        expected = expected * counts.sum() / expected.sum()
        fit = stats.chisquare(counts, expected)
        assert fit.pvalue > 1e-3, (group, counts, expected)
        # ... and not the other group's p
        other = (ps[1 - group] * reps).numpy()
        assert stats.chisquare(counts, other * counts.sum() / other.sum()).pvalue < 1e-6


def test_halting_steps_are_deterministic_per_generator_seed():
    net = PonderNet(_cell("rnn", seed=10), max_steps=STEPS)
    _scramble_halting(net, std=1.0, bias=-0.5, seed=11)
    x = torch.randn(200, 2, FEATURES, generator=torch.Generator().manual_seed(18))
    with torch.no_grad():
        a = net(x, generator=torch.Generator().manual_seed(42))
        b = net(x, generator=torch.Generator().manual_seed(42))
        c = net(x, generator=torch.Generator().manual_seed(43))
    assert torch.equal(a[2]["halting_step"], b[2]["halting_step"])
    torch.testing.assert_close(a[0], b[0])
    assert not torch.equal(a[2]["halting_step"], c[2]["halting_step"])
    # T = 1 outputs and p do not depend on the draw at all.
    torch.testing.assert_close(a[2]["p"][:, 0], c[2]["p"][:, 0])
    # generator=None uses torch's default RNG: reproducible under torch.manual_seed.
    with torch.no_grad():
        torch.manual_seed(5)
        d = net(x)
        torch.manual_seed(5)
        e = net(x)
    assert torch.equal(d[2]["halting_step"], e[2]["halting_step"])
    assert d[2]["halting_step"].unique().numel() > 1


# ----------------------------------------------------------------------------------------------
# 5. Custom cells, in PonderNet and in ACT
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("time", [1, 3])
def test_pondernet_custom_tensor_state_cell(time):
    net = PonderNet(_custom("lngru"), max_steps=STEPS)
    _scramble_halting(net, std=2.0, bias=0.0, seed=12)
    x = torch.randn(BATCH, time, FEATURES, generator=torch.Generator().manual_seed(19))
    _, state, info = _check_against_reference(net, x)  # initial state None: zeros [B, hidden]
    assert isinstance(state, torch.Tensor) and state.shape == (BATCH, HIDDEN)
    if time > 1:
        assert (info["halting_step"][:, :-1] < STEPS).any()


def test_pondernet_custom_tuple_state_cell():
    net = PonderNet(_custom("memory", seed=1), max_steps=5)
    _scramble_halting(net, std=1.5, bias=0.0, seed=13)
    x = torch.randn(BATCH, 3, FEATURES, generator=torch.Generator().manual_seed(20))
    state0 = _random_state(net.cell, BATCH)
    _, state, info = _check_against_reference(net, x, state0, generator_seed=2)
    assert isinstance(state, tuple) and len(state) == 2
    assert (info["halting_step"][:, :-1] < 5).any()


def _check_act(act, x, state=None):
    out, s_out, info = act(x, state, return_probs=True)
    ref_out, ref_state, ref_n, ref_r, ref_p = act_reference(act, x, state)
    torch.testing.assert_close(out, ref_out)
    _assert_state_close(s_out, ref_state)
    assert torch.equal(info["steps"], ref_n)
    torch.testing.assert_close(info["remainder"], ref_r)
    torch.testing.assert_close(info["ponder_cost"], ref_n + ref_r)
    for b in range(x.shape[0]):
        for t in range(x.shape[1]):
            n = int(ref_n[b, t])
            torch.testing.assert_close(info["probs"][b, t, :n], torch.stack(ref_p[b][t]))
            assert (info["probs"][b, t, n:] == 0).all()
    assert ref_n.min() < ref_n.max()  # samples do ponder for different numbers of steps
    params = list(act.parameters())
    loss = (out * _weights(out.shape, 300)).sum() + 0.1 * info["ponder_cost"].sum()
    loss = loss + _state_term(s_out, 400)
    ref_loss = (ref_out * _weights(ref_out.shape, 300)).sum() + 0.1 * (ref_n + ref_r).sum()
    ref_loss = ref_loss + _state_term(ref_state, 400)
    for (name, _), g, ref_g in zip(
        act.named_parameters(),
        torch.autograd.grad(loss, params),
        torch.autograd.grad(ref_loss, params),
        strict=True,
    ):
        torch.testing.assert_close(g, ref_g, msg=lambda m, k=name: f"grad {k}: {m}")


def test_act_custom_tensor_state_cell():
    act = ACT(_custom("lngru", seed=2), epsilon=0.01, max_steps=8, halting_bias=1.0)
    assert act.halting.bias.item() == 1.0
    torch.manual_seed(14)
    with torch.no_grad():
        act.halting.weight.normal_(0, 1.5)
    x = torch.randn(5, 3, FEATURES, generator=torch.Generator().manual_seed(21))
    _check_act(act, x)  # initial state None: zeros [B, hidden]


def test_act_custom_tuple_state_cell():
    """A tuple-state custom cell in ACT: every part of the state is the p-weighted mean."""
    act = ACT(_custom("memory", seed=3), epsilon=0.01, max_steps=8, halting_bias=1.0)
    torch.manual_seed(15)
    with torch.no_grad():
        act.halting.weight.normal_(0, 1.5)
    x = torch.randn(5, 3, FEATURES, generator=torch.Generator().manual_seed(22))
    _check_act(act, x, _random_state(act.cell, 5, seed=23))


# ----------------------------------------------------------------------------------------------
# 6. Errors
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("max_steps", [0, -2])
def test_rejects_bad_max_steps(max_steps):
    with pytest.raises(ValueError):
        PonderNet(_cell("rnn"), max_steps=max_steps)


BAD_SHAPES = [(BATCH, FEATURES), (BATCH, 2, FEATURES + 1), (BATCH, 2, FEATURES - 1), (2, 2, 1, 5)]


@pytest.mark.parametrize("shape", BAD_SHAPES)
def test_rejects_bad_input_shape(shape):
    net = PonderNet(_cell("gru"), max_steps=3)
    with pytest.raises(ValueError):
        net(torch.randn(*shape))
