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
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from ..kernels.pondernet_rnn import tanh_pondernet
from .common import (
    CELLS,
    Pondering,
    State,
    flagged,
    initial_state,
    linear,
    map_state,
    output_of,
    per_token,
    recur,
)
from .naive import pondernet_reference
from .spec import Knob, MethodSpec


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
            ys = torch.stack([output_of(s) for s in states], 1)  # (B, N, H)
            lam_t, log_p_t = log_halting(self.halting(ys).squeeze(-1))  # (B, N) each
            n_star = sample_halting(lam_t.detach(), uniforms[:, t])  # (B,)
            # the next token starts from s_t^{n*}
            pick = (n_star - 1).view(1, batch, 1)

            def at_halt(*parts: torch.Tensor, pick: torch.Tensor = pick) -> torch.Tensor:
                return torch.stack(parts).gather(0, pick.expand(1, *parts[0].shape))[0]

            state = map_state(at_halt, *states)
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


# --------------------------------------------------------------------------------------------
# PonderNet in a task network: one run, K stacked runs, the loss, and its record in the table

# Devices whose stacked tanh steps take the hand-written backward (``kernels.pondernet_rnn``);
# a GPU records the autograd unroll as a CUDA graph instead (the tests empty it to check that
# path on a CPU).
HAND_WRITTEN_PONDERNET = {"cpu"}


def build(spec: Any) -> PonderNet:
    """The one-run core for a ``ModelSpec``: its cell (the flag as one more input) in
    PonderNet."""
    cell = CELLS[spec.cell](spec.input_size + 1, spec.hidden)
    return PonderNet(cell, spec.max_ponder, spec.halting_bias)


