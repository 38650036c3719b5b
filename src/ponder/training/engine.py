"""What one training step computes, and the engine that takes it for one run.

The training loop (``train.py``) drives an *engine*: K runs' networks, optimizer and data
generators behind one step. ``Single`` is one run's network, with PyTorch's fused recurrent
kernels; ``ensemble.Stacked`` is K runs stacked into one model. Both expose the same few things
(``Engine``), so the log step, divergence, checkpoints, held-out evaluation, stopping and the
summary are written once, in the loop.

The loss is the method's own (``MethodSpec.loss``: ACT's in methods/act.py, PonderNet's in
methods/pondernet.py), per sequence, then the batch mean. The optimizer is the paper's Adam.
Every random number comes from a generator seeded from the run's seed (``derive_seed``): the
same seed gives the same run.
"""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import Callable, Iterator
from typing import Any, Protocol

import torch

from .. import tasks
from ..config import RunConfig
from ..methods import MethodSpec, method
from ..rundir import RunError
from .graphs import Stepper
from .models import ModelSpec, TaskNet, build_model

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
    """Whether training steps replay CUDA graphs (``training/graphs.py``): on a CUDA device unless
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


def loss_weights(configs: list[RunConfig], device: torch.device) -> dict[str, Any]:
    """What the method's loss weighs its terms by (``MethodSpec.loss_weights``: ACT's tau,
    PonderNet's beta and lambda_p): one run's as floats, several runs' (one method) as ``[K, 1]``
    tensors on ``device``."""
    spec = method(configs[0].model)
    per_run = [spec.loss_weights(c) for c in configs]
    if len(configs) == 1:
        return per_run[0]
    return {
        k: torch.tensor([w[k] for w in per_run], device=device).unsqueeze(1) for k in per_run[0]
    }


def halting_uniforms(
    config: RunConfig, shape: tuple[int, ...], generator: torch.Generator | None = None
) -> torch.Tensor | None:
    """The uniforms PonderNet's halting steps are drawn with, ``[*shape, N]`` (None for the
    other models): from ``generator`` (a training step: the run's data stream, after its
    batch) or, for evaluation, from a generator of their own seeded from ``eval_seed``, so
    every evaluation of every run halts by the same draws."""
    if not method(config.model).draws_halting:
        return None
    if generator is None:
        generator = torch.Generator().manual_seed(derive_seed(config.eval_seed, "halting"))
    steps = method(config.model).max_steps(config)
    return torch.rand((*shape, steps), generator=generator, device=generator.device)


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


def token_mean(values: torch.Tensor, tokens: torch.Tensor | None, lead: int) -> torch.Tensor:
    """The mean of ``values`` over every sequence token of a batch (padding left out; None:
    every step), per leading index: ``[*values.shape[:lead]]``. What the logs call ponder cost,
    ponder steps and repetitions: the computation spent per token."""
    if tokens is None:
        return values.flatten(lead).mean(-1)
    w = tokens.to(values.dtype).expand_as(values)
    return (values * w).flatten(lead).sum(-1) / w.flatten(lead).sum(-1).clamp(min=1)


def objective(
    spec: MethodSpec,
    task: tasks.Task,
    logits: torch.Tensor,
    targets: torch.Tensor,
    info: dict[str, torch.Tensor],
    weights: dict[str, Any],
    ponder_loss: str = "mean",
    tokens: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-sequence ``(loss, task_loss)``, ``[...]``: the method's own loss
    (``spec.loss``; ACT's in methods/act.py, PonderNet's in methods/pondernet.py). The one
    place a training step computes its loss.

    The ponder term is over the sequence's own tokens, ``tokens`` (``task.tokens``, bool
    ``[..., T]``; None: every step, for a batch without padding), so that padding neither
    dilutes the penalty nor is rewarded for halting."""
    return spec.loss(task, logits, targets, info, weights, ponder_loss, tokens)


def forward_backward(
    net: torch.nn.Module,
    opt: torch.optim.Optimizer,
    task: tasks.Task,
    x: torch.Tensor,
    y: torch.Tensor,
    spec: MethodSpec,
    weights: dict[str, Any],
    ponder_loss: str = "mean",
    unroll: int | None = None,
    uniforms: torch.Tensor | None = None,
):
    """The gradients of one batch, in each parameter's ``.grad``; returns each run's loss (``[]``,
    or ``[K]`` for an ensemble), the per-sequence task loss, the logits (detached) and the
    model's info.

    ``unroll`` is ACT's fixed unroll (``methods/act.py``); ``uniforms`` draw PonderNet's halting
    steps (``halting_uniforms``). No number leaves the device here.
    """
    extra = {} if uniforms is None else {"uniforms": uniforms}
    logits, info = net(x, **extra) if unroll is None else net(x, unroll=unroll, **extra)
    info = {**info, "tokens": task.tokens(x, y)}  # for the loss and the logged means
    loss_seq, task_loss = objective(
        spec, task, logits, y, info, weights, ponder_loss, info["tokens"]
    )
    loss = loss_seq.mean(-1)  # the batch mean, per run
    total = loss.sum()
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
    weights: dict[str, Any],
    window: torch.Tensor,
    graphs: bool = False,
    draw: Callable[[], torch.Tensor | None] = lambda: None,
) -> Stepper:
    """The training step of an engine: eager, or replayed from CUDA graphs (``training/graphs.py``).
    ``draw()`` gives PonderNet's halting uniforms, drawn after the batch (None otherwise)."""
    spec = method(config.model)
    return Stepper(
        sample=sample,
        grad=lambda x, y, unroll: forward_backward(
            net, opt, task, x, y, spec, weights, config.ponder_loss, unroll, draw()
        ),
        opt=opt,
        window=window,
        terms=window_terms,
        generators=generators,
        graphs=graphs,
        max_ponder=spec.max_steps(config) if spec.halts_on_host else None,
    )


class Engine(Protocol):
    """K runs' training state behind one step, as the training loop drives it.

    ``stepper()`` trains every live member one step; ``stepper.last`` is the last step's
    ``(task_loss, logits, y)`` and ``window`` (``[K, len(WINDOW)]``) the device sums since the
    last log. ``forward(x)`` runs the networks in their current mode with a leading K
    dimension; ``member_state(i)`` is member i's checkpoint in the single-run format (either
    engine resumes it). A member that finishes leaves the step when the loop repacks the
    engine without it (``train._repack``).
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
            loss_weights([config], device), self.window, graphs=graphs,
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
