"""ACT's token loop for a tanh RNN cell as one autograd function, its backward written out.

Why: a training step waits for the longest-pondering sample, and in ACT's tail a ponder step
computes one or a few rows, so it costs its operations, not its arithmetic. Through autograd a
ponder step of ``act.ponder_token`` is about 70 operations, forward and backward (the cell, the
halting unit, the halting bookkeeping and each one's backward node). And an ensemble's members
ponder very differently: padding every run's rows to the longest one's, as ``ponder_token``
does, computed 2.6 times the rows that ran in the parity-table sweep's last ACT ensemble.

So here the (run, sample) pairs still running are one flat, ragged set of rows, grouped by run:
each run's rows meet its weights in their own matmul, and everything else is one operation over
all rows. The set shrinks to the rows still running once at most half of it runs (a change costs
operations of its own), so a ponder step computes at most twice the rows that run and about
one and a half on average. The halting rule, p and the sums are ``act.ponder_token``'s. The
backward replays the steps in reverse on the same sets, with the gradients below. Within a set
everything but the recurrence is computed for all of its steps at once, and the weights'
gradients are one matmul per run over the set's steps and rows: the recurrence leaves three
operations per ponder step (and one matmul per run). Nothing is approximated: values equal
ponder_token's and gradients autograd's up to float rounding; ``tests/test_act_rnn.py`` checks
both against autograd through ponder_token, and against finite differences.

Measured on 2 cores (BENCHMARKS.md): with its backward written out, an ensemble of 16 in which
one member ponders to the cap M trained about 1.9x faster than through autograd, and the
parity ACT runs of tau = 1e-3 late in training about 2.9x. ``Ensemble`` uses this for
``cell="rnn"`` and ``ACT`` for an ``nn.RNNCell`` with tanh, except with a fixed unroll (CUDA
graphs, ``graphs.py``), which keeps autograd's path.

For one sample, with a_n the cell's pre-activation, h^n = tanh(a_n), a_n = g^n + h^{n-1} W^T
(g^1 = g1 with the first-step flag, g^n = g after), halting h_n = sigmoid(z_n), z_n = w h^n + b,
p^n = h_n for n < N and p^N = R = 1 - sum_{n<N} h_n, and y = sum_n p^n h^n:

    dL/dp^n  = gy . h^n                              gy = dL/dy
    A        = gR + gy . h^N                         the whole gradient of R (gR = dL/dR)
    dL/dh_n  = gy . h^n - A           for n < N      (through p^n and through R); 0 for n = N
    dL/dz_n  = dL/dh_n h_n (1 - h_n)
    dL/dh^n  = p^n gy + dL/dz_n w + dL/da_{n+1} W    (the last term from step n + 1)
    dL/da_n  = dL/dh^n (1 - (h^n)^2)
    dW += dL/da_n^T h^{n-1},  dw += dL/dz_n h^n,  db += dL/dz_n,  dg^n += dL/da_n,
    dL/dh^0  = dL/da_1 W

A row of the compact set that has already halted (padding, p = 0) gets no gradient: every term
above is zero for it, step after step.
"""

from __future__ import annotations

import torch

from .rows import Gradients, Halting, Rows, add_sums, set_bounds
from .tanh import faster, from_doubled_

# dL/da = dL/dh (1 - h^2) in one pass, h = tanh(a): the kernel autograd uses for tanh.
_tanh_backward = torch.ops.aten.tanh_backward.grad_input


