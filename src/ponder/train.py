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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from . import metrics, tasks
from .config import ConfigError, RunConfig, from_dict, load_yaml, save_yaml
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
EXIT_DIVERGED = 3


class RunError(Exception):
    """A run cannot start or continue for a reason a person must fix; the message says which."""


# --------------------------------------------------------------------------------------------
# Small pieces shared with sweeps and reports


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
    cost = info["ponder_cost"]  # rho_t = N(t) + R(t), (..., T)
    ponder = cost.mean(-1) if ponder_loss == "mean" else cost.sum(-1)
    return task_loss + tau * ponder, task_loss


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


def _prepare_dir(config: RunConfig, out_dir: Path) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / CONFIG
    if path.exists():
        old = read_config(out_dir)
        if old.identity() != config.identity():
            diff = [k for k, v in config.identity().items() if old.identity().get(k) != v]
            raise RunError(
                f"{out_dir} holds a run with a different config ({', '.join(diff)}); "
                "use another --out"
            )
    atomic_write(path, save_yaml(config))


def _rewrite_metrics(out_dir: Path, rows: list[dict[str, float]]) -> None:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, COLUMNS, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    atomic_write(out_dir / METRICS, buf.getvalue())


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
    out_dir = Path(out_dir)
    device = resolve_device(config.device)
    _prepare_dir(config, out_dir)
    done = read_summary(out_dir)
    if done is not None and (
        done.get("diverged")
        or done["step"] >= config.steps
        or (config.stop_when_solved and done.get("stopped_when_solved"))
    ):
        return done

    task, spec = build(config)
    init_gen = torch.Generator().manual_seed(derive_seed(config.seed, "init"))
    net = build_model(spec, config.init, init_gen).to(device)
    opt = torch.optim.Adam(net.parameters(), lr=config.lr, betas=(0.9, 0.999), eps=1e-8)
    data_gen = torch.Generator(device).manual_seed(derive_seed(config.seed, "data"))
    eval_gen = torch.Generator(device).manual_seed(config.eval_seed)
    eval_x, eval_y = task.sample(config.eval_size, eval_gen)  # the same held-out set every log

    tau = config.tau if config.model == "act" else 0.0  # a fixed ponder cost is no penalty
    step, elapsed = 0, 0.0
    ckpt_path = out_dir / CHECKPOINT
    rows = read_metrics(out_dir)
    if ckpt_path.exists():
        ckpt = load_checkpoint(ckpt_path)
        net.load_state_dict(ckpt["model"])
        opt.load_state_dict(ckpt["optimizer"])
        data_gen.set_state(ckpt["data_rng"].to(data_gen.get_state().device))
        step, elapsed = int(ckpt["step"]), float(ckpt.get("elapsed_s", 0.0))
    elif rows and rows[-1]["step"] >= config.log_every * config.checkpoint_every:
        raise RunError(
            f"{out_dir} has metrics up to step {rows[-1]['step']} but its checkpoint is missing; "
            "move the directory away to restart the run"
        )
    rows = [r for r in rows if r["step"] <= step]  # what comes after the checkpoint is redone
    _rewrite_metrics(out_dir, rows)
    curve = Curve()
    for r in rows:
        curve.add(r)

    from torch.utils.tensorboard import SummaryWriter  # slow import, only when training

    writer = SummaryWriter(str(out_dir), purge_step=step + 1 if step else None)
    summary_extra: dict[str, Any] = {"diverged": False, "stopped_when_solved": False}
    bar = _progress(config, step, out_dir)
    window = torch.zeros(len(WINDOW), device=device)
    last = rows[-1] if rows else None
    t0 = time.perf_counter() - elapsed
    log_step = ckpt_step = step  # the window and the checkpoint start where the run resumes
    try:
        with (out_dir / METRICS).open("a", newline="") as mfile:
            mwriter = csv.DictWriter(mfile, COLUMNS, extrasaction="ignore", lineterminator="\n")
            while step < config.steps:
                net.train()
                x, y = task.sample(config.batch_size, data_gen)
                logits, info = net(x)
                loss_seq, task_loss = objective(task, logits, y, info, tau, config.ponder_loss)
                loss = loss_seq.mean()
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                step += 1
                with torch.no_grad():
                    window += torch.stack([
                        loss.detach(), info["ponder_cost"].mean(), info["steps"].mean(),
                        info["paper_ponder"].mean(), (~torch.isfinite(loss)).float(),
                    ])  # fmt: skip
                bar.update(1)
                if step % config.log_every and step != config.steps:
                    continue
                # ---- log step: the only place that moves numbers to the host
                means = dict(zip(WINDOW, (window / (step - log_step)).tolist(), strict=True))
                log_step = step
                window.zero_()
                if means["nonfinite"] > 0:
                    summary_extra.update(diverged=True, diverged_near_step=step)
                    break
                row = {
                    "step": step,
                    "loss": means["loss"],
                    "task_loss": float(task_loss.detach().mean()),
                    "train_accuracy": float(task.accuracy(logits.detach(), y)),
                    "ponder": means["ponder"],
                    "steps": means["steps"],
                    "paper_ponder": means["paper_ponder"],
                    **_evaluate(net, task, eval_x, eval_y),
                    "elapsed_s": time.perf_counter() - t0,
                }
                mwriter.writerow(row)
                mfile.flush()
                for k in COLUMNS[1:]:
                    writer.add_scalar(k, row[k], step)
                curve.add(row)
                last = row
                bar.set_postfix(
                    loss=f"{row['loss']:.3f}", acc=f"{row['train_accuracy']:.3f}",
                    eval=f"{row['eval_accuracy']:.3f}", ponder=f"{row['ponder']:.2f}",
                )  # fmt: skip
                solved_now = config.stop_when_solved and curve.decided(config)
                if (step // config.log_every) % config.checkpoint_every == 0 or solved_now:
                    _save_checkpoint(ckpt_path, net, opt, data_gen, step, row["elapsed_s"])
                    ckpt_step = step
                if solved_now:
                    summary_extra["stopped_when_solved"] = True
                    break
        if not summary_extra["diverged"] and ckpt_step != step:
            _save_checkpoint(ckpt_path, net, opt, data_gen, step, time.perf_counter() - t0)
    finally:
        bar.close()
        writer.close()
    elapsed = time.perf_counter() - t0
    summary = _summary(config, curve, last, **summary_extra, elapsed_s=elapsed, finished=True)
    atomic_write(out_dir / SUMMARY, json.dumps(summary, indent=2) + "\n")
    return summary


@torch.no_grad()
def _evaluate(net: PonderNet, task: tasks.Task, x: torch.Tensor, y: torch.Tensor) -> dict:
    net.eval()
    logits, info = net(x)
    return {
        "eval_accuracy": float(task.accuracy(logits, y)),
        "eval_ponder": float(info["ponder_cost"].mean()),
    }


def _save_checkpoint(path, net, opt, data_gen, step: int, elapsed: float) -> None:
    buf = io.BytesIO()
    torch.save(
        {
            "model": net.state_dict(),
            "optimizer": opt.state_dict(),
            "step": step,
            "data_rng": data_gen.get_state(),
            "elapsed_s": elapsed,
        },
        buf,
    )
    atomic_write(path, buf.getvalue())


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
