"""PonderNet (A. Banino, J. Balaguer, C. Blundell, "PonderNet: Learning to Ponder", arXiv
2107.05407, 2021), over a recurrent cell, with ACT's step convention.

For every input token x_t the wrapped cell S runs n = 1..N steps; every step predicts, and
halting is a distribution over the steps:

    x_t^n      = (delta_{n,1}, x_t)                   first-step flag, the first input column
    s_t^n      = S(s_t^{n-1}, x_t^n),  s_t^0 = s_{t-1}^{n*}      y_t^n = the output of s_t^n
    lambda_t^n = sigmoid(z_t^n),  z_t^n = W_l y_t^n + b_l       halting given not halted before
    lambda_t^N = 1                                     so that p sums to exactly 1
    p_t^n      = lambda_t^n prod_{j<n} (1 - lambda_t^j)
    log p_t^n  = logsigmoid(z^n) + sum_{j<n} logsigmoid(-z^j)    (log lambda^N = 0)
    n*         ~ p_t                                   the halting step, sampled
    L          = sum_n p_t^n L(y_t, yhat_t^n) + beta KL(p_t || p_G)    (``regulariser``)

p is computed in log space from the logits, never as log(p) of a product that may underflow,
so halting logits of +-60 give finite losses and gradients. The prior p_G is the geometric
distribution lambda_p (1 - lambda_p)^(n-1) truncated to 1..N and renormalised, and the
regulariser is KL(p || p_G), not KL(p_G || p) (which ``nn.KLDivLoss(p.log(), p_G)`` computes).

The unroll always runs all N steps for every sample (training needs every step's prediction,
and a fixed length replays as a CUDA graph). The sampled halting step is what an inference
that stops at the first halt computes: a sample halts at step n when u_n < lambda_n, u_n
uniform, which draws n* from p exactly. Sequences of more than one token continue from the
state at the halting step n* (ponder's extension; the paper defines one input).
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

from .act import Pondering, State, _map, _output, flagged, initial_state


def log_halting(z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(lambdas, log_p)`` ``[..., N]`` from halting logits ``z [..., N]``; lambda^N := 1."""
    log_lam = F.logsigmoid(z)
    log_not = F.logsigmoid(-z)  # log(1 - lambda^n)
    last = torch.zeros_like(z[..., -1:])
    log_lam = torch.cat([log_lam[..., :-1], last], -1)  # log lambda^N = 0
    # sum_{j<n} log(1 - lambda^j): an exclusive cumulative sum
    before = torch.cat([last, torch.cumsum(log_not[..., :-1], -1)], -1)
    lambdas = torch.cat([torch.sigmoid(z[..., :-1]), last + 1.0], -1)
    return lambdas, log_lam + before


def sample_halting(lambdas: torch.Tensor, uniforms: torch.Tensor) -> torch.Tensor:
    """The halting step n* (int64, 1..N) of each ``[..., N]`` row: the first n with
    u_n < lambda_n, which is a draw from p (lambda^N = 1 halts every row by N)."""
    halts = uniforms < lambdas
    halts[..., -1] = True
    return halts.to(torch.int8).argmax(-1) + 1  # argmax finds the first maximum


def log_prior(lambda_p: float | torch.Tensor, steps: int, like: torch.Tensor) -> torch.Tensor:
    """log p_G^n for n = 1..N: the geometric prior truncated to N steps and renormalised;
    ``lambda_p`` a float or a tensor broadcasting against ``like``'s leading shape.

    A float stays a Python number (its logs are taken with ``math``): a tensor made from it
    here would be a copy from the host inside the training step, which a CUDA graph cannot
    record (``graphs.HostData``)."""
    n = torch.arange(steps, dtype=like.dtype, device=like.device)  # n - 1
    if isinstance(lambda_p, torch.Tensor):
        lam = lambda_p.to(like.dtype).unsqueeze(-1)
        log_lam, log_q = torch.log(lam), torch.log1p(-lam)  # log(1 - lambda_p); -inf at 1
        norm = torch.log(-torch.expm1(steps * log_q))  # log(1 - (1 - lambda_p)^N)
    else:
        lam = float(lambda_p)
        log_lam, log_q = math.log(lam), math.log1p(-lam) if lam < 1 else -math.inf
        norm = math.log(-math.expm1(steps * log_q))
    # (n - 1) log(1 - lambda_p), with 0 * -inf taken as 0 at n = 1
    tail = torch.where(n == 0, 0.0, n * log_q)
    return log_lam + tail - norm


