"""The ragged row sets the ACT kernels ponder over (``act_rnn``, ``act_lstm``): the (run,
sample) pairs of an ensemble still running, one flat set of rows grouped by run, so that each
run's rows meet its weights in their own matmul and everything else is one operation over all
rows; and the per-pair sums a set adds into the token's totals when it changes."""

from __future__ import annotations

import torch


class Rows:
    """A set of (run, sample) pairs, as rows grouped by run: ``pairs [R]`` (ascending indices
    into the flattened ``K * B``; None: every pair, in order), ``keep`` (their indices in the
    set they came from) and ``blocks``, each run's (run, first row, end row)."""

    def __init__(self, k: int, b: int, pairs: torch.Tensor | None, keep: torch.Tensor | None):
        self.k, self.b, self.pairs, self.keep = k, b, pairs, keep
        self._views: dict[int, tuple] = {}  # per-run views of weights, made once per set
        if pairs is None:
            self.size = k * b
            self.blocks = [(r, r * b, (r + 1) * b) for r in range(k)]
            self.run = None
        else:
            self.size = pairs.numel()
            self.run = pairs // b  # the run of each row
            counts = torch.bincount(self.run, minlength=k).tolist()  # one host sync per set
            ends = torch.tensor(counts).cumsum(0).tolist()
            spans = zip(counts, ends, strict=True)
            self.blocks = [(r, e - c, e) for r, (c, e) in enumerate(spans) if c]
        self.sizes = [end - start for _, start, end in self.blocks]

    @property
    def uniform(self) -> bool:
        """Every pair, in order: each run has all B rows."""
        return self.pairs is None

    def per_run_views(self, w: torch.Tensor) -> list[torch.Tensor]:
        """``w [K, ...]`` at each block's run (a ponder step's matmuls slice no weights)."""
        hit = self._views.get(id(w))
        if hit is None or hit[0] is not w:
            hit = self._views[id(w)] = (w, [w[r] for r, _, _ in self.blocks])
        return hit[1]

    def subset(self, keep: torch.Tensor) -> Rows:
        """The rows ``keep`` (indices into this set's rows) as a set of their own."""
        return Rows(self.k, self.b, keep if self.uniform else self.pairs[keep], keep)

    def take(self, t: torch.Tensor) -> torch.Tensor:
        """``t`` over the flattened pairs (``[K * B, ...]``) at this set's rows."""
        return t if self.uniform else t[self.pairs]

    def per_run(self, t: torch.Tensor) -> torch.Tensor:
        """A per-run ``t [K, ...]`` at each row's run."""
        return t.repeat_interleave(self.b, 0) if self.uniform else t[self.run]

    def put(self, full: torch.Tensor | None, part: torch.Tensor) -> torch.Tensor:
        """``full [K * B, ...]`` (None: zeros) plus ``part`` added at this set's rows."""
        if self.uniform:
            return part if full is None else full + part
        if full is None:
            full = part.new_zeros(self.k * self.b, *part.shape[1:])
        return full.index_add_(0, self.pairs, part)

    def matmul(self, x: torch.Tensor, w: torch.Tensor, out: torch.Tensor, **scale) -> None:
        """``out`` = each run's rows of ``x [R, I]`` times its ``w [K, I, O]``, in place
        (``addmm``'s ``beta`` and ``alpha`` with ``out`` as its input, given ``scale``)."""
        if self.uniform:  # every run has B rows: one batched matmul
            x3, o3 = x.view(self.k, self.b, -1), out.view(self.k, self.b, -1)
            if scale:
                o3.baddbmm_(x3, w, **scale)
            else:
                torch.bmm(x3, w, out=o3)
            return
        parts = zip(x.split(self.sizes), self.per_run_views(w), out.split(self.sizes), strict=True)
        for x_r, w_r, out_r in parts:
            if scale:
                out_r.addmm_(x_r, w_r, **scale)
            else:
                torch.mm(x_r, w_r, out=out_r)

    def outer(self, a: torch.Tensor, x: torch.Tensor, total: torch.Tensor) -> None:
        """``total[r] += a_r^T x_r`` for each run r over its rows of ``a [S, R, O]`` and
        ``x [S, R, I]`` (all of the set's steps, step-major)."""
        if self.uniform:  # a batched matmul a step (measured: as fast as one over all steps)
            for a_s, x_s in zip(a, x, strict=True):
                total.baddbmm_(
                    a_s.view(self.k, self.b, -1).transpose(1, 2), x_s.view(self.k, self.b, -1)
                )
            return
        for r, start, end in self.blocks:  # (a view when one run holds every row)
            a_r, x_r = (
                a[:, start:end].reshape(-1, a.shape[-1]),
                x[:, start:end].reshape(-1, x.shape[-1]),
            )
            total[r].addmm_(a_r.t(), x_r)


