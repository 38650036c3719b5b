"""Repeat-RNN (D. Fojo, V. Campos, X. Giro-i-Nieto, "Comparing Fixed and Adaptive Computation
Time for Recurrent Neural Networks", ICLR 2018 workshop, arXiv 1803.08165).

Every token is fed rho times, with a flag column that is 1 on its first repeat and 0 after; the
output and state for token t are those after its last repeat. That is a plain RNN over the
sequence with every token repeated rho times, so the wrapped ``nn.RNN``/``GRU``/``LSTM`` runs
once over the repeated sequence and its fused kernels apply. rho = 1 is the plain RNN baseline
(with a flag column that is always 1): the table's "rnn" is Repeat at rho = 1, in this file.
"""

from __future__ import annotations

import functools
from typing import Any

import torch
from torch import nn

from ..kernels.repeat_lstm import repeat_lstm
from .common import LAYERS, cell_update, linear, output_of, recur
from .naive import repeat_reference
from .spec import Knob, MethodSpec

Layer = nn.RNN | nn.GRU | nn.LSTM
State = torch.Tensor | tuple[torch.Tensor, torch.Tensor]


def repeat_tokens(x: torch.Tensor, rho: int) -> torch.Tensor:
    """``[B, T, F]`` -> ``[B, T * rho, F + 1]``: each token rho times, first-repeat flag first."""
    batch, time, features = x.shape
    out = x.new_zeros(batch, time, rho, features + 1)
    out[:, :, :, 1:] = x.unsqueeze(2)  # the token on each of its rho repeats
    out[:, :, 0, 0] = 1.0  # delta_{n,1}
    return out.view(batch, time * rho, features + 1)


class Repeat(nn.Module):
    r"""Run a recurrent module rho times per token.

    Args:
        rnn: an ``nn.RNN``, ``nn.GRU`` or ``nn.LSTM`` with ``batch_first=True`` whose
            ``input_size`` is the data's feature size + 1 (the first-repeat flag).
        rho: repeats per token (>= 1).

    Inputs: ``x, state``
        x: ``[batch, time, features]``.
        state: the wrapped module's state (``[layers, batch, hidden]``, or ``(h, c)`` for an
            LSTM); zeros if None.

    Outputs: ``outputs, state``
        outputs: ``[batch, time, hidden]``, the output after each token's last repeat.
        state: the state after the last repeat of the last token.
    """

    def __init__(self, rnn: Layer, rho: int) -> None:
        super().__init__()
        if not isinstance(rnn, (nn.RNN, nn.GRU, nn.LSTM)):
            raise TypeError(f"Repeat wraps an nn.RNN, GRU or LSTM, got {type(rnn)!r}")
        if not rnn.batch_first:
            raise ValueError("Repeat needs the wrapped module built with batch_first=True")
        if getattr(rnn, "bidirectional", False):
            raise ValueError("Repeat needs a unidirectional module")
        if rho < 1:
            raise ValueError(f"rho must be >= 1, got {rho}")
        self.rnn = rnn
        self.rho = int(rho)
        self.hidden_size = rnn.hidden_size
        self.input_size = rnn.input_size - 1

    def forward(self, x: torch.Tensor, state: State | None = None) -> tuple[torch.Tensor, State]:
        if x.dim() != 3 or x.shape[-1] != self.input_size:
            raise ValueError(
                f"Repeat expects x of shape [batch, time, {self.input_size}], got {tuple(x.shape)}"
            )
        out, state = self.rnn(repeat_tokens(x, self.rho), state)  # (B, T*rho, H)
        return out[:, self.rho - 1 :: self.rho], state  # (B, T, H): after each last repeat


# --------------------------------------------------------------------------------------------
# Repeat (and the RNN, rho = 1) in a task network: one run, K stacked runs, the loss, and their
# records in the table


def build(spec: Any, rho: int) -> Repeat:
    """The one-run core for a ``ModelSpec``: PyTorch's whole-sequence layer (fused kernels) over
    the repeated tokens."""
    layer = LAYERS[spec.cell](spec.input_size + 1, spec.hidden, batch_first=True)
    return Repeat(layer, rho)


