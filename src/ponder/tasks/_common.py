"""Shared pieces of the tasks: option checks, random integers, and the two kinds of loss.

``BinaryTask`` (parity, logic) has one logit per step and a {0, 1} target; ``CategoricalTask``
(addition, sort) has one or more softmax classifications per step. Both reduce to a per-sequence
mean over the classifications whose target is not ``IGNORE``, as the Fojo et al. (2018) code does.
"""

from __future__ import annotations

import operator

import torch
import torch.nn.functional as F

from ponder.tasks.base import IGNORE, Task


def check_int(owner: str, name: str, value: object, low: int, high: int | None = None) -> int:
    """Return ``value`` as an int in ``low..high`` or raise a one-line ``ValueError``."""
    bound = f">= {low}" if high is None else f"in {low}..{high}"
    if isinstance(value, bool):  # bool is an int subclass, but True is never a meant size
        raise ValueError(f"{owner}: {name} must be an integer {bound}, got {value!r}")
    try:
        number = operator.index(value)  # accepts numpy ints, refuses floats and strings
    except TypeError:
        raise ValueError(f"{owner}: {name} must be an integer {bound}, got {value!r}") from None
    if number < low or (high is not None and number > high):
        raise ValueError(f"{owner}: {name} must be an integer {bound}, got {number}")
    return number


def uniform_int(
    generator: torch.Generator, low: int, high: int, size: tuple[int, ...]
) -> torch.Tensor:
    """int64 tensor of integers drawn uniformly from ``low..high`` (both included)."""
    return torch.randint(low, high + 1, size, generator=generator, device=generator.device)


def _check_event_shape(task: Task, logits_event: tuple, targets_event: tuple) -> None:
    # Leading dimensions may broadcast (e.g. K runs scored on one batch), but the time axis (and
    # the digit axis) must match exactly: broadcasting them would silently score the wrong steps.
    if logits_event != targets_event:
        raise ValueError(
            f"{task.name}: logits' time/digit axes {tuple(logits_event)} do not match "
            f"the targets' {tuple(targets_event)}"
        )


def _sequence_mean(per_item: torch.Tensor, valid: torch.Tensor, event_dims: int) -> torch.Tensor:
    """Mean of ``per_item`` over the valid entries of the last ``event_dims`` axes (0 if none)."""
    dims = tuple(range(-event_dims, 0))
    # where(), not a product: a non-finite logit at an ignored step must not leak a NaN.
    total = torch.where(valid, per_item, 0.0).sum(dims)
    count = valid.sum(dims)
    return total / count.clamp(min=1).to(total.dtype)


class BinaryTask(Task):
    """A task with one logit per step (``output_size == 1``) and targets ``[..., T]`` in {0, 1}.

    Loss: binary cross-entropy with logits; a logit > 0 predicts 1.
    """

    output_size = 1

    def _split(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        if logits.shape[-1] != 1:
            raise ValueError(f"{self.name}: logits must end in 1 logit, got {tuple(logits.shape)}")
        scores = logits[..., 0]
        _check_event_shape(self, scores.shape[-1:], targets.shape[-1:])
        return scores

    def loss(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Per-sequence mean binary cross-entropy over the steps with a target: ``[...]``."""
        scores = self._split(logits, targets)
        scores, targets = torch.broadcast_tensors(scores, targets)
        valid = targets != IGNORE
        labels = torch.where(valid, targets, 0).to(scores.dtype)
        per_step = F.binary_cross_entropy_with_logits(scores, labels, reduction="none")
        return _sequence_mean(per_step, valid, 1)

    def step_losses(
        self, step_logits: torch.Tensor, targets: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Each token's loss for every step's prediction, ``[..., T, N]``, and which tokens have
        a target, ``[..., T]``: ``step_logits [..., T, N, 1]``, targets ``[..., T]``."""
        scores = step_logits[..., 0]  # (..., T, N)
        _check_event_shape(self, scores.shape[-2:-1], targets.shape[-1:])
        valid = targets != IGNORE
        labels = torch.where(valid, targets, 0).to(scores.dtype).unsqueeze(-1)
        scores, labels = torch.broadcast_tensors(scores, labels)
        per_step = F.binary_cross_entropy_with_logits(scores, labels, reduction="none")
        return per_step, valid

    def correct(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """True for a sequence whose every target is predicted (logit > 0 means 1): ``[...]``."""
        predicted = (self._split(logits, targets) > 0).long()
        return ((predicted == targets) | (targets == IGNORE)).all(-1)


class CategoricalTask(Task):
    """A task whose ``output_size`` logits per step are one or more softmax classifications.

    ``groups`` is the shape the last logit axis unfolds into: ``(classes,)`` for one
    classification per step (targets ``[..., T]``), ``(digits, classes)`` for several, digit-major
    (targets ``[..., T, digits]``).
    """

    groups: tuple[int, ...]

    def _split(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        if logits.shape[-1] != self.output_size:
            raise ValueError(
                f"{self.name}: logits must end in {self.output_size} logits, "
                f"got {tuple(logits.shape)}"
            )
        scores = logits.unflatten(-1, self.groups)  # [..., T, (digits,) classes]
        n = len(self.groups)  # target axes per sequence: time, plus digits if any
        _check_event_shape(self, scores.shape[-1 - n : -1], targets.shape[-n:])
        return scores

    def loss(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Per-sequence mean cross-entropy over the classifications with a target: ``[...]``."""
        scores = self._split(logits, targets)
        classes = scores.shape[-1]
        shape = torch.broadcast_shapes(scores.shape[:-1], targets.shape)
        flat_scores = scores.expand(*shape, classes).reshape(-1, classes)
        flat_targets = targets.expand(shape).reshape(-1)
        per_item = F.cross_entropy(
            flat_scores, flat_targets, ignore_index=IGNORE, reduction="none"
        ).view(shape)
        return _sequence_mean(per_item, targets.expand(shape) != IGNORE, len(self.groups))

    def step_losses(
        self, step_logits: torch.Tensor, targets: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Each token's loss (the mean over its classifications) for every step's prediction,
        ``[..., T, N]``, and which tokens have a target, ``[..., T]``: ``step_logits
        [..., T, N, output_size]``, targets ``[..., T (, digits)]``."""
        scores = step_logits.unflatten(-1, self.groups)  # [..., T, N, (digits,) classes]
        n = len(self.groups)
        _check_event_shape(self, (scores.shape[-2 - n],), (targets.shape[-n],))  # T against T
        per_token = targets.unsqueeze(-n)  # [..., T, 1 (, digits)]: broadcast over the N steps
        shape = torch.broadcast_shapes(scores.shape[:-1], per_token.shape)
        classes = scores.shape[-1]
        per_item = F.cross_entropy(
            scores.expand(*shape, classes).reshape(-1, classes),
            per_token.expand(shape).reshape(-1),
            ignore_index=IGNORE,
            reduction="none",
        ).view(shape)
        item_valid = per_token.expand(shape) != IGNORE
        if n == 1:  # one classification per token
            return per_item, targets != IGNORE
        return _sequence_mean(per_item, item_valid, 1), (targets != IGNORE).any(-1)

    def correct(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """True for a sequence whose every classification is the argmax: ``[...]``."""
        predicted = self._split(logits, targets).argmax(-1)
        right = (predicted == targets) | (targets == IGNORE)
        return right.all(dim=tuple(range(-len(self.groups), 0)))


def check_batch_size(owner: str, batch_size: object) -> int:
    """Return ``batch_size`` as an int >= 1 or raise ``ValueError``."""
    return check_int(owner, "batch_size", batch_size, 1)
