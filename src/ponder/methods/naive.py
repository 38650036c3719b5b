"""The naive references ``ponder bench`` measures the fast paths against: each method written
the straightforward way (a Python loop per token and step, PyTorch's own cells and losses), no
compaction, no written backward, no stacking. The tests check that they compute what the
methods compute (tests/test_bench.py), so a speed-up measured against them is one over the
same numbers. A method's record names its reference (``MethodSpec.naive``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn


@dataclass(frozen=True)
class Reference:
    """A method's naive reference: ``build(config, task)`` is a module whose ``forward(x)``
    gives ``(logits, extra)``, and ``loss(task, logits, extra, y, config)`` its batch-mean
    training loss."""

    build: Callable[[Any, Any], nn.Module]
    loss: Callable[[Any, torch.Tensor, torch.Tensor, torch.Tensor, Any], torch.Tensor]


class NaiveACT(nn.Module):
    """ACT (Graves 2016) the straightforward way: a cell, a halting unit, a readout."""

    def __init__(self, inputs: int, hidden: int, outputs: int, lstm: bool, eps: float, m: int):
        super().__init__()
        self.lstm = lstm
        self.cell = (nn.LSTMCell if lstm else nn.RNNCell)(inputs + 1, hidden)
        self.halt = nn.Linear(hidden, 1)
        self.out = nn.Linear(hidden, outputs)
        self.eps, self.m, self.hidden = eps, m, hidden

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x ``[B, T, F]`` -> logits ``[B, T, O]`` and the ponder cost N + R ``[B, T]``."""
        b = x.shape[0]
        h = x.new_zeros(b, self.hidden)
        c = x.new_zeros(b, self.hidden)
        ys, costs = [], []
        for t in range(x.shape[1]):
            running = torch.ones(b, dtype=torch.bool, device=x.device)
            total = x.new_zeros(b)  # halting probabilities summed so far
            n_steps = x.new_zeros(b)
            remainder = x.new_zeros(b)
            h_avg = x.new_zeros(b, self.hidden)
            c_avg = x.new_zeros(b, self.hidden)
            n = 0
            while True:
                n += 1
                flag = x.new_full((b, 1), 1.0 if n == 1 else 0.0)
                inp = torch.cat([flag, x[:, t]], 1)
                if self.lstm:
                    h_new, c_new = self.cell(inp, (h, c))
                else:
                    h_new = c_new = self.cell(inp, h)
                p = torch.sigmoid(self.halt(h_new))[:, 0]
                if n == self.m:
                    stop = running
                else:
                    stop = running & (total + p >= 1 - self.eps)
                cont = running & ~stop
                w = torch.where(stop, 1 - total, torch.where(cont, p, torch.zeros_like(p)))
                h_avg = h_avg + w[:, None] * h_new
                c_avg = c_avg + w[:, None] * c_new
                remainder = torch.where(stop, 1 - total, remainder)
                n_steps = n_steps + running.float()
                total = total + torch.where(cont, p, torch.zeros_like(p))
                h = torch.where(running[:, None], h_new, h)
                c = torch.where(running[:, None], c_new, c)
                running = cont
                if not running.any():
                    break
            h, c = h_avg, c_avg
            ys.append(h_avg)
            costs.append(n_steps + remainder)
        return self.out(torch.stack(ys, 1)), torch.stack(costs, 1)


