"""The tanh RNN's ACT loop with its hand-written backward against autograd through the same
loop, and against finite differences."""

import pytest
import torch

from ponder.kernels import act_rnn as fused
from ponder.kernels.act_rnn import tanh_act
from ponder.methods import act

pytestmark = pytest.mark.usefixtures("float64")  # exact comparisons (conftest.py)

EPS = 0.01


def autograd_act(g1, g, h0, w_hh, w_halt, b_halt, epsilon, max_steps):
    """The same token through ``act.ponder_token`` with autograd's backward."""

    def at(t, members, rows=None):
        return act.take_rows(t if members is None else t[members], rows)

    def step(n, s, rows, members):
        gi = at(g1 if n == 1 else g, members, rows)
        return torch.tanh(torch.baddbmm(gi, s, at(w_hh, members).transpose(1, 2)))

    def halt(y, members):
        z = torch.baddbmm(at(b_halt, members).unsqueeze(1), y, at(w_halt, members).transpose(1, 2))
        return torch.sigmoid(z).squeeze(-1)

    y, _, steps, remainder, _, _ = act.ponder_token(step, halt, h0, epsilon, max_steps, probs=False)
    return y, steps, remainder


def _inputs(k=4, b=9, h=5, biases=(5.0, -2.0, 0.5, 0.0), seed=0):
    """Runs that ponder very differently: bias 5 halts every sample at once, -2 about 9 steps,
    the last run's halting unit reads y, so its samples halt at different steps."""
    gen = torch.Generator().manual_seed(seed)

    def rand(*shape, scale=1.0):
        return (torch.randn(*shape, generator=gen) * scale).requires_grad_()

    w_halt = torch.zeros(k, 1, h)
    w_halt[-1] = torch.randn(1, h, generator=gen) * 2.0
    return dict(
        g1=rand(k, b, h), g=rand(k, b, h), h0=rand(k, b, h, scale=0.5),
        w_hh=rand(k, h, h, scale=0.5), w_halt=w_halt.requires_grad_(),
        b_halt=torch.tensor(biases[:k]).view(k, 1).requires_grad_(),
    )  # fmt: skip


def _run(fn, inputs, max_steps, tokens=1, seed=1):
    """``tokens`` tokens chained through the state, then a loss of every output and R."""
    gen = torch.Generator().manual_seed(seed)
    names = ("g1", "g", "h0", "w_hh", "w_halt", "b_halt")
    g1, g, h, w_hh, w_halt, b_halt = (inputs[n] for n in names)
    loss, outs = 0.0, []
    for _ in range(tokens):
        h, steps, rem = fn(g1, g, h, w_hh, w_halt, b_halt, EPS, max_steps)
        loss = loss + (h * torch.randn(h.shape, generator=gen)).sum()
        loss = loss + (rem * torch.randn(rem.shape, generator=gen)).sum()
        outs += [h, steps, rem]
    grads = torch.autograd.grad(loss, [inputs[n] for n in names])
    return outs, grads