def tanh_act(
    g1: torch.Tensor,
    g: torch.Tensor,
    h0: torch.Tensor,
    w_hh: torch.Tensor,
    w_halt: torch.Tensor,
    b_halt: torch.Tensor,
    epsilon: float,
    max_steps: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """ACT over one token for K runs of a tanh RNN cell: ``y, steps, remainder``.

    ``g1``, ``g`` ``[K, B, H]``: the input part of the pre-activation on the first ponder step
    (with the flag's column) and on later ones, biases included; ``h0 [K, B, H]`` s_{t-1};
    ``w_hh [K, H, H]``; the halting unit ``w_halt [K, 1, H]``, ``b_halt [K, 1]``. Returns
    y_t = s_t ``[K, B, H]``, N(t) ``[K, B]`` (int64) and R(t) ``[K, B]``.
    """
    return _TanhACT.apply(g1, g, h0, w_hh, w_halt, b_halt, epsilon, max_steps)


def _cell(rows: Rows, gi: torch.Tensor, h: torch.Tensor, w_t: torch.Tensor) -> torch.Tensor:
    """h^n = tanh(g + h^{n-1} W^T) over the set's rows (``w_t [K, H, H]``: W^T per run)."""
    out = gi.clone()
    if faster(out, backward=False):  # tanh(a) as 2 sigmoid(2a) - 1 (tanh.py)
        rows.matmul(h, w_t, out, beta=2.0, alpha=2.0)
        return from_doubled_(out)
    rows.matmul(h, w_t, out, beta=1.0, alpha=1.0)
    return out.tanh_()


class _TanhACT(torch.autograd.Function):
    @staticmethod
    def forward(ctx, g1, g, h0, w_hh, w_halt, b_halt, epsilon, max_steps):
        k, b, hidden = g1.shape
        kb = k * b
        g1_f, g_f = g1.reshape(kb, hidden), g.reshape(kb, hidden)
        w_t = w_hh.transpose(1, 2)
        rows = Rows(k, b, None, None)
        sets, record = [rows], []  # record, per ponder step: its set, h^{n-1}, h^n, h_n
        halting = Halting(rows, w_halt, b_halt, epsilon, max_steps)
        h = h0.reshape(kb, hidden)
        # Per pair: s_t = sum_n p_t^n s_t^n, R(t), N(t); the sums run over a set's rows and are
        # added into these when the set changes.
        y = remainder = steps = c_y = None
        g_rows = g_f
        for n in range(1, max_steps + 1):
            h_new = _cell(rows, g1_f if n == 1 else g_rows, h, w_t)  # h^n
            hh, p, done, left = halting.step(rows, n, h_new)
            record.append((len(sets) - 1, h, h_new, hh))
            c_y = p * h_new if c_y is None else c_y.addcmul_(p, h_new)
            h = h_new
            if left == 0:
                break
            if 2 * left > rows.size:
                continue
            # At most half of the set runs: its sums go into the totals, and it shrinks.
            y, remainder, steps = add_sums(rows, (y, remainder, steps), (c_y, *halting.sums()))
            keep = (~done).nonzero().squeeze(1)
            rows = rows.subset(keep)
            sets.append(rows)
            halting.shrink(rows, keep)
            h, c_y, g_rows = h[keep], None, rows.take(g_f)
        y, remainder, steps = add_sums(rows, (y, remainder, steps), (c_y, *halting.sums()))
        y, steps, remainder = y.view(k, b, hidden), steps.view(k, b), remainder.view(k, b)
        ctx.sets, ctx.record = sets, record
        ctx.save_for_backward(w_hh, w_halt, steps, remainder)
        ctx.mark_non_differentiable(steps)
        return y, steps, remainder

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, gy, _g_steps, g_rem):
        w_hh, w_halt, steps, remainder = ctx.saved_tensors
        sets, record = ctx.sets, ctx.record
        k, b, hidden = gy.shape
        gy, steps, remainder = gy.reshape(k * b, hidden), steps.view(-1), remainder.view(-1)
        g_rem = torch.zeros_like(remainder) if g_rem is None else g_rem.reshape(-1)
        w_z = w_halt.squeeze(1)
        grads = Gradients(k, b, w_hh, w_halt)
        carry = None  # dL/dh^{n-1} at the first step of the set replayed last, over its rows
        for first, end in set_bounds(record):
            rows, size = sets[record[first][0]], end - first
            gy_c = rows.take(gy)
            # Everything but the recurrence at once over the set's S steps, step-major:
            # [S, R(, H)]. h^{n-1} and h^n are views of one stack [h^{first}, h^{first+1}, ...].
            hs = torch.stack([record[first][1]] + [r[2] for r in record[first:end]])
            h_in, h_out = hs[:-1], hs[1:]
            hh = torch.stack([r[3] for r in record[first:end]])  # h_n
            q = torch.linalg.vecdot(h_out, gy_c)  # gy . h^n
            at = rows.take(steps), rows.take(remainder), rows.take(g_rem)
            dz, p = grads.halting(rows, first, q, hh, *at)
            # The direct part of dL/dh^n: p^n gy + dL/dz_n w.
            da = (p.unsqueeze(-1) * gy_c).addcmul_(dz.unsqueeze(-1), rows.per_run(w_z))
            if carry is not None:  # dL/dh of the later set's rows at this set's last step
                da[-1].index_add_(0, sets[record[end][0]].keep, carry)
            # The recurrence, last step first: da_n = (direct_n + da_{n+1} W) (1 - (h^n)^2).
            for j in range(size - 1, -1, -1):
                dh = da[j]
                if j < size - 1:
                    dh.add_(carry)
                _tanh_backward(dh, h_out[j], grad_input=dh)
                if first + j > 0 or ctx.needs_input_grad[2]:
                    carry = torch.empty_like(dh)
                    rows.matmul(dh, w_hh, carry)  # dL/dh^{n-1}
            grads.add(rows, first, da, h_in, h_out, dz)
        d_h0 = carry.view(k, b, hidden) if ctx.needs_input_grad[2] else None
        d_g1, d_g = grads.inputs()
        return d_g1, d_g, d_h0, grads.d_w, grads.d_wz, grads.d_bz.unsqueeze(1), None, None
