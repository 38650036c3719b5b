"""Sort (Graves 2016, "Adaptive Computation Time for Recurrent Neural Networks"), one of the
Graves tasks that Fojo et al. 2018 ("Comparing Fixed and Adaptive Computation Time for Recurrent
Neural Networks") lists.

A sequence holds a length L, uniform in ``min_length..max_length`` (2..15), of numbers drawn from
N(0, 1), one per token as (value, end flag) with the flag 1 on the last number. Then come L blank
(all-zero) tokens, during which the targets are the indices (0-based positions in the sequence)
of the numbers in ascending order of value: a ``max_length``-way softmax per step. The targets are
``IGNORE`` while the numbers are read and after the answer; the inputs are zero after the answer.
Every batch has T = 2 * ``max_length`` steps.

Shapes: inputs ``[B, 2 * max_length, 2]`` float32, targets ``[B, 2 * max_length]`` int64 in
0..max_length-1; logits ``[B, 2 * max_length, max_length]``.
"""

from __future__ import annotations

import torch

from ponder.tasks._common import CategoricalTask, check_batch_size, check_int, uniform_int
from ponder.tasks.base import IGNORE


class Sort(CategoricalTask):
    """Output the positions of a sequence's numbers in ascending order of value."""

    name = "sort"

    def __init__(self, *, max_length: int = 15, min_length: int = 2) -> None:
        self.max_length = check_int("sort", "max_length", max_length, 1)
        self.min_length = check_int("sort", "min_length", min_length, 1, self.max_length)
        self.input_size = 2
        self.output_size = self.max_length
        self.seq_len = 2 * self.max_length
        self.groups = (self.max_length,)

    def __repr__(self) -> str:
        return f"Sort(max_length={self.max_length}, min_length={self.min_length})"

    def sample(
        self, batch_size: int, generator: torch.Generator
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Draw ``(inputs [B, 2 * max_length, 2], targets [B, 2 * max_length])``."""
        batch = check_batch_size("sort", batch_size)
        device = generator.device
        most = self.max_length
        length = uniform_int(generator, self.min_length, most, (batch, 1))
        values = torch.randn(batch, most, generator=generator, device=device)
        position = torch.arange(most, device=device)
        reading = position < length
        values = torch.where(reading, values, 0.0)

        # Unused slots sort after every number, so the first L entries of the order are the
        # ascending indices of the L numbers.
        order = torch.where(reading, values, torch.inf).argsort(dim=-1, stable=True)
        step = torch.arange(self.seq_len, device=device)
        answering = (step >= length) & (step < 2 * length)
        rank = (step - length).clamp(0, most - 1)  # which place of the order step t answers
        targets = torch.where(answering, order.gather(-1, rank), IGNORE)

        inputs = torch.zeros(batch, self.seq_len, 2, device=device)
        inputs[:, :most, 0] = values
        inputs[:, :most, 1] = (position == length - 1).float()  # end flag on the last number
        return inputs, targets

    def tokens(self, inputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """The sequence's 2L steps: reading its L numbers and answering with L indices."""
        return self.difficulty(inputs) > 0

    def difficulty(self, inputs: torch.Tensor) -> torch.Tensor:
        """The sequence's length L on its 2L steps (reading and answering), 0 after: ``[..., T]``.

        L is read from the end flag, not from nonzero values, so a value of exactly 0 is counted.
        """
        step = torch.arange(inputs.shape[-2], device=inputs.device)
        length = ((inputs[..., 1] != 0) * (step + 1)).amax(-1, keepdim=True)
        return torch.where(step < 2 * length, length, 0)
