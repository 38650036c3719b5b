"""Addition (Graves 2016, "Adaptive Computation Time for Recurrent Neural Networks"; Fojo et al.
2018, "Comparing Fixed and Adaptive Computation Time for Recurrent Neural Networks").

A sequence of ``numbers`` tokens (5 in Fojo et al.), one number each. A number has D digits, D
uniform in 1..``digits`` (5), each digit uniform in 0..9 (so leading zeros occur), most
significant first. Its token is the D one-hot digit codes (10 values each) concatenated and
zero-padded to ``digits * 10`` values.

Target at every step but the first: the running sum of the numbers so far, written in decimal
without leading zeros, most significant digit first, as ``digits + 1`` classifications of 11
classes: 0-9 for a digit, 10 ("number has ended") for each position after the sum's last digit.
E.g. with the defaults a running sum of 407 is ``[4, 0, 7, 10, 10, 10]``. The first step has no
target (all ``IGNORE``): its sum would only copy the input. A sequence is correct only if every
digit of every step is right.

Shapes: inputs ``[B, numbers, digits * 10]`` float32, targets ``[B, numbers, digits + 1]``
int64; logits ``[B, numbers, (digits + 1) * 11]``, read as ``[digits + 1, 11]`` (digit-major).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ponder.tasks._common import CategoricalTask, check_batch_size, check_int, uniform_int
from ponder.tasks.base import IGNORE

CLASSES = 11  # digits 0-9 and 10, "number has ended"
END = 10


class Addition(CategoricalTask):
    """Running sum of a sequence of decimal numbers, one digit classification per sum digit."""

    name = "addition"

    def __init__(self, *, numbers: int = 5, digits: int = 5) -> None:
        # The target has digits + 1 places; the largest running sum, numbers * (10**digits - 1),
        # only fits in them for at most 10 numbers. 17 digits keeps sums inside int64. The
        # first step has no target, so a running sum needs at least two numbers.
        self.numbers = check_int("addition", "numbers", numbers, 2, 10)
        self.digits = check_int("addition", "digits", digits, 1, 17)
        self.target_digits = self.digits + 1
        self.input_size = 10 * self.digits
        self.output_size = CLASSES * self.target_digits
        self.seq_len = self.numbers
        self.groups = (self.target_digits, CLASSES)

    def __repr__(self) -> str:
        return f"Addition(numbers={self.numbers}, digits={self.digits})"

    def sample(
        self, batch_size: int, generator: torch.Generator
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Draw ``(inputs [B, numbers, 10 * digits], targets [B, numbers, digits + 1])``."""
        batch = check_batch_size("addition", batch_size)
        device = generator.device
        shape = (batch, self.numbers)
        length = uniform_int(generator, 1, self.digits, shape)  # D of each number
        digit = uniform_int(generator, 0, 9, (*shape, self.digits))  # MSB first
        place = torch.arange(self.digits, device=device)
        present = place < length.unsqueeze(-1)  # [B, N, digits]

        one_hot = F.one_hot(digit, 10) * present.unsqueeze(-1)
        inputs = one_hot.reshape(*shape, self.input_size).float()

        # Value of each number: digit j of a D-digit number is worth 10**(D - 1 - j).
        pow10 = 10 ** torch.arange(self.target_digits + 1, device=device)
        weight = pow10[(length.unsqueeze(-1) - 1 - place).clamp(min=0)]
        value = (torch.where(present, digit, 0) * weight).sum(-1)
        total = value.cumsum(-1)  # running sum [B, N]

        # Decimal digits of each sum, MSB first, padded with END after its last digit.
        width = 1 + (total.unsqueeze(-1) >= pow10[1 : self.target_digits]).sum(-1)  # 0 -> 1
        out_place = torch.arange(self.target_digits, device=device)
        shift = (width.unsqueeze(-1) - 1 - out_place).clamp(min=0)
        sum_digit = total.unsqueeze(-1) // pow10[shift] % 10
        targets = torch.where(out_place < width.unsqueeze(-1), sum_digit, END)
        targets[:, 0] = IGNORE
        return inputs, targets

    def difficulty(self, inputs: torch.Tensor) -> torch.Tensor:
        """Digits of the number at each step (0 for an all-zero token): ``[..., T]`` int64."""
        return (inputs != 0).sum(-1)  # one nonzero value per one-hot digit
