"""One training run: a plain function of its resolved config and its directory.

``run(config, out_dir)`` trains with the Fojo et al. protocol (Adam, fresh random batches every
step, accuracy logged every ``log_every`` steps on the training batch) and writes, in ``out_dir``:

    config.yaml      the full resolved config, at the start
    metrics.csv      one row per log step (header row)
    events.out.*     the same scalars for TensorBoard
    checkpoint.pt    model, optimizer, step and data RNG, every ``checkpoint_every`` logs (atomic)
    summary.json     solved, steps_to_solve, eval_steps_to_solve, accuracies, ponder, at the end

Calling ``run`` again on the same directory continues from the checkpoint; on the CPU the resumed
run logs exactly what an uninterrupted one would. The loss is the authors' code's: per sequence,
the task loss (mean over its classifications) plus tau times the ponder cost averaged over time
steps (``ponder_loss="sum"``: summed, as in Graves), then the batch mean.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from . import metrics, tasks
from .config import ConfigError, RunConfig, from_dict, load_yaml, save_yaml
from .graphs import Stepper
from .models import ModelSpec, PonderNet, build_model

CONFIG = "config.yaml"
METRICS = "metrics.csv"
CHECKPOINT = "checkpoint.pt"
SUMMARY = "summary.json"
COLUMNS = [
    "step", "loss", "task_loss", "train_accuracy", "ponder", "steps", "paper_ponder",
    "eval_accuracy", "eval_ponder", "elapsed_s",
]  # fmt: skip
# Window means accumulated on the device between logs (no host sync inside a step).
WINDOW = ("loss", "ponder", "steps", "paper_ponder", "nonfinite")


class RunError(Exception):
    """A run cannot start or continue for a reason a person must fix; the message says which."""


# --------------------------------------------------------------------------------------------
# Small pieces shared with sweeps and reports


def derive_seed(seed: int, stream: str) -> int:
    """An independent 63-bit seed for one random stream ("init", "data") of run ``seed``."""
    digest = hashlib.sha256(f"ponder:{stream}:{seed}".encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


def set_matmul_precision(config: RunConfig, device: torch.device) -> None:
    """TF32 matmuls (and cuDNN convolutions/RNNs) on a CUDA GPU when the config opts in."""
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = config.tf32
        torch.backends.cudnn.allow_tf32 = config.tf32


def uses_graphs(config: RunConfig, device: torch.device) -> bool:
    """Whether training steps replay CUDA graphs (``ponder.graphs``): on a CUDA device unless
    the config turns them off."""
    return config.cuda_graphs and device.type == "cuda"


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise RunError("--device cuda was asked for but PyTorch sees no CUDA GPU here")
    return torch.device(name)


def atomic_write(path: Path, data: bytes | str) -> None:
    """Write ``path`` so that a reader sees the old file or the new one, never half of one."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data.encode() if isinstance(data, str) else data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


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


