"""Parity (Graves 2016, "Adaptive Computation Time for Recurrent Neural Networks"; Fojo et al.
2018, "Comparing Fixed and Adaptive Computation Time for Recurrent Neural Networks").

Each sequence is a single token of ``bits`` values (64 in the papers). A number k, uniform in
1..bits, is drawn per sample; the first k positions (as in the Fojo et al. code) hold -1 or +1 at
random and the rest are 0. The target is 1 if the count of +1 entries is odd, else 0: one binary
classification per sequence, scored with binary cross-entropy on one logit.

Shapes: inputs ``[B, 1, bits]`` float32, targets ``[B, 1]`` int64 in {0, 1}.
"""

from __future__ import annotations

import torch

from ponder.tasks._common import BinaryTask, check_batch_size, check_int, uniform_int


class Parity(BinaryTask):
    """Parity of the +1 entries of one vector of -1/0/+1 values."""

    name = "parity"

    def __init__(self, *, bits: int = 64) -> None:
        self.bits = check_int("parity", "bits", bits, 1)
        self.input_size = self.bits
        self.seq_len = 1

    def __repr__(self) -> str:
        return f"Parity(bits={self.bits})"

    def sample(
        self, batch_size: int, generator: torch.Generator
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Draw ``(inputs [B, 1, bits], targets [B, 1])`` from ``generator`` on its device."""
        batch = check_batch_size("parity", batch_size)
        device = generator.device
        k = uniform_int(generator, 1, self.bits, (batch, 1))  # how many positions are set
        # The signs are the bits of random 32-bit words: one draw per 32 positions, not one
        # per position (drawing is most of the cost of a batch).
        words = uniform_int(generator, 0, 2**32 - 1, (batch, (self.bits + 31) // 32, 1))
        shifts = torch.arange(32, device=device)
        bits = ((words >> shifts) & 1).flatten(1)[:, : self.bits]  # (B, bits) in {0, 1}
        signs = bits * 2 - 1
        present = torch.arange(self.bits, device=device) < k
        values = torch.where(present, signs, 0)
        targets = (values == 1).sum(-1, keepdim=True) % 2
        return values.float().unsqueeze(1), targets

    def difficulty(self, inputs: torch.Tensor) -> torch.Tensor:
        """Number of nonzero values of each token: ``[..., 1]`` int64."""
        return (inputs != 0).sum(-1)
