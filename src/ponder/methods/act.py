"""Adaptive Computation Time (A. Graves, "Adaptive Computation Time for Recurrent Neural
Networks", arXiv 1603.08983, 2016), as D. Fojo, V. Campos and X. Giro-i-Nieto's released code
uses it ("Comparing Fixed and Adaptive Computation Time for Recurrent Neural Networks", 2018).

For every input token x_t the wrapped cell S is applied n = 1, 2, ..., N(t) times; a halting unit
reads each intermediate output and the token's state and output are the halting-probability
weighted means of the intermediate ones:

    x_t^n = (delta_{n,1}, x_t)                        first-step flag, the first input column
    s_t^n = S(s_t^{n-1}, x_t^n),   s_t^0 = s_{t-1}    y_t^n = h of s_t^n
    h_t^n = sigmoid(W_h y_t^n + b_h)                  halting unit
    N(t)  = min(M, min{n' : sum_{n<=n'} h_t^n >= 1 - eps})
    R(t)  = 1 - sum_{n<N(t)} h_t^n                    remainder
    p_t^n = h_t^n for n < N(t),  p_t^N(t) = R(t)      halting probabilities, sum to 1
    s_t   = sum_n p_t^n s_t^n,   y_t = sum_n p_t^n y_t^n
    rho_t = N(t) + R(t)                               ponder cost, gradient through R only

Details that public ports get wrong and that decide results: the halting test at step n includes
h_t^n itself; R carries gradient (through the earlier h's) while the last h_t^N(t) gets none; at
the cap M the weights still sum to 1 (p^M = R); for an LSTM both h and c are averaged.

Halting is per sample: a sample that has halted keeps its state and output while the others go
on, and the loop for a token ends when every sample has halted. Each ponder step computes only
the samples still running (gathered into a compact set), so the few samples that ponder long do
not make the whole batch pay for every step. For an ensemble of K runs (``training/ensemble.py``)
the compact set is also over runs: a run none of whose samples still ponders drops out of the
step (its weights are no longer gathered), so a step costs about what its members ponder, not
K times its slowest member (runs drop out once at least half of those computed are done).

For an ``nn.RNNCell`` with tanh and an ``nn.LSTMCell``, the loop runs without autograd and its
backward is written out (``kernels/act_rnn.py``, ``kernels/act_lstm.py``): a ponder step of a
few rows then costs a few operations, not autograd's seventy to a hundred, and an ensemble's
running (run, sample) pairs are one ragged set of rows, no run padded to the rows of the
longest.

Deciding that the loop has ended reads one number per ponder step on the host. A CUDA graph
cannot, so ``unroll=U`` runs exactly U ponder steps over every sample instead (halted ones masked,
p = 0) and reports ``overflow``, a device flag that is True when some sample had not halted after
U steps: then the result is not ACT's and the caller must redo the step exactly (``graphs.py``
does). With U >= M it never overflows: the cap halts every sample.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from ..kernels.act_lstm import lstm_act
from ..kernels.act_rnn import tanh_act
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
    take_rows,
)
from .naive import act_reference
from .spec import Knob, MethodSpec, fmt_tau


class ACT(Pondering):
    r"""Wrap a recurrent cell so that it ponders a data-dependent number of steps per token.

    Args:
        cell: a module with the ``nn.RNNCell`` call convention (``cell(x, state) -> state``,
            the state a tensor or a tuple whose first element is the output; ``input_size``
            and ``hidden_size`` attributes): ``nn.RNNCell``, ``GRUCell``, ``LSTMCell`` or a
            researcher's own. Its ``input_size`` is the data's feature size + 1 (the
            first-step flag is prepended as the first column).
        epsilon: eps of the halting threshold 1 - eps, in (0, 1).
        max_steps: M, the most ponder steps per token (>= 1).
        halting_bias: initial value of b_h (Graves: 1.0, so that early steps do not halt at once
            by chance and the network learns to ponder).

    Inputs: ``x, state``
        x: ``[batch, time, features]``.
        state: the cell's state, ``[batch, hidden]`` or for an LSTM ``(h, c)``; zeros if None
            (a tuple-state custom cell needs one, or an ``initial_state(x)`` method).

    Outputs: ``outputs, state, info``
        outputs: ``[batch, time, hidden]``, y_t for every token.
        state: s_T, the state after the last token, in the cell's state type.
        info: a dict of ``[batch, time]`` tensors: ``steps`` N(t) (int64), ``remainder`` R(t) and
            ``ponder_cost`` rho_t = N(t) + R(t) (differentiable through R only); with
            ``return_probs=True`` also ``probs``, p_t^n as ``[batch, time, max N]``, zero-padded;
            with ``unroll=U`` also ``overflow``, a bool scalar: some sample needed more than U
            steps, so the outputs are not ACT's (see the module docstring).
    """

    def __init__(
        self,
        cell: nn.Module,
        epsilon: float = 0.01,
        max_steps: int = 100,
        halting_bias: float = 1.0,
    ) -> None:
        super().__init__("ACT", cell, max_steps, halting_bias)
        if not 0.0 < epsilon < 1.0:
            raise ValueError(f"epsilon must be in (0, 1), got {epsilon}")
        self.epsilon = float(epsilon)

    def forward(
        self,
        x: torch.Tensor,
        state: State | None = None,
        return_probs: bool = False,
        unroll: int | None = None,
    ) -> tuple[torch.Tensor, State, dict[str, torch.Tensor]]:
        self.check_input(x)
        batch, time, _ = x.shape
        if state is None:
            state = initial_state(self.cell, x)
        outputs, steps, remainders, probs, overflow = [], [], [], [], []
        for t in range(time):
            y, state, n_t, r_t, p_t, o_t = self._ponder(x[:, t], state, unroll, return_probs)
            outputs.append(y)
            steps.append(n_t)
            remainders.append(r_t)
            probs.append(p_t)
            overflow.append(o_t)
        steps_bt = torch.stack(steps, 1)  # (B, T)
        remainder = torch.stack(remainders, 1)  # (B, T)
        info = {
            "steps": steps_bt,
            "remainder": remainder,
            "ponder_cost": steps_bt.to(remainder.dtype) + remainder,  # rho_t = N(t) + R(t)
        }
        if unroll is not None:
            info["overflow"] = torch.stack(overflow).any()
        if return_probs:
            width = max(p.shape[1] for p in probs)
            info["probs"] = torch.stack(
                [nn.functional.pad(p, (0, width - p.shape[-1])) for p in probs], 1
            )  # (B, T, max N)
        return torch.stack(outputs, 1), state, info

    def _ponder(self, x_t: torch.Tensor, s_prev: State, unroll: int | None, probs: bool):
        cell = self.cell
        tanh_rnn = type(cell) is nn.RNNCell and cell.nonlinearity == "tanh"
        written_out = tanh_rnn or type(cell) is nn.LSTMCell
        if written_out and unroll is None and not probs:  # the hand-written backward
            return self._written_out(x_t, s_prev)
        first, later = flagged(x_t)  # x_t^1, x_t^n>1

        def step(n: int, s: State, rows: torch.Tensor | None, members: None) -> State:
            return self.cell(take_rows(first if n == 1 else later, rows), s)

        def halt(y: torch.Tensor, members: None) -> torch.Tensor:
            return torch.sigmoid(self.halting(y)).squeeze(-1)

        return ponder_token(step, halt, s_prev, self.epsilon, self.max_steps, unroll, probs)

    def _written_out(self, x_t: torch.Tensor, s_prev: State):
        """``_ponder`` for an ``nn.RNNCell`` (tanh) or ``nn.LSTMCell`` through
        ``kernels.act_rnn`` or ``kernels.act_lstm``, as one run of K."""
        cell = self.cell
        w_ih = cell.weight_ih
        bias = cell.bias_ih + cell.bias_hh if cell.bias else None
        g = nn.functional.linear(x_t, w_ih[:, 1:], bias)  # x_t's part, the flag's column apart
        g1 = g + w_ih[:, 0]
        halting = self.halting.weight[None], self.halting.bias[None]
        limits = self.epsilon, self.max_steps
        if isinstance(s_prev, tuple):  # (h, c) of an LSTM
            h, c, steps, remainder = lstm_act(
                g1[None], g[None], s_prev[0][None], s_prev[1][None], cell.weight_hh[None],
                *halting, *limits,
            )  # fmt: skip
            return h[0], (h[0], c[0]), steps[0], remainder[0], None, None
        y, steps, remainder = tanh_act(
            g1[None], g[None], s_prev[None], cell.weight_hh[None], *halting, *limits
        )
        return y[0], y[0], steps[0], remainder[0], None, None


class Gathered:
    """Tensors at a compact set of ``ponder_token`` (runs ``members``, sample ``rows``; None for
    all), each gathered once: the set changes only a few times per token, so what was gathered
    for it is kept until it changes. ``gathered(name, t, members, rows)`` is ``t`` there. The
    cache holds the tensors it compared, so an ``is`` test cannot be fooled by a new tensor at
    an old address."""

    def __init__(self) -> None:
        self._hits: dict[str, tuple] = {}

    def __call__(
        self,
        name: str,
        t: torch.Tensor,
        members: torch.Tensor | None,
        rows: torch.Tensor | None = None,
    ) -> torch.Tensor:
        if members is None and rows is None:
            return t
        hit = self._hits.get(name)
        if hit is None or hit[0] is not t or hit[1] is not members or hit[2] is not rows:
            part = t if members is None else t[members]
            hit = self._hits[name] = (t, members, rows, take_rows(part, rows))
        return hit[3]


def _flat_index(members: torch.Tensor, rows: torch.Tensor | None, batch: int) -> torch.Tensor:
    """The (run, sample) pairs of the compact set as indices into a flattened ``[K * B]``."""
    cols = torch.arange(batch, device=members.device) if rows is None else rows
    return (members.unsqueeze(1) * batch + cols).flatten()


def _add_rows(
    full: torch.Tensor,
    rows: torch.Tensor | None,
    part: torch.Tensor,
    flat: torch.Tensor | None = None,
) -> torch.Tensor:
    """``full`` plus ``part`` added at ``rows`` (along the sample axis of ``part``'s rank); with
    ``flat`` (``_flat_index``), ``full [K, B, ...]`` plus ``part [K', R, ...]`` at those pairs."""
    if flat is not None:
        added = full.flatten(0, 1).index_add(0, flat, part.flatten(0, 1))
        return added.view(full.shape)
    if rows is None:
        return full + part
    if part.dim() == rows.dim():  # per-sample values [..., R]
        return full.scatter_add(-1, rows, part)
    return full.scatter_add(-2, rows.unsqueeze(-1).expand_as(part), part)


def _add_sums(totals: tuple, sums: tuple, rows: torch.Tensor | None, flat: torch.Tensor | None):
    """Per-sample ``(s_t, R(t), N(t))`` plus the compact set's sums, added at its rows."""
    (s_mean, remainder, steps), (c_mean, c_rem, c_steps) = totals, sums
    if s_mean is None:  # nothing summed yet: the first set, which is every row, is the sum
        s_mean = c_mean
    else:
        s_mean = map_state(lambda acc, c: _add_rows(acc, rows, c, flat), s_mean, c_mean)
    return s_mean, _add_rows(remainder, rows, c_rem, flat), _add_rows(steps, rows, c_steps, flat)


def ponder_token(
    step: Callable[[int, State, torch.Tensor | None, torch.Tensor | None], State],
    halt: Callable[[torch.Tensor, torch.Tensor | None], torch.Tensor],
    s_prev: State,
    epsilon: float,
    max_steps: int,
    unroll: int | None = None,
    probs: bool = True,
):
    """ACT for one token: ponder until every sample has halted.

    ``step(n, s, rows, members)`` is s_t^n = S(s, x_t^n) for the sample rows ``rows``
    (``[..., R]`` indices into the batch, None for all; the caller owns x_t and its first-step
    flag) of the runs ``members`` (``[K']`` indices into an ensemble's K, None for all), and
    ``halt(y, members) -> h`` the halting unit. States are ``[B, hidden]`` (a batch) or
    ``[K, B, hidden]`` (runs x batch, an ensemble). Returns y_t ``[..., B, hidden]``, s_t, N(t)
    and R(t) ``[..., B]``, p_t ``[..., B, N]`` (None unless ``probs``) and ``overflow`` (None,
    or with ``unroll`` a bool scalar: some sample was still running after ``unroll`` steps).

    Only the samples still running are computed: once at most half of the rows computed still
    run, they are gathered into ``rows`` (per run, padded with halted rows whose p is 0), and
    once at least half of the runs have no sample still running those runs leave ``members``,
    so a few samples that ponder long cost little. Halted samples' s_t and y_t no longer
    change. With ``unroll`` every sample is computed on each of exactly
    ``min(unroll, max_steps)`` steps and nothing is read on the host.
    """
    y_prev = output_of(s_prev)
    lead = y_prev.shape[:-1]  # (..., B)
    one_minus_eps = 1.0 - epsilon
    # Per row of the compact set (all B rows at first): still running, sum_{n'<n} h_t^n'.
    rows: torch.Tensor | None = None
    members: torch.Tensor | None = None  # an ensemble's runs still computed (None: all)
    flat: torch.Tensor | None = None  # with members: the compact set's (run, sample) pairs
    running = torch.ones(lead, dtype=torch.bool, device=y_prev.device)
    cum_h = y_prev.new_zeros(lead)  # (with gradient)
    # Per sample: N(t), R(t) and s_t = sum_n p_t^n s_t^n (y_t is its output part). The sums
    # run over the compact set's rows (c_*) and are added into these per-sample totals only
    # when that set changes: a ponder step then touches only the rows it computes.
    steps = torch.zeros(lead, dtype=torch.long, device=y_prev.device)
    remainder = y_prev.new_zeros(lead)
    s_mean = None  # (zero: the sums start at a set's first step, so no zeros are written)
    c_steps, c_rem, c_mean = steps, remainder, None  # at first the compact set is every row
    p_list = []
    s = s_prev
    last = max_steps if unroll is None else min(unroll, max_steps)
    for n in range(1, last + 1):
        s = step(n, s, rows, members)  # s_t^n of the compact rows
        h = halt(output_of(s), members)  # h_t^n from y_t^n
        # The test includes h_t^n: a sample halts at the first n with sum_{n'<=n} h >= 1 - eps,
        # or at the cap M.
        cum_next = cum_h + h  # sum_{n'<=n} h_t^n'
        if n == max_steps:
            halts = running
        else:
            halts = running & (cum_next >= one_minus_eps)
        going_on = running & ~halts
        # p_t^n: h_t^n while going on, R(t) = 1 - sum_{n'<n} h when halting, 0 for padding.
        # The last h_t^N gets no gradient: where() takes 1 - cum_h for halting samples.
        r_n = torch.where(halts, 1.0 - cum_h, 0.0)
        p = torch.where(going_on, h, r_n)
        p_col = p.unsqueeze(-1)
        if c_mean is None:
            c_mean = map_state(lambda new, w=p_col: w * new, s)
        else:
            c_mean = map_state(lambda acc, new, w=p_col: torch.addcmul(acc, w, new), c_mean, s)
        c_rem = c_rem + r_n
        c_steps = c_steps + running
        if probs:
            p_list.append(_add_rows(torch.zeros_like(remainder), rows, p, flat))
        cum_h = torch.where(going_on, cum_next, cum_h)
        running = going_on
        if unroll is not None:
            continue
        counts = running.sum(-1).tolist()  # the one host sync per ponder step
        left = max(counts) if isinstance(counts, list) else counts
        # The compact set shrinks when that at least halves it: runs with nothing left to ponder
        # drop out once they are half of those computed, rows once at most half still run.
        # Changing the set costs kernels of its own (and their backward); until then halted
        # rows ride along with p = 0, so a token changes its set about log2(B) times, not B.
        drop = isinstance(counts, list) and 2 * counts.count(0) >= len(counts)
        shrink = 2 * left <= running.shape[-1]
        if left == 0:
            break
        if not (drop or shrink):
            continue
        # The compact set changes: its sums go into the totals, and start afresh.
        s_mean, remainder, steps = _add_sums(
            (s_mean, remainder, steps), (c_mean, c_rem, c_steps), rows, flat
        )
        if drop:
            keep = torch.tensor([i for i, c in enumerate(counts) if c], device=running.device)
            members = keep if members is None else members[keep]
            running, cum_h = running[keep], cum_h[keep]
            rows = None if rows is None else rows[keep]
            s = map_state(lambda t, i=keep: t[i], s)
        if shrink:  # keep only the rows still running (first, per index, padded to ``left``)
            order = torch.argsort((~running).to(torch.int8), dim=-1, stable=True)[..., :left]
            rows = order if rows is None else rows.gather(-1, order)
            running, cum_h = running.gather(-1, order), cum_h.gather(-1, order)
            s = map_state(lambda t, o=order: take_rows(t, o), s)
        if members is not None:
            flat = _flat_index(members, rows, lead[-1])
        c_mean = None
        c_rem, c_steps = torch.zeros_like(cum_h), torch.zeros_like(running, dtype=torch.long)
    s_mean, remainder, steps = _add_sums(
        (s_mean, remainder, steps), (c_mean, c_rem, c_steps), rows, flat
    )
    overflow = None if unroll is None else running.any()
    p_t = torch.stack(p_list, -1) if probs else None
    return output_of(s_mean), s_mean, steps, remainder, p_t, overflow


# --------------------------------------------------------------------------------------------
# ACT in a task network: one run, K stacked runs, the loss, and its record in the table


def build(spec: Any) -> ACT:
    """The one-run core for a ``ModelSpec``: its cell (the flag as one more input) in ACT."""
    cell = CELLS[spec.cell](spec.input_size + 1, spec.hidden)
    return ACT(cell, spec.epsilon, spec.max_ponder, spec.halting_bias)


def forward(
    net: Any, x: torch.Tensor, unroll: int | None = None, uniforms: torch.Tensor | None = None
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """A task network's logits and info: ``ponder_steps`` N(t), ``ponder_cost`` rho_t =
    N(t) + R(t) (what the loss penalises) and ``repetitions`` N(t) - 1 + R(t) (what the Fojo
    paper reports), ``[B, T]``; with ``unroll``, ``overflow``."""
    y, _, act_info = net.core(x, unroll=unroll)
    steps = act_info["steps"].to(y.dtype)
    info = {
        "ponder_steps": steps,
        "ponder_cost": act_info["ponder_cost"],
        "repetitions": steps - 1.0 + act_info["remainder"].detach(),
    }
    if unroll is not None:
        info["overflow"] = act_info["overflow"]
    return net.readout(y), info


def stacked(
    ens: Any, x: torch.Tensor, unroll: int | None = None, uniforms: torch.Tensor | None = None
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """``forward`` for K runs stacked (``ensemble.Ensemble``): ``ponder_token`` over runs x
    samples, so a token's loop ends when every sample of every run has halted; for the tanh
    RNN and LSTM cells the ragged loop with its backward written out (``kernels.act_rnn``,
    ``kernels.act_lstm``), except with a fixed unroll."""
    spec = ens.spec
    w_ih, w_hh, b_ih, b_hh = ens.weights("core.cell")
    fold = spec.cell != "gru"  # b_hh joins the input part (see common.recur)
    w_halt, b_halt = ens.p("core.halting.weight"), ens.p("core.halting.bias")
    w_flag = w_ih[:, :, 0].unsqueeze(1)  # (K, 1, G*H): the first-step flag's column
    # x_t's projection is the same on every ponder step: compute it once per token.
    g_tokens = linear(x, w_ih[:, :, 1:], b_ih + b_hh if fold else b_ih).unbind(2)

    of = Gathered()  # weights and inputs at the compact set of runs and samples

    def halt(y, members):
        w, b = of("w_halt", w_halt, members), of("b_halt", b_halt, members)
        return torch.sigmoid(linear(y, w, b)).squeeze(-1)

    state = ens.zero_state(x)
    limits = (spec.epsilon, spec.max_ponder)
    outs, steps, rems, overflow = [], [], [], []
    for t in range(x.shape[2]):
        g_first, g_later = g_tokens[t] + w_flag, g_tokens[t]

        def step(n, s, rows, members, g_first=g_first, g_later=g_later):
            h = output_of(s)
            gi = of("g", g_later, members, rows) if n > 1 else of("g1", g_first, members, rows)
            b = of("b_hh", b_hh, members) if not fold else None  # folded into gi otherwise
            return recur(spec.cell, gi, h, of("w_hh", w_hh, members), b, s)

        if spec.cell == "rnn" and unroll is None:  # the hand-written backward
            y, n_t, r_t = tanh_act(g_first, g_later, state, w_hh, w_halt, b_halt, *limits)
            state, o_t = y, None
        elif spec.cell == "lstm" and unroll is None:
            y, c, n_t, r_t = lstm_act(g_first, g_later, *state, w_hh, w_halt, b_halt, *limits)
            state, o_t = (y, c), None
        else:
            y, state, n_t, r_t, _, o_t = ponder_token(
                step, halt, state, *limits, unroll, probs=False
            )
        overflow.append(o_t)
        outs.append(y)
        steps.append(n_t)
        rems.append(r_t)
    n = torch.stack(steps, 2).to(x.dtype)  # (K, B, T)
    r = torch.stack(rems, 2)
    info = {"ponder_steps": n, "ponder_cost": n + r, "repetitions": n - 1.0 + r.detach()}
    if unroll is not None:
        info["overflow"] = torch.stack(overflow).any()
    y = torch.stack(outs, 2)  # (K, B, T, H)
    return linear(y, ens.p("readout.weight"), ens.p("readout.bias")), info


def loss(
    task: Any,
    logits: torch.Tensor,
    targets: torch.Tensor,
    info: dict[str, torch.Tensor],
    weights: dict[str, Any],
    ponder_loss: str = "mean",
    tokens: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per sequence ``(loss, task_loss)``: the task loss (its mean over the sequence's
    classifications) + tau * the ponder cost rho_t = N(t) + R(t), averaged (the authors' code)
    or summed (Graves, ``ponder_loss="sum"``) over the sequence's own tokens (``tokens``), so
    that padding neither dilutes the penalty nor is rewarded for halting."""
    task_loss = task.loss(logits, targets)
    ponder = per_token(info["ponder_cost"], tokens, ponder_loss)  # rho_t, (..., T) -> (...)
    return task_loss + weights["tau"] * ponder, task_loss


SPEC = MethodSpec(
    name="act",
    title="ACT",
    fields=("tau", "epsilon", "max_ponder", "halting_bias", "ponder_loss"),
    knob=Knob("tau", "tau", "tau", fmt=fmt_tau, descending=True),
    color="tab:orange",
    build=build,
    forward=forward,
    stacked=stacked,
    loss=loss,
    loss_weights=lambda config: {"tau": config.tau},
    max_steps=lambda config: config.max_ponder,
    defaults={"halting_bias": 1.0},  # Graves: b_h starts at 1 so that early steps do not halt
    symbols={"max_ponder": "M"},
    per_member=("tau",),
    halts_on_host=True,
    cost_follows_halting=True,
    repetitions_label="ponder N(t) - 1 + R(t)",  # the paper's "repetitions"
    repetitions_name="ponder",
    ponder_pressure=lambda config: config.tau,
    naive=act_reference(),
)
