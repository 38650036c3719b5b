"""The run directory: what a run leaves on disk, and the only module that spells those names.

    config.yaml      the full resolved config, written when the run starts
    metrics.csv      one row per log step (``COLUMNS``, and ``columns`` per extra held-out set)
    events.out.*     the same scalars for TensorBoard
    checkpoint.pt    model, optimizer, step and data RNG, every ``checkpoint_every`` logs
    summary.json     written when the run has nothing left to do
    engine.json      which engine trained which steps, on what, beside which companions
    error.txt        why a sweep's run failed (the sweep goes on)
    .running         present while a worker trains the run
    log.txt          a sweep worker's output (warnings, progress)
    .worker_pid      "PID HOST" of the Ray worker training the run, while it does

Every file a reader may see while the run writes is replaced atomically (``atomic_write``);
metrics.csv is appended row by row and its torn last line, if a kill left one, is ignored.
"""

from __future__ import annotations

import csv
import io
import json
import os
import tempfile
from pathlib import Path
from typing import Any

import torch

from .config import ConfigError, RunConfig, from_dict, load_yaml, save_yaml

CONFIG = "config.yaml"
METRICS = "metrics.csv"
CHECKPOINT = "checkpoint.pt"
SUMMARY = "summary.json"
ENGINE = "engine.json"
ERROR = "error.txt"
RUNNING = ".running"
LOG = "log.txt"
WORKER_PID = ".worker_pid"  # "PID HOST" of the Ray worker training the run, while it does

# metrics.csv's columns. ``ponder_cost`` is rho_t = N(t) + R(t), the term the loss penalises;
# ``repetitions`` is the Fojo paper's "average repetitions", N(t) - 1 + R(t) for ACT and rho for
# Repeat and the RNN; ``ponder_steps`` is N(t). Each a mean over the batch and the sequence.
COLUMNS = [
    "step", "loss", "task_loss", "train_accuracy", "ponder_cost", "ponder_steps", "repetitions",
    "eval_accuracy", "eval_ponder_cost", "eval_repetitions", "eval_steps", "elapsed_s",
]  # fmt: skip
# Per extra held-out set NAME (``RunConfig.eval_sets``): NAME_accuracy, NAME_steps (steps per
# token computed at evaluation) and NAME_ponder_cost, after ``COLUMNS``.
SET_COLUMNS = ("accuracy", "steps", "ponder_cost")


def columns(eval_sets: dict | list | tuple = ()) -> list[str]:
    """metrics.csv's columns for a run with these extra held-out sets (their names)."""
    return COLUMNS + [f"{name}_{c}" for name in eval_sets for c in SET_COLUMNS]


STATUSES = ("done", "diverged", "failed", "partial", "new")


class RunError(Exception):
    """A run cannot start or continue for a reason a person must fix; the message says which."""


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


# --------------------------------------------------------------------------------------------
# Reading


def is_run(path: Path) -> bool:
    return (Path(path) / CONFIG).is_file()


def read_config(run_dir: Path) -> RunConfig:
    """The config recorded in a run directory; a missing or broken one is a ``RunError``."""
    try:
        return from_dict(load_yaml(Path(run_dir) / CONFIG))
    except ConfigError as e:
        raise RunError(str(e)) from None


def read_metrics(run_dir: Path) -> list[dict[str, float]]:
    """The rows of a run's metrics.csv as floats (step as int); [] if there is none."""
    path = Path(run_dir) / METRICS
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


def last_logged_step(run_dir: Path) -> int:
    """The step of metrics.csv's last complete row (0 if none), reading only the file's end:
    cheap enough to poll for progress while the run writes."""
    try:
        with (Path(run_dir) / METRICS).open("rb") as f:
            f.seek(max(0, f.seek(0, os.SEEK_END) - 4096))
            lines = f.read().decode(errors="replace").split("\n")
    except FileNotFoundError:
        return 0
    for line in reversed(lines[:-1]):  # the part after the last newline may be half-written
        head = line.split(",", 1)[0]
        if head.isdigit():
            return int(head)
    return 0


def read_summary(run_dir: Path) -> dict[str, Any] | None:
    path = Path(run_dir) / SUMMARY
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise RunError(f"{path} is corrupt; delete it to let the run finish again") from None


def read_error(run_dir: Path) -> str | None:
    """The first line of error.txt (why the run failed), or None if it has none."""
    try:
        text = (Path(run_dir) / ERROR).read_text(errors="replace").strip()
    except FileNotFoundError:
        return None
    return text.splitlines()[0] if text else ""


def read_engine(run_dir: Path) -> list[dict[str, Any]]:
    """engine.json: one record per training segment (see ``record_engine``)."""
    try:
        return json.loads((Path(run_dir) / ENGINE).read_text())
    except (FileNotFoundError, json.JSONDecodeError, UnicodeDecodeError):
        return []


def has_checkpoint(run_dir: Path) -> bool:
    return (Path(run_dir) / CHECKPOINT).exists()


