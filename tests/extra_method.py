"""A method of the tests' own, in one file and one table entry: ACT with a quadratic ponder
penalty, tau * rho_t^2 instead of tau * rho_t (a different ponder penalty, the kind of variant a
user adds). Importing this module registers it; sweeps' workers import it through
``$PONDER_METHODS``.

    L = task loss + tau * mean_t (N(t) + R(t))^2      (ACT's network, halting and logging)
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch

from ponder.methods import METHODS, Knob, act, register
from ponder.methods.common import per_token


def loss(
    task: Any,
    logits: torch.Tensor,
    targets: torch.Tensor,
    info: dict[str, torch.Tensor],
    weights: dict[str, Any],
    ponder_loss: str = "mean",
    tokens: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    task_loss = task.loss(logits, targets)
    ponder = per_token(info["ponder_cost"] ** 2, tokens, ponder_loss)  # rho_t^2
    return task_loss + weights["tau"] * ponder, task_loss


SPEC = dataclasses.replace(
    act.SPEC,
    name="actsq",
    title="ACT-sq",
    knob=Knob("tau", "tau", "tau"),
    color="tab:purple",
    figure="actsq",  # its figure per tau beside ACT's (parity-accuracy-tau.png)
    loss=loss,
    naive=None,  # no naive reference of its own
)

if SPEC.name not in METHODS:
    register(SPEC)