def objective(
    task: tasks.Task,
    logits: torch.Tensor,
    targets: torch.Tensor,
    info: dict[str, torch.Tensor],
    tau: float | torch.Tensor,
    ponder_loss: str = "mean",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-sequence ``(loss, task_loss)``, ``[...]``: task loss + tau * ponder term."""
    task_loss = task.loss(logits, targets)
    if isinstance(tau, float) and tau == 0.0:  # no penalty (Repeat, the RNN): nothing to add
        return task_loss, task_loss
    cost = info["ponder_cost"]  # rho_t = N(t) + R(t), (..., T)
    ponder = cost.mean(-1) if ponder_loss == "mean" else cost.sum(-1)
    return task_loss + tau * ponder, task_loss


def forward_backward(
    net: torch.nn.Module,
    opt: torch.optim.Optimizer,
    task: tasks.Task,
    x: torch.Tensor,
    y: torch.Tensor,
    tau: float | torch.Tensor,
    ponder_loss: str = "mean",
    alive: torch.Tensor | None = None,
    unroll: int | None = None,
):
    """The gradients of one batch, in each parameter's ``.grad``; returns each run's loss (``[]``,
    or ``[K]`` for an ensemble), the per-sequence task loss, the logits (all detached) and the
    model's info.

    ``alive`` (``[K]`` bool) leaves out the losses of ensemble members that have stopped;
    ``unroll`` is ACT's fixed unroll (``ponder.act``). No number leaves the device here.
    """
    logits, info = net(x) if unroll is None else net(x, unroll=unroll)
    loss_seq, task_loss = objective(task, logits, y, info, tau, ponder_loss)
    loss = loss_seq.mean(-1)  # the batch mean, per run
    total = loss.sum() if alive is None else torch.where(alive, loss, 0.0).sum()
    # While a CUDA graph records, the gradients are zeroed in place: the graph's update reads
    # those buffers. Otherwise they are dropped, and backward writes fresh ones (cheaper).
    recording = x.is_cuda and torch.cuda.is_current_stream_capturing()
    opt.zero_grad(set_to_none=not recording)
    total.backward()
    return loss.detach(), task_loss.detach(), logits.detach(), info


def make_stepper(
    config: RunConfig,
    net: torch.nn.Module,
    opt: torch.optim.Optimizer,
    task: tasks.Task,
    sample: Callable[[], tuple[torch.Tensor, torch.Tensor]],
    generators: list[torch.Generator],
    tau: float | torch.Tensor,
    window: torch.Tensor,
    alive: torch.Tensor | None = None,
    graphs: bool = False,
) -> Stepper:
    """The training step of a run (or an ensemble, with ``alive``) as ``train.run`` and
    ``ensemble`` take it: eager, or replayed from CUDA graphs (``ponder.graphs``)."""
    return Stepper(
        sample=sample,
        grad=lambda x, y, unroll: forward_backward(
            net, opt, task, x, y, tau, config.ponder_loss, alive, unroll
        ),
        opt=opt,
        window=window,
        terms=window_terms,
        generators=generators,
        graphs=graphs,
        max_ponder=config.max_ponder if config.model == "act" else None,
    )


def read_config(out_dir: Path) -> RunConfig:
    """The config recorded in a run directory; a missing or broken one is a ``RunError``."""
    try:
        return from_dict(load_yaml(Path(out_dir) / CONFIG))
    except ConfigError as e:
        raise RunError(str(e)) from None


def read_metrics(out_dir: Path) -> list[dict[str, float]]:
    """The rows of a run's metrics.csv as floats (step as int); [] if there is none."""
    path = Path(out_dir) / METRICS
    if not path.exists():
        return []
    rows = []
    with path.open(newline="") as f:
        for row in csv.DictReader(f):
            try:
                parsed = {k: float(v) for k, v in row.items() if k is not None and v != ""}
            except (TypeError, ValueError):
                break  # a torn last line of a killed run
            if "step" not in parsed:
                break
            parsed["step"] = int(parsed["step"])
            rows.append(parsed)
    return rows


def last_logged_step(out_dir: Path) -> int:
    """The step of metrics.csv's last complete row (0 if none), reading only the file's end:
    cheap enough to poll for progress while the run writes."""
    try:
        with (Path(out_dir) / METRICS).open("rb") as f:
            f.seek(max(0, f.seek(0, os.SEEK_END) - 4096))
            lines = f.read().decode(errors="replace").split("\n")
    except FileNotFoundError:
        return 0
    for line in reversed(lines[:-1]):  # the part after the last newline may be half-written
        head = line.split(",", 1)[0]
        if head.isdigit():
            return int(head)
    return 0


def read_summary(out_dir: Path) -> dict[str, Any] | None:
    path = Path(out_dir) / SUMMARY
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise RunError(f"{path} is corrupt; delete it to let the run finish again") from None


def load_checkpoint(path: Path) -> dict[str, Any]:
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise RunError(f"checkpoint not found: {path}") from None
    except Exception:
        raise RunError(
            f"checkpoint {path} is corrupt or truncated; delete it to restart the run"
        ) from None
    if not isinstance(ckpt, dict) or not {"model", "optimizer", "step", "data_rng"} <= set(ckpt):
        raise RunError(f"checkpoint {path} is not a ponder checkpoint")
    return ckpt


def load_model(out_dir: Path, device: str = "cpu") -> tuple[PonderNet, tasks.Task, RunConfig]:
    """The trained network of a run directory (from its last checkpoint), its task and config."""
    config = read_config(out_dir)
    task, spec = build(config)
    net = PonderNet(spec)
    ckpt = load_checkpoint(Path(out_dir) / CHECKPOINT)
    net.load_state_dict(ckpt["model"])
    return net.to(device).eval(), task, config


# --------------------------------------------------------------------------------------------
# The run


@dataclass
class Curve:
    """What the solve criteria need of the logged history."""

    steps: list[int] = field(default_factory=list)
    train: list[float] = field(default_factory=list)
    eval: list[float] = field(default_factory=list)

    def add(self, row: dict[str, float]) -> None:
        self.steps.append(int(row["step"]))
        self.train.append(row["train_accuracy"])
        self.eval.append(row["eval_accuracy"])

    def steps_to_solve(self, c: RunConfig) -> int | None:
        return metrics.steps_to_solve(self.steps, self.train, c.solve_threshold, c.solve_window)

    def eval_steps_to_solve(self, c: RunConfig) -> int | None:
        i = metrics.first_crossing(self.eval, c.solve_threshold)
        return None if i is None else self.steps[i]

    def decided(self, c: RunConfig) -> bool:
        """Both criteria are met and more points cannot move the paper criterion's crossing."""
        return self.eval_steps_to_solve(c) is not None and metrics.crossing_is_final(
            self.train, c.solve_threshold, c.solve_window
        )


def check_same_run(config: RunConfig, out_dir: Path) -> None:
    """Raise ``RunError`` if ``out_dir`` holds a run whose config computes something else."""
    if not (Path(out_dir) / CONFIG).exists():
        return
    old, new = read_config(out_dir).identity(), config.identity()
    if old != new:
        diff = [k for k, v in new.items() if old.get(k) != v]
        raise RunError(
            f"{out_dir} holds a run with a different config ({', '.join(diff)}); use another --out"
        )


def _prepare_dir(config: RunConfig, out_dir: Path) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    check_same_run(config, out_dir)
    atomic_write(out_dir / CONFIG, save_yaml(config))


def _rewrite_metrics(out_dir: Path, rows: list[dict[str, float]]) -> None:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, COLUMNS, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    atomic_write(out_dir / METRICS, buf.getvalue())


class Recorder:
    """A run directory while it trains: resume point, metrics, TensorBoard, checkpoints, summary.

    Both the single-run loop below and the batched ensemble use it, so a run directory looks
    the same (and resumes the same) whichever trained it.
    """

    def __init__(self, config: RunConfig, out_dir: str | Path) -> None:
        self.config, self.dir = config, Path(out_dir)
        _prepare_dir(config, self.dir)
        self.curve = Curve()
        self.last: dict[str, float] | None = None
        self.extra: dict[str, Any] = {"diverged": False, "stopped_when_solved": False}
        self.t0 = time.perf_counter()
        self.ckpt_step = -1
        self._csv = self._tb = None

    def finished(self) -> dict[str, Any] | None:
        """The summary of a run that has nothing left to do, else None."""
        done, c = read_summary(self.dir), self.config
        if done is not None and (
            done.get("diverged")
            or done["step"] >= c.steps
            or (c.stop_when_solved and done.get("stopped_when_solved"))
        ):
            return done
        return None

    def resume(self) -> dict[str, Any] | None:
        """The last checkpoint (None for a fresh run); drops the rows logged after it."""
        path, rows, ckpt = self.dir / CHECKPOINT, read_metrics(self.dir), None
        if path.exists():
            ckpt = load_checkpoint(path)
        elif rows and rows[-1]["step"] >= self.config.log_every * self.config.checkpoint_every:
            raise RunError(
                f"{self.dir} has metrics up to step {rows[-1]['step']} but its checkpoint is "
                "missing; move the directory away to restart the run"
            )
        step = int(ckpt["step"]) if ckpt else 0
        rows = [r for r in rows if r["step"] <= step]  # what came after the checkpoint is redone
        _rewrite_metrics(self.dir, rows)
        for r in rows:
            self.curve.add(r)
        self.last = rows[-1] if rows else None
        self.t0 = time.perf_counter() - (float(ckpt.get("elapsed_s", 0.0)) if ckpt else 0.0)
        self.ckpt_step = step
        from torch.utils.tensorboard import SummaryWriter  # slow import, only when training

        self._file = (self.dir / METRICS).open("a", newline="")
        self._csv = csv.DictWriter(self._file, COLUMNS, extrasaction="ignore", lineterminator="\n")
        self._tb = SummaryWriter(str(self.dir), purge_step=step + 1 if step else None)
        return ckpt

    def elapsed(self) -> float:
        return time.perf_counter() - self.t0

    def log(self, row: dict[str, float]) -> bool:
        """Record one log row; True when the run should now stop (solved and decided)."""
        self._csv.writerow(row)
        self._file.flush()
        for k in COLUMNS[1:]:
            self._tb.add_scalar(k, row[k], row["step"])
        self.curve.add(row)
        self.last = row
        if self.config.stop_when_solved and self.curve.decided(self.config):
            self.extra["stopped_when_solved"] = True
            return True
        return False

    def checkpoint_due(self, step: int) -> bool:
        c = self.config
        return step % c.log_every == 0 and (step // c.log_every) % c.checkpoint_every == 0

    def save(self, model: dict, optimizer: dict, data_rng: torch.Tensor, step: int) -> None:
        state = {
            "model": model,
            "optimizer": optimizer,
            "step": step,
            "data_rng": data_rng,
            "elapsed_s": self.elapsed(),
        }
        buf = io.BytesIO()
        torch.save(state, buf)
        atomic_write(self.dir / CHECKPOINT, buf.getvalue())
        self.ckpt_step = step

    def diverged(self, step: int) -> None:
        self.extra.update(diverged=True, diverged_near_step=step)

    def close(self) -> None:
        if self._tb is not None:
            self._file.close()
            self._tb.close()
            self._tb = None

    def finish(self) -> dict[str, Any]:
        """Write summary.json (atomically) and return it."""
        self.close()
        extra = {**self.extra, "elapsed_s": self.elapsed(), "finished": True}
        summary = _summary(self.config, self.curve, self.last, **extra)
        atomic_write(self.dir / SUMMARY, json.dumps(summary, indent=2) + "\n")
        return summary


def _summary(config: RunConfig, curve: Curve, last: dict[str, float] | None, **extra) -> dict:
    stp = curve.steps_to_solve(config)
    last = last or {}
    return {
        "solved": stp is not None,
        "steps_to_solve": stp,
        "eval_steps_to_solve": curve.eval_steps_to_solve(config),
        "final_train_accuracy": last.get("train_accuracy"),
        "final_eval_accuracy": last.get("eval_accuracy"),
        "mean_steps": last.get("steps"),
        "mean_ponder": last.get("ponder"),
        "mean_repetitions": last.get("paper_ponder"),
        "step": int(last.get("step", 0)),
        **extra,
    }


def run(config: RunConfig, out_dir: str | Path) -> dict[str, Any]:
    """Train (or resume) one run of a resolved ``config`` in ``out_dir``; returns the summary.

    A run that already finished returns its summary untouched. ``summary["diverged"]`` is True
    when the loss became NaN or infinite; the run then stops at the log step that saw it.
    """
    device = resolve_device(config.device)
    set_matmul_precision(config, device)
    rec = Recorder(config, out_dir)
    if (done := rec.finished()) is not None:
        return done

    task, spec = build(config)
    init_gen = torch.Generator().manual_seed(derive_seed(config.seed, "init"))
    net = build_model(spec, config.init, init_gen).to(device)
    graphs = uses_graphs(config, device)
    opt = make_adam(net.parameters(), config.lr, device, capturable=graphs)
    data_gen = torch.Generator(device).manual_seed(derive_seed(config.seed, "data"))
    eval_x, eval_y = eval_set(task, config, device)
    tau = effective_tau(config)

    ckpt = rec.resume()
    step = 0
    if ckpt is not None:
        net.load_state_dict(ckpt["model"])
        load_optimizer(opt, ckpt["optimizer"])
        data_gen.set_state(ckpt["data_rng"].to(data_gen.get_state().device))
        step = int(ckpt["step"])
    bar = _progress(config, step, rec.dir)
    window = torch.zeros(len(WINDOW), device=device)
    log_step = step  # the window starts where the run resumes
    net.train()

    def sample():
        return task.sample(config.batch_size, data_gen)

    stepper = make_stepper(config, net, opt, task, sample, [data_gen], tau, window, graphs=graphs)
    try:
        while step < config.steps:
            stepper()
            step += 1
            bar.update(1)
            if step % config.log_every and step != config.steps:
                continue
            # ---- log step: the only place that moves numbers to the host
            means = dict(zip(WINDOW, (window / (step - log_step)).tolist(), strict=True))
            log_step = step
            window.zero_()
            if means["nonfinite"] > 0:
                rec.diverged(step)
                break
            task_loss, logits, y = stepper.last
            row = {
                "step": step,
                **{k: means[k] for k in ("loss", "ponder", "steps", "paper_ponder")},
                "task_loss": float(task_loss.mean()),
                "train_accuracy": float(task.accuracy(logits, y)),
                **_evaluate(net, task, eval_x, eval_y),
                "elapsed_s": rec.elapsed(),
            }
            stepper.logged()
            stop = rec.log(row)
            bar.set_postfix(
                loss=f"{row['loss']:.3f}", acc=f"{row['train_accuracy']:.3f}",
                eval=f"{row['eval_accuracy']:.3f}", ponder=f"{row['ponder']:.2f}",
            )  # fmt: skip
            if rec.checkpoint_due(step) or stop:
                rec.save(net.state_dict(), opt.state_dict(), data_gen.get_state(), step)
            if stop:
                break
        if not rec.extra["diverged"] and rec.ckpt_step != step:
            rec.save(net.state_dict(), opt.state_dict(), data_gen.get_state(), step)
    finally:
        bar.close()
        rec.close()
    return rec.finish()


def eval_set(task: tasks.Task, config: RunConfig, device: torch.device):
    """The held-out set: the same for every run and every log, from its own seed."""
    return task.sample(config.eval_size, torch.Generator(device).manual_seed(config.eval_seed))


def window_terms(loss: torch.Tensor, info: dict[str, torch.Tensor]) -> torch.Tensor:
    """``[..., len(WINDOW)]``: this step's loss, ponder, N, paper ponder and a not-finite flag
    (per run for an ensemble's ``[K]`` loss)."""
    lead = loss.dim()
    means: dict[int, torch.Tensor] = {}  # Repeat's three are one tensor: its mean once

    def mean(t: torch.Tensor) -> torch.Tensor:  # over batch and time
        if id(t) not in means:
            means[id(t)] = t.flatten(lead).mean(-1)
        return means[id(t)]

    terms = [loss, mean(info["ponder_cost"]), mean(info["steps"]), mean(info["paper_ponder"])]
    return torch.stack([*terms, (~torch.isfinite(loss)).to(loss.dtype)], -1)


@torch.no_grad()
def _evaluate(net: PonderNet, task: tasks.Task, x: torch.Tensor, y: torch.Tensor) -> dict:
    """Held-out accuracy and ponder, in eval mode; ``net`` is left in the mode it was in."""
    training = net.training
    net.eval()
    logits, info = net(x)
    net.train(training)
    return {
        "eval_accuracy": float(task.accuracy(logits, y)),
        "eval_ponder": float(info["ponder_cost"].mean()),
    }


def _progress(config: RunConfig, step: int, out_dir: Path):
    from tqdm.auto import tqdm

    return tqdm(
        total=config.steps,
        initial=step,
        desc=out_dir.name,
        disable=not config.progress,
        dynamic_ncols=True,
        mininterval=0.5,
        unit="step",
    )
