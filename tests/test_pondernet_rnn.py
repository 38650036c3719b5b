"""The tanh RNN's PonderNet token with its hand-written backward against autograd through the
same equations, and against finite differences."""

import pytest
import torch

from ponder.kernels.pondernet_rnn import tanh_pondernet

pytestmark = pytest.mark.usefixtures("float64")  # exact comparisons (conftest.py)


def autograd_pondernet(g1, g, h0, w_hh, v, c, steps):
    """h^n = tanh(g^n + h^{n-1} W^T), z^n = V h^n + c, through autograd."""
    h, states = h0, []
    for n in range(steps):
        gi = g1 if n == 0 else g
        h = torch.tanh(gi if h is None else torch.baddbmm(gi, h, w_hh.transpose(1, 2)))
        states.append(h)
    ys = torch.stack(states, 2)  # [K, B, N, H]
    z = torch.einsum("kbnh,kph->kbnp", ys, v) + c[:, None, None, :]
    return z, ys


def _inputs(k=3, b=4, h=5, p=3, seed=0, zero_state=False):
    gen = torch.Generator().manual_seed(seed)

    def rand(*shape, scale=1.0):
        return (torch.randn(*shape, generator=gen) * scale).requires_grad_()

    return dict(
        g1=rand(k, b, h), g=rand(k, b, h), h0=None if zero_state else rand(k, b, h, scale=0.5),
        w_hh=rand(k, h, h, scale=0.5), v=rand(k, p, h), c=rand(k, p),
    )  # fmt: skip


def _loss(z, ys, seed=1):
    """Every step's z and every state count, as PonderNet's loss and a next token's start do."""
    gen = torch.Generator().manual_seed(seed)
    return (z * torch.randn(z.shape, generator=gen)).sum() + (
        ys * torch.randn(ys.shape, generator=gen)
    ).sum()


@pytest.mark.parametrize("steps", [1, 2, 6])
@pytest.mark.parametrize("zero_state", [False, True])
def test_values_and_gradients_equal_autograd(steps, zero_state, tanh_form):
    inputs = _inputs(zero_state=zero_state)
    names = [n for n, t in inputs.items() if t is not None]
    args = list(inputs.values())
    got = tanh_pondernet(*args, steps)
    want = autograd_pondernet(*args, steps)
    for a, b in zip(got, want, strict=True):
        assert a.shape == b.shape
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
    tensors = [inputs[n] for n in names]
    got_grads = torch.autograd.grad(_loss(*got), tensors, materialize_grads=True)
    want_grads = torch.autograd.grad(_loss(*want), tensors, materialize_grads=True)
    for name, a, b in zip(names, got_grads, want_grads, strict=True):  # (g is unused for N = 1)
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12, msg=name)


def test_gradients_equal_finite_differences():
    inputs = _inputs(k=2, b=3, h=3, p=2, seed=4)
    args = tuple(inputs.values())
    assert torch.autograd.gradcheck(lambda *a: tanh_pondernet(*a, 4), args)


def test_a_last_token_keeps_no_states_and_its_gradients_are_still_exact():
    inputs = _inputs(zero_state=True)
    z, states = tanh_pondernet(*inputs.values(), 5, keep_states=False)
    assert states is None
    want, _ = autograd_pondernet(*inputs.values(), 5)
    tensors = [t for t in inputs.values() if t is not None]
    got = torch.autograd.grad(z.square().sum(), tensors)
    expected = torch.autograd.grad(want.square().sum(), tensors)
    for a, b in zip(got, expected, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
