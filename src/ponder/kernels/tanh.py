"""tanh on the CPU as 2 sigmoid(2a) - 1, with tanh's own backward.

Why: PyTorch's CPU tanh for float32 is not vectorised (measured on torch 2.13, an AVX-512
EPYC): about 2.1 ns an element, so a [7, 128, 128] ensemble step spends as long in its tanh
(235 us) as in its matmul (280 us), while sigmoid runs ten times faster. The same values from
sigmoid take about 45 us there. The identity is exact; in float32 the two differ by at most a
few 1e-7 (absolute), which the tests allow for, and the backward is tanh's, 1 - tanh(a)^2,
from the output. Small tensors and other devices keep ``torch.tanh``: below about 8,000
elements an operation costs its launch, not its arithmetic, and a GPU's tanh is fast.
"""

from __future__ import annotations

import torch

# Below this many elements torch.tanh's one kernel (and one autograd node) beats the sigmoid
# form's three or four: 8,192 is where they cross with a backward, 2,048 without one (the
# loops whose backward is written out, ``act_rnn.py`` and ``pondernet_rnn.py``).
_SMALL = 8192
_SMALL_NO_GRAD = 2048

_tanh_backward = torch.ops.aten.tanh_backward


def faster(a: torch.Tensor, backward: bool = True) -> bool:
    """Whether the sigmoid form is the faster tanh for ``a``: a CPU tensor of enough elements
    (fewer when no autograd node is recorded for it, ``backward=False``)."""
    return a.device.type == "cpu" and a.numel() >= (_SMALL if backward else _SMALL_NO_GRAD)


def from_doubled_(a2: torch.Tensor) -> torch.Tensor:
    """tanh(a) in place from ``a2`` = 2a (a matmul gives 2a for free with alpha = beta = 2);
    no autograd. Returns ``a2``."""
    return a2.sigmoid_().mul_(2.0).sub_(1.0)


def tanh(a: torch.Tensor) -> torch.Tensor:
    """``torch.tanh(a)``, through sigmoid on the CPU where that is faster (differentiable)."""
    if not faster(a):
        return torch.tanh(a)
    if torch.is_grad_enabled() and a.requires_grad:
        return _Tanh.apply(a)
    return from_doubled_(a.mul(2.0))


class _Tanh(torch.autograd.Function):
    @staticmethod
    def forward(ctx, a):
        out = from_doubled_(a.mul(2.0))
        ctx.save_for_backward(out)
        return out

    @staticmethod
    def backward(ctx, grad):
        (out,) = ctx.saved_tensors
        return _tanh_backward(grad, out)
