"""What the methods share, below them all: the cells they wrap and their state conventions,
the first-step flag, the halting unit, the cell equations over K stacked runs, and the ponder
term's mean over a sequence's own tokens. Nothing here knows a method by name."""

from __future__ import annotations

import torch
from torch import nn

from ..kernels.tanh import tanh

# The cells a task network is built with, by the config's ``cell``: one step (ACT, PonderNet),
# the whole-sequence layer (Repeat and the RNN) and the gates per unit.
CELLS = {"rnn": nn.RNNCell, "gru": nn.GRUCell, "lstm": nn.LSTMCell}
LAYERS = {"rnn": nn.RNN, "gru": nn.GRU, "lstm": nn.LSTM}
GATES = {"rnn": 1, "gru": 3, "lstm": 4}

State = torch.Tensor | tuple[torch.Tensor, ...]


def output_of(state: State) -> torch.Tensor:
    """The cell's output y: h itself, or h of an LSTM's (h, c)."""
    return state[0] if isinstance(state, tuple) else state


def check_cell(owner: str, cell: nn.Module) -> None:
    """A cell must follow ``nn.RNNCell``'s convention: ``cell(x, state) -> state`` with
    ``input_size`` (flag included) and ``hidden_size`` attributes."""
    if not isinstance(cell, nn.Module) or not callable(cell):
        raise TypeError(f"{owner} wraps a recurrent cell module, got {type(cell)!r}")
    for attr in ("input_size", "hidden_size"):
        if not isinstance(getattr(cell, attr, None), int):
            raise TypeError(f"{owner}: the cell {type(cell).__name__} has no int {attr!r}")
    if cell.input_size < 1:
        raise ValueError(f"{owner}: the cell's input_size counts the first-step flag, so >= 1")


def initial_state(cell: nn.Module, x: torch.Tensor) -> State:
    """The zero state of ``cell`` for the batch of ``x``: ``(h, c)`` for an LSTM cell, the
    cell's own ``initial_state(x)`` where it has one, else one ``[batch, hidden]`` tensor."""
    if hasattr(cell, "initial_state"):
        return cell.initial_state(x)
    zeros = x.new_zeros(x.shape[0], cell.hidden_size)
    return (zeros, zeros.clone()) if isinstance(cell, nn.LSTMCell) else zeros


def map_state(fn, *states: State) -> State:
    """Apply ``fn`` to the tensors of one or more states of the same type."""
    if isinstance(states[0], tuple):
        return tuple(fn(*parts) for parts in zip(*states, strict=True))
    return fn(*states)


def flagged(x_t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """x_t^1 and x_t^n (n > 1): the token with the first-step flag (1, then 0) as its first
    column."""
    flag = x_t.new_ones(x_t.shape[0], 1)
    return torch.cat([flag, x_t], 1), torch.cat([flag * 0, x_t], 1)


class Pondering(nn.Module):
    """What ACT and PonderNet share: the wrapped cell, a halting unit over its output (an
    ``nn.Linear(hidden, 1)`` whose bias starts at ``halting_bias``), the most steps per token,
    and the check of their input's shape."""

    def __init__(self, name: str, cell: nn.Module, max_steps: int, halting_bias: float) -> None:
        super().__init__()
        check_cell(name, cell)
        if max_steps < 1:
            raise ValueError(f"max_steps must be >= 1, got {max_steps}")
        self._method = name
        self.cell = cell
        self.max_steps = int(max_steps)
        self.hidden_size = cell.hidden_size
        self.input_size = cell.input_size - 1  # the data's features, without the flag
        self.halting = nn.Linear(cell.hidden_size, 1)
        with torch.no_grad():
            self.halting.bias.fill_(halting_bias)

    def check_input(self, x: torch.Tensor) -> None:
        if x.dim() != 3 or x.shape[-1] != self.input_size:
            raise ValueError(
                f"{self._method} expects x of shape [batch, time, {self.input_size}], "
                f"got {tuple(x.shape)}"
            )


def take_rows(t: torch.Tensor, rows: torch.Tensor | None) -> torch.Tensor:
    """``t [..., B, F]`` at the sample rows ``rows [..., R]`` (all of them for None)."""
    if rows is None:
        return t
    return t.gather(-2, rows.unsqueeze(-1).expand(*rows.shape, t.shape[-1]))


# --------------------------------------------------------------------------------------------
# K stacked runs: every weight carries a leading run dimension K (``ensemble.Ensemble``)


def linear(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per-run ``x @ w.T + b``: x ``[K, ..., I]``, w ``[K, O, I]``, b ``[K, O]``."""
    k = x.shape[0]
    flat = x.reshape(k, -1, x.shape[-1])  # (K, N, I)
    out = torch.baddbmm(b.unsqueeze(1), flat, w.transpose(1, 2))  # (K, N, O)
    return out.reshape(*x.shape[:-1], w.shape[1])


def recur(kind: str, gi: torch.Tensor, h: torch.Tensor, w_hh: torch.Tensor, b_hh, state):
    """One cell step from the input part gi: for an RNN or LSTM gi already holds b_hh and one
    baddbmm adds h W_hh^T to it (a GRU needs the hidden part on its own)."""
    if kind == "gru":
        return cell_update(kind, gi, linear(h, w_hh, b_hh), state)
    k = gi.shape[0]
    pre = torch.baddbmm(
        gi.reshape(k, -1, gi.shape[-1]), h.reshape(k, -1, h.shape[-1]), w_hh.transpose(1, 2)
    )
    return cell_update(kind, pre.view(gi.shape), None, state)


def cell_update(kind: str, gi: torch.Tensor, gh: torch.Tensor | None, state):
    """PyTorch's RNN/GRU/LSTM cell equations from the input part gi and hidden part gh (for
    an RNN or LSTM, gh None means gi already is their sum)."""
    if kind == "rnn":
        return tanh(gi if gh is None else gi + gh)
    if kind == "lstm":
        _, c = state
        i, f, g, o = (gi if gh is None else gi + gh).chunk(4, -1)
        c = torch.sigmoid(f) * c + torch.sigmoid(i) * tanh(g)
        return torch.sigmoid(o) * tanh(c), c
    r_i, z_i, n_i = gi.chunk(3, -1)  # gru
    r_h, z_h, n_h = gh.chunk(3, -1)
    r, z = torch.sigmoid(r_i + r_h), torch.sigmoid(z_i + z_h)
    n = tanh(n_i + r * n_h)
    return (1 - z) * n + z * state


def per_token(
    values: torch.Tensor, tokens: torch.Tensor | None, ponder_loss: str = "mean"
) -> torch.Tensor:
    """A per-token quantity ``values [..., T]`` over each sequence's own tokens (``tokens``,
    bool, broadcast to ``values``; None: every step): their mean (``ponder_loss="mean"``) or
    sum, ``[...]``."""
    if tokens is None:
        return values.mean(-1) if ponder_loss == "mean" else values.sum(-1)
    w = tokens.to(values.dtype)
    total = (values * w).sum(-1)
    if ponder_loss != "mean":
        return total
    return total / w.expand_as(values).sum(-1).clamp(min=1)
