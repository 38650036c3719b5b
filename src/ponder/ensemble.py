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

The recurrences are written with batched matmuls over ``[K, B, ...]``; ACT's halting loop is
``act.ponder_token`` itself, run over runs x samples, so the loop for a token ends when every
sample of every run has halted. For the tanh RNN cell ACT's loop is ``fused.py`` (the running
pairs of run and sample as one ragged set of rows, its backward written out) and PonderNet's
token ``fused_pondernet.py`` on the CPU.
``Stacked`` is the engine the training loop (``train.py``) drives: the members' checkpoints
are in the single-run format, so either engine resumes them.
On a GPU the ensemble's step is replayed from CUDA graphs as a single run's is.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from . import engine
from .act import Gathered, ponder_token
from .config import RunConfig
from .fused import tanh_act
from .fused_pondernet import tanh_pondernet
from .models import ModelSpec, TaskNet, pondernet_head
from .pondernet import expected_steps, log_halting, sample_halting
from .tanh import tanh

# Devices whose PonderNet tanh steps take the hand-written backward (``fused_pondernet``); a
# GPU records the autograd unroll as a CUDA graph instead (the tests empty it to check that path
# on a CPU).
HAND_WRITTEN_PONDERNET = {"cpu"}


def _linear(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per-run ``x @ w.T + b``: x ``[K, ..., I]``, w ``[K, O, I]``, b ``[K, O]``."""
    k = x.shape[0]
    flat = x.reshape(k, -1, x.shape[-1])  # (K, N, I)
    out = torch.baddbmm(b.unsqueeze(1), flat, w.transpose(1, 2))  # (K, N, O)
    return out.reshape(*x.shape[:-1], w.shape[1])


def _recur(kind: str, gi: torch.Tensor, h: torch.Tensor, w_hh: torch.Tensor, b_hh, state):
    """One cell step from the input part gi: for an RNN or LSTM gi already holds b_hh and one
    baddbmm adds h W_hh^T to it (a GRU needs the hidden part on its own)."""
    if kind == "gru":
        return _cell_update(kind, gi, _linear(h, w_hh, b_hh), state)
    k = gi.shape[0]
    pre = torch.baddbmm(
        gi.reshape(k, -1, gi.shape[-1]), h.reshape(k, -1, h.shape[-1]), w_hh.transpose(1, 2)
    )
    return _cell_update(kind, pre.view(gi.shape), None, state)


def _cell_update(kind: str, gi: torch.Tensor, gh: torch.Tensor | None, state):
    """PyTorch's RNN/GRU/LSTM cell equations from the input part gi and hidden part gh (for
    an RNN or LSTM, gh None means gi already is their sum)."""
    if kind == "rnn":
        return tanh(gi if gh is None else gi + gh)
    if kind == "lstm":
        _, c = state
        i, f, g, o = (gi if gh is None else gi + gh).chunk(4, -1)
        c = torch.sigmoid(f) * c + torch.sigmoid(i) * tanh(g)
        return torch.sigmoid(o) * tanh(c), c
    r_i, z_i, n_i = gi.chunk(3, -1)  # gru
    r_h, z_h, n_h = gh.chunk(3, -1)
    r, z = torch.sigmoid(r_i + r_h), torch.sigmoid(z_i + z_h)
    n = tanh(n_i + r * n_h)
    return (1 - z) * n + z * state


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
        self.rho = self.spec.rho if self.spec.model == "repeat" else 1

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
        ``info["overflow"]`` is over all runs)."""
        if self.spec.model == "pondernet":
            return self._pondernet(x, uniforms)
        if self.spec.model == "act":
            y, info = self._act(x, unroll)
        else:
            y, info = self._repeat(x)
        return _linear(y, self.p("readout.weight"), self.p("readout.bias")), info

    def _weights(self, prefix: str, suffix: str = ""):
        return [
            self.p(f"{prefix}.{w}{suffix}")
            for w in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")
        ]

    def _zero_state(self, x: torch.Tensor):
        h = x.new_zeros(*x.shape[:2], self.spec.hidden)  # (K, B, H)
        return (h, h.clone()) if self.spec.cell == "lstm" else h

    def _repeat(self, x: torch.Tensor):
        k, b, t, _ = x.shape
        w_ih, w_hh, b_ih, b_hh = self._weights("core.rnn", "_l0")
        fold = self.spec.cell != "gru"  # b_hh joins the input part (see _recur)
        # A token's rho repeats differ only in the flag (the first input column), so project
        # each token once and add the flag's column on its first repeat.
        w_flag = w_ih[:, :, 0].unsqueeze(1)  # (K, 1, G*H)
        g_tokens = _linear(x, w_ih[:, :, 1:], b_ih + b_hh if fold else b_ih).unbind(2)
        state = self._zero_state(x)
        outs = []
        for i in range(t * self.rho):
            token, repeat = divmod(i, self.rho)
            gi = g_tokens[token] + w_flag if repeat == 0 else g_tokens[token]
            h = state[0] if isinstance(state, tuple) else state
            if i == 0:  # h is zero: h W_hh^T = 0 exactly, so skip that matmul
                state = _cell_update(self.spec.cell, gi, None if fold else b_hh.unsqueeze(1), state)
            else:
                state = _recur(self.spec.cell, gi, h, w_hh, b_hh, state)
            if repeat == self.rho - 1:
                outs.append(state[0] if isinstance(state, tuple) else state)
        y = torch.stack(outs, 2)  # (K, B, T, H)
        fixed = torch.full((k, b, t), float(self.rho), device=x.device, dtype=x.dtype)
        return y, {"ponder_steps": fixed, "ponder_cost": fixed, "repetitions": fixed}

    def _act(self, x: torch.Tensor, unroll: int | None):
        w_ih, w_hh, b_ih, b_hh = self._weights("core.cell")
        fold = self.spec.cell != "gru"  # b_hh joins the input part (see _recur)
        w_halt, b_halt = self.p("core.halting.weight"), self.p("core.halting.bias")
        w_flag = w_ih[:, :, 0].unsqueeze(1)  # (K, 1, G*H): the first-step flag's column
        # x_t's projection is the same on every ponder step: compute it once per token.
        g_tokens = _linear(x, w_ih[:, :, 1:], b_ih + b_hh if fold else b_ih).unbind(2)

        of = Gathered()  # weights and inputs at the compact set of runs and samples

        def halt(y, members):
            w, b = of("w_halt", w_halt, members), of("b_halt", b_halt, members)
            return torch.sigmoid(_linear(y, w, b)).squeeze(-1)

        state = self._zero_state(x)
        limits = (self.spec.epsilon, self.spec.max_ponder)
        outs, steps, rems, overflow = [], [], [], []
        for t in range(x.shape[2]):
            g_first, g_later = g_tokens[t] + w_flag, g_tokens[t]

            def step(n, s, rows, members, g_first=g_first, g_later=g_later):
                h = s[0] if isinstance(s, tuple) else s
                gi = of("g", g_later, members, rows) if n > 1 else of("g1", g_first, members, rows)
                b = of("b_hh", b_hh, members) if not fold else None  # folded into gi otherwise
                return _recur(self.spec.cell, gi, h, of("w_hh", w_hh, members), b, s)

            if self.spec.cell == "rnn" and unroll is None:  # the hand-written backward
                y, n_t, r_t = tanh_act(g_first, g_later, state, w_hh, w_halt, b_halt, *limits)
                state, o_t = y, None
            else:
                y, state, n_t, r_t, _, o_t = ponder_token(
                    step, halt, state, *limits, unroll, probs=False
                )
            overflow.append(o_t)
            outs.append(y)
            steps.append(n_t)
            rems.append(r_t)
        n = torch.stack(steps, 2).to(x.dtype)  # (K, B, T)
        r = torch.stack(rems, 2)
        info = {"ponder_steps": n, "ponder_cost": n + r, "repetitions": n - 1.0 + r.detach()}
        if unroll is not None:
            info["overflow"] = torch.stack(overflow).any()
        return torch.stack(outs, 2), info

    def _pondernet(self, x: torch.Tensor, uniforms: torch.Tensor):
        """PonderNet (``ponder.pondernet``) over runs x samples: N steps per token for all."""
        k, b, t, _ = x.shape
        n_steps = self.spec.max_ponder
        w_ih, w_hh, b_ih, b_hh = self._weights("core.cell")
        fold = self.spec.cell != "gru"  # b_hh joins the input part (see _recur)
        w_halt, b_halt = self.p("core.halting.weight"), self.p("core.halting.bias")
        w_flag = w_ih[:, :, 0].unsqueeze(1)  # (K, 1, G*H): the first-step flag's column
        g_tokens = _linear(x, w_ih[:, :, 1:], b_ih + b_hh if fold else b_ih).unbind(2)
        b_gh = None if fold else b_hh
        if self.spec.cell == "rnn" and x.device.type in HAND_WRITTEN_PONDERNET:
            return self._pondernet_tanh(g_tokens, w_flag, w_hh, w_halt, b_halt, uniforms)
        state = self._zero_state(x)
        outs, log_p, halting = [], [], []
        for i in range(t):
            s, states = state, []
            for n in range(n_steps):
                gi = g_tokens[i] + w_flag if n == 0 else g_tokens[i]
                s = _recur(self.spec.cell, gi, s[0] if isinstance(s, tuple) else s, w_hh, b_gh, s)
                states.append(s)
            ys = torch.stack([s[0] if isinstance(s, tuple) else s for s in states], 2)
            lambdas, log_p_t = log_halting(_linear(ys, w_halt, b_halt).squeeze(-1))  # (K, B, N)
            n_star = sample_halting(lambdas.detach(), uniforms[:, :, i])  # (K, B)
            if i < t - 1:  # s_t^{n*}: the next token starts there (the last one's is unused)
                pick = (n_star - 1)[None, :, :, None].expand(1, k, b, self.spec.hidden)

                def at_halt(*parts, pick=pick):
                    return torch.stack(parts).gather(0, pick)[0]

                state = tuple(map(at_halt, *states)) if isinstance(s, tuple) else at_halt(*states)
            outs.append(ys)
            log_p.append(log_p_t)
            halting.append(n_star)
        ys = torch.stack(outs, 2)  # (K, B, T, N, H)
        step_logits = _linear(ys, self.p("readout.weight"), self.p("readout.bias"))
        return pondernet_head(step_logits, _pondernet_core(log_p, halting))

    def _pondernet_tanh(self, g_tokens, w_flag, w_hh, w_halt, b_halt, uniforms):
        """``_pondernet`` for the tanh RNN cell through ``fused_pondernet.tanh_pondernet``: the
        halting unit and the readout as one projection of every step's state."""
        v = torch.cat([w_halt, self.p("readout.weight")], 1)  # (K, 1 + O, H)
        c = torch.cat([b_halt, self.p("readout.bias")], 1)
        state = None  # a sequence starts from the zero state
        step_logits, log_p, halting = [], [], []
        for i, g in enumerate(g_tokens):
            more = i < len(g_tokens) - 1  # another token starts from a state of this one
            z, states = tanh_pondernet(g + w_flag, g, state, w_hh, v, c, self.spec.max_ponder, more)
            lambdas, log_p_t = log_halting(z[..., 0])  # (K, B, N)
            n_star = sample_halting(lambdas.detach(), uniforms[:, :, i])  # (K, B)
            if more:  # s_t^{n*}: the next token starts there
                pick = (n_star - 1)[:, :, None, None].expand(*n_star.shape, 1, states.shape[-1])
                state = states.gather(2, pick).squeeze(2)
            step_logits.append(z[..., 1:])
            log_p.append(log_p_t)
            halting.append(n_star)
        return pondernet_head(torch.stack(step_logits, 2), _pondernet_core(log_p, halting))


def _pondernet_core(log_p: list, halting: list) -> dict[str, torch.Tensor]:
    log_p_kbt = torch.stack(log_p, 2)  # (K, B, T, N)
    return {
        "log_p": log_p_kbt,
        "halting_step": torch.stack(halting, 2),
        "expected_steps": expected_steps(log_p_kbt.exp()),
    }


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


@torch.no_grad()
def _freeze(ens: Ensemble, opt: torch.optim.Optimizer, i: int) -> None:
    """Member i is done: zero its weights and Adam state so it stays finite and cheap."""
    for p in ens.parameters():
        p[i] = 0.0
        state = opt.state.get(p, {})
        for key in ("exp_avg", "exp_avg_sq"):
            if key in state:
                state[key][i] = 0.0


class Stacked:
    """K runs of one shape (``config.RunConfig.identity`` equal but for seed and tau) as one
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
        self.alive = torch.ones(self.k, dtype=torch.bool, device=device)  # members still training
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
            engine.Penalty.of(configs, device), self.window, self.alive, graphs, draw,
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

    def stop(self, i: int) -> None:
        _freeze(self.ens, self.opt, i)
        self.alive[i] = False
