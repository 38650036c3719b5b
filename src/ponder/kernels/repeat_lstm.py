"""Repeat-RNN over K stacked runs of an LSTM cell as one autograd function, its backward
written out.

Why: with autograd, a step of the recurrence is about a dozen operations forward and twice
as many backward nodes, each costing its dispatch on tensors of a few thousand numbers; and the
weights' gradient is a matmul per step. Here a step is about ten operations forward and eight
in the backward (``lstm.cell_backward``), and the input parts' gradients are sums over steps.

Nothing is approximated: values and gradients equal autograd's through the same equations up
to float rounding (``tests/test_repeat_lstm.py``). ``repeat.stacked`` uses it for
``cell="lstm"``, so the plain LSTM (Repeat at rho = 1) too.

The sequence is each token rho times from the zero state, the first repeat with the flag: step
n = t rho + r has the input part g1_t on r = 0 and g_t after; the outputs are h after each
token's last repeat. With the cell's backward from ``lstm.py``:

    dL/dh^n = gy_t [n is token t's last repeat] + dL/da_{n+1} W,   dL/dc^n = dL/dc^{n+1} f_{n+1}
    dW = sum_n dL/da_n^T h^{n-1},  dg1_t = dL/da at r = 0,  dg_t = sum_{r>0} dL/da
"""

from __future__ import annotations

import torch

from . import lstm


def repeat_lstm(g1: torch.Tensor, g: torch.Tensor, w_hh: torch.Tensor, rho: int) -> torch.Tensor:
    """h after each token's rho-th repeat, ``[K, B, T, H]``, from the zero state.

    ``g1``, ``g`` ``[K, B, T, 4H]``: each token's input part of the pre-activation on its
    first repeat (with the flag's column) and on later ones, both biases included;
    ``w_hh [K, 4H, H]``.
    """
    return _RepeatLSTM.apply(g1, g, w_hh, rho)


class _RepeatLSTM(torch.autograd.Function):
    @staticmethod
    def forward(ctx, g1, g, w_hh, rho):
        k, b, t, width = g1.shape
        hidden, steps = width // 4, t * rho
        # Step-major: the gates of step n, h^n and c^n (h^0 = c^0 = 0) as views of one buffer.
        gates = g1.new_empty(steps, k, b, width)
        hs = g1.new_zeros(steps + 1, k, b, hidden)
        cs = g1.new_zeros(steps + 1, k, b, hidden)
        tanh_c = g1.new_empty(steps, k, b, hidden)
        g1_d, g_d = lstm.doubled_u(g1), lstm.doubled_u(g)
        w_t = lstm.doubled_u(w_hh.transpose(1, 2))  # W^T per run, [K, H, 4H]
        for n in range(steps):
            token, repeat = divmod(n, rho)
            gi = (g1_d if repeat == 0 else g_d)[:, :, token]
            if n == 0:  # h^0 = 0: h W^T is exactly 0
                gates[n].copy_(gi)
            else:
                torch.baddbmm(gi, hs[n], w_t, out=gates[n])
            lstm.activate_(gates[n])
            lstm.cell(gates[n], cs[n], out=(cs[n + 1], tanh_c[n], hs[n + 1]))
        ctx.rho = rho
        ctx.save_for_backward(w_hh, gates, hs, cs, tanh_c)
        return hs[rho::rho].permute(1, 2, 0, 3).contiguous()  # [K, B, T, H]

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, gy):
        w_hh, gates, hs, cs, tanh_c = ctx.saved_tensors
        rho, steps = ctx.rho, gates.shape[0]
        k, b, t, hidden = gy.shape
        da = torch.empty_like(gates)
        carry_h = carry_c = None  # dL/dh^n and dL/dc^n from step n + 1
        for n in range(steps - 1, -1, -1):
            token, repeat = divmod(n, rho)
            last = repeat == rho - 1
            if carry_h is None:
                dh = gy[:, :, token].clone()
            else:
                dh = carry_h.add_(gy[:, :, token]) if last else carry_h
            dc = torch.zeros_like(dh) if carry_c is None else carry_c
            carry_c = lstm.cell_backward(dh, dc, gates[n], cs[n], tanh_c[n], da[n])
            if n > 0:
                carry_h = torch.bmm(da[n], w_hh)
        # dW = sum_n da_n^T h^{n-1}: a batched matmul per step (h^0 = 0 adds nothing).
        d_w = torch.zeros_like(w_hh)
        for n in range(1, steps):
            d_w.baddbmm_(da[n].transpose(1, 2), hs[n])
        per_token = da.view(t, rho, k, b, -1)
        d_g1 = per_token[:, 0].permute(1, 2, 0, 3)
        d_g = per_token[:, 1:].sum(1).permute(1, 2, 0, 3)
        return d_g1, d_g, d_w, None
