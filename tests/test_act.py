"""ACT against Graves's equations, computed independently one sample and one step at a time."""

import pytest
import torch
from cells import torch_cell
from torch import nn

from ponder import ACT

pytestmark = pytest.mark.usefixtures("float64")  # exact comparisons (conftest.py)


_cell = torch_cell


def reference(act: ACT, x: torch.Tensor):
    """Graves 2016, literally: a Python loop over samples, tokens and ponder steps."""
    cell, eps, m = act.cell, act.epsilon, act.max_steps
    lstm = isinstance(cell, nn.LSTMCell)
    outs, steps, rems, probs = [], [], [], []
    for b in range(x.shape[0]):
        h = torch.zeros(1, act.hidden_size)
        s = (h, h.clone()) if lstm else h
        o_b, n_b, r_b, p_b = [], [], [], []
        for t in range(x.shape[1]):
            hs, states, ys = [], [], []
            for n in range(1, m + 1):
                inp = torch.cat([torch.tensor([[1.0 if n == 1 else 0.0]]), x[b : b + 1, t]], 1)
                s = cell(inp, s)
                y = s[0] if lstm else s
                hs.append(torch.sigmoid(act.halting(y))[0, 0])
                states.append(s)
                ys.append(y)
                if sum(hs).item() >= 1 - eps or n == m:
                    break
            big_n = len(hs)
            r = 1 - sum(hs[:-1], torch.tensor(0.0))
            p = hs[:-1] + [r]
            if lstm:
                s = tuple(
                    sum(pi * st[i] for pi, st in zip(p, states, strict=True)) for i in range(2)
                )
            else:
                s = sum(pi * st for pi, st in zip(p, states, strict=True))
            o_b.append(sum(pi * yi for pi, yi in zip(p, ys, strict=True)))
            n_b.append(big_n)
            r_b.append(r)
            p_b.append(p)
        outs.append(torch.cat(o_b, 0))
        steps.append(n_b)
        rems.append(r_b)
        probs.append(p_b)
    rems = torch.stack([torch.stack(r_b) for r_b in rems])
    return torch.stack(outs), torch.tensor(steps), rems, probs


@pytest.mark.parametrize("kind", ["rnn", "gru", "lstm"])
@pytest.mark.parametrize("bias", [1.0, -2.0])
def test_matches_reference_equations(kind, bias):
    torch.manual_seed(1)
    act = ACT(_cell(kind, 3, 6), epsilon=0.01, max_steps=7, halting_bias=bias)
    with torch.no_grad():
        act.halting.weight.normal_(0, 1.0)
    x = torch.randn(5, 4, 3)
    out, state, info = act(x, return_probs=True)
    ref_out, ref_n, ref_r, ref_p = reference(act, x)
    torch.testing.assert_close(out, ref_out)
    assert torch.equal(info["steps"], ref_n)
    torch.testing.assert_close(info["remainder"], ref_r)
    torch.testing.assert_close(info["ponder_cost"], ref_n + ref_r)
    for b in range(5):
        for t in range(4):
            n = ref_n[b, t]
            torch.testing.assert_close(info["probs"][b, t, :n], torch.stack(ref_p[b][t]))
            assert (info["probs"][b, t, n:] == 0).all()
    # The last state is the p-weighted mean of the last token's intermediate states.
    last_h = state[0] if kind == "lstm" else state
    torch.testing.assert_close(last_h, ref_out[:, -1])
    assert info["steps"].dtype == torch.long and info["steps"].shape == (5, 4)
    assert not (info["steps"] == 1).all() and not (info["steps"] == 7).all()
    # The gradients too: through the outputs, and through R(t) only for the ponder cost.
    params = list(act.parameters())
    loss = out.pow(2).sum() + 0.1 * info["ponder_cost"].sum()
    ref_loss = ref_out.pow(2).sum() + 0.1 * (ref_n + ref_r).sum()
    for g, ref_g in zip(
        torch.autograd.grad(loss, params), torch.autograd.grad(ref_loss, params), strict=True
    ):
        torch.testing.assert_close(g, ref_g)


def test_probabilities_sum_to_one_and_cap():
    torch.manual_seed(2)
    act = ACT(_cell("rnn", 2, 8), max_steps=4, halting_bias=-3.0)  # h small: most hit the cap
    with torch.no_grad():
        act.halting.weight.normal_(0, 2.0)
    _, _, info = act(torch.randn(16, 6, 2), return_probs=True)
    torch.testing.assert_close(info["probs"].sum(-1), torch.ones(16, 6))
    assert (info["steps"] <= 4).all() and (info["steps"] == 4).any()
    assert (info["probs"] >= 0).all()
    capped = info["steps"] == 4
    assert (info["remainder"][capped] > 0.01).all()  # R = 1 - sum h > eps at the cap


def test_hand_set_halting_unit_gives_exact_steps():
    """With W_h = 0 every h is sigmoid(b): N = first n with n * h >= 1 - eps."""
    act = ACT(_cell("rnn", 3, 5), epsilon=0.01, max_steps=100)
    with torch.no_grad():
        act.halting.weight.zero_()
    x = torch.randn(4, 3, 3)
    for bias, want_n in [(10.0, 1), (0.0, 2), (-1.0, 4), (-5.0, 100)]:
        with torch.no_grad():
            act.halting.bias.fill_(bias)
        h = torch.sigmoid(torch.tensor(bias)).item()
        _, _, info = act(x)
        assert (info["steps"] == want_n).all(), (bias, info["steps"])
        r = 1 - (want_n - 1) * h
        torch.testing.assert_close(info["remainder"], torch.full((4, 3), r))
    # halting_bias=1 (Graves's initialisation): h = sigmoid(1) = 0.731, N = 2, R = 0.269.
    with torch.no_grad():
        act.halting.bias.fill_(1.0)
    _, _, info = act(x)
    assert (info["steps"] == 2).all()