def forward(
    net: Any, x: torch.Tensor, unroll: int | None = None, uniforms: torch.Tensor | None = None
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """A task network's logits and info: every token costs rho steps (``ponder_steps``,
    ``ponder_cost`` and ``repetitions``), a constant that no loss penalises."""
    y, _ = net.core(x)
    fixed = torch.full(y.shape[:2], float(net.core.rho), device=y.device, dtype=y.dtype)
    info = {"ponder_steps": fixed, "ponder_cost": fixed, "repetitions": fixed}
    return net.readout(y), info


def stacked(
    ens: Any,
    x: torch.Tensor,
    unroll: int | None = None,
    uniforms: torch.Tensor | None = None,
    rho: int | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """``forward`` for K stacked runs (``ensemble.Ensemble``) of ``rho`` repeats (None: the
    spec's), the recurrence written out with batched matmuls over runs; for an LSTM its
    backward too (``kernels.repeat_lstm``)."""
    spec = ens.spec
    rho = spec.rho if rho is None else rho
    k, b, t, _ = x.shape
    w_ih, w_hh, b_ih, b_hh = ens.weights("core.rnn", "_l0")
    fold = spec.cell != "gru"  # b_hh joins the input part (see common.recur)
    # A token's rho repeats differ only in the flag (the first input column), so project
    # each token once and add the flag's column on its first repeat.
    w_flag = w_ih[:, :, 0].unsqueeze(1)  # (K, 1, G*H)
    g_all = linear(x, w_ih[:, :, 1:], b_ih + b_hh if fold else b_ih)  # (K, B, T, G*H)
    fixed = torch.full((k, b, t), float(rho), device=x.device, dtype=x.dtype)
    info = {"ponder_steps": fixed, "ponder_cost": fixed, "repetitions": fixed}
    readout = ens.p("readout.weight"), ens.p("readout.bias")
    if spec.cell == "lstm":  # the recurrence with its backward written out
        y = repeat_lstm(g_all + w_flag.unsqueeze(2), g_all, w_hh, rho)
        return linear(y, *readout), info
    g_tokens = g_all.unbind(2)
    state = ens.zero_state(x)
    outs = []
    for i in range(t * rho):
        token, repeat = divmod(i, rho)
        gi = g_tokens[token] + w_flag if repeat == 0 else g_tokens[token]
        h = output_of(state)
        if i == 0:  # h is zero: h W_hh^T = 0 exactly, so skip that matmul
            state = cell_update(spec.cell, gi, None if fold else b_hh.unsqueeze(1), state)
        else:
            state = recur(spec.cell, gi, h, w_hh, b_hh, state)
        if repeat == rho - 1:
            outs.append(output_of(state))
    y = torch.stack(outs, 2)  # (K, B, T, H)
    return linear(y, *readout), info


def loss(
    task: Any,
    logits: torch.Tensor,
    targets: torch.Tensor,
    info: dict[str, torch.Tensor],
    weights: dict[str, Any],
    ponder_loss: str = "mean",
    tokens: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per sequence ``(loss, task_loss)``: the task loss alone (a fixed cost is no penalty)."""
    task_loss = task.loss(logits, targets)
    return task_loss, task_loss


REPEAT = MethodSpec(
    name="repeat",
    title="Repeat",
    fields=("rho",),
    knob=Knob("rho", "rho", "rho"),
    color="tab:blue",
    build=lambda spec: build(spec, spec.rho),
    forward=forward,
    stacked=stacked,
    loss=loss,
    loss_weights=lambda config: {},
    max_steps=lambda config: config.rho,
    fixed_steps=lambda config: config.rho,
    naive=repeat_reference(lambda config: config.rho),
)

RNN = MethodSpec(
    name="rnn",
    title="RNN",
    fields=(),
    knob=None,
    color="black",
    build=lambda spec: build(spec, 1),
    forward=forward,
    stacked=functools.partial(stacked, rho=1),
    loss=loss,
    loss_weights=lambda config: {},
    max_steps=lambda config: 1,
    fixed_steps=lambda config: 1,
    same_as=("repeat", {"rho": 1}),
    naive=repeat_reference(lambda config: 1),
)
