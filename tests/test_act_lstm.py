"""The LSTM's ACT loop with its hand-written backward against autograd through the same loop,
against finite differences, and in the modules that use it."""

import pytest
import torch
from torch import nn

from ponder.kernels import act_lstm as fused
from ponder.kernels.act_lstm import lstm_act
from ponder.methods import act

pytestmark = pytest.mark.usefixtures("float64")  # exact comparisons (conftest.py)

EPS = 0.01
NAMES = ("g1", "g", "h0", "c0", "w_hh", "w_halt", "b_halt")


def autograd_act(g1, g, h0, c0, w_hh, w_halt, b_halt, epsilon, max_steps):
    """The same token through ``act.ponder_token`` and PyTorch's LSTM equations, with
    autograd's backward."""

    def at(t, members, rows=None):
        return act.take_rows(t if members is None else t[members], rows)

    def step(n, s, rows, members):
        h, c = s
        a = torch.baddbmm(at(g1 if n == 1 else g, members, rows), h, at(w_hh, members).mT)
        i, f, u, o = a.chunk(4, -1)
        c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(u)
        return torch.sigmoid(o) * torch.tanh(c), c

    def halt(y, members):
        z = torch.baddbmm(at(b_halt, members).unsqueeze(1), y, at(w_halt, members).mT)
        return torch.sigmoid(z).squeeze(-1)

    y, s, steps, remainder, _, _ = act.ponder_token(
        step, halt, (h0, c0), epsilon, max_steps, probs=False
    )
    return y, s[1], steps, remainder


def _inputs(k=4, b=9, h=5, biases=(5.0, -2.0, 0.5, 0.0), seed=0):
    """Runs that ponder very differently: bias 5 halts every sample at once, -2 about 9 steps,
    the last run's halting unit reads y, so its samples halt at different steps."""
    gen = torch.Generator().manual_seed(seed)

    def rand(*shape, scale=1.0):
        return (torch.randn(*shape, generator=gen) * scale).requires_grad_()

    w_halt = torch.zeros(k, 1, h)
    w_halt[-1] = torch.randn(1, h, generator=gen) * 4.0
    return dict(
        g1=rand(k, b, 4 * h), g=rand(k, b, 4 * h), h0=rand(k, b, h, scale=0.5),
        c0=rand(k, b, h), w_hh=rand(k, 4 * h, h, scale=0.5), w_halt=w_halt.requires_grad_(),
        b_halt=torch.tensor(biases[:k]).view(k, 1).requires_grad_(),
    )  # fmt: skip


def _run(fn, inputs, max_steps, tokens=1, seed=1):
    """``tokens`` tokens chained through the state, then a loss of every output, c and R."""
    gen = torch.Generator().manual_seed(seed)
    g1, g, h, c, w_hh, w_halt, b_halt = (inputs[n] for n in NAMES)
    loss, outs = 0.0, []
    for _ in range(tokens):
        h, c, steps, rem = fn(g1, g, h, c, w_hh, w_halt, b_halt, EPS, max_steps)
        for t in (h, c, rem):
            loss = loss + (t * torch.randn(t.shape, generator=gen)).sum()
        outs += [h, c, steps, rem]
    grads = torch.autograd.grad(loss, [inputs[n] for n in NAMES])
    return outs, grads


@pytest.mark.parametrize("tokens", [1, 3])
@pytest.mark.parametrize("max_steps", [12, 4])  # 4: the pondering run hits the cap
def test_values_and_gradients_equal_autograd_through_the_same_loop(tokens, max_steps, tanh_form):
    inputs = _inputs()
    got, got_grads = _run(lstm_act, inputs, max_steps, tokens)
    want, want_grads = _run(autograd_act, inputs, max_steps, tokens)
    steps = got[2]
    assert steps[0].eq(1).all() and steps[1].eq(min(9, max_steps)).all()
    assert len(set(steps[3].tolist())) > 1  # samples of one run halt at different steps
    for a, b in zip(got, want, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
    for name, a, b in zip(NAMES, got_grads, want_grads, strict=True):
        assert a.abs().sum() > 0, name
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12, msg=name)


def test_gradients_equal_finite_differences(tanh_form):
    inputs = _inputs(k=3, b=4, h=3, biases=(5.0, -1.0, 0.3), seed=3)

    def f(*args):
        h, c, _, rem = lstm_act(*args, EPS, 6)
        return h, c, rem

    assert torch.autograd.gradcheck(f, tuple(inputs[n] for n in NAMES))


