"""Repeat-RNN's LSTM recurrence with its hand-written backward against autograd through PyTorch's
own LSTM cell, and against finite differences (``test_ensemble.py`` checks the ensemble that
uses it against its member networks)."""

import pytest
import torch

from ponder.kernels.repeat_lstm import repeat_lstm

pytestmark = pytest.mark.usefixtures("float64")  # exact comparisons (conftest.py)


def _inputs(k=3, b=4, t=3, h=5, seed=0):
    gen = torch.Generator().manual_seed(seed)

    def rand(*shape, scale=1.0):
        return (torch.randn(*shape, generator=gen) * scale).requires_grad_()

    return rand(k, b, t, 4 * h), rand(k, b, t, 4 * h), rand(k, 4 * h, h, scale=0.5)


def autograd_repeat(g1, g, w_hh, rho):
    """The same sequence through ``nn.LSTMCell``'s own equations (torch.lstm_cell), per run."""
    k, b, t, width = g1.shape
    hidden = width // 4
    outs = []
    for r in range(k):
        h = c = g1.new_zeros(b, hidden)
        ys = []
        for n in range(t * rho):
            token, repeat = divmod(n, rho)
            gi = (g1 if repeat == 0 else g)[r, :, token]
            # lstm_cell(x, (h, c), w_ih, w_hh, b_ih): x = I (identity input weight) carries gi
            h, c = torch.lstm_cell(gi, (h, c), torch.eye(width), w_hh[r], None, None)
            if repeat == rho - 1:
                ys.append(h)
        outs.append(torch.stack(ys, 1))
    return torch.stack(outs)


@pytest.mark.parametrize("rho", [1, 3])
def test_values_and_gradients_equal_autograd_through_pytorchs_lstm(rho, tanh_form):
    inputs = _inputs()
    got = repeat_lstm(*inputs, rho)
    want = autograd_repeat(*inputs, rho)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    weights = torch.randn(got.shape, generator=torch.Generator().manual_seed(1))
    got_grads = torch.autograd.grad((got * weights).sum(), inputs)
    want_grads = torch.autograd.grad(
        (want * weights).sum(), inputs, allow_unused=True, materialize_grads=True
    )
    for a, b in zip(got_grads, want_grads, strict=True):
        assert a.abs().sum() > 0 or rho == 1  # (g is unused at rho = 1)
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


def test_gradients_equal_finite_differences(tanh_form):
    g1, g, w_hh = _inputs(k=2, b=3, t=2, h=3, seed=2)
    assert torch.autograd.gradcheck(lambda *a: repeat_lstm(*a, 2), (g1, g, w_hh))
