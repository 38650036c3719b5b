"""What one training step computes, and the engine that takes it for one run.

The training loop (``train.py``) drives an *engine*: K runs' networks, optimizer and data
generators behind one step. ``Single`` is one run's network, with PyTorch's fused recurrent
kernels; ``ensemble.Stacked`` is K runs stacked into one model. Both expose the same few things
(``Engine``), so the log step, divergence, checkpoints, held-out evaluation, stopping and the
summary are written once, in the loop.

The loss is the authors' code's: per sequence, the task loss (mean over its classifications)
plus tau times the ponder cost averaged over time steps (``ponder_loss="sum"``: summed, as in
Graves), then the batch mean. PonderNet's is the task loss of every step's prediction weighted
by p, plus beta times KL(p || p_G) averaged over time steps, then the batch mean. The optimizer
is the paper's Adam. Every random number comes from a generator seeded from the run's seed
(``derive_seed``): the same seed gives the same run.
"""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Protocol

import torch

from . import tasks
from .config import RunConfig
from .graphs import Stepper
from .models import ModelSpec, TaskNet, build_model
from .pondernet import regulariser
from .rundir import RunError

# Window sums accumulated on the device between logs (no host sync inside a step), per run.
WINDOW = ("loss", "ponder_cost", "ponder_steps", "repetitions", "nonfinite")


