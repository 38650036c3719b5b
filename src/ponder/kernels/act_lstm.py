"""ACT's token loop for an LSTM cell as one autograd function, its backward written out.

Why: the reasons of ``act_rnn.py``, for the cell the addition task trains. Through autograd a
ponder step of ``act.ponder_token`` with an LSTM cell is about a hundred operations forward
and backward (four gates, the cell, the halting unit, the bookkeeping, both means of the state
and each one's backward node), each with its dispatch and its allocation. Here a ponder step
is about twenty operations forward and as many in the backward's recurrence (the cell's
backward is ``lstm.cell_backward``); the halting unit's part of the backward is computed once
per set of rows for all of its steps. The (run, sample) pairs still running are ``rows.Rows``,
as for the tanh RNN, so an ensemble's members that ponder differently are not padded to the
longest. Measured on the addition quick run's trained ACT ensembles (BENCHMARKS.md), a
training step took about a quarter less time than through autograd.

Nothing is approximated: values equal ``act.ponder_token``'s and gradients autograd's up to
float rounding; ``tests/test_act_lstm.py`` checks both against autograd through ponder_token,
and against finite differences. ``Ensemble`` uses this for ``cell="lstm"`` and ``ACT`` for an
``nn.LSTMCell``, except with a fixed unroll (CUDA graphs, ``graphs.py``).

For one sample, with the cell's equations and their backward in ``lstm.py`` (a_n = g^n +
h^{n-1} W^T the pre-activation; g^1 = g1 with the first-step flag, g^n = g after):

    h_n = sigmoid(z_n), z_n = w h^n + b                  halting unit
    p^n = h_n for n < N, p^N = R = 1 - sum_{n<N} h_n
    s_t = (sum_n p^n h^n, sum_n p^n c^n)                  both parts of the state averaged

and with gy, gc = dL/d of the two means, gR = dL/dR:

    q_n      = gy . h^n + gc . c^n                        dL/dp^n
    A        = gR + q_N                                   the whole gradient of R
    dL/dz_n  = (q_n - A) h_n (1 - h_n) for n < N; 0 for n = N
    dL/dh^n  = p^n gy + dL/dz_n w + dL/da_{n+1} W         from outside step n's cell
    dL/dc^n  = p^n gc + dL/dc^{n+1} f_{n+1}               likewise
    dW += dL/da_n^T h^{n-1},  dw += dL/dz_n h^n,  db += dL/dz_n,  dg^n += dL/da_n,
    dL/dh^0 = dL/da_1 W,  dL/dc^0 = dL/dc^1 f_1

A row of a set that has already halted (padding, p = 0) gets no gradient: every term above is
zero for it, step after step.
"""

from __future__ import annotations

import torch

from . import lstm
from .rows import Gradients, Halting, Rows, add_sums, set_bounds