def add_sums(rows: Rows, totals: tuple, sums: tuple) -> tuple:
    """The per-pair totals (s_t's tensors, R(t), N(t); None before the first set) plus a
    set's sums, in the same order."""
    return tuple(rows.put(total, part) for total, part in zip(totals, sums, strict=True))


def halted(fs: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """A set's R(t) (0 for pairs still running at its end) and the steps each pair ran in it,
    from f at its start and after each step (every pair runs at a set's start)."""
    f = torch.stack(fs, 1)  # [R, S + 1]
    ran = (f[:, :-1] != 1.0).sum(1)
    f_before = f.gather(1, (ran - 1).unsqueeze(1)).squeeze(1)  # f before the last step run
    return torch.where(f[:, -1] == 1.0, 1.0 - f_before, 0.0), ran


def set_bounds(record: list[tuple]) -> list[tuple[int, int]]:
    """The (first, end) steps of each set's run of ponder steps, last set first (a record's
    first element is its set's index)."""
    bounds = [0] + [i for i in range(1, len(record)) if record[i][0] != record[i - 1][0]]
    bounds.append(len(record))
    return list(reversed(list(zip(bounds[:-1], bounds[1:], strict=True))))


class Gradients:
    """What a written-out ACT backward sums over its sets, replayed last set first: the
    weights' gradients (W, the halting unit's w and b), the input parts' (g1 of step 1, g of
    the later steps) and A = gR + dL/dp^N per pair, once its step N is replayed.

    ``halting`` gives a set's dL/dz_n and p^n from q_n = dL/dp^n (the cell's output, or both
    parts of an LSTM's state, dotted with their gradients):

        dL/dz_n = (q_n - A) h_n (1 - h_n) for n < N; 0 for n = N
    """

    def __init__(self, k: int, b: int, w_hh: torch.Tensor, w_halt: torch.Tensor) -> None:
        self.k, self.b = k, b
        self.d_w, self.d_wz = torch.zeros_like(w_hh), torch.zeros_like(w_halt)
        self.d_bz = w_halt.new_zeros(k)
        self.d_g1: torch.Tensor | None = None
        self.d_g: torch.Tensor | None = None
        self._a: torch.Tensor | None = None  # A per pair, once its step N is replayed

    def halting(
        self,
        rows: Rows,
        first: int,
        q: torch.Tensor,
        hh: torch.Tensor,
        steps: torch.Tensor,
        remainder: torch.Tensor,
        g_rem: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """dL/dz_n and p^n ``[S, R]`` of the set's steps first + 1, ... from q_n and h_n
        ``[S, R]``, and N(t), R(t) and gR at its rows."""
        ns = torch.arange(first + 1, first + q.shape[0] + 1, device=q.device).unsqueeze(1)
        going, halting = steps > ns, steps == ns
        a_c = (q * halting).sum(0) + g_rem  # A of the pairs that halt here
        if self._a is not None:  # and of those that halt in a later set
            a_c = torch.where(halting.any(0), a_c, rows.take(self._a))
        if first > 0:  # (written, not added: an earlier set holds these pairs too)
            self._a = a_c.new_zeros(self.k * self.b) if self._a is None else self._a
            self._a[rows.pairs] = a_c
        dz = torch.where(going, q - a_c, 0.0).mul_(hh * (1 - hh))
        p = torch.where(going, hh, torch.where(halting, remainder, 0.0))
        return dz, p

    def add(
        self,
        rows: Rows,
        first: int,
        da: torch.Tensor,
        h_in: torch.Tensor,
        h_out: torch.Tensor,
        dz: torch.Tensor,
    ) -> None:
        """A set's part: dW += dL/da^T h^{n-1}, dw += dL/dz h^n, db += dL/dz (a matmul per run
        over the set's steps and rows), and dL/da into g1's and g's gradients."""
        rows.outer(da, h_in, self.d_w)
        rows.outer(dz.unsqueeze(-1), h_out, self.d_wz)
        if rows.uniform:
            self.d_bz += dz.view(da.shape[0], self.k, self.b).sum((0, 2))
        else:
            self.d_bz.index_add_(0, rows.run, dz.sum(0))
        if first == 0:  # step 1 is always over every pair
            self.d_g1, da = da[0], da[1:]
        if da.shape[0]:
            self.d_g = rows.put(self.d_g, da.sum(0))

    def inputs(self) -> tuple[torch.Tensor, torch.Tensor]:
        """g1's and g's gradients ``[K, B, width]``."""
        d_g = torch.zeros_like(self.d_g1) if self.d_g is None else self.d_g
        return self.d_g1.view(self.k, self.b, -1), d_g.view(self.k, self.b, -1)


class Halting:
    """ACT's halting rule over a kernel's sets of rows, the same for every cell: the halting
    unit h_n = sigmoid(w y^n + b) per row, and per pair ``cum``, sum_{n'<n} h_t^n' while the
    pair runs and exactly 1 once it has halted. Then p^n = cum^n - cum^{n-1} is h_n going on,
    R = 1 - sum_{n'<n} h_n on halting and 0 after, and a halted pair meets the rule again on
    every later step. A pair halts at the first n with sum_{n'<=n} h >= 1 - eps, or at M."""

    def __init__(
        self, rows: Rows, w_halt: torch.Tensor, b_halt: torch.Tensor, epsilon: float, m: int
    ) -> None:
        self.w_z, self.b_z = w_halt.squeeze(1), b_halt.squeeze(1)
        self.w_t, self.b_1 = w_halt.transpose(1, 2), b_halt.unsqueeze(1)
        self.w_rows = self.b_rows = None  # the halting unit per row, once the set is ragged
        self.threshold, self.max_steps = 1.0 - epsilon, m
        self.cum = w_halt.new_zeros(rows.size)
        self.cums = [self.cum]  # cum at the start of the set and after each of its steps

    def step(self, rows: Rows, n: int, y: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Ponder step n's h_n and p^n ``[R, 1]``, which rows halt, and how many run on."""
        if rows.uniform:  # one batched matmul while every run has all its rows
            z = torch.baddbmm(self.b_1, y.view(rows.k, rows.b, -1), self.w_t).view(-1)
        else:
            z = torch.linalg.vecdot(y, self.w_rows).add_(self.b_rows)
        hh = z.sigmoid_()
        cum_next = self.cum + hh
        if n < self.max_steps:
            done = cum_next >= self.threshold
        else:
            done = torch.ones_like(cum_next, dtype=torch.bool)
        cum_next.masked_fill_(done, 1.0)
        p = (cum_next - self.cum).unsqueeze(-1)
        self.cum = cum_next
        self.cums.append(cum_next)
        left = rows.size - int(done.sum())  # the one host sync per ponder step
        return hh, p, done, left

    def sums(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The set's R(t) and the steps each pair ran in it (``halted``)."""
        return halted(self.cums)

    def shrink(self, rows: Rows, keep: torch.Tensor) -> None:
        """Go on with the rows ``keep`` of the set, now ``rows``."""
        self.cum = self.cum[keep]
        self.cums = [self.cum]
        self.w_rows, self.b_rows = rows.per_run(self.w_z), rows.per_run(self.b_z)
