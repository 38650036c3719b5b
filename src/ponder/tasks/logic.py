"""Logic (Graves 2016, "Adaptive Computation Time for Recurrent Neural Networks"), the binary
logic task that Fojo et al. 2018 ("Comparing Fixed and Adaptive Computation Time for Recurrent
Neural Networks") lists with the other Graves tasks.

A sequence has a length uniform in 1..``max_length`` (10) tokens. Each token holds
``2 + 10 * gates`` values: two bits (b0, then b1) and ``gates`` (10) chunks of 10. The first B
chunks (B uniform in 1..``gates``) are one-hot codes of logic gates drawn uniformly from the ten
of ``GATES`` (position k of a chunk selects ``GATES[k]``); the remaining chunks are zero.

Target of a token: apply its gates in order, b_{i+1} = T_i(b_i, b_{i-1}) for i = 1..B, and output
b_{B+1}. On the first token b0 and b1 are random and both appear in the input; on every later
token b1 is random and b0 is the previous token's target, which the input shows as 0, so the
network must carry it. After the sequence's end the inputs are zero and the targets ``IGNORE``.

Shapes: inputs ``[B, max_length, 2 + 10 * gates]`` float32, targets ``[B, max_length]`` int64
in {0, 1}; one logit per step, binary cross-entropy.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ponder.tasks._common import BinaryTask, check_batch_size, check_int, uniform_int
from ponder.tasks.base import IGNORE

# Truth tables for (P, Q) = (T,T), (T,F), (F,T), (F,F), with P = b_i and Q = b_{i-1}, in the order
# whose k-th entry position k of a gate chunk selects.
GATES: dict[str, str] = {
    "NOR": "FFFT",
    "Xq": "FFTF",
    "ABJ": "FTFF",
    "XOR": "FTTF",
    "NAND": "FTTT",
    "AND": "TFFF",
    "XNOR": "TFFT",
    "if/then": "TFTT",
    "then/if": "TTFT",
    "OR": "TTTF",
}


_TABLES: dict[torch.device, torch.Tensor] = {}


def _truth_table(device: torch.device) -> torch.Tensor:
    """int64 ``[10, 4]``: gate k's output, column ``2 * (1 - P) + (1 - Q)`` (TT, TF, FT, FF).

    Made once per device: copying it from the host on every batch would be a transfer that a
    CUDA graph of the training step cannot record."""
    if device not in _TABLES:
        rows = [[int(value == "T") for value in table] for table in GATES.values()]
        _TABLES[device] = torch.tensor(rows, dtype=torch.int64, device=device)
    return _TABLES[device]


class Logic(BinaryTask):
    """Chains of binary logic gates whose result carries from token to token."""

    name = "logic"

    def __init__(self, *, max_length: int = 10, gates: int = 10) -> None:
        self.max_length = check_int("logic", "max_length", max_length, 1)
        self.gates = check_int("logic", "gates", gates, 1)
        self.input_size = 2 + len(GATES) * self.gates
        self.seq_len = self.max_length

    def __repr__(self) -> str:
        return f"Logic(max_length={self.max_length}, gates={self.gates})"

    def sample(
        self, batch_size: int, generator: torch.Generator
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Draw ``(inputs [B, max_length, 2 + 10 * gates], targets [B, max_length])``."""
        batch = check_batch_size("logic", batch_size)
        device = generator.device
        steps, slots = self.max_length, self.gates
        length = uniform_int(generator, 1, steps, (batch, 1))
        count = uniform_int(generator, 1, slots, (batch, steps))  # B, gates used per token
        kind = uniform_int(generator, 0, len(GATES) - 1, (batch, steps, slots))
        b1 = uniform_int(generator, 0, 1, (batch, steps))
        first_b0 = uniform_int(generator, 0, 1, (batch,))

        # A token's output depends on its b0, the previous token's output, only at the end of the
        # previous token's chain. So evaluate every token's chain for both values of b0 at once
        # (the last axis), over all tokens in parallel; then a cheap pass over time picks the
        # branch the real b0 selects.
        table = _truth_table(device)
        older = torch.arange(2, device=device).expand(batch, steps, 2)  # b_{i-1}, starting at b0
        newer = b1.unsqueeze(-1).expand(batch, steps, 2)  # b_i, starting at b1
        for slot in range(slots):  # the recurrence is sequential along the gate slots
            out = table[kind[..., slot, None], 2 * (1 - newer) + (1 - older)]
            active = (slot < count).unsqueeze(-1)  # tokens with fewer gates keep their result
            older, newer = torch.where(active, newer, older), torch.where(active, out, newer)

        outputs = []
        b0 = first_b0
        for step in range(steps):  # each token's b0 is the previous token's target
            b0 = newer[:, step].gather(-1, b0.unsqueeze(-1)).squeeze(-1)
            outputs.append(b0)
        valid = torch.arange(steps, device=device) < length  # [B, steps]
        targets = torch.where(valid, torch.stack(outputs, -1), IGNORE)

        shown_b0 = F.pad(first_b0.unsqueeze(-1), (0, steps - 1))  # 0 on every later token
        present = torch.arange(slots, device=device) < count.unsqueeze(-1)
        gate_codes = (F.one_hot(kind, len(GATES)) * present.unsqueeze(-1)).flatten(-2)
        tokens = torch.cat([shown_b0.unsqueeze(-1), b1.unsqueeze(-1), gate_codes], -1)
        inputs = (tokens * valid.unsqueeze(-1)).float()
        return inputs, targets

    def tokens(self, inputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """The sequence's tokens: each has a target; the padding after its end has none."""
        return targets != IGNORE

    def difficulty(self, inputs: torch.Tensor) -> torch.Tensor:
        """Number of gates of each token (0 after the sequence's end): ``[..., T]`` int64."""
        return (inputs[..., 2:] != 0).sum(-1)
