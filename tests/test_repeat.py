"""Repeat-RNN against a manual loop over repeats, and rho = 1 against the plain RNN."""

import pytest
import torch
from torch import nn

from ponder import Repeat
from ponder.methods.repeat import repeat_tokens


def _manual(rnn: nn.Module, x: torch.Tensor, rho: int, state=None):
    """Feed each token rho times, one step at a time, flag 1 on the first repeat."""
    outs = []
    for t in range(x.shape[1]):
        for r in range(rho):
            flag = torch.full((x.shape[0], 1, 1), 1.0 if r == 0 else 0.0)
            out, state = rnn(torch.cat([flag, x[:, t : t + 1]], -1), state)
        outs.append(out)
    return torch.cat(outs, 1), state


@pytest.mark.parametrize("kind", [nn.RNN, nn.GRU, nn.LSTM])
@pytest.mark.parametrize("rho", [1, 2, 5])
def test_equals_manual_loop(kind, rho):
    torch.manual_seed(rho)
    rnn = kind(4, 6, batch_first=True)
    rep = Repeat(rnn, rho)
    x = torch.randn(3, 5, 3)
    out, state = rep(x)
    want_out, want_state = _manual(rnn, x, rho)
    assert out.shape == (3, 5, 6)
    torch.testing.assert_close(out, want_out)
    if kind is nn.LSTM:
        for a, b in zip(state, want_state, strict=True):
            torch.testing.assert_close(a, b)
    else:
        torch.testing.assert_close(state, want_state)


def test_rho_one_is_plain_rnn_with_flag_column():
    torch.manual_seed(0)
    rnn = nn.RNN(3, 5, batch_first=True)
    x = torch.randn(4, 7, 2)
    out, h = Repeat(rnn, 1)(x)
    want, want_h = rnn(torch.cat([torch.ones(4, 7, 1), x], -1))
    torch.testing.assert_close(out, want)
    torch.testing.assert_close(h, want_h)


def test_repeats_differ_and_state_is_passed():
    torch.manual_seed(1)
    rnn = nn.GRU(3, 4, batch_first=True)
    x = torch.randn(2, 6, 2)
    out2, _ = Repeat(rnn, 2)(x)
    out3, _ = Repeat(rnn, 3)(x)
    assert not torch.allclose(out2, out3)
    rep = Repeat(rnn, 3)
    a, s = rep(x[:, :4])
    b, _ = rep(x[:, 4:], s)
    torch.testing.assert_close(torch.cat([a, b], 1), out3)


def test_repeat_tokens_layout():
    x = torch.arange(6.0).view(1, 3, 2)
    r = repeat_tokens(x, 2)
    assert r.shape == (1, 6, 3)
    assert r[0, :, 0].tolist() == [1, 0, 1, 0, 1, 0]
    assert r[0, :, 1].tolist() == [0, 0, 2, 2, 4, 4]


def test_rejects_bad_arguments():
    with pytest.raises(ValueError, match="rho"):
        Repeat(nn.RNN(3, 4, batch_first=True), 0)
    with pytest.raises(ValueError, match="batch_first"):
        Repeat(nn.RNN(3, 4), 2)
    with pytest.raises(TypeError):
        Repeat(nn.RNNCell(3, 4), 2)
