"""The LSTM cell's equations forward and backward without autograd, for the loops whose backward
is written out (``act_lstm``, ``repeat_lstm``). PyTorch's gate order; a the pre-activation:

    i, f, o = sigmoid(a_i), sigmoid(a_f), sigmoid(a_o),   u = tanh(a_u)
    c^n = f c^{n-1} + i u,   h^n = o tanh(c^n)

and, given dL/dh^n and dL/dc^n from outside the cell (the later steps, the loss):

    dL/dc^n += dL/dh^n o (1 - tanh(c^n)^2)
    dL/da_o  = dL/dh^n tanh(c^n) o (1 - o)
    dL/da_i, dL/da_f, dL/da_u = dL/dc^n (u i (1 - i), c^{n-1} f (1 - f), i (1 - u^2))
    dL/dc^{n-1} = dL/dc^n f,   dL/dh^{n-1} = dL/da W
"""

from __future__ import annotations

import torch

from .tanh import faster, from_doubled_

# grad * y (1 - y) and grad (1 - y^2) from y = sigmoid(a), tanh(a): the kernels autograd uses.
_sigmoid_backward = torch.ops.aten.sigmoid_backward.grad_input
_tanh_backward = torch.ops.aten.tanh_backward.grad_input


def doubled_u(t: torch.Tensor) -> torch.Tensor:
    """A copy of ``t`` (gates along its last dimension) with the cell input's quarter doubled:
    a pre-activation from it holds 2 a_u, and tanh(a_u) = 2 sigmoid(2 a_u) - 1 (``tanh.py``)
    comes out of the one sigmoid over all four gates (``activate_``)."""
    out = t.clone()
    quarter = out.shape[-1] // 4
    out[..., 2 * quarter : 3 * quarter] *= 2.0
    return out


def activate_(a: torch.Tensor) -> torch.Tensor:
    """i, f, u, o in place from a pre-activation whose u quarter is doubled (``doubled_u``)."""
    quarter = a.shape[-1] // 4
    a.sigmoid_()
    a[..., 2 * quarter : 3 * quarter].mul_(2.0).sub_(1.0)  # u = 2 sigmoid(2 a_u) - 1
    return a


def tanh_(x: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
    """tanh(x) into ``out`` (a new tensor for None), through sigmoid where that is faster
    (``tanh.py``); no autograd."""
    if faster(x, backward=False):
        return from_doubled_(torch.mul(x, 2.0, out=out) if out is not None else x.mul(2.0))
    return torch.tanh(x, out=out) if out is not None else x.tanh()


def cell(
    gates: torch.Tensor, c: torch.Tensor, out: tuple[torch.Tensor, ...] | None = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """c^n, tanh(c^n) and h^n from the gates (``activate_``) and c^{n-1}: new tensors, or
    written into ``out``'s three."""
    i, f, u, o = gates.chunk(4, -1)
    if out is None:
        c_new = torch.addcmul(f * c, i, u)
        tanh_c = tanh_(c_new)
        return c_new, tanh_c, o * tanh_c
    c_new, tanh_c, h_new = out
    torch.mul(f, c, out=c_new).addcmul_(i, u)
    tanh_(c_new, out=tanh_c)
    torch.mul(o, tanh_c, out=h_new)
    return out


def cell_backward(
    dh: torch.Tensor,
    dc: torch.Tensor,
    gates: torch.Tensor,
    c_in: torch.Tensor,
    tanh_c: torch.Tensor,
    da: torch.Tensor,
) -> torch.Tensor:
    """One step's dL/da into ``da [..., 4H]``, from dL/dh^n ``dh`` and dL/dc^n ``dc`` from
    outside the cell (``dc`` is completed in place), its gates, c^{n-1} and tanh(c^n).
    Returns dL/dc^{n-1}. A dozen operations on one step's rows, each gate's derivative
    taken from its value by PyTorch's own sigmoid and tanh backward kernels."""
    i, f, u, o = gates.chunk(4, -1)
    d_i, d_f, d_u, d_o = da.chunk(4, -1)
    via_h = torch.mul(dh, o)
    dc.add_(_tanh_backward(via_h, tanh_c, grad_input=via_h))  # dh o (1 - tanh(c)^2)
    _sigmoid_backward(torch.mul(dh, tanh_c, out=d_o), o, grad_input=d_o)
    _sigmoid_backward(torch.mul(dc, u, out=d_i), i, grad_input=d_i)
    _sigmoid_backward(torch.mul(dc, c_in, out=d_f), f, grad_input=d_f)
    _tanh_backward(torch.mul(dc, i, out=d_u), u, grad_input=d_u)
    return dc * f