def regulariser(log_p: torch.Tensor, lambda_p: float | torch.Tensor) -> torch.Tensor:
    """KL(p || p_G) ``[...]`` of halting distributions ``log_p [..., N]`` against the
    truncated, renormalised geometric prior with parameter ``lambda_p`` in (0, 1]."""
    prior = log_prior(lambda_p, log_p.shape[-1], log_p)
    p = log_p.exp()
    # p log(p / p_G), with 0 where p = 0 (also when log p = -inf)
    terms = torch.where(p > 0, p * (log_p - prior), 0.0)
    return terms.sum(-1)


def expected_steps(p: torch.Tensor) -> torch.Tensor:
    """sum_n n p^n ``[...]`` of ``p [..., N]``."""
    n = torch.arange(1, p.shape[-1] + 1, dtype=p.dtype, device=p.device)
    return (p * n).sum(-1)


class PonderNet(Pondering):
    r"""Wrap a recurrent cell so that it ponders with a learned halting distribution.

    Args:
        cell: a module with the ``nn.RNNCell`` call convention (``cell(x, state) -> state``,
            the state a tensor or a tuple whose first element is the output; ``input_size``
            and ``hidden_size`` attributes), whose ``input_size`` is the data's feature size
            + 1 (the first-step flag is prepended as the first column).
        max_steps: N, the steps computed per token (>= 1).
        halting_bias: initial value of b_l.

    Inputs: ``x, state, generator``
        x: ``[batch, time, features]``.
        state: the cell's initial state (zeros if None; a tuple-state custom cell needs one, or
            an ``initial_state(x)`` method).
        generator: the ``torch.Generator`` the halting steps are drawn from (None: torch's).
        uniforms: ``[batch, time, N]`` uniforms to draw the halting steps with instead.

    Outputs: ``outputs, state, info``
        outputs: ``[batch, time, N, hidden]``, y_t^n after every step.
        state: the state after the last token's halting step, in the cell's state type.
        info: ``[batch, time, N]`` tensors ``lambdas``, ``p`` and ``log_p``; ``halting_step``
            ``[batch, time]`` (int64, sampled from p) and ``expected_steps`` ``[batch, time]``.
    """

    def __init__(self, cell: nn.Module, max_steps: int = 20, halting_bias: float = 0.0) -> None:
        super().__init__("PonderNet", cell, max_steps, halting_bias)

    def forward(
        self,
        x: torch.Tensor,
        state: State | None = None,
        generator: torch.Generator | None = None,
        uniforms: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, State, dict[str, torch.Tensor]]:
        self.check_input(x)
        batch, time, _ = x.shape
        n_steps = self.max_steps
        if uniforms is None:
            uniforms = torch.rand(
                batch, time, n_steps, generator=generator, device=x.device, dtype=x.dtype
            )
        if state is None:
            state = initial_state(self.cell, x)
        outputs, lambdas, log_p, halting = [], [], [], []
        for t in range(time):
            first, later = flagged(x[:, t])
            s, states = state, []
            for n in range(n_steps):
                s = self.cell(first if n == 0 else later, s)  # s_t^n
                states.append(s)
            ys = torch.stack([_output(s) for s in states], 1)  # (B, N, H)
            lam_t, log_p_t = log_halting(self.halting(ys).squeeze(-1))  # (B, N) each
            n_star = sample_halting(lam_t.detach(), uniforms[:, t])  # (B,)
            # the next token starts from s_t^{n*}
            pick = (n_star - 1).view(1, batch, 1)

            def at_halt(*parts: torch.Tensor, pick: torch.Tensor = pick) -> torch.Tensor:
                return torch.stack(parts).gather(0, pick.expand(1, *parts[0].shape))[0]

            state = _map(at_halt, *states)
            outputs.append(ys)
            lambdas.append(lam_t)
            log_p.append(log_p_t)
            halting.append(n_star)
        log_p_bt = torch.stack(log_p, 1)  # (B, T, N)
        p = log_p_bt.exp()
        info = {
            "lambdas": torch.stack(lambdas, 1),
            "p": p,
            "log_p": log_p_bt,
            "halting_step": torch.stack(halting, 1),
            "expected_steps": expected_steps(p),
        }
        return torch.stack(outputs, 1), state, info


__all__ = [
    "PonderNet",
    "expected_steps",
    "log_halting",
    "log_prior",
    "regulariser",
    "sample_halting",
]