def lstm_act(
    g1: torch.Tensor,
    g: torch.Tensor,
    h0: torch.Tensor,
    c0: torch.Tensor,
    w_hh: torch.Tensor,
    w_halt: torch.Tensor,
    b_halt: torch.Tensor,
    epsilon: float,
    max_steps: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """ACT over one token for K runs of an LSTM cell: ``h, c, steps, remainder``.

    ``g1``, ``g`` ``[K, B, 4H]``: the input part of the pre-activation on the first ponder step
    (with the flag's column) and on later ones, both biases included; ``h0``, ``c0``
    ``[K, B, H]`` s_{t-1}; ``w_hh [K, 4H, H]``; the halting unit ``w_halt [K, 1, H]``,
    ``b_halt [K, 1]``. Returns s_t as ``h [K, B, H]`` (also y_t) and ``c [K, B, H]``, N(t)
    ``[K, B]`` (int64) and R(t) ``[K, B]``.
    """
    return _LSTMACT.apply(g1, g, h0, c0, w_hh, w_halt, b_halt, epsilon, max_steps)


def _gates(rows: Rows, gi: torch.Tensor, h: torch.Tensor, w_t: torch.Tensor) -> torch.Tensor:
    """i, f, u, o as one ``[R, 4H]`` tensor from a = g + h^{n-1} W^T over the set's rows
    (``gi`` and ``w_t [K, H, 4H]`` with their cell-input quarter doubled, ``lstm.doubled_u``)."""
    a = gi.clone()
    rows.matmul(h, w_t, a, beta=1.0, alpha=1.0)
    return lstm.activate_(a)


class _LSTMACT(torch.autograd.Function):
    @staticmethod
    def forward(ctx, g1, g, h0, c0, w_hh, w_halt, b_halt, epsilon, max_steps):
        k, b, width = g1.shape
        kb, hidden = k * b, width // 4
        g1_f, g_f = lstm.doubled_u(g1.reshape(kb, width)), lstm.doubled_u(g.reshape(kb, width))
        w_t = lstm.doubled_u(w_hh.transpose(1, 2))  # W^T per run, [K, H, 4H]
        rows = Rows(k, b, None, None)
        halting = Halting(rows, w_halt, b_halt, epsilon, max_steps)
        # record, per ponder step: its set, h^{n-1}, c^{n-1}, the gates, tanh(c^n), h^n, c^n, h_n
        sets, record = [rows], []
        h, c = h0.reshape(kb, hidden), c0.reshape(kb, hidden)
        # Per pair: s_t = (sum_n p^n h^n, sum_n p^n c^n), R(t), N(t); the sums run over a set's
        # rows and are added into these when the set changes.
        y = cell = remainder = steps = sum_h = sum_c = None
        g_rows = g_f
        for n in range(1, max_steps + 1):
            gates = _gates(rows, g1_f if n == 1 else g_rows, h, w_t)
            c_new, tanh_c, h_new = lstm.cell(gates, c)  # c^n, tanh(c^n), h^n
            hh, p, done, left = halting.step(rows, n, h_new)
            record.append((len(sets) - 1, h, c, gates, tanh_c, h_new, c_new, hh))
            sum_h = p * h_new if sum_h is None else sum_h.addcmul_(p, h_new)
            sum_c = p * c_new if sum_c is None else sum_c.addcmul_(p, c_new)
            h, c = h_new, c_new
            if left == 0:
                break
            if 2 * left > rows.size:
                continue
            # At most half of the set runs: its sums go into the totals, and it shrinks.
            totals, sums = (y, cell, remainder, steps), (sum_h, sum_c, *halting.sums())
            y, cell, remainder, steps = add_sums(rows, totals, sums)
            keep = (~done).nonzero().squeeze(1)
            rows = rows.subset(keep)
            sets.append(rows)
            halting.shrink(rows, keep)
            h, c, sum_h, sum_c, g_rows = h[keep], c[keep], None, None, rows.take(g_f)
        totals, sums = (y, cell, remainder, steps), (sum_h, sum_c, *halting.sums())
        y, cell, remainder, steps = add_sums(rows, totals, sums)
        y, cell = y.view(k, b, hidden), cell.view(k, b, hidden)
        steps, remainder = steps.view(k, b), remainder.view(k, b)
        ctx.sets, ctx.record = sets, record
        ctx.save_for_backward(w_hh, w_halt, steps, remainder)
        ctx.mark_non_differentiable(steps)
        return y, cell, steps, remainder

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, gy, gc, _g_steps, g_rem):
        w_hh, w_halt, steps, remainder = ctx.saved_tensors
        sets, record = ctx.sets, ctx.record
        k, b, hidden = gy.shape
        gy, gc = gy.reshape(k * b, hidden), gc.reshape(k * b, hidden)
        steps, remainder = steps.view(-1), remainder.view(-1)
        g_rem = torch.zeros_like(remainder) if g_rem is None else g_rem.reshape(-1)
        w_z = w_halt.squeeze(1)
        grads = Gradients(k, b, w_hh, w_halt)
        # dL/dh^{n-1} and dL/dc^{n-1} at the first step of the set replayed last, over its rows
        carry_h = carry_c = None
        for first, end in set_bounds(record):
            rows, size, steps_of = sets[record[first][0]], end - first, record[first:end]
            gy_c, gc_c = rows.take(gy), rows.take(gc)
            # Everything but the recurrence at once over the set's S steps, step-major:
            # [S, R(, H)]. Step n's inputs and outputs are views of one stack each.
            hs = torch.stack([record[first][1]] + [r[5] for r in steps_of])
            cs = torch.stack([record[first][2]] + [r[6] for r in steps_of])
            h_in, h_out, c_in, c_out = hs[:-1], hs[1:], cs[:-1], cs[1:]
            hh = torch.stack([r[7] for r in steps_of])  # h_n
            q = torch.linalg.vecdot(h_out, gy_c).add_(torch.linalg.vecdot(c_out, gc_c))
            at = rows.take(steps), rows.take(remainder), rows.take(g_rem)
            dz, p = grads.halting(rows, first, q, hh, *at)
            p = p.unsqueeze(-1)
            # The direct parts of dL/dh^n and dL/dc^n: p^n gy + dL/dz_n w, and p^n gc.
            dh_direct = (p * gy_c).addcmul_(dz.unsqueeze(-1), rows.per_run(w_z))
            dc_direct = p * gc_c
            if carry_h is not None:  # the later set's rows at this set's last step
                keep = sets[record[end][0]].keep
                dh_direct[-1].index_add_(0, keep, carry_h)
                dc_direct[-1].index_add_(0, keep, carry_c)
            da = h_out.new_empty(size, rows.size, 4 * hidden)
            # The recurrence, last step first.
            for j in range(size - 1, -1, -1):
                dh, dc = dh_direct[j], dc_direct[j]
                if j < size - 1:
                    dh.add_(carry_h)
                    dc.add_(carry_c)
                _, _, _, gates, tanh_c, _, _, _ = steps_of[j]
                carry_c = lstm.cell_backward(dh, dc, gates, c_in[j], tanh_c, da[j])
                if first + j > 0 or ctx.needs_input_grad[2]:  # dL/dh^{n-1}
                    carry_h = torch.empty_like(dh)
                    rows.matmul(da[j], w_hh, carry_h)
            grads.add(rows, first, da, h_in, h_out, dz)
        d_h0 = carry_h.view(k, b, hidden) if ctx.needs_input_grad[2] else None
        d_c0 = carry_c.view(k, b, hidden) if ctx.needs_input_grad[3] else None
        d_g1, d_g = grads.inputs()
        d_halt = grads.d_wz, grads.d_bz.unsqueeze(1)
        return d_g1, d_g, d_h0, d_c0, grads.d_w, *d_halt, None, None
