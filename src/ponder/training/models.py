"""Task-sized networks: a method's recurrent core (``ponder.methods``) and a readout.

Initialisation follows the authors' TensorFlow 1.4 code by default (``init="tf"``): a cell's
kernel over [input; hidden] is Glorot-uniform with limit sqrt(6 / (fan_in + fan_out)),
fan_in = input (flag included) + hidden, fan_out = hidden x gates; biases zero; an LSTM's forget
gate bias +1 (``LSTMBlockCell(forget_bias=1.0)``); the readout kernel Glorot-uniform and its
bias from the same initializer (a 1-D variable, fan_in = fan_out = its length); the halting
unit Glorot-uniform with bias +1. ``init="torch"`` reproduces PyTorch's own defaults (uniform
+-1/sqrt(hidden) for every cell weight and bias, Kaiming-uniform linear layers); the halting bias
stays at ACT's ``halting_bias`` under both. Every draw comes from the generator passed in, so the
same seed gives the same network on any device.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from ..methods import method
from ..methods.common import GATES


@dataclass(frozen=True)
class ModelSpec:
    """What a network is, independent of training: sizes, core and its ponder options."""

    input_size: int
    output_size: int
    model: str = "act"  # "rnn" | "act" | "repeat" | "pondernet"
    cell: str = "rnn"  # "rnn" | "gru" | "lstm"
    hidden: int = 128
    rho: int = 1
    epsilon: float = 0.01
    max_ponder: int = 100
    halting_bias: float = 1.0


class TaskNet(nn.Module):
    """``logits, info = net(x)``: x ``[B, T, input_size]`` -> logits ``[B, T, output_size]``.

    The task's network around a method's recurrent core (``method(spec.model).build``), which
    that method's ``forward`` runs. ``info`` holds ``[B, T]`` tensors: ``ponder_steps`` N(t)
    (float), ``ponder_cost`` (the term a loss penalises: N(t) + R(t) for ACT, differentiable
    through R; PonderNet's expected steps) and ``repetitions``, what the Fojo paper reports as
    "average repetitions": N(t) - 1 + R(t) for ACT, rho for Repeat and the RNN, the sampled
    halting step for PonderNet; and whatever else the method's loss needs.
    """

    def __init__(self, spec: ModelSpec) -> None:
        super().__init__()
        self.spec = spec
        self.method = method(spec.model)
        self.core = self.method.build(spec)
        self.readout = nn.Linear(spec.hidden, spec.output_size)

    def forward(
        self, x: torch.Tensor, unroll: int | None = None, uniforms: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """``unroll`` (a method that ``halts_on_host``, ACT) runs a fixed number of ponder steps
        and adds ``overflow`` to ``info`` (see ``ponder.methods.act``); ``uniforms`` (a method
        that ``draws_halting``, PonderNet, ``[B, T, N]``) draw its halting steps; the other
        methods ignore them."""
        return self.method.forward(self, x, unroll, uniforms)


def _glorot_(w: torch.Tensor, fan_in: int, fan_out: int, gen: torch.Generator) -> None:
    limit = math.sqrt(6.0 / (fan_in + fan_out))
    w.copy_(torch.rand(w.shape, generator=gen, dtype=w.dtype) * (2 * limit) - limit)


def _uniform_(w: torch.Tensor, bound: float, gen: torch.Generator) -> None:
    w.copy_(torch.rand(w.shape, generator=gen, dtype=w.dtype) * (2 * bound) - bound)


@torch.no_grad()
def init_weights(net: TaskNet, scheme: str, generator: torch.Generator) -> None:
    """Re-draw every parameter of ``net`` from ``generator`` (a CPU generator) by ``scheme``."""
    spec = net.spec
    hidden, gates = spec.hidden, GATES[spec.cell]
    # The cell (a step, ACT and PonderNet) or the layer (Repeat) the core wraps, and its
    # halting unit if it has one.
    core = net.core.cell if hasattr(net.core, "cell") else net.core.rnn
    halting = getattr(net.core, "halting", None) is not None
    params = dict(core.named_parameters())
    weights = sorted(k for k in params if k.startswith("weight_"))
    biases = sorted(k for k in params if k.startswith("bias_"))
    if scheme == "torch":
        for name in weights + biases:
            _uniform_(params[name], 1.0 / math.sqrt(hidden), generator)
        out = net.readout
        _uniform_(out.weight, 1.0 / math.sqrt(out.in_features), generator)
        _uniform_(out.bias, 1.0 / math.sqrt(out.in_features), generator)
        if halting:
            _uniform_(net.core.halting.weight, 1.0 / math.sqrt(hidden), generator)
            net.core.halting.bias.fill_(spec.halting_bias)
        return
    if scheme != "tf":
        raise ValueError(f"unknown init scheme {scheme!r}")
    fan_in = spec.input_size + 1 + hidden  # [input (flag included); hidden]
    for name in weights:
        w = params[name]
        if spec.cell == "gru":
            # TF's GRUCell has a gates kernel (r, z) and a candidate kernel, each Glorot.
            _glorot_(w[: 2 * hidden], fan_in, 2 * hidden, generator)
            _glorot_(w[2 * hidden :], fan_in, hidden, generator)
        else:
            _glorot_(w, fan_in, gates * hidden, generator)
    for name in biases:
        params[name].zero_()
    if spec.cell == "lstm":
        params[biases[-1]][hidden : 2 * hidden] = 1.0  # forget gate (PyTorch order i, f, g, o)
    out = net.readout
    _glorot_(out.weight, out.in_features, out.out_features, generator)
    _glorot_(out.bias, out.out_features, out.out_features, generator)
    if halting:
        _glorot_(net.core.halting.weight, hidden, 1, generator)
        net.core.halting.bias.fill_(spec.halting_bias)


def build_model(spec: ModelSpec, init: str, generator: torch.Generator) -> TaskNet:
    """A network for ``spec`` with every weight drawn from ``generator`` (CPU), on the CPU."""
    net = TaskNet(spec)
    init_weights(net, init, generator)
    return net
