"""Repeat-RNN (D. Fojo, V. Campos, X. Giro-i-Nieto, "Comparing Fixed and Adaptive Computation
Time for Recurrent Neural Networks", ICLR 2018 workshop, arXiv 1803.08165).

Every token is fed rho times, with a flag column that is 1 on its first repeat and 0 after; the
output and state for token t are those after its last repeat. That is a plain RNN over the
sequence with every token repeated rho times, so the wrapped ``nn.RNN``/``GRU``/``LSTM`` runs
once over the repeated sequence and its fused kernels apply. rho = 1 is the plain RNN baseline
(with a flag column that is always 1).
"""

from __future__ import annotations

import torch
from torch import nn

RNN = nn.RNN | nn.GRU | nn.LSTM
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

    def __init__(self, rnn: RNN, rho: int) -> None:
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