def load_checkpoint(run_dir: Path) -> dict[str, Any]:
    """A run directory's checkpoint, on the CPU; a missing or broken one is a ``RunError``."""
    path = Path(run_dir) / CHECKPOINT
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


def finished(summary: dict[str, Any] | None, config: RunConfig) -> bool:
    """Whether a run with this summary has nothing left to do under ``config``'s budget."""
    return summary is not None and bool(
        summary.get("diverged")
        or summary.get("step", 0) >= config.steps
        or (config.stop_when_solved and summary.get("stopped_when_solved"))
    )


def status(run_dir: Path, config: RunConfig) -> str:
    """One of ``STATUSES``: done, diverged, failed (error.txt), partial (has progress) or new."""
    try:
        summary = read_summary(run_dir)
    except RunError:
        summary = None
    if finished(summary, config):
        return "diverged" if summary.get("diverged") else "done"
    if (Path(run_dir) / ERROR).exists():
        return "failed"
    return "partial" if (Path(run_dir) / METRICS).exists() else "new"


# --------------------------------------------------------------------------------------------
# Writing


def check_same_run(config: RunConfig, run_dir: Path) -> None:
    """Raise ``RunError`` if ``run_dir`` holds a run whose config computes something else."""
    if not (Path(run_dir) / CONFIG).exists():
        return
    old, new = read_config(run_dir).identity(), config.identity()
    if old != new:
        diff = [k for k, v in new.items() if old.get(k) != v]
        raise RunError(
            f"{run_dir} holds a run with a different config ({', '.join(diff)}); use another --out"
        )


def prepare(config: RunConfig, run_dir: Path) -> None:
    """Create ``run_dir`` for ``config`` (or check that it holds the same run) and record it."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    check_same_run(config, run_dir)
    atomic_write(run_dir / CONFIG, save_yaml(config))


def write_error(run_dir: Path, text: str) -> None:
    Path(run_dir).mkdir(parents=True, exist_ok=True)
    atomic_write(Path(run_dir) / ERROR, text if text.endswith("\n") else text + "\n")


def clear_error(run_dir: Path) -> None:
    (Path(run_dir) / ERROR).unlink(missing_ok=True)


def mark_running(run_dir: Path, running: bool) -> None:
    path = Path(run_dir) / RUNNING
    if running:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.touch()
    else:
        path.unlink(missing_ok=True)


def is_running(run_dir: Path) -> bool:
    return (Path(run_dir) / RUNNING).exists()


def clear_running(sweep_dir: Path) -> None:
    """Remove the markers a killed sweep left in the run directories under ``sweep_dir``."""
    for marker in Path(sweep_dir).glob(f"*/{RUNNING}"):
        marker.unlink(missing_ok=True)


def log_path(run_dir: Path) -> Path:
    return Path(run_dir) / LOG


def record_engine(run_dir: Path, record: dict[str, Any]) -> None:
    """Append a training segment to engine.json; a segment that restarts from an earlier step
    (after a kill) replaces the records from that step on."""
    kept = [r for r in read_engine(run_dir) if r.get("from_step", 0) < record["from_step"]]
    atomic_write(Path(run_dir) / ENGINE, json.dumps([*kept, record], indent=1) + "\n")


def write_summary(run_dir: Path, summary: dict[str, Any]) -> None:
    atomic_write(Path(run_dir) / SUMMARY, json.dumps(summary, indent=2) + "\n")


def save_checkpoint(run_dir: Path, state: dict[str, Any]) -> None:
    buf = io.BytesIO()
    torch.save(state, buf)
    atomic_write(Path(run_dir) / CHECKPOINT, buf.getvalue())


def rewrite_metrics(
    run_dir: Path, rows: list[dict[str, float]], names: list[str] | None = None
) -> None:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, names or COLUMNS, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    atomic_write(Path(run_dir) / METRICS, buf.getvalue())


class MetricsLog:
    """metrics.csv and the TensorBoard events of a run while it trains, from ``step`` on: the
    rows after ``step`` (logged after the checkpoint a resumed run starts from) are dropped."""

    def __init__(
        self, run_dir: Path, rows: list[dict[str, float]], step: int, names: list[str] | None = None
    ) -> None:
        from torch.utils.tensorboard import SummaryWriter  # slow import, only when training

        self.names = names or COLUMNS
        rewrite_metrics(run_dir, rows, self.names)
        self._file = (Path(run_dir) / METRICS).open("a", newline="")
        self._csv = csv.DictWriter(
            self._file, self.names, extrasaction="ignore", lineterminator="\n"
        )
        self._tb = SummaryWriter(str(run_dir), purge_step=step + 1 if step else None)

    def write(self, row: dict[str, float]) -> None:
        self._csv.writerow(row)
        self._file.flush()
        for k in self.names[1:]:
            self._tb.add_scalar(k, row[k], row["step"])

    def close(self) -> None:
        if self._tb is not None:
            self._file.close()
            self._tb.close()
            self._tb = None