def derive_seed(seed: int, stream: str) -> int:
    """An independent 63-bit seed for one random stream ("init", "data") of run ``seed``."""
    digest = hashlib.sha256(f"ponder:{stream}:{seed}".encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise RunError("--device cuda was asked for but PyTorch sees no CUDA GPU here")
    return torch.device(name)


@contextlib.contextmanager
def matmul_precision(tf32: bool) -> Iterator[None]:
    """Both of PyTorch's process-wide TF32 switches, cuBLAS matmuls and cuDNN (the fused RNN
    kernels), set to ``tf32`` for the block and restored after it.

    PyTorch's defaults differ (matmuls off, cuDNN on), so a step that set only one, or set them
    only in training, would run the bench's cuDNN kernels in TF32 and training's in float32,
    and a test's numbers would depend on which test ran before it. Training and the bench both
    run inside this block, with the config's ``tf32`` (off unless a run opts in); on a CPU the
    switches have no effect."""
    matmul, cudnn = torch.backends.cuda.matmul, torch.backends.cudnn
    old = matmul.allow_tf32, cudnn.allow_tf32
    matmul.allow_tf32 = cudnn.allow_tf32 = tf32
    try:
        yield
    finally:
        matmul.allow_tf32, cudnn.allow_tf32 = old


def uses_graphs(config: RunConfig, device: torch.device) -> bool:
    """Whether training steps replay CUDA graphs (``ponder.graphs``): on a CUDA device unless
    the config turns them off."""
    return config.cuda_graphs and device.type == "cuda"


def build(config: RunConfig) -> tuple[tasks.Task, ModelSpec]:
    """The task and network spec a resolved config describes."""
    task = tasks.make(config.task, **config.task_options)
    spec = ModelSpec(
        input_size=task.input_size,
        output_size=task.output_size,
        model=config.model,
        cell=config.cell,
        hidden=config.hidden,
        rho=config.rho,
        epsilon=config.epsilon,
        max_ponder=config.max_ponder,
        halting_bias=config.halting_bias,
    )
    return task, spec


def effective_tau(config: RunConfig) -> float:
    """The time penalty the loss applies: tau for ACT, 0 where the ponder cost is fixed."""
    return config.tau if config.model == "act" else 0.0


@dataclass
class Penalty:
    """What the loss adds to the task loss, per run (floats, or ``[K, 1]`` tensors for an
    ensemble): ACT's tau, or PonderNet's KL weight beta and prior lambda_p."""

    tau: float | torch.Tensor = 0.0
    beta: float | torch.Tensor = 0.0
    lambda_p: float | torch.Tensor = 1.0

    @classmethod
    def of(cls, configs: list[RunConfig], device: torch.device) -> Penalty:
        """One run's penalty as floats; several runs' as ``[K, 1]`` tensors on ``device``."""
        pond = [c.model == "pondernet" for c in configs]
        values = {
            "tau": [effective_tau(c) for c in configs],
            "beta": [c.beta if p else 0.0 for c, p in zip(configs, pond, strict=True)],
            "lambda_p": [c.lambda_p if p else 1.0 for c, p in zip(configs, pond, strict=True)],
        }
        if len(configs) == 1:
            return cls(**{k: v[0] for k, v in values.items()})
        return cls(**{k: torch.tensor(v, device=device).unsqueeze(1) for k, v in values.items()})


def halting_uniforms(
    config: RunConfig, shape: tuple[int, ...], generator: torch.Generator | None = None
) -> torch.Tensor | None:
    """The uniforms PonderNet's halting steps are drawn with, ``[*shape, N]`` (None for the
    other models): from ``generator`` (a training step: the run's data stream, after its
    batch) or, for evaluation, from a generator of their own seeded from ``eval_seed``, so
    every evaluation of every run halts by the same draws."""
    if config.model != "pondernet":
        return None
    if generator is None:
        generator = torch.Generator().manual_seed(derive_seed(config.eval_seed, "halting"))
    return torch.rand((*shape, config.max_ponder), generator=generator, device=generator.device)


def make_adam(
    params, lr: float, device: torch.device, capturable: bool = False
) -> torch.optim.Adam:
    """The paper's Adam (betas 0.9, 0.999, eps 1e-8), as one fused kernel over all parameters
    where PyTorch has it (CPU and CUDA): several times faster than the per-tensor loop for
    these small networks, and elementwise, so a stacked ensemble's members stay independent.
    ``capturable`` keeps its step count on the device so a CUDA graph can record the update."""
    fused = device.type in ("cpu", "cuda")
    return torch.optim.Adam(
        params, lr=lr, betas=(0.9, 0.999), eps=1e-8, fused=fused, capturable=capturable
    )


def load_optimizer(opt: torch.optim.Optimizer, state: dict) -> None:
    """Load a saved optimizer state but keep this optimizer's ``capturable`` setting: a
    checkpoint written by a CUDA-graph run must resume on a CPU, and the other way round."""
    capturable = [g.get("capturable", False) for g in opt.param_groups]
    opt.load_state_dict(state)
    for group, keep in zip(opt.param_groups, capturable, strict=True):
        group["capturable"] = keep


def init_network(config: RunConfig, spec: ModelSpec, ckpt: dict | None) -> TaskNet:
    """Run ``config``'s network on the CPU: drawn from its "init" stream, or its checkpoint's."""
    net = build_model(
        spec, config.init, torch.Generator().manual_seed(derive_seed(config.seed, "init"))
    )
    if ckpt is not None:
        net.load_state_dict(ckpt["model"])
    return net


def data_generator(
    config: RunConfig, device: torch.device, ckpt: dict | None
) -> tuple[torch.Generator, bool]:
    """Run ``config``'s data generator on ``device`` at its checkpoint, and whether it had to be
    re-seeded: a CUDA generator's state (Philox) cannot become a CPU one's (Mersenne Twister)
    or the reverse, so a run resumed on the other kind of device draws, from the checkpoint on,
    from a fresh stream seeded by (seed, device, step). Same seed and resume point, same run."""
    gen = torch.Generator(device).manual_seed(derive_seed(config.seed, "data"))
    if ckpt is None:
        return gen, False
    state = ckpt["data_rng"]
    saved = ckpt.get("data_device")  # absent in older checkpoints: tell by the state's size
    same = saved == device.type if saved else state.numel() == gen.get_state().numel()
    if same:
        gen.set_state(state.to(gen.get_state().device))
        return gen, False
    stream = f"data:{device.type}@{int(ckpt['step'])}"
    return gen.manual_seed(derive_seed(config.seed, stream)), True


def eval_set(task: tasks.Task, config: RunConfig, device: torch.device):
    """The held-out set: the same for every run and every log, from its own seed."""
    return task.sample(config.eval_size, torch.Generator(device).manual_seed(config.eval_seed))


def eval_sets(task: tasks.Task, config: RunConfig, device: torch.device) -> dict[str, tuple]:
    """Every held-out set by name: "eval" (the training distribution) and the config's extra
    ``eval_sets``, each drawn from a seed of its own (derived from ``eval_seed`` and its name)."""
    sets = {"eval": eval_set(task, config, device)}
    for name, options in config.eval_sets.items():
        seed = derive_seed(config.eval_seed, f"eval:{name}")
        other = tasks.make(config.task, **options)
        sets[name] = other.sample(config.eval_size, torch.Generator(device).manual_seed(seed))
    return sets


def per_token(
    values: torch.Tensor, tokens: torch.Tensor | None, ponder_loss: str = "mean"
) -> torch.Tensor:
    """A per-token quantity ``values [..., T]`` over each sequence's own tokens (``tokens``,
    bool, broadcast to ``values``; None: every step): their mean (``ponder_loss="mean"``) or
    sum, ``[...]``."""
    if tokens is None:
        return values.mean(-1) if ponder_loss == "mean" else values.sum(-1)
    w = tokens.to(values.dtype)
    total = (values * w).sum(-1)
    if ponder_loss != "mean":
        return total
    return total / w.expand_as(values).sum(-1).clamp(min=1)


def token_mean(values: torch.Tensor, tokens: torch.Tensor | None, lead: int) -> torch.Tensor:
    """The mean of ``values`` over every sequence token of a batch (padding left out; None:
    every step), per leading index: ``[*values.shape[:lead]]``. What the logs call ponder cost,
    ponder steps and repetitions: the computation spent per token."""
    if tokens is None:
        return values.flatten(lead).mean(-1)
    w = tokens.to(values.dtype).expand_as(values)
    return (values * w).flatten(lead).sum(-1) / w.flatten(lead).sum(-1).clamp(min=1)


def objective(
    task: tasks.Task,
    logits: torch.Tensor,
    targets: torch.Tensor,
    info: dict[str, torch.Tensor],
    penalty: Penalty | float | torch.Tensor,
    ponder_loss: str = "mean",
    tokens: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-sequence ``(loss, task_loss)``, ``[...]``: task loss + tau * ponder term (ACT), or
    PonderNet's expected task loss + beta * KL(p || p_G). A bare number is tau.

    The ponder term is over the sequence's own tokens, ``tokens`` (``task.tokens``, bool
    ``[..., T]``; None: every step, for a batch without padding), so that padding neither
    dilutes the penalty nor is rewarded for halting."""
    if not isinstance(penalty, Penalty):
        penalty = Penalty(tau=penalty)
    if "log_p" in info:
        return _pondernet_objective(task, targets, info, penalty, ponder_loss, tokens)
    task_loss = task.loss(logits, targets)
    tau = penalty.tau
    if isinstance(tau, float) and tau == 0.0:  # no penalty (Repeat, the RNN): nothing to add
        return task_loss, task_loss
    cost = info["ponder_cost"]  # rho_t = N(t) + R(t), (..., T)
    ponder = per_token(cost, tokens, ponder_loss)
    return task_loss + tau * ponder, task_loss


def _pondernet_objective(
    task: tasks.Task,
    targets: torch.Tensor,
    info: dict[str, torch.Tensor],
    penalty: Penalty,
    ponder_loss: str,
    tokens: torch.Tensor | None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """L_rec = sum_n p_t^n L(y_t, yhat_t^n) per token, its mean over the tokens with a target;
    plus beta * KL(p_t || p_G), averaged (or summed) over the sequence's tokens. Per
    sequence."""
    log_p = info["log_p"]  # (..., T, N)
    per_step, valid = task.step_losses(info["step_logits"], targets)  # (..., T, N), (..., T)
    expected = (log_p.exp() * per_step).sum(-1)  # (..., T)
    total = torch.where(valid, expected, 0.0).sum(-1)
    rec = total / valid.sum(-1).clamp(min=1).to(total.dtype)
    lam = penalty.lambda_p
    lam = lam.unsqueeze(-1) if isinstance(lam, torch.Tensor) else lam  # (K, 1, 1) over (K, B, T)
    kl = regulariser(log_p, lam)  # (..., T)
    reg = per_token(kl, tokens, ponder_loss)
    return rec + penalty.beta * reg, rec


def forward_backward(
    net: torch.nn.Module,
    opt: torch.optim.Optimizer,
    task: tasks.Task,
    x: torch.Tensor,
    y: torch.Tensor,
    penalty: Penalty | float | torch.Tensor,
    ponder_loss: str = "mean",
    alive: torch.Tensor | None = None,
    unroll: int | None = None,
    uniforms: torch.Tensor | None = None,
):
    """The gradients of one batch, in each parameter's ``.grad``; returns each run's loss (``[]``,
    or ``[K]`` for an ensemble), the per-sequence task loss, the logits (detached) and the
    model's info.

    ``alive`` (``[K]`` bool) leaves out the losses of ensemble members that have stopped;
    ``unroll`` is ACT's fixed unroll (``ponder.act``); ``uniforms`` draw PonderNet's halting
    steps (``halting_uniforms``). No number leaves the device here.
    """
    extra = {} if uniforms is None else {"uniforms": uniforms}
    logits, info = net(x, **extra) if unroll is None else net(x, unroll=unroll, **extra)
    info = {**info, "tokens": task.tokens(x, y)}  # for the loss and the logged means
    loss_seq, task_loss = objective(task, logits, y, info, penalty, ponder_loss, info["tokens"])
    loss = loss_seq.mean(-1)  # the batch mean, per run
    total = loss.sum() if alive is None else torch.where(alive, loss, 0.0).sum()
    # While a CUDA graph records, the gradients are zeroed in place: the graph's update reads
    # those buffers. Otherwise they are dropped, and backward writes fresh ones (cheaper).
    recording = x.is_cuda and torch.cuda.is_current_stream_capturing()
    opt.zero_grad(set_to_none=not recording)
    total.backward()
    return loss.detach(), task_loss.detach(), logits.detach(), info


def window_terms(loss: torch.Tensor, info: dict[str, torch.Tensor]) -> torch.Tensor:
    """``[..., len(WINDOW)]``: this step's loss, ponder cost, N, repetitions (means over the
    batch's tokens, ``info["tokens"]``) and a not-finite flag (per run for an ensemble's
    ``[K]`` loss)."""
    lead = loss.dim()
    means: dict[int, torch.Tensor] = {}  # Repeat's three are one tensor: its mean once
    tokens = info.get("tokens")

    def mean(t: torch.Tensor) -> torch.Tensor:  # over the batch's tokens
        if id(t) not in means:
            means[id(t)] = token_mean(t, tokens, lead)
        return means[id(t)]

    terms = [loss, *(mean(info[k]) for k in WINDOW[1:4])]
    return torch.stack([*terms, (~torch.isfinite(loss)).to(loss.dtype)], -1)


def make_stepper(
    config: RunConfig,
    net: torch.nn.Module,
    opt: torch.optim.Optimizer,
    task: tasks.Task,
    sample: Callable[[], tuple[torch.Tensor, torch.Tensor]],
    generators: list[torch.Generator],
    penalty: Penalty,
    window: torch.Tensor,
    alive: torch.Tensor | None = None,
    graphs: bool = False,
    draw: Callable[[], torch.Tensor | None] = lambda: None,
) -> Stepper:
    """The training step of an engine: eager, or replayed from CUDA graphs (``ponder.graphs``).
    ``draw()`` gives PonderNet's halting uniforms, drawn after the batch (None otherwise)."""
    return Stepper(
        sample=sample,
        grad=lambda x, y, unroll: forward_backward(
            net, opt, task, x, y, penalty, config.ponder_loss, alive, unroll, draw()
        ),
        opt=opt,
        window=window,
        terms=window_terms,
        generators=generators,
        graphs=graphs,
        max_ponder=config.max_ponder if config.model == "act" else None,
    )


