"""Many runs as one model: every parameter carries a leading run dimension K.

These networks are tiny, so one training step is bound by kernel launches and host syncs, not
by arithmetic. Training K runs that share shapes (the seeds of a configuration, the tau values of
ACT) as one model with batched matmuls costs about as many launches as one run. Each member is
the single run's computation with its seed: its own initial weights (drawn exactly as the single
run draws them), its own data generator, its own tau and its own Adam state (Adam is
elementwise, so one Adam over stacked parameters is K independent Adams).

What holds, and what the tests check: a member draws the same batches and computes the same
equations as the single run, but not bitwise. The batched matmuls sum in another order than
PyTorch's fused RNN kernels and than one run's matmuls, and ACT's compaction pads the rows of
the samples still pondering across all members, so a member's numbers depend on its companions
at the level of float rounding (measured: up to 4e-6 of a weight's scale after one step on
parity, float32). Over training such differences can grow where a run is chaotic; each run
directory's engine.json records which engine trained it and beside which companions.

Each method computes its K runs in its own ``stacked`` (``ponder.methods``), with batched
matmuls over ``[K, B, ...]``; ACT's halting loop is ``act.ponder_token`` itself, run over runs
x samples, so the loop for a token ends when every sample of every run has halted. For the tanh
RNN and LSTM cells ACT's loop is ``kernels/act_rnn.py`` and ``kernels/act_lstm.py`` (the
running pairs of run and sample as one ragged set of rows, the backward written out),
PonderNet's token over a tanh RNN ``kernels/pondernet_rnn.py`` on the CPU, and Repeat's
recurrence over an LSTM ``kernels/repeat_lstm.py``.
``Stacked`` is the engine the training loop (``train.py``) drives: the members' checkpoints
are in the single-run format, so either engine resumes them.
On a GPU the ensemble's step is replayed from CUDA graphs as a single run's is.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ..config import RunConfig
from ..methods import method
from . import engine
from .models import ModelSpec, TaskNet


class Ensemble(nn.Module):
    """K networks of one ``ModelSpec`` as one module: ``logits, info = ens(x)`` with x
    ``[K, B, T, input_size]``, logits ``[K, B, T, output_size]`` and info ``[K, B, T]``.

    Parameters keep ``TaskNet``'s names (dots as ``__``) with a leading K dimension, so a
    member's slice is a ``TaskNet`` state dict (``member_state_dict``).
    """

    def __init__(self, nets: list[TaskNet]) -> None:
        super().__init__()
        self.spec: ModelSpec = nets[0].spec
        if any(n.spec != self.spec for n in nets):
            raise ValueError("ensemble members must share one ModelSpec")
        self.k = len(nets)
        self.names = [name for name, _ in nets[0].named_parameters()]
        members = [dict(n.named_parameters()) for n in nets]
        self.params = nn.ParameterDict(
            {
                name.replace(".", "__"): nn.Parameter(
                    torch.stack([m[name].detach() for m in members])
                )
                for name in self.names
            }
        )
        self._method = method(self.spec.model)

    def p(self, name: str) -> torch.Tensor:
        return self.params[name.replace(".", "__")]

    def ordered_parameters(self) -> list[nn.Parameter]:
        """The parameters in ``TaskNet``'s order (the optimizer state is indexed by it)."""
        return [self.p(name) for name in self.names]

    def member_state_dict(self, k: int) -> dict[str, torch.Tensor]:
        return {name: self.p(name)[k].detach().clone() for name in self.names}

    def forward(
        self, x: torch.Tensor, unroll: int | None = None, uniforms: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """``unroll`` and ``uniforms`` (``[K, B, T, N]``): as ``TaskNet.forward`` (ACT's
        ``info["overflow"]`` is over all runs). The method's own ``stacked`` computes it."""
        return self._method.stacked(self, x, unroll, uniforms)

    def weights(self, prefix: str, suffix: str = "") -> list[torch.Tensor]:
        """A cell's ``weight_ih, weight_hh, bias_ih, bias_hh``, each ``[K, ...]``."""
        return [
            self.p(f"{prefix}.{w}{suffix}")
            for w in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")
        ]

    def zero_state(self, x: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """The zero state ``[K, B, H]`` (``(h, c)`` for an LSTM) for the batch of ``x``."""
        h = x.new_zeros(*x.shape[:2], self.spec.hidden)  # (K, B, H)
        return (h, h.clone()) if self.spec.cell == "lstm" else h


_MOMENTS = ("exp_avg", "exp_avg_sq")


def stack_optimizer_states(ens: Ensemble, states: list[dict]) -> dict:
    """Single-run Adam state dicts (TaskNet parameter order) -> one for the ensemble."""
    stacked = {}
    for i in range(len(ens.names)):
        per = [s["state"].get(i) for s in states]
        if all(p is None for p in per):
            continue  # no gradient yet (W_hh of a one-token RNN, whose h_0 is 0): no state
        # A member without state has had no gradient: Adam's zero state, which it would
        # update by zero, stands in for it.
        ref = next(p for p in per if p is not None)
        zero = {"step": ref["step"], **{k: torch.zeros_like(ref[k]) for k in _MOMENTS}}
        per = [zero if p is None else p for p in per]
        stacked[i] = {
            "step": per[0]["step"].clone(),
            "exp_avg": torch.stack([p["exp_avg"] for p in per]),
            "exp_avg_sq": torch.stack([p["exp_avg_sq"] for p in per]),
        }
    return {"state": stacked, "param_groups": states[0]["param_groups"]}


def member_optimizer_state(opt_state: dict, k: int) -> dict:
    """The ensemble's Adam state dict -> member k's, as the single run would have saved it."""
    state = {
        i: {
            "step": s["step"].clone(),
            "exp_avg": s["exp_avg"][k].clone(),
            "exp_avg_sq": s["exp_avg_sq"][k].clone(),
        }
        for i, s in opt_state["state"].items()
    }
    return {"state": state, "param_groups": opt_state["param_groups"]}


class Stacked:
    """K runs of one shape (``config.RunConfig.ensemble_key`` equal) as one
    ``Ensemble``: the engine ``train.run_group`` uses for a group of more than one run."""

    name = "stacked"

    def __init__(
        self, configs: list[RunConfig], ckpts: list[dict | None], device: torch.device
    ) -> None:
        c0 = configs[0]
        self.k = len(configs)
        self.task, spec = engine.build(c0)
        nets = [engine.init_network(c, spec, ckpt) for c, ckpt in zip(configs, ckpts, strict=True)]
        self.ens = Ensemble(nets).to(device)
        graphs = engine.uses_graphs(c0, device)
        self.opt = engine.make_adam(self.ens.ordered_parameters(), c0.lr, device, graphs)
        if ckpts[0] is not None:
            states = [c["optimizer"] for c in ckpts]
            engine.load_optimizer(self.opt, stack_optimizer_states(self.ens, states))
        drawn = [
            engine.data_generator(c, device, ckpt) for c, ckpt in zip(configs, ckpts, strict=True)
        ]
        self.gens = [g for g, _ in drawn]
        self.reseeded = [r for _, r in drawn]
        self.window = torch.zeros(self.k, len(engine.WINDOW), device=device)
        self.ens.train()
        self.config = c0
        task, gens, batch = self.task, self.gens, c0.batch_size
        shape = (batch, task.seq_len)

        def draw():  # PonderNet's halting uniforms: each member's from its own stream
            u = [engine.halting_uniforms(c0, shape, g) for g in gens]
            return None if u[0] is None else torch.stack(u)

        self.stepper = engine.make_stepper(
            c0, self.ens, self.opt, task, lambda: task.sample_many(batch, gens), gens,
            engine.loss_weights(configs, device), self.window, graphs, draw,
        )  # fmt: skip

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        xs = x.unsqueeze(0).expand(self.k, *x.shape)
        u = engine.halting_uniforms(self.config, x.shape[:2])
        if u is None:
            return self.ens(xs)
        return self.ens(xs, uniforms=u.to(x.device).expand(self.k, *u.shape))

    def modules(self) -> torch.nn.Module:
        return self.ens

    def member_state(self, i: int) -> dict[str, Any]:
        return {
            "model": self.ens.member_state_dict(i),
            "optimizer": member_optimizer_state(self.opt.state_dict(), i),
            "data_rng": self.gens[i].get_state(),
            "data_device": self.gens[i].device.type,
        }
