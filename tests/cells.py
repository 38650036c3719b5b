"""The torch cells the ACT and PonderNet reference tests wrap."""

from __future__ import annotations

import torch
from torch import nn

CELLS = {"rnn": nn.RNNCell, "gru": nn.GRUCell, "lstm": nn.LSTMCell}


def torch_cell(kind: str, features: int, hidden: int, seed: int = 0) -> nn.Module:
    """A torch cell for ``features`` data columns plus the first-step flag, drawn from ``seed``."""
    torch.manual_seed(seed)
    return CELLS[kind](features + 1, hidden)