def head(
    step_logits: torch.Tensor, core: dict[str, torch.Tensor]
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """PonderNet's logits and info from every step's logits ``[..., T, N, O]`` and its core's
    info: the prediction is the one at the sampled halting step; ``ponder_steps`` and
    ``repetitions`` are that step (the steps an inference computes), ``ponder_cost`` the
    expected steps sum_n n p^n; ``log_p`` and ``step_logits`` are what the loss needs."""
    n_star = core["halting_step"]  # (..., T)
    index = (n_star - 1)[..., None, None].expand(*n_star.shape, 1, step_logits.shape[-1])
    logits = step_logits.gather(-2, index).squeeze(-2)
    steps = n_star.to(step_logits.dtype)
    info = {
        "ponder_steps": steps,
        "ponder_cost": core["expected_steps"],
        "repetitions": steps,
        "log_p": core["log_p"],
        "step_logits": step_logits,
    }
    return logits, info


def forward(
    net: Any, x: torch.Tensor, unroll: int | None = None, uniforms: torch.Tensor | None = None
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """A task network's logits and info (``head``): the readout of every step, the prediction
    at the halting step drawn with ``uniforms`` ``[B, T, N]``."""
    ys, _, core_info = net.core(x, uniforms=uniforms)
    return head(net.readout(ys), core_info)


def stacked(
    ens: Any, x: torch.Tensor, unroll: int | None = None, uniforms: torch.Tensor | None = None
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """``forward`` for K stacked runs (``ensemble.Ensemble``), uniforms ``[K, B, T, N]``: N
    steps per token for every run and sample."""
    spec = ens.spec
    k, b, t, _ = x.shape
    w_ih, w_hh, b_ih, b_hh = ens.weights("core.cell")
    fold = spec.cell != "gru"  # b_hh joins the input part (see common.recur)
    w_halt, b_halt = ens.p("core.halting.weight"), ens.p("core.halting.bias")
    w_flag = w_ih[:, :, 0].unsqueeze(1)  # (K, 1, G*H): the first-step flag's column
    g_tokens = linear(x, w_ih[:, :, 1:], b_ih + b_hh if fold else b_ih).unbind(2)
    b_gh = None if fold else b_hh
    if spec.cell == "rnn" and x.device.type in HAND_WRITTEN_PONDERNET:
        return _stacked_tanh(ens, g_tokens, w_flag, w_hh, w_halt, b_halt, uniforms)
    state = ens.zero_state(x)
    outs, log_p, halting = [], [], []
    for i in range(t):
        s, states = state, []
        for n in range(spec.max_ponder):
            gi = g_tokens[i] + w_flag if n == 0 else g_tokens[i]
            s = recur(spec.cell, gi, output_of(s), w_hh, b_gh, s)
            states.append(s)
        ys = torch.stack([output_of(s) for s in states], 2)
        lambdas, log_p_t = log_halting(linear(ys, w_halt, b_halt).squeeze(-1))  # (K, B, N)
        n_star = sample_halting(lambdas.detach(), uniforms[:, :, i])  # (K, B)
        if i < t - 1:  # s_t^{n*}: the next token starts there (the last one's is unused)
            pick = (n_star - 1)[None, :, :, None].expand(1, k, b, spec.hidden)

            def at_halt(*parts, pick=pick):
                return torch.stack(parts).gather(0, pick)[0]

            state = map_state(at_halt, *states)
        outs.append(ys)
        log_p.append(log_p_t)
        halting.append(n_star)
    ys = torch.stack(outs, 2)  # (K, B, T, N, H)
    step_logits = linear(ys, ens.p("readout.weight"), ens.p("readout.bias"))
    return head(step_logits, _core_info(log_p, halting))


def _stacked_tanh(ens, g_tokens, w_flag, w_hh, w_halt, b_halt, uniforms):
    """``stacked`` for the tanh RNN cell through ``kernels.pondernet_rnn``: the halting unit
    and the readout as one projection of every step's state."""
    v = torch.cat([w_halt, ens.p("readout.weight")], 1)  # (K, 1 + O, H)
    c = torch.cat([b_halt, ens.p("readout.bias")], 1)
    state = None  # a sequence starts from the zero state
    step_logits, log_p, halting = [], [], []
    for i, g in enumerate(g_tokens):
        more = i < len(g_tokens) - 1  # another token starts from a state of this one
        z, states = tanh_pondernet(g + w_flag, g, state, w_hh, v, c, ens.spec.max_ponder, more)
        lambdas, log_p_t = log_halting(z[..., 0])  # (K, B, N)
        n_star = sample_halting(lambdas.detach(), uniforms[:, :, i])  # (K, B)
        if more:  # s_t^{n*}: the next token starts there
            pick = (n_star - 1)[:, :, None, None].expand(*n_star.shape, 1, states.shape[-1])
            state = states.gather(2, pick).squeeze(2)
        step_logits.append(z[..., 1:])
        log_p.append(log_p_t)
        halting.append(n_star)
    return head(torch.stack(step_logits, 2), _core_info(log_p, halting))


def _core_info(log_p: list, halting: list) -> dict[str, torch.Tensor]:
    log_p_kbt = torch.stack(log_p, 2)  # (K, B, T, N)
    return {
        "log_p": log_p_kbt,
        "halting_step": torch.stack(halting, 2),
        "expected_steps": expected_steps(log_p_kbt.exp()),
    }


def loss(
    task: Any,
    logits: torch.Tensor,
    targets: torch.Tensor,
    info: dict[str, torch.Tensor],
    weights: dict[str, Any],
    ponder_loss: str = "mean",
    tokens: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per sequence ``(loss, task_loss)``: L_rec = sum_n p_t^n L(y_t, yhat_t^n) per token, its
    mean over the tokens with a target; plus beta * KL(p_t || p_G), averaged (or summed) over
    the sequence's own tokens (``tokens``)."""
    log_p = info["log_p"]  # (..., T, N)
    per_step, valid = task.step_losses(info["step_logits"], targets)  # (..., T, N), (..., T)
    expected = (log_p.exp() * per_step).sum(-1)  # (..., T)
    total = torch.where(valid, expected, 0.0).sum(-1)
    rec = total / valid.sum(-1).clamp(min=1).to(total.dtype)
    lam = weights["lambda_p"]
    lam = lam.unsqueeze(-1) if isinstance(lam, torch.Tensor) else lam  # (K, 1, 1) over (K, B, T)
    kl = regulariser(log_p, lam)  # (..., T)
    return rec + weights["beta"] * per_token(kl, tokens, ponder_loss), rec


SPEC = MethodSpec(
    name="pondernet",
    title="PonderNet",
    fields=("lambda_p", "beta", "max_ponder", "halting_bias", "ponder_loss"),
    knob=Knob("lambda_p", "lambda_p", "lambdap"),
    color="tab:green",
    build=build,
    forward=forward,
    stacked=stacked,
    loss=loss,
    loss_weights=lambda config: {"beta": config.beta, "lambda_p": config.lambda_p},
    max_steps=lambda config: config.max_ponder,
    # Banino et al.: N = 20 and an unbiased halting unit
    defaults={"max_ponder": 20, "halting_bias": 0.0},
    symbols={"max_ponder": "N"},
    per_member=("lambda_p", "beta"),
    draws_halting=True,
    expected_steps=True,
    figure="pondernet",
    repetitions_label="sampled halting step",
    repetitions_name="sampled halting step",
    naive=pondernet_reference(),
)