class Engine(Protocol):
    """K runs' training state behind one step, as the training loop drives it.

    ``stepper()`` trains every live member one step; ``stepper.last`` is the last step's
    ``(task_loss, logits, y)`` and ``window`` (``[K, len(WINDOW)]``) the device sums since the
    last log. ``forward(x)`` runs the networks in their current mode with a leading K
    dimension; ``member_state(i)`` is member i's checkpoint in the single-run format (either
    engine resumes it); ``stop(i)`` takes a finished member out of the step.
    """

    name: str
    k: int
    task: tasks.Task
    stepper: Stepper
    window: torch.Tensor
    reseeded: list[bool]  # per member: its data stream was re-seeded on resume (``data_generator``)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]: ...

    def modules(self) -> torch.nn.Module: ...

    def member_state(self, i: int) -> dict[str, Any]: ...

    def stop(self, i: int) -> None: ...


class Single:
    """One run's own network (PyTorch's fused RNN/GRU/LSTM kernels for Repeat and the RNN)."""

    name = "single"
    k = 1

    def __init__(self, config: RunConfig, ckpt: dict | None, device: torch.device) -> None:
        self.task, spec = build(config)
        self.net = init_network(config, spec, ckpt).to(device)
        graphs = uses_graphs(config, device)
        self.opt = make_adam(self.net.parameters(), config.lr, device, capturable=graphs)
        if ckpt is not None:
            load_optimizer(self.opt, ckpt["optimizer"])
        self.gen, reseeded = data_generator(config, device, ckpt)
        self.reseeded = [reseeded]
        self.window = torch.zeros(1, len(WINDOW), device=device)
        self.net.train()
        self.config = config
        task, gen, batch = self.task, self.gen, config.batch_size
        shape = (batch, task.seq_len)
        self.stepper = make_stepper(
            config, self.net, self.opt, task, lambda: task.sample(batch, gen), [gen],
            Penalty.of([config], device), self.window, graphs=graphs,
            draw=lambda: halting_uniforms(config, shape, gen),
        )  # fmt: skip

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        u = halting_uniforms(self.config, x.shape[:2])
        logits, info = self.net(x) if u is None else self.net(x, uniforms=u.to(x.device))
        return logits.unsqueeze(0), {k: v.unsqueeze(0) for k, v in info.items()}

    def modules(self) -> torch.nn.Module:
        return self.net

    def member_state(self, i: int) -> dict[str, Any]:
        return {
            "model": self.net.state_dict(),
            "optimizer": self.opt.state_dict(),
            "data_rng": self.gen.get_state(),
            "data_device": self.gen.device.type,
        }

    def stop(self, i: int) -> None:
        pass  # the loop ends with its only member
