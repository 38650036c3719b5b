"""The training loop: a group of runs, trained together; a single run is a group of one.

``run_group(configs, run_dirs)`` trains with the Fojo et al. protocol (Adam, fresh random
batches every step, accuracy logged every ``log_every`` steps on the training batch, the held-out
set evaluated at every log) and keeps each run's directory (``ponder.rundir``): config,
metrics.csv and TensorBoard events, a checkpoint every ``checkpoint_every`` logs, summary.json
when the run has nothing left to do, engine.json saying what trained it. A group of one trains
on its own network (``engine.Single``); a larger group trains as one stacked model
(``ensemble.Stacked``). Everything else here is the same for both.

Calling it again on the same directories continues from the checkpoints; on the CPU a resumed
run logs exactly what an uninterrupted one would. A run stops at its own budget (``steps``),
when its loss becomes NaN or infinite (``"diverged": true``), or with ``stop_when_solved`` once
the paper's criterion and the held-out criterion are both met and the paper criterion's crossing
can no longer move (``Curve.decided``).
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from .. import metrics, rundir, tasks
from ..config import RunConfig, ensemble_member_fields
from ..rundir import RunError
from .engine import (
    WINDOW,
    Engine,
    Single,
    build,
    eval_sets,
    matmul_precision,
    resolve_device,
    token_mean,
    uses_graphs,
)
from .models import TaskNet

__all__ = ["RunError", "load_model", "run", "run_group"]


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


class Member:
    """One run of a group while it trains: its directory, its curve, its resume point."""

    def __init__(self, config: RunConfig, run_dir: str | Path) -> None:
        self.config, self.dir = config, Path(run_dir)
        rundir.prepare(config, self.dir)
        self.curve = Curve()
        self.last: dict[str, float] | None = None
        self.extra: dict[str, Any] = {"diverged": False, "stopped_when_solved": False}
        self.t0 = time.perf_counter()
        self.ckpt_step = -1
        self.log: rundir.MetricsLog | None = None

    def finished(self) -> dict[str, Any] | None:
        """The summary of a run that has nothing left to do, else None."""
        done = rundir.read_summary(self.dir)
        return done if rundir.finished(done, self.config) else None

    def resume(self) -> dict[str, Any] | None:
        """The last checkpoint (None for a fresh run), checked against the config's network;
        nothing is written until ``open_log``."""
        rows, ckpt = rundir.read_metrics(self.dir), None
        if rundir.has_checkpoint(self.dir):
            ckpt = rundir.load_checkpoint(self.dir)
            _check_fits(self.config, ckpt, self.dir)
        # A row logged after the first checkpoint's step means a checkpoint was written and is
        # gone. A row at that step itself is not: a kill can land between logging the row and
        # writing its checkpoint, and the run then restarts from the beginning.
        elif rows and rows[-1]["step"] > self.config.log_every * self.config.checkpoint_every:
            raise rundir.unusable_checkpoint(
                self.dir, f"is missing (metrics.csv goes to step {rows[-1]['step']})"
            )
        step = int(ckpt["step"]) if ckpt else 0
        self._rows = [r for r in rows if r["step"] <= step]  # what came after it is redone
        for r in self._rows:
            self.curve.add(r)
        self.last = self._rows[-1] if self._rows else None
        self.t0 = time.perf_counter() - (float(ckpt.get("elapsed_s", 0.0)) if ckpt else 0.0)
        self.ckpt_step = step
        return ckpt

    def open_log(self) -> None:
        """Start logging from the resume point: the rows logged after the checkpoint are
        dropped from metrics.csv now, once the run is sure to train."""
        names = rundir.columns(self.config.eval_sets)
        self.log = rundir.MetricsLog(self.dir, self._rows, self.ckpt_step, names)

    def elapsed(self) -> float:
        return time.perf_counter() - self.t0

    def add(self, row: dict[str, float]) -> bool:
        """Record one log row; True when the run should now stop (solved and decided)."""
        self.log.write(row)
        self.curve.add(row)
        self.last = row
        if self.config.stop_when_solved and self.curve.decided(self.config):
            self.extra["stopped_when_solved"] = True
            return True
        return False

    def checkpoint_due(self, step: int) -> bool:
        c = self.config
        return step % c.log_every == 0 and (step // c.log_every) % c.checkpoint_every == 0

    def save(self, state: dict[str, Any], step: int) -> None:
        rundir.save_checkpoint(self.dir, {**state, "step": step, "elapsed_s": self.elapsed()})
        self.ckpt_step = step

    def close(self) -> None:
        if self.log is not None:
            self.log.close()
            self.log = None

    def finish(self) -> dict[str, Any]:
        """Write summary.json (atomically) and return it."""
        self.close()
        c, last = self.config, self.last or {}
        stp = self.curve.steps_to_solve(c)
        summary = {
            "solved": stp is not None,
            "steps_to_solve": stp,
            "eval_steps_to_solve": self.curve.eval_steps_to_solve(c),
            "final_train_accuracy": last.get("train_accuracy"),
            "final_eval_accuracy": last.get("eval_accuracy"),
            "ponder_cost": last.get("ponder_cost"),
            "ponder_steps": last.get("ponder_steps"),
            "repetitions": last.get("repetitions"),
            "eval_steps": last.get("eval_steps"),
            **{f"final_{n}_accuracy": last.get(f"{n}_accuracy") for n in c.eval_sets},
            **{f"{n}_steps": last.get(f"{n}_steps") for n in c.eval_sets},
            "step": int(last.get("step", 0)),
            **self.extra,
            "elapsed_s": self.elapsed(),
            "finished": True,
        }
        rundir.write_summary(self.dir, summary)
        return summary


def run(config: RunConfig, out_dir: str | Path) -> dict[str, Any]:
    """Train (or resume) one run of a resolved ``config`` in ``out_dir``; returns the summary.

    A run that already finished returns its summary untouched. ``summary["diverged"]`` is True
    when the loss became NaN or infinite; the run then stops at the log step that saw it.
    """
    return run_group([config], [out_dir])[0]


def run_group(
    configs: list[RunConfig], run_dirs: list[str | Path], stacked: bool | None = None
) -> list[dict[str, Any]]:
    """Train (or resume) runs that share ``RunConfig.ensemble_key`` together; their summaries.

    ``stacked``: train as one stacked model (``ensemble.Stacked``); None, the default, stacks
    a group of more than one run and trains a single run on its own network. Members that
    already finished are left alone. The others must resume from the same step (as they do
    when they were trained together), else each resumes on its own.

    Every directory is checked (writable, the same run, its files readable whole) and the
    device resolved before any is created, and each is locked (``rundir.Lock``) while it
    trains: another process writing one of them is a ``RunError`` at once.
    """
    if len({c.ensemble_key() for c in configs}) != 1:
        raise ValueError(
            "run_group: the configs differ in more than the ensemble member fields "
            f"({', '.join(ensemble_member_fields())})"
        )
    # An unavailable device or a network the machine cannot hold fails before any directory
    # is made.
    _check_memory(configs, resolve_device(configs[0].device))
    for c, d in zip(configs, run_dirs, strict=True):
        rundir.check_out_dir(Path(d))
        rundir.check_same_run(c, Path(d))
        rundir.check_readable(Path(d))
    with contextlib.ExitStack() as locks:
        for d in run_dirs:
            locks.enter_context(rundir.Lock(Path(d), "train"))
        return _run_group(configs, run_dirs, stacked)


def _run_group(
    configs: list[RunConfig], run_dirs: list[str | Path], stacked: bool | None
) -> list[dict[str, Any]]:
    members = [Member(c, d) for c, d in zip(configs, run_dirs, strict=True)]
    summaries = [m.finished() for m in members]
    todo = [m for m, s in zip(members, summaries, strict=True) if s is None]
    if not todo:
        return summaries  # type: ignore[return-value]
    ckpts = [m.resume() for m in todo]
    steps = {int(c["step"]) if c else 0 for c in ckpts}
    if len(steps) > 1:  # trained apart before: resume each on its own
        for m in todo:
            m.close()
            summaries[members.index(m)] = run(m.config, m.dir)
        return summaries  # type: ignore[return-value]
    step = steps.pop()
    for m in todo:  # a budget lowered below the resume point leaves nothing to train
        if step >= m.config.steps:
            summaries[members.index(m)] = m.finish()
    left = [(m, c) for m, c in zip(todo, ckpts, strict=True) if step < m.config.steps]
    if left:
        stacked = len(left) > 1 if stacked is None else stacked
        group, group_ckpts = [m for m, _ in left], [c for _, c in left]
        for m, s in zip(group, _train(group, group_ckpts, step, stacked), strict=True):
            summaries[members.index(m)] = s
    return summaries  # type: ignore[return-value]


def _train(
    members: list[Member], ckpts: list[dict | None], step: int, stacked: bool
) -> list[dict[str, Any]]:
    """The loop's set-up: members resume from ``step`` (their checkpoints); their summaries."""
    c0 = members[0].config
    try:
        device = resolve_device(c0.device)
        with matmul_precision(c0.tf32):
            eng = _engine([m.config for m in members], ckpts, device, stacked)
            for m in members:
                m.open_log()
            _record(eng, members, step, device)
            _loop(eng, members, step, device)
    finally:
        for m in members:
            m.close()
    return [rundir.read_summary(m.dir) for m in members]