@pytest.mark.parametrize("tokens", [1, 3])
@pytest.mark.parametrize("max_steps", [12, 4])  # 4: the pondering run hits the cap
def test_values_and_gradients_equal_autograd_through_the_same_loop(tokens, max_steps, tanh_form):
    inputs = _inputs()
    got, got_grads = _run(tanh_act, inputs, max_steps, tokens)
    want, want_grads = _run(autograd_act, inputs, max_steps, tokens)
    steps = got[1]
    assert steps[0].eq(1).all() and steps[1].eq(min(9, max_steps)).all()
    assert len(set(steps[3].tolist())) > 1  # samples of one run halt at different steps
    for a, b in zip(got, want, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
    for a, b in zip(got_grads, want_grads, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


def test_gradients_equal_finite_differences(tanh_form):
    inputs = _inputs(k=3, b=4, h=3, biases=(5.0, -1.0, 0.3), seed=3)

    def f(*args):
        y, _, rem = tanh_act(*args, EPS, 6)
        return y, rem

    args = tuple(inputs[n] for n in ("g1", "g", "h0", "w_hh", "w_halt", "b_halt"))
    assert torch.autograd.gradcheck(f, args)


def test_a_zero_state_that_needs_no_gradient_gets_none():
    inputs = _inputs()
    h0 = inputs["h0"].detach()
    y, _, rem = tanh_act(inputs["g1"], inputs["g"], h0, inputs["w_hh"], inputs["w_halt"],
                         inputs["b_halt"], EPS, 12)  # fmt: skip
    (y.sum() + rem.sum()).backward()
    assert h0.grad is None
    assert inputs["w_hh"].grad.abs().sum() > 0 and inputs["b_halt"].grad.abs().sum() > 0


def test_the_loop_ends_when_every_sample_has_halted():
    """One run keeps going while three halt at once; steps are counted per sample."""
    inputs = _inputs(biases=(5.0, 5.0, -2.0, 5.0))
    with torch.no_grad():
        inputs["w_halt"].zero_()
    y, steps, rem = tanh_act(*(inputs[n] for n in ("g1", "g", "h0", "w_hh", "w_halt", "b_halt")),
                             EPS, 100)  # fmt: skip
    assert steps[[0, 1, 3]].eq(1).all() and steps[2].eq(9).all()
    s = torch.sigmoid(torch.tensor(-2.0))
    torch.testing.assert_close(rem[2], (1 - 8 * s).expand(9))
    torch.testing.assert_close(rem[[0, 1, 3]], torch.ones(3, 9))


def test_a_ponder_step_computes_the_rows_still_running_not_each_run_padded(monkeypatch):
    """Run 0's 7 samples ponder 9 steps; runs 1 and 2 each have one sample that ponders to the
    cap M = 12 while their 6 others halt at once, as do all of run 3's. Padding each run's rows
    to the longest run's would compute 4 x 7 rows on every step; the ragged set computes the
    rows still running, within a factor of two."""
    k, b, h = 4, 7, 5
    gen = torch.Generator().manual_seed(0)
    g = torch.zeros(k, b, h)
    g[:, :, 0] = 5.0  # h^n_0 near 1: a halting unit that reads it, w = (10, 0, ...), halts
    g[1:3, 0, 0] = -5.0  # and near -1 it ponders: one such sample in runs 1 and 2
    w_halt = torch.zeros(k, 1, h)
    w_halt[1:, 0, 0] = 10.0
    b_halt = torch.tensor([-2.0, 0.0, 0.0, 0.0]).view(k, 1)  # run 0: sigmoid(-2) per step
    w_hh = torch.randn(k, h, h, generator=gen) * 0.05
    computed = []

    def cell_counted(rows, *args):
        computed.append([(r, end - start) for r, start, end in rows.blocks])
        return real_cell(rows, *args)

    real_cell = fused._cell
    monkeypatch.setattr(fused, "_cell", cell_counted)
    inputs = [g.clone(), g.clone(), torch.zeros(k, b, h), w_hh, w_halt, b_halt]
    for t in inputs:
        t.requires_grad_()
    y, steps, rem = tanh_act(*inputs, EPS, 12)
    assert steps[0].eq(9).all() and steps[3].eq(1).all()
    assert steps[1].tolist() == steps[2].tolist() == [12] + [1] * 6
    everything = [(r, 7) for r in range(4)]
    assert computed == [everything] + [[(0, 7), (1, 1), (2, 1)]] * 8 + [[(1, 1), (2, 1)]] * 3
    # and the values and gradients are autograd's through act.ponder_token
    monkeypatch.undo()
    loss = lambda out: out[0].square().sum() + out[2].sum()  # noqa: E731
    got = torch.autograd.grad(loss((y, steps, rem)), inputs)
    want = torch.autograd.grad(loss(autograd_act(*inputs, EPS, 12)), inputs)
    for a, b_ in zip(got, want, strict=True):
        torch.testing.assert_close(a, b_, rtol=1e-10, atol=1e-12)