class NaivePonderNet(nn.Module):
    """PonderNet (Banino et al. 2021) the straightforward way: N steps, a prediction each."""

    def __init__(self, inputs: int, hidden: int, outputs: int, lstm: bool, n: int):
        super().__init__()
        self.lstm = lstm
        self.cell = (nn.LSTMCell if lstm else nn.RNNCell)(inputs + 1, hidden)
        self.halt = nn.Linear(hidden, 1)
        self.out = nn.Linear(hidden, outputs)
        self.n, self.hidden = n, hidden

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x ``[B, 1, F]`` (one token, as PonderNet's parity) -> every step's logits
        ``[B, 1, N, O]`` and p ``[B, 1, N]``."""
        b = x.shape[0]
        h = x.new_zeros(b, self.hidden)
        c = x.new_zeros(b, self.hidden)
        logits, lambdas = [], []
        for n in range(self.n):
            flag = x.new_full((b, 1), 1.0 if n == 0 else 0.0)
            inp = torch.cat([flag, x[:, 0]], 1)
            if self.lstm:
                h, c = self.cell(inp, (h, c))
            else:
                h = self.cell(inp, h)
            logits.append(self.out(h))
            lam = torch.sigmoid(self.halt(h))[:, 0]
            lambdas.append(torch.ones_like(lam) if n == self.n - 1 else lam)
        lam = torch.stack(lambdas, 1)  # (B, N)
        not_yet = torch.cumprod(torch.cat([torch.ones_like(lam[:, :1]), 1 - lam[:, :-1]], 1), 1)
        return torch.stack(logits, 1).unsqueeze(1), (lam * not_yet).unsqueeze(1)


class NaiveRepeat(nn.Module):
    """Repeat-RNN (Fojo et al. 2018): every token fed rho times with a first-repeat flag."""

    def __init__(self, inputs: int, hidden: int, outputs: int, lstm: bool, rho: int):
        super().__init__()
        self.rnn = (nn.LSTM if lstm else nn.RNN)(inputs + 1, hidden, batch_first=True)
        self.out = nn.Linear(hidden, outputs)
        self.rho = rho

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        b, t, _ = x.shape
        xr = x.repeat_interleave(self.rho, dim=1)
        flag = torch.zeros(b, t * self.rho, 1, device=x.device)
        flag[:, :: self.rho] = 1.0
        out, _ = self.rnn(torch.cat([flag, xr], 2))
        cost = torch.full((b, t), float(self.rho), device=x.device)
        return self.out(out[:, self.rho - 1 :: self.rho]), cost


def copy_weights(naive: nn.Module, net: nn.Module) -> nn.Module:
    """Load a ``TaskNet``'s weights into the naive module of the same config."""
    renames = {
        "core.cell.": "cell.",
        "core.halting.": "halt.",
        "core.rnn.": "rnn.",
        "readout.": "out.",
    }
    state = {}
    for key, value in net.state_dict().items():
        for old, new in renames.items():
            if key.startswith(old):
                key = new + key[len(old) :]
                break
        state[key] = value.clone()
    naive.load_state_dict(state)
    return naive


def naive_loss(task, logits: torch.Tensor, y: torch.Tensor, cost: torch.Tensor, tau: float):
    """Task loss + tau * mean ponder cost, written with the usual PyTorch losses."""
    if task.output_size == 1:
        task_loss = F.binary_cross_entropy_with_logits(logits[..., 0], y.float())
    else:
        classes = task.groups[-1]
        # ponder.tasks.IGNORE (-100) is cross_entropy's default ignore_index
        task_loss = F.cross_entropy(logits.reshape(-1, classes), y.reshape(-1))
    return task_loss + tau * cost.mean()


def naive_pondernet_loss(
    logits: torch.Tensor, y: torch.Tensor, p: torch.Tensor, beta: float, lambda_p: float
) -> torch.Tensor:
    """Parity's PonderNet loss, written plainly: sum_n p_n BCE(yhat_n) + beta KL(p || p_G)."""
    n = p.shape[-1]
    target = y.float().unsqueeze(-1).expand(*p.shape)
    rec = (p * F.binary_cross_entropy_with_logits(logits[..., 0], target, reduction="none")).sum(-1)
    steps = torch.arange(n, dtype=p.dtype, device=p.device)
    prior = lambda_p * (1 - lambda_p) ** steps
    prior = prior / prior.sum()
    kl = (p * (torch.log(p) - torch.log(prior))).sum(-1)
    return (rec + beta * kl).mean()


def act_reference() -> Reference:
    return Reference(
        build=lambda c, task: NaiveACT(
            task.input_size, c.hidden, task.output_size, c.cell == "lstm", c.epsilon, c.max_ponder
        ),
        loss=lambda task, logits, cost, y, c: naive_loss(task, logits, y, cost, c.tau),
    )


def repeat_reference(rho_of: Callable[[Any], int]) -> Reference:
    return Reference(
        build=lambda c, task: NaiveRepeat(
            task.input_size, c.hidden, task.output_size, c.cell == "lstm", rho_of(c)
        ),
        loss=lambda task, logits, cost, y, c: naive_loss(task, logits, y, cost, 0.0),
    )


def pondernet_reference() -> Reference:
    return Reference(
        build=lambda c, task: NaivePonderNet(
            task.input_size, c.hidden, task.output_size, c.cell == "lstm", c.max_ponder
        ),
        loss=lambda task, logits, p, y, c: naive_pondernet_loss(logits, y, p, c.beta, c.lambda_p),
    )


def naive_model(config: Any, task: Any, reference: Reference) -> nn.Module:
    """``reference``'s module for ``config``; its weights come from ``copy_weights``
    (PyTorch's own init draws are made on a forked global RNG, so building one changes no
    random stream)."""
    if config.cell not in ("rnn", "lstm"):
        raise ValueError("the naive reference covers RNN and LSTM cells")
    with torch.random.fork_rng(devices=[]):
        return reference.build(config, task)
