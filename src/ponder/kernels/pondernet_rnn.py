"""PonderNet's token for K runs of a tanh RNN cell as one autograd function, its backward
written out.

Why: through autograd, an ensemble of 16 parity PonderNet runs spent about as long outside its
recurrence's matmuls as in them (2 cores, torch 2.13). The projections of every step's state
onto the halting unit and the readout have one or two output columns, and autograd's backward
computes their weight gradients as ``states^T @ grad``, a matrix-vector product that took 13 ms
a step in PyTorch's batched matmul (the same arithmetic as ``grad^T @ states`` takes 1 ms). The
states were stacked into a new 21 MB tensor, and both projections' gradients with respect to
them were added, another 21 MB, on every step. Here the states are stacked only where a later
token starts from one of them, the halting unit and the readout are one projection V of
P = 1 + O rows, and the backward takes each product in its fast orientation and adds dL/dz V
into the recurrence one step at a time. Nothing is approximated:
``tests/test_pondernet_rnn.py`` checks values and gradients against autograd through the same
equations, and against finite differences.
``Ensemble`` uses it for ``cell="rnn"`` on the CPU; elsewhere autograd's path stays.

For one run and sample (SPEC.md, "PonderNet, exactly"): h^0 = s_{t-1} (zero for a sequence's
first token), h^n = tanh(a_n), a_n = g^n + h^{n-1} W^T (g^1 = g1 with the first-step flag, g^n
= g after) for n = 1..N, and z^n = V h^n + c: the halting unit's logit and the readout's logits
at every step. From dL/dz^n, and dL/dh^n where a later token starts from state h^n:

    dL/dh^n  = dL/dz^n V + (dL/dh^n, direct) + dL/da_{n+1} W
    dL/da_n  = dL/dh^n (1 - (h^n)^2)
    dW = sum_n dL/da_n^T h^{n-1},  dV = sum_n dL/dz^n^T h^n,  dc = sum_n dL/dz^n,
    dg1 = dL/da_1,  dg = sum_{n>=2} dL/da_n,  dL/dh^0 = dL/da_1 W
"""

from __future__ import annotations

import torch

from .tanh import faster, from_doubled_

# dL/da = dL/dh (1 - h^2) in one pass, h = tanh(a): the kernel autograd uses for tanh.
_tanh_backward = torch.ops.aten.tanh_backward.grad_input


def tanh_pondernet(
    g1: torch.Tensor,
    g: torch.Tensor,
    h0: torch.Tensor | None,
    w_hh: torch.Tensor,
    v: torch.Tensor,
    c: torch.Tensor,
    steps: int,
    keep_states: bool = True,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """PonderNet over one token for K runs of a tanh RNN cell: ``z, states``.

    ``g1``, ``g`` ``[K, B, H]``: the input part of the pre-activation on the first step (with
    the flag's column) and on later ones, biases included; ``h0 [K, B, H]`` s_{t-1}, or None
    for a zero state (its matmul is skipped); ``w_hh [K, H, H]``; ``v [K, P, H]`` and
    ``c [K, P]`` the projection of each step's state (the halting unit's row, then the
    readout's). Returns z ``[K, B, N, P]`` and the states h^n ``[K, B, N, H]`` (None unless
    ``keep_states``: a sequence's last token needs no state after it).
    """
    return _TanhPonderNet.apply(g1, g, h0, w_hh, v, c, steps, keep_states)


def _times(g: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """``g [K, B, P] @ v [K, P, H]``: for a few columns P as P rank-one updates, which are
    much faster than a batched matmul whose inner size is P."""
    if v.shape[1] > 8:
        return torch.bmm(g, v)
    out = g[..., :1] * v[:, None, 0]
    for p in range(1, v.shape[1]):
        out.addcmul_(g[..., p : p + 1], v[:, None, p])
    return out


class _TanhPonderNet(torch.autograd.Function):
    @staticmethod
    def forward(ctx, g1, g, h0, w_hh, v, c, steps, keep_states):
        w_t, v_t, c_1 = w_hh.transpose(1, 2), v.transpose(1, 2), c.unsqueeze(1)
        sigmoid_form = faster(g1, backward=False)  # tanh(a) as 2 sigmoid(2a) - 1 (tanh.py)
        scale = 2.0 if sigmoid_form else 1.0
        # Each step's results are new tensors: written into one preallocated buffer instead,
        # a batched matmul ran at half speed (torch 2.13, CPU).
        states, z = [], []  # h^n and z^n, [K, B, H] and [K, B, P] each
        h = h0
        for n in range(steps):
            gi = g1 if n == 0 else g
            if h is None:  # a zero state: h W^T is exactly 0
                h = gi * scale
            else:
                h = torch.baddbmm(gi, h, w_t, beta=scale, alpha=scale)
            h = from_doubled_(h) if sigmoid_form else h.tanh_()
            states.append(h)
            z.append(torch.baddbmm(c_1, h, v_t))
        ctx.states = states
        ctx.save_for_backward(h0, w_hh, v)
        ctx.set_materialize_grads(False)  # no 21 MB of zeros for states no token starts from
        kept = torch.stack(states, 2) if keep_states else None
        return torch.stack(z, 2), kept

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, g_z, g_states):
        h0, w_hh, v = ctx.saved_tensors
        states = ctx.states
        steps = len(states)
        if g_z is None:  # only the states were used
            g_z = states[0].new_zeros(*states[0].shape[:2], steps, v.shape[1])
        g_z = g_z.permute(2, 0, 1, 3)  # [N, K, B, P]
        g_states = None if g_states is None else g_states.permute(2, 0, 1, 3)
        need_h0 = h0 is not None and ctx.needs_input_grad[2]
        k, b, hidden = states[0].shape
        d_w, d_v = torch.zeros_like(w_hh), torch.zeros_like(v)
        d_g = torch.zeros_like(states[0])
        # [dL/da_{n+1}, dL/dz^n] times [W; V] is dL/dh^n (but for a later token's part): one
        # matmul a step for both, the recurrence's and the projection's.
        w_v = torch.cat([w_hh, v], 1)  # [K, H + P, H]
        x = states[0].new_empty(k, b, hidden + v.shape[1])
        d_a = x[..., :hidden]  # dL/da_n, written in place step by step
        d_h = _times(g_z[-1], v)  # dL/dz^N V: nothing comes after step N
        for n in range(steps - 1, -1, -1):
            if g_states is not None:
                d_h += g_states[n]
            _tanh_backward(d_h, states[n], grad_input=d_a)
            d_v.baddbmm_(g_z[n].transpose(1, 2), states[n])
            h_prev = states[n - 1] if n > 0 else h0
            if h_prev is not None:
                d_w.baddbmm_(d_a.transpose(1, 2), h_prev)
            if n > 0:
                d_g += d_a
                x[..., hidden:] = g_z[n - 1]
                d_h = torch.bmm(x, w_v)  # dL/dh^{n-1}
        d_a = d_a.clone()  # dL/da_1, the first step's input gradient
        d_h0 = torch.bmm(d_a, w_hh) if need_h0 else None
        d_c = g_z.sum((0, 2))
        return d_a, d_g, d_h0, d_w, d_v, d_c, None, None