def test_halted_sample_stays_unchanged_while_others_continue():
    """Hand-set cell: y_0 = tanh(5 x) decides halting, y_1 keeps changing every step."""
    cell = nn.RNNCell(2, 2)
    act = ACT(cell, epsilon=0.01, max_steps=9)
    with torch.no_grad():
        cell.weight_ih.copy_(torch.tensor([[0.0, 5.0], [0.0, 0.0]]))
        cell.weight_hh.copy_(torch.tensor([[0.0, 0.0], [0.0, 1.0]]))
        cell.bias_ih.copy_(torch.tensor([0.0, 0.5]))
        cell.bias_hh.zero_()
        act.halting.weight.copy_(torch.tensor([[10.0, 0.0]]))
        act.halting.bias.fill_(-5.0)
    x = torch.tensor([[[1.0]], [[-1.0]]])  # sample 0 halts at once (h = 0.993), sample 1 never
    out, state, info = act(x, return_probs=True)
    assert info["steps"].tolist() == [[1], [9]]
    step1 = torch.tanh(torch.tensor([5.0, 0.5]))  # s^1 of sample 0, with p^1 = R = 1
    torch.testing.assert_close(out[0, 0], step1)
    torch.testing.assert_close(state[0], step1)
    assert info["remainder"][0, 0] == 1.0 and (info["probs"][0, 0, 1:] == 0).all()
    # Sample 1's state did change over its 9 steps, so sample 0 was held fixed, not just equal.
    assert not torch.allclose(out[1, 0, 1], step1[1])
    alone, _, _ = act(x[:1])
    torch.testing.assert_close(alone, out[:1])


def test_batch_composition_does_not_change_a_sample():
    """Per-sample halting: a sample's result must not depend on how long others ponder."""
    torch.manual_seed(4)
    act = ACT(_cell("lstm", 3, 6), max_steps=30, halting_bias=0.0)
    with torch.no_grad():
        act.halting.weight.normal_(0, 3.0)
    x = torch.randn(12, 5, 3)
    out, (h, c), info = act(x)
    assert info["steps"].min() < info["steps"].max()  # samples do differ in ponder length
    for b in [0, 5, 11]:
        o1, (h1, c1), i1 = act(x[b : b + 1])
        torch.testing.assert_close(out[b : b + 1], o1)
        torch.testing.assert_close(c[b : b + 1], c1)
        assert torch.equal(info["steps"][b : b + 1], i1["steps"])


def test_ponder_gradient_reaches_halting_unit_only_through_r():
    """d(sum rho)/d b_h equals d(sum R)/d b_h, and the last h of each token gets no gradient."""
    torch.manual_seed(5)
    act = ACT(_cell("rnn", 2, 4), max_steps=10, halting_bias=0.0)
    with torch.no_grad():
        act.halting.weight.normal_(0, 1.0)
    x = torch.randn(6, 3, 2)
    _, _, info = act(x)
    g_cost = torch.autograd.grad(info["ponder_cost"].sum(), act.halting.bias, retain_graph=True)
    g_rem = torch.autograd.grad(info["remainder"].sum(), act.halting.bias)
    torch.testing.assert_close(g_cost[0], g_rem[0])
    assert g_cost[0].abs().item() > 0
    assert not info["steps"].requires_grad

    # One token, single step N = 1: R = 1 exactly, so no gradient reaches the halting unit.
    with torch.no_grad():
        act.halting.weight.zero_()
        act.halting.bias.fill_(10.0)
    _, _, info = act(x[:, :1])
    assert (info["steps"] == 1).all()
    # rho = 1 + 1: the only h is the last one, so no gradient reaches the halting unit.
    if info["ponder_cost"].requires_grad:  # (the tanh RNN's hand-written backward)
        grads = torch.autograd.grad(
            info["ponder_cost"].sum(), [act.halting.weight, act.halting.bias], allow_unused=True
        )
        assert all(g is None or not g.any() for g in grads)


def test_remainder_gradient_is_minus_sum_of_earlier_h_gradients():
    """For W_h = 0, h = sigmoid(b) for every step: dR/db = -(N - 1) sigma'(b)."""
    act = ACT(_cell("rnn", 2, 3), max_steps=100)
    with torch.no_grad():
        act.halting.weight.zero_()
        act.halting.bias.fill_(-1.0)  # N = 4
    _, _, info = act(torch.randn(1, 1, 2))
    (g,) = torch.autograd.grad(info["remainder"].sum(), act.halting.bias)
    s = torch.sigmoid(torch.tensor(-1.0))
    torch.testing.assert_close(g, torch.tensor([-3 * s * (1 - s)]))


def test_state_is_passed_on_and_accepted():
    torch.manual_seed(6)
    act = ACT(_cell("lstm", 2, 4))
    x = torch.randn(3, 6, 2)
    out_all, state_all, _ = act(x)
    out_a, state_a, _ = act(x[:, :2])
    out_b, state_b, _ = act(x[:, 2:], state_a)
    torch.testing.assert_close(torch.cat([out_a, out_b], 1), out_all)
    torch.testing.assert_close(state_b[1], state_all[1])


def test_rejects_bad_arguments():
    with pytest.raises(ValueError, match="epsilon"):
        ACT(_cell("rnn", 2, 3), epsilon=1.0)
    with pytest.raises(ValueError, match="max_steps"):
        ACT(_cell("rnn", 2, 3), max_steps=0)
    with pytest.raises(TypeError):
        ACT(nn.Linear(3, 3))
    with pytest.raises(ValueError, match="shape"):
        ACT(_cell("rnn", 2, 3))(torch.randn(2, 3, 5))
