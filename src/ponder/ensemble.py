"""Many runs as one model: every parameter carries a leading run dimension K.

These networks are tiny, so one training step is bound by kernel launches and host syncs, not
by arithmetic. Training K runs that share shapes (the seeds of a configuration, the tau values of
ACT) as one model with batched matmuls costs about as many launches as one run. Each member is
the same computation as the single run with its seed: its own initial weights (drawn exactly as
``train.run`` draws them), its own data generator, its own tau and its own Adam state (Adam is
elementwise, so one Adam over stacked parameters is K independent Adams).

The recurrences are written with batched matmuls over ``[K, B, ...]``; ACT's halting loop is
``act.ponder_token`` itself, run over runs x samples, so the loop for a token ends when every
sample of every run has halted. Each member reads and writes its own run directory through
``train.Recorder``: the same metrics, checkpoints (in the single-run format, so either engine
can resume them) and summary as a single run. On a GPU the ensemble's step is replayed from
CUDA graphs as a single run's is (``ponder.graphs``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from . import train
from .act import ponder_token, take_rows
from .config import RunConfig
from .models import GATES, ModelSpec, PonderNet, build_model

# The fields that may differ between members of one ensemble; all others must be equal.
MEMBER_FIELDS = ("seed", "tau", "steps", "stop_when_solved", "progress")


def group_key(config: RunConfig) -> tuple:
    """Runs with the same key can train as one ensemble."""
    d = config.to_dict()
    for k in MEMBER_FIELDS:
        d.pop(k)
    if config.model != "act":
        d["tau"] = None
    return tuple(sorted((k, repr(v)) for k, v in d.items()))


def worth_batching(config: RunConfig) -> bool:
    """Whether training runs of ``config`` as an ensemble beats training them one by one.

    On a GPU it always does (the step is launch-bound). On a CPU it does for the small networks
    of parity and logic, whose step is bound by per-op overhead, but not for an LSTM of 512
    cells (addition, sort), whose step is bound by arithmetic and where PyTorch's fused LSTM
    kernel beats batched matmuls (``ponder bench``: 0.5x to 0.9x on 2 cores).
    """
    if train.resolve_device(config.device).type == "cuda":
        return True
    return config.hidden * GATES[config.cell] <= 512


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
        return torch.tanh(gi if gh is None else gi + gh)
    if kind == "lstm":
        _, c = state
        i, f, g, o = (gi if gh is None else gi + gh).chunk(4, -1)
        c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
        return torch.sigmoid(o) * torch.tanh(c), c
    r_i, z_i, n_i = gi.chunk(3, -1)  # gru
    r_h, z_h, n_h = gh.chunk(3, -1)
    r, z = torch.sigmoid(r_i + r_h), torch.sigmoid(z_i + z_h)
    n = torch.tanh(n_i + r * n_h)
    return (1 - z) * n + z * state


class Ensemble(nn.Module):
    """K networks of one ``ModelSpec`` as one module: ``logits, info = ens(x)`` with x
    ``[K, B, T, input_size]``, logits ``[K, B, T, output_size]`` and info ``[K, B, T]``.

    Parameters keep ``PonderNet``'s names (dots as ``__``) with a leading K dimension, so a
    member's slice is a ``PonderNet`` state dict (``member_state_dict``).
    """

    def __init__(self, nets: list[PonderNet]) -> None:
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
        """The parameters in ``PonderNet``'s order (the optimizer state is indexed by it)."""
        return [self.p(name) for name in self.names]

    def member_state_dict(self, k: int) -> dict[str, torch.Tensor]:
        return {name: self.p(name)[k].detach().clone() for name in self.names}

    def forward(
        self, x: torch.Tensor, unroll: int | None = None
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """``unroll``: as ``PonderNet.forward`` (ACT only; ``info["overflow"]`` over all runs)."""
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
        return y, {"steps": fixed, "ponder_cost": fixed, "paper_ponder": fixed}

    def _act(self, x: torch.Tensor, unroll: int | None):
        w_ih, w_hh, b_ih, b_hh = self._weights("core.cell")
        fold = self.spec.cell != "gru"  # b_hh joins the input part (see _recur)
        w_halt, b_halt = self.p("core.halting.weight"), self.p("core.halting.bias")
        w_flag = w_ih[:, :, 0].unsqueeze(1)  # (K, 1, G*H): the first-step flag's column
        # x_t's projection is the same on every ponder step: compute it once per token.
        g_tokens = _linear(x, w_ih[:, :, 1:], b_ih + b_hh if fold else b_ih).unbind(2)

        def halt(y):
            return torch.sigmoid(_linear(y, w_halt, b_halt)).squeeze(-1)

        state = self._zero_state(x)
        outs, steps, rems, overflow = [], [], [], []
        for t in range(x.shape[2]):
            g_first, g_later = g_tokens[t] + w_flag, g_tokens[t]

            def step(n, s, rows, g_first=g_first, g_later=g_later):
                h = s[0] if isinstance(s, tuple) else s
                gi = take_rows(g_first if n == 1 else g_later, rows)
                return _recur(self.spec.cell, gi, h, w_hh, b_hh, s)

            y, state, n_t, r_t, _, o_t = ponder_token(
                step, halt, state, self.spec.epsilon, self.spec.max_ponder, unroll, probs=False
            )
            overflow.append(o_t)
            outs.append(y)
            steps.append(n_t)
            rems.append(r_t)
        n = torch.stack(steps, 2).to(x.dtype)  # (K, B, T)
        r = torch.stack(rems, 2)
        info = {"steps": n, "ponder_cost": n + r, "paper_ponder": n - 1.0 + r.detach()}
        if unroll is not None:
            info["overflow"] = torch.stack(overflow).any()
        return torch.stack(outs, 2), info


def stack_optimizer_states(ens: Ensemble, states: list[dict]) -> dict:
    """Single-run Adam state dicts (PonderNet parameter order) -> one for the ensemble."""
    stacked = {}
    for i in range(len(ens.names)):
        per = [s["state"][i] for s in states]
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


def run_group(configs: list[RunConfig], run_dirs: list[Path]) -> list[dict[str, Any]]:
    """Train runs that share a ``group_key`` as one ensemble; returns their summaries.

    Members that already finished are left alone; members must resume from the same step
    (as they do when they were trained together), else they train one after another.
    """
    if len({group_key(c) for c in configs}) != 1:
        raise ValueError("run_group: the configs differ in more than seed and tau")
    recs = [train.Recorder(c, d) for c, d in zip(configs, run_dirs, strict=True)]
    summaries: list[dict[str, Any] | None] = [r.finished() for r in recs]
    todo = [i for i, s in enumerate(summaries) if s is None]
    if not todo:
        return summaries  # type: ignore[return-value]
    ckpts = [recs[i].resume() for i in todo]
    steps = {int(c["step"]) if c else 0 for c in ckpts}
    if len(steps) > 1:  # trained apart before: resume each on its own
        for i in todo:
            recs[i].close()
            summaries[i] = train.run(configs[i], run_dirs[i])
        return summaries  # type: ignore[return-value]
    members = [configs[i] for i in todo]
    for i, s in zip(
        todo, _train(members, [recs[i] for i in todo], ckpts, steps.pop()), strict=True
    ):
        summaries[i] = s
    return summaries  # type: ignore[return-value]


def _train(configs, recs, ckpts, step: int) -> list[dict[str, Any]]:
    c0 = configs[0]
    k = len(configs)
    device = train.resolve_device(c0.device)
    train.set_matmul_precision(c0, device)
    task, spec = train.build(c0)
    nets = [
        build_model(spec, c.init, torch.Generator().manual_seed(train.derive_seed(c.seed, "init")))
        for c in configs
    ]
    for net, ckpt in zip(nets, ckpts, strict=True):
        if ckpt is not None:
            net.load_state_dict(ckpt["model"])
    ens = Ensemble(nets).to(device)
    graphs = train.uses_graphs(c0, device)
    opt = train.make_adam(ens.ordered_parameters(), c0.lr, device, capturable=graphs)
    if ckpts[0] is not None:
        train.load_optimizer(opt, stack_optimizer_states(ens, [c["optimizer"] for c in ckpts]))
    gens = []
    for c, ckpt in zip(configs, ckpts, strict=True):
        g = torch.Generator(device).manual_seed(train.derive_seed(c.seed, "data"))
        if ckpt is not None:
            g.set_state(ckpt["data_rng"].to(g.get_state().device))
        gens.append(g)
    eval_x, eval_y = train.eval_set(task, c0, device)
    tau = torch.tensor([train.effective_tau(c) for c in configs], device=device).unsqueeze(
        1
    )  # (K, 1): each member's own time penalty
    alive = torch.ones(k, dtype=torch.bool, device=device)  # members still training
    live = list(range(k))
    window = torch.zeros(k, len(train.WINDOW), device=device)
    log_step = step
    budget = max(c.steps for c in configs)
    ens.train()

    def sample():  # (K, B, ...): each member's batch from its own generator
        return task.sample_many(c0.batch_size, gens)

    stepper = train.make_stepper(c0, ens, opt, task, sample, gens, tau, window, alive, graphs)
    try:
        while step < budget and live:
            stepper()
            step += 1
            ends = [i for i in live if step == configs[i].steps]
            if step % c0.log_every and not ends:
                continue
            # ---- log step: the only place that moves numbers to the host
            means = (window / (step - log_step)).tolist()
            log_step = step
            window.zero_()
            task_loss, logits, y = stepper.last
            acc = task.accuracy(logits, y).tolist()
            task_loss_k = task_loss.mean(-1).tolist()
            evals = _evaluate(ens, task, eval_x, eval_y)
            stepper.logged()
            for i in list(live):
                m = dict(zip(train.WINDOW, means[i], strict=True))
                rec = recs[i]
                stop = i in ends
                if m["nonfinite"] > 0:
                    rec.diverged(step)
                    stop = True
                else:
                    row = {
                        "step": step,
                        **{n: m[n] for n in ("loss", "ponder", "steps", "paper_ponder")},
                        "task_loss": task_loss_k[i],
                        "train_accuracy": acc[i],
                        "eval_accuracy": evals["eval_accuracy"][i],
                        "eval_ponder": evals["eval_ponder"][i],
                        "elapsed_s": rec.elapsed(),
                    }
                    stop = rec.log(row) or stop
                    if rec.checkpoint_due(step) or stop:
                        rec.save(
                            ens.member_state_dict(i),
                            member_optimizer_state(opt.state_dict(), i),
                            gens[i].get_state(),
                            step,
                        )
                if stop:
                    rec.finish()
                    live.remove(i)
                    _freeze(ens, opt, i)
                    alive[i] = False
    finally:
        for r in recs:
            r.close()
    return [train.read_summary(r.dir) for r in recs]


@torch.no_grad()
def _freeze(ens: Ensemble, opt: torch.optim.Optimizer, i: int) -> None:
    """Member i is done: zero its weights and Adam state so it stays finite and cheap."""
    for p in ens.parameters():
        p[i] = 0.0
        state = opt.state.get(p, {})
        for key in ("exp_avg", "exp_avg_sq"):
            if key in state:
                state[key][i] = 0.0


@torch.no_grad()
def _evaluate(ens: Ensemble, task, x: torch.Tensor, y: torch.Tensor) -> dict[str, list[float]]:
    """Each member's held-out accuracy and ponder, in eval mode; ``ens`` keeps its mode."""
    training = ens.training
    ens.eval()
    xk = x.unsqueeze(0).expand(ens.k, *x.shape)
    logits, info = ens(xk)
    ens.train(training)
    return {
        "eval_accuracy": task.accuracy(logits, y).tolist(),
        "eval_ponder": info["ponder_cost"].flatten(1).mean(-1).tolist(),
    }