def _check_memory(configs: list[RunConfig], device: torch.device) -> None:
    """Raise ``RunError`` if the runs' weights, gradients and Adam's two moments alone need
    more memory than ``device`` has free (counted on the meta device: nothing allocated)."""
    with torch.device("meta"):
        params = sum(p.numel() for p in TaskNet(build(configs[0])[1]).parameters())
    need = 4 * 4 * params * len(configs)  # float32: weights, gradients, Adam's m and v
    if device.type == "cuda":
        free = torch.cuda.mem_get_info(device)[0]
    else:
        free = _available_ram()
    if free is not None and need > free:
        raise RunError(
            f"the network needs at least {need / 2**30:,.1f} GiB for its weights and Adam's "
            f"state ({params:,} parameters x {len(configs)} runs), more than the "
            f"{free / 2**30:,.1f} GiB free on {device.type}; use a smaller --hidden"
        )


def _available_ram() -> int | None:
    """Bytes of memory the kernel can give this process now (Linux's MemAvailable)."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def _check_fits(config: RunConfig, ckpt: dict[str, Any], run_dir: Path) -> None:
    """Raise the checkpoint's ``RunError`` if its network is not the one ``config`` builds
    (another size, cell or model), before anything of the run is rewritten."""
    want = {k: tuple(v.shape) for k, v in TaskNet(build(config)[1]).state_dict().items()}
    model = ckpt["model"]
    have = {k: tuple(v.shape) for k, v in model.items()} if isinstance(model, dict) else {}
    if have != want:
        raise rundir.unusable_checkpoint(run_dir, "holds another network than config.yaml's")


def _record(eng: Engine, members: list[Member], step: int, device: torch.device) -> None:
    """Which engine trains ``members`` from ``step`` on, and beside which companions."""
    record = {
        "from_step": step,
        "engine": eng.name,
        "members": [m.dir.name for m in members],
        "device": str(device),
        "cuda_graphs": uses_graphs(members[0].config, device),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),  # CPU threads: they can change a sum's order
    }
    for m, reseeded in zip(members, eng.reseeded, strict=True):
        rundir.record_engine(m.dir, {**record, "data_reseeded": reseeded})


def _repack(
    eng: Engine, members: list[Member], live: list[int], step: int, device: torch.device
) -> tuple[Engine, list[Member]]:
    """The live members of an ensemble some of whose members have stopped, as an engine of
    their own: a stopped member's weights are frozen but it would still be computed, and an
    ACT member would ponder on. A rebuild costs milliseconds on a CPU and a few eager steps
    and new CUDA graphs on a GPU, far less than carrying a stopped member through the steps
    that are left. It goes on exactly as a resume from a checkpoint at ``step`` would."""
    kept = [members[i] for i in live]
    states = [{**eng.member_state(i), "step": step} for i in live]
    new = _engine([m.config for m in kept], states, device, stacked=len(kept) > 1)
    _record(new, kept, step, device)
    return new, kept


def _engine(
    configs: list[RunConfig], ckpts: list[dict | None], device: torch.device, stacked: bool
) -> Engine:
    if not stacked:
        (config,), (ckpt,) = configs, ckpts
        return Single(config, ckpt, device)
    from .ensemble import Stacked

    return Stacked(configs, ckpts, device)


def _loop(eng: Engine, members: list[Member], step: int, device: torch.device) -> None:
    c0 = members[0].config
    task = eng.task
    held_out_sets = eval_sets(task, c0, device)
    live = list(range(eng.k))
    log_step = step  # the window starts where the run resumes
    budget = max(m.config.steps for m in members)
    bar = _progress(members, step, budget)
    try:
        while live:
            eng.stepper()
            step += 1
            bar.update(1)
            ends = [i for i in live if step >= members[i].config.steps]
            if step % c0.log_every and not ends:
                continue
            # ---- log step: the only place that moves numbers to the host
            means = (eng.window / (step - log_step)).tolist()
            log_step = step
            eng.window.zero_()
            task_loss, logits, y = eng.stepper.last
            acc = torch.atleast_1d(task.accuracy(logits, y)).tolist()
            task_losses = torch.atleast_1d(task_loss.mean(-1)).tolist()
            held_out = {}
            for name, (x, y) in held_out_sets.items():
                held_out.update(evaluate(eng, task, x, y, name))
            eng.stepper.logged()
            for i in list(live):
                m = members[i]
                w = dict(zip(WINDOW, means[i], strict=True))
                stop = i in ends
                if w["nonfinite"] > 0:
                    m.extra.update(diverged=True, diverged_near_step=step)
                    stop = True
                else:
                    row = {
                        "step": step,
                        **{k: w[k] for k in WINDOW[:4]},
                        "task_loss": task_losses[i],
                        "train_accuracy": acc[i],
                        **{k: v[i] for k, v in held_out.items()},
                        "elapsed_s": m.elapsed(),
                    }
                    stop = m.add(row) or stop
                    if m.checkpoint_due(step) or stop:
                        m.save(eng.member_state(i), step)
                if stop:
                    m.finish()
                    live.remove(i)
            if live and len(live) < eng.k:
                eng, members = _repack(eng, members, live, step, device)
                live = list(range(len(members)))
            _show(bar, members, live)
    finally:
        bar.close()


@torch.no_grad()
def evaluate(
    eng: Engine, task: tasks.Task, x: torch.Tensor, y: torch.Tensor, name: str = "eval"
) -> dict:
    """Each member's accuracy, ponder cost, repetitions and steps per token computed (lists
    over members) on the held-out set ``name``, in eval mode; the networks are left in the
    mode they were in. The steps are what inference computed: rho for Repeat (1 for the RNN),
    N(t) for ACT, the sampled halting step for PonderNet."""
    net = eng.modules()
    training = net.training
    net.eval()
    logits, info = eng.forward(x)
    net.train(training)

    tokens = task.tokens(x, y)  # the padding is not computation spent on the sequence

    def mean(key: str) -> list[float]:
        return token_mean(info[key], tokens, 1).tolist()

    return {
        f"{name}_accuracy": task.accuracy(logits, y).tolist(),
        f"{name}_ponder_cost": mean("ponder_cost"),
        f"{name}_repetitions": mean("repetitions"),
        f"{name}_steps": mean("ponder_steps"),
    }


def _progress(members: list[Member], step: int, budget: int):
    from tqdm.auto import tqdm

    c0 = members[0].config
    desc = members[0].dir.name if len(members) == 1 else f"{len(members)} runs"
    return tqdm(
        total=budget,
        initial=step,
        desc=desc,
        disable=not c0.progress,
        dynamic_ncols=True,
        mininterval=0.5,
        unit="step",
    )


def _show(bar, members: list[Member], live: list[int]) -> None:
    """The progress bar's numbers: the run's last log, or for a group how many still train."""
    if len(members) > 1:
        bar.set_postfix(training=f"{len(live)}/{len(members)}")
        return
    row = members[0].last
    if row is not None:
        bar.set_postfix(
            loss=f"{row['loss']:.3f}", acc=f"{row['train_accuracy']:.3f}",
            eval=f"{row['eval_accuracy']:.3f}", ponder=f"{row['ponder_cost']:.2f}",
        )  # fmt: skip


def load_model(run_dir: Path, device: str = "cpu") -> tuple[TaskNet, tasks.Task, RunConfig]:
    """The trained network of a run directory (from its last checkpoint), its task and config."""
    config = rundir.read_config(run_dir)
    task, spec = build(config)
    net = TaskNet(spec)
    net.load_state_dict(rundir.load_checkpoint(run_dir)["model"])
    return net.to(device).eval(), task, config
