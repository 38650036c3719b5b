"""Parity (Graves 2016, "Adaptive Computation Time for Recurrent Neural Networks"; Fojo et al.
2018, "Comparing Fixed and Adaptive Computation Time for Recurrent Neural Networks").

Each sequence is a single token of ``bits`` values (64 in the papers). A number k, uniform in
1..bits (``min_nonzero``..``max_nonzero``), is drawn per sample; k positions hold -1 or +1 at
random and the rest are 0. The target is 1 if the count of +1 entries is odd, else 0: one binary
classification per sequence, scored with binary cross-entropy on one logit.

Which k positions: ``positions="first"`` (the default) sets the first k, as the Fojo et al. code
does, so Table 1 is their problem; ``positions="random"`` draws the k positions uniformly without
replacement for each sample, as Graves's text ("randomly set") and the public PonderNet
implementations do. PonderNet's extrapolation protocol (SPEC.md) trains on 96 values with k in
1..48 and evaluates with k in 49..96: it needs ``random``, since with ``first`` the positions
49..96 are zero in every training batch and no network can learn what they mean
(``nonzero_features`` says so, and the config refuses such an evaluation set).

Shapes: inputs ``[B, 1, bits]`` float32, targets ``[B, 1]`` int64 in {0, 1}.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ponder.tasks._common import BinaryTask, check_batch_size, check_int, uniform_int
from ponder.tasks.base import IGNORE

POSITIONS = ("first", "random")


class Parity(BinaryTask):
    """Parity of the +1 entries of one vector of -1/0/+1 values."""

    name = "parity"
    # Recorded in a config only when given: runs of the papers' parity keep their options.
    optional_options = ("min_nonzero", "max_nonzero", "positions")

    def __init__(
        self,
        *,
        bits: int = 64,
        min_nonzero: int = 1,
        max_nonzero: int | None = None,
        positions: str = "first",
    ) -> None:
        self.bits = check_int("parity", "bits", bits, 1)
        high = self.bits if max_nonzero is None else max_nonzero
        self.max_nonzero = check_int("parity", "max_nonzero", high, 1, self.bits)
        self.min_nonzero = check_int("parity", "min_nonzero", min_nonzero, 1, self.max_nonzero)
        if positions not in POSITIONS:
            raise ValueError(
                f"parity: positions must be one of {', '.join(POSITIONS)}, got {positions!r}"
            )
        self.positions = positions
        self.input_size = self.bits
        self.seq_len = 1

    def __repr__(self) -> str:
        return (
            f"Parity(bits={self.bits}, min_nonzero={self.min_nonzero}, "
            f"max_nonzero={self.max_nonzero}, positions={self.positions!r})"
        )

    def nonzero_features(self) -> range:
        """With ``first``, only the first ``max_nonzero`` positions are ever set."""
        return range(self.bits if self.positions == "random" else self.max_nonzero)

    def coverage_fix(self) -> tuple[str, str] | None:
        if self.positions == "random":
            return None
        return (
            f"positions: first, max_nonzero {self.max_nonzero}",
            "use positions: random (--positions random)",
        )

    def sample(
        self, batch_size: int, generator: torch.Generator
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Draw ``(inputs [B, 1, bits], targets [B, 1])`` from ``generator`` on its device."""
        return self._build(*self._draw(check_batch_size("parity", batch_size), generator))

    def sample_many(
        self, batch_size: int, generators: list[torch.Generator]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``sample`` for each generator, stacked ``[K, ...]``: the random numbers come from each
        generator as ``sample`` draws them, the rest is computed once for all K."""
        batch = check_batch_size("parity", batch_size)
        draws = [self._draw(batch, g) for g in generators]
        return self._build(*(torch.stack(parts) for parts in zip(*draws, strict=True)))

    def _draw(self, batch: int, generator: torch.Generator) -> tuple[torch.Tensor, ...]:
        """The random numbers of a batch: k (positions set), the signs as 32-bit words (one
        draw per 32 positions, not one per position: drawing is most of a batch's cost) and,
        for random positions only (so that ``first`` draws exactly what it always drew), one
        uniform score per position whose k smallest are the positions set."""
        k = uniform_int(generator, self.min_nonzero, self.max_nonzero, (batch, 1))
        words = uniform_int(generator, 0, 2**32 - 1, (batch, (self.bits + 31) // 32, 1))
        if self.positions == "first":
            return k, words
        scores = torch.rand(batch, self.bits, generator=generator, device=generator.device)
        return k, words, scores

    def _build(
        self, k: torch.Tensor, words: torch.Tensor, scores: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Inputs and targets from the draws, for any leading dims ``[..., B, ...]``."""
        device = k.device
        shifts = torch.arange(32, device=device)
        bits = ((words >> shifts) & 1).flatten(-2)[..., : self.bits]  # (..., B, bits) in {0, 1}
        if scores is None:
            rank = torch.arange(self.bits, device=device)  # the first k positions
        else:
            # A position's rank among the sample's scores: the k lowest ranks are a uniform
            # k-subset, drawn without replacement (a stable sort keeps ties deterministic).
            order = scores.argsort(dim=-1, stable=True)
            rank = torch.empty_like(order).scatter_(
                -1, order, torch.arange(self.bits, device=device).expand_as(order)
            )
        present = rank < k  # (..., B, bits)
        plus = (bits == 1) & present
        values = plus.float() * 2 - present.float()  # +1, -1 where present, else 0
        targets = plus.sum(-1, keepdim=True) % 2
        return values.unsqueeze(-2), targets

    def loss(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Per-sequence binary cross-entropy ``[...]``: one step, so no mean over time."""
        scores = self._split(logits, targets)  # (..., 1)
        valid = targets != IGNORE
        labels = torch.where(valid, targets, 0).to(scores.dtype).expand_as(scores)
        per_step = F.binary_cross_entropy_with_logits(scores, labels, reduction="none")
        return torch.where(valid, per_step, 0.0).squeeze(-1)

    def difficulty(self, inputs: torch.Tensor) -> torch.Tensor:
        """Number of nonzero values of each token: ``[..., 1]`` int64."""
        return (inputs != 0).sum(-1)