def test_a_zero_state_that_needs_no_gradient_gets_none():
    inputs = _inputs()
    h0, c0 = inputs["h0"].detach(), inputs["c0"].detach()
    args = [inputs[n] for n in NAMES]
    args[2:4] = h0, c0
    h, c, _, rem = lstm_act(*args, EPS, 12)
    (h.sum() + c.sum() + rem.sum()).backward()
    assert h0.grad is None and c0.grad is None
    assert inputs["w_hh"].grad.abs().sum() > 0 and inputs["b_halt"].grad.abs().sum() > 0


def test_a_ponder_step_computes_the_rows_still_running_not_each_run_padded(monkeypatch):
    """Run 0's 7 samples ponder 9 steps; runs 1 and 2 each have one sample that ponders to the
    cap M = 12 while their 6 others halt at once, as do all of run 3's. The ragged set
    computes the rows still running (within a factor of two), not 4 x 7 rows a step."""
    k, b, h = 4, 7, 5
    gen = torch.Generator().manual_seed(0)
    g = torch.zeros(k, b, 4 * h)
    g[:, :, 3 * h] = 8.0  # the output gate of unit 0 open, its cell input near +1 ...
    g[:, :, 2 * h] = 8.0
    g[1:3, 0, 2 * h] = -8.0  # ... or near -1: one such sample in runs 1 and 2
    g[:, :, h] = -8.0  # unit 0 forgets at once, so its h^n_0 keeps its sign
    w_halt = torch.zeros(k, 1, h)
    w_halt[1:, 0, 0] = 20.0  # a halting unit that reads h^n_0: halts near +0.76, not -0.76
    b_halt = torch.tensor([-2.0, 0.0, 0.0, 0.0]).view(k, 1)  # run 0: sigmoid(-2) per step
    w_hh = torch.randn(k, 4 * h, h, generator=gen) * 0.05
    computed = []

    def gates_counted(rows, *args):
        computed.append([(r, end - start) for r, start, end in rows.blocks])
        return real_gates(rows, *args)

    real_gates = fused._gates
    monkeypatch.setattr(fused, "_gates", gates_counted)
    inputs = [g.clone(), g.clone(), torch.zeros(k, b, h), torch.zeros(k, b, h), w_hh]
    inputs += [w_halt, b_halt]
    for t in inputs:
        t.requires_grad_()
    out = lstm_act(*inputs, EPS, 12)
    steps = out[2]
    assert steps[0].eq(9).all() and steps[3].eq(1).all()
    assert steps[1].tolist() == steps[2].tolist() == [12] + [1] * 6
    everything = [(r, 7) for r in range(4)]
    assert computed == [everything] + [[(0, 7), (1, 1), (2, 1)]] * 8 + [[(1, 1), (2, 1)]] * 3
    # and the values and gradients are autograd's through act.ponder_token
    monkeypatch.undo()
    loss = lambda o: o[0].square().sum() + o[1].sum() + o[3].sum()  # noqa: E731
    got = torch.autograd.grad(loss(out), inputs)
    want = torch.autograd.grad(loss(autograd_act(*inputs, EPS, 12)), inputs)
    for a, b_ in zip(got, want, strict=True):
        torch.testing.assert_close(a, b_, rtol=1e-10, atol=1e-12)


def test_the_act_module_with_an_lstm_cell_takes_the_written_out_loop(monkeypatch):
    """``ACT(nn.LSTMCell)`` gives autograd's values and gradients through the loop it uses
    with ``return_probs`` (which keeps ``ponder_token``), and does use the kernel."""
    torch.manual_seed(0)
    core = act.ACT(nn.LSTMCell(4, 6), epsilon=EPS, max_steps=7, halting_bias=-1.0)
    with torch.no_grad():
        core.halting.weight.normal_(0.0, 2.0)
    x = torch.randn(5, 3, 3)
    calls = []
    real = act.lstm_act
    monkeypatch.setattr(act, "lstm_act", lambda *a: calls.append(1) or real(*a))

    def outputs(**kw):
        y, (h, c), info = core(x, **kw)
        loss = y.square().sum() + c.sum() + info["ponder_cost"].sum()
        return (y, c, info["steps"]), torch.autograd.grad(loss, list(core.parameters()))

    got, got_grads = outputs()
    assert len(calls) == 3  # one per token
    want, want_grads = outputs(return_probs=True)
    assert len(calls) == 3
    assert len(set(got[2].flatten().tolist())) > 1
    for a, b in zip(got + got_grads, want + want_grads, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
