"""ACT's token loop for a tanh RNN cell as one autograd function, its backward written out.

Why: in ACT's tail a ponder step computes one or a few rows, so it costs its operations, not its
arithmetic. Through autograd a ponder step of ``act.ponder_token`` is about 70 operations, forward
and backward (the cell, the halting unit, the halting bookkeeping and each one's backward node),
and a training step waits for its longest-pondering sample. Here the forward is
``act.ponder_token`` itself, unchanged, with its compaction over runs and samples, but run
without autograd. The backward replays the recorded steps in reverse on the same compact sets,
with the gradients below. Within a set everything but the recurrence is computed for all of its
steps at once, and the weights' gradients are one matmul over the set's steps and rows: the
recurrence leaves three operations per ponder step. Nothing is approximated. Values are
ponder_token's, and gradients equal autograd's up to float rounding; ``tests/test_fused.py``
checks both against autograd, and against finite differences.

Measured on 2 cores (BENCHMARKS.md, and the parity ACT runs of tau = 1e-3 late in training, whose
longest ponderers reach the cap M = 100): an ensemble of 16 in which one member ponders to M
trains about 1.9x faster than through autograd, and those three runs about 2.9x. Where every
sample ponders a few steps, the step costs what autograd's does. ``Ensemble`` uses this for
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

from .act import Gathered, _flat_index, ponder_token

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


class _Set:
    """One compact set of ``ponder_token`` (runs ``members``, sample ``rows``; None for all):
    gathers ``[K, B, ...]`` tensors to it and puts its values back."""

    def __init__(self, members: torch.Tensor | None, rows: torch.Tensor | None, k: int, b: int):
        self.members, self.rows, self.k, self.b = members, rows, k, b
        self.whole = members is None and rows is None
        self.flat = None
        if not self.whole:
            runs = torch.arange(k, device=(rows if members is None else members).device)
            self.flat = _flat_index(runs if members is None else members, rows, b)

    def positions(self, later: _Set) -> torch.Tensor:
        """Where each row of ``later``, the set of a later step (a subset of this one, and never
        every row), sits among this set's rows: ``[K'' * R']`` indices into ``[K' * R]``."""
        if self.whole:
            return later.flat
        pos = torch.full((self.k * self.b,), -1, dtype=torch.long, device=self.flat.device)
        pos[self.flat] = torch.arange(self.flat.numel(), device=self.flat.device)
        return pos[later.flat]

    def take(self, t: torch.Tensor) -> torch.Tensor:
        if self.whole:
            return t
        return t.flatten(0, 1)[self.flat].view(-1, self.width, *t.shape[2:])

    @property
    def width(self) -> int:
        return self.b if self.rows is None else self.rows.shape[-1]

    def put(self, full: torch.Tensor | None, part: torch.Tensor, add: bool = False) -> torch.Tensor:
        """``full`` (``[K, B, ...]``; None: zeros) with ``part`` written (or added) at the set's
        positions."""
        if self.whole:
            return part if full is None or not add else full + part
        if full is None:
            full = part.new_zeros(self.k, self.b, *part.shape[2:])
        flat_full = full.flatten(0, 1)
        part = part.flatten(0, 1)
        if add:
            flat_full.index_add_(0, self.flat, part)
        else:
            flat_full[self.flat] = part
        return full

    def runs(self, t: torch.Tensor) -> torch.Tensor:
        """A per-run tensor ``[K, ...]`` at the set's runs."""
        return t if self.members is None else t[self.members]


class _TanhACT(torch.autograd.Function):
    @staticmethod
    def forward(ctx, g1, g, h0, w_hh, w_halt, b_halt, epsilon, max_steps):
        of = Gathered()  # inputs and weights at the compact set of runs and samples
        record: list[list] = []  # per ponder step: members, rows, h^{n-1}, h^n, h_n

        def step(n, s, rows, members):
            gi = of("g1", g1, members, rows) if n == 1 else of("g", g, members, rows)
            h = torch.baddbmm(gi, s, of("w_hh", w_hh, members).transpose(1, 2)).tanh_()
            record.append([members, rows, s, h, None])
            return h

        def halt(y, members):
            b = of("b_halt", b_halt, members).unsqueeze(1)
            z = torch.baddbmm(b, y, of("w_halt", w_halt, members).transpose(1, 2))
            record[-1][4] = z.squeeze(-1).sigmoid_()
            return record[-1][4]

        y, _, steps, remainder, _, _ = ponder_token(step, halt, h0, epsilon, max_steps, probs=False)
        ctx.record = record
        ctx.save_for_backward(w_hh, w_halt, steps, remainder)
        ctx.mark_non_differentiable(steps)
        return y, steps, remainder

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, gy, _g_steps, g_rem):
        w_hh, w_halt, steps, remainder = ctx.saved_tensors
        record = ctx.record
        k, b, _ = gy.shape
        gy = gy.contiguous()
        g_rem = torch.zeros_like(remainder) if g_rem is None else g_rem
        grads: dict[str, list] = {}  # W_hh, w_halt, b_halt: (runs, gradient) per set
        d_g1 = d_g = None
        a_full = None  # A per sample, once its step N is replayed
        later, carry = None, None  # the set replayed last, and dL/dh^{n-1} at its first step
        # The steps in runs of one compact set, last run first.
        bounds = [0] + [
            i for i in range(1, len(record))
            if record[i][0] is not record[i - 1][0] or record[i][1] is not record[i - 1][1]
        ] + [len(record)]  # fmt: skip
        for first, end in reversed(list(zip(bounds[:-1], bounds[1:], strict=True))):
            cs, size = _Set(record[first][0], record[first][1], k, b), end - first
            gy_c, n_c, r_c, gr_c = cs.take(gy), cs.take(steps), cs.take(remainder), cs.take(g_rem)
            w_c, wh_c = cs.runs(w_hh), cs.runs(w_halt)
            # Everything but the recurrence at once over the set's S steps: [K', S, R(, H)].
            # h^{n-1} and h^n are views of one stack [h^{first}, h^{first+1}, ...].
            if size == 1:
                h_in, h_out = record[first][2].unsqueeze(1), record[first][3].unsqueeze(1)
            else:
                hs = torch.stack([record[first][2]] + [r[3] for r in record[first:end]], 1)
                h_in, h_out = hs[:, :-1], hs[:, 1:]
            hh = torch.stack([r[4] for r in record[first:end]], 1)  # h_n
            ns = torch.arange(first + 1, end + 1, device=gy.device).view(-1, 1)
            n_c, gy_c = n_c.unsqueeze(1), gy_c.unsqueeze(1)
            going, halting = n_c > ns, n_c == ns
            q = (h_out * gy_c).sum(-1)  # gy . h^n
            a_c = (q * halting).sum(1) + gr_c  # A of the samples that halt in this set
            if a_full is not None:  # and of those that halted later
                a_c = torch.where(halting.any(1), a_c, cs.take(a_full))
            dz = torch.where(going, q - a_c.unsqueeze(1), 0.0).mul_(hh * (1 - hh))  # dL/dz_n
            p = torch.where(going, hh, torch.where(halting, r_c.unsqueeze(1), 0.0))
            # The direct part of dL/dh^n, p^n gy + dL/dz_n w (a rank-one update per run).
            da = p.unsqueeze(-1) * gy_c
            da_rows = da.flatten(0, 2)  # [K' * S * R, H]
            da.flatten(1, 2).baddbmm_(dz.flatten(1).unsqueeze(-1), wh_c)
            if carry is not None:  # dL/dh of the later set's rows at this set's last step
                at = cs.positions(later)
                width = da.shape[2]
                da_rows.index_add_(0, (at // width * size + size - 1) * width + at % width,
                                carry.flatten(0, 1))  # fmt: skip
            # The recurrence, last step first: da_n = (direct_n + da_{n+1} W) (1 - (h^n)^2).
            for j in range(size - 1, -1, -1):
                dh = da[:, j] if j == size - 1 else da[:, j].add_(carry)
                _tanh_backward(dh, h_out[:, j], grad_input=dh)
                if first + j > 0 or ctx.needs_input_grad[2]:
                    carry = torch.bmm(dh, w_c)  # dL/dh^{n-1}
            later = cs
            # The weights' gradients as one matmul over the set's steps and rows.
            dz_rows = dz.flatten(1).unsqueeze(1)  # [K', 1, S * R]
            for name, part in (
                ("w_hh", torch.bmm(da.flatten(1, 2).transpose(1, 2), h_in.flatten(1, 2))),
                ("w_halt", torch.bmm(dz_rows, h_out.flatten(1, 2))),
                ("b_halt", dz.sum((1, 2)).unsqueeze(-1)),
            ):
                grads.setdefault(name, []).append((cs.members, part))
            if first == 0:  # step 1 is always over every run and sample
                d_g1, da = da[:, 0], da[:, 1:]
            if da.shape[1]:
                d_g = cs.put(d_g, da.sum(1), add=True)
            if first > 0:
                a_full = cs.put(a_full, a_c)
        d_h0 = carry if ctx.needs_input_grad[2] else None
        # Each weight's gradient: the first set's (every run; replayed last) plus the later
        # sets' at their runs, added in place.
        total = {}
        for name, parts in grads.items():
            (_, whole), *later_parts = parts[::-1]
            for members, part in later_parts:
                whole = whole.add_(part) if members is None else whole.index_add_(0, members, part)
            total[name] = whole
        return d_g1, d_g, d_h0, total["w_hh"], total["w_halt"], total["b_halt"], None, None
