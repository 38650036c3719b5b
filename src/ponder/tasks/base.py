"""The interface every task implements: sampling, loss, sequence accuracy and difficulty.

A task is a stream of fresh random batches (there is no dataset): ``sample`` draws every random
number from the ``torch.Generator`` it is given, on that generator's device, with vectorised torch
ops, so the same seed gives the same batches on the same device.

Targets are integer tensors aligned with the input's time steps; a position with no target holds
``IGNORE`` (-100, PyTorch's ``ignore_index``). The loss and accuracy functions accept any number of
leading dimensions (``[..., T, ...]``), so a batched ensemble of runs ``[K, B, T, ...]`` uses them
unchanged.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import torch

IGNORE = -100


class Task(ABC):
    """A sequence task: ``inputs [B, T, input_size]`` -> per-step logits ``[B, T, output_size]``."""

    name: str
    input_size: int  # features per time step (without ACT/Repeat's first-step flag)
    output_size: int  # logits per time step
    seq_len: int  # T, the number of time steps of every batch

    @abstractmethod
    def sample(
        self, batch_size: int, generator: torch.Generator
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Draw ``(inputs, targets)``: float32 inputs ``[B, T, input_size]`` and int64 targets."""

    @abstractmethod
    def loss(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Per-sequence task loss ``[...]``: the mean over that sequence's classifications.

        ``logits [..., T, output_size]``; positions whose target is ``IGNORE`` do not count, and a
        sequence with no target at all has loss 0. Leading dimensions of logits and targets
        broadcast (e.g. logits ``[K, B, ...]`` against targets ``[B, ...]``).
        """

    @abstractmethod
    def correct(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Per-sequence bool ``[...]``: True only if every target of the sequence is right.

        Positions whose target is ``IGNORE`` are not checked.
        """

    def step_losses(
        self, step_logits: torch.Tensor, targets: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Each token's task loss for the prediction of every ponder step, ``[..., T, N]``, and
        which tokens have a target, ``[..., T]`` (PonderNet's loss weighs them by p):
        ``step_logits [..., T, N, output_size]``."""
        raise NotImplementedError(f"{self.name}: no per-step loss, so PonderNet cannot train")

    @abstractmethod
    def difficulty(self, inputs: torch.Tensor) -> torch.Tensor:
        """Per-step int64 difficulty ``[..., T]`` read from ``inputs [..., T, input_size]``.

        What it counts is task-specific (bits, digits, gates, sequence length); 0 where a step
        holds no input (padding).
        """

    def tokens(self, inputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Which time steps belong to a sequence, bool ``[..., T]`` (``inputs [..., T, F]``,
        ``targets [..., T]``): False on the padding after a shorter sequence's end.

        ACT's ponder cost, PonderNet's KL and the logged ponder statistics are means over these
        tokens, so that neither the penalty's weight nor the logged steps depend on how far a
        batch is padded. Every step belongs by default (a task without padding).
        """
        return torch.ones(inputs.shape[:-1], dtype=torch.bool, device=inputs.device)

    def nonzero_features(self) -> range:
        """The input features (indices into ``input_size``) that this task's distribution can
        make non-zero. A held-out set that sets others asks the network about inputs whose
        weights training never moved (``config`` refuses it); every feature by default."""
        return range(self.input_size)

    def coverage_fix(self) -> tuple[str, str] | None:
        """For a person whose held-out set feeds features this task never sets: the options
        that cause it and the change that fixes it (None when no option would)."""
        return None

    def sample_many(
        self, batch_size: int, generators: list[torch.Generator]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """One batch per generator, stacked ``[K, ...]``: exactly ``sample`` with each (a task
        may override it to compute the non-random part once for all K)."""
        batches = [self.sample(batch_size, g) for g in generators]
        return torch.stack([b[0] for b in batches]), torch.stack([b[1] for b in batches])

    def accuracy(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Fraction of sequences right, averaged over the batch axis (the last axis of
        ``correct``'s shape): ``[B]`` gives a scalar, ``[K, B]`` gives ``[K]``."""
        return self.correct(logits, targets).float().mean(-1)
