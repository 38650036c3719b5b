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
    .lock            the writer's lock (``Lock``): one process writes a run directory at a time

Every file a reader may see while the run writes is replaced atomically (``atomic_write``), with
the permissions the user's umask gives; metrics.csv is appended row by row and its torn last
line, if a kill left one, is ignored. Any other row that cannot be parsed is an error naming the
file and line (``DamagedRun``): nothing rewrites a file it could not read whole.
"""

from __future__ import annotations

import csv
import errno
import fcntl
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
LOCK = ".lock"

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


STATUSES = ("done", "diverged", "failed", "damaged", "partial", "new")


class RunError(Exception):
    """A run cannot start or continue for a reason a person must fix; the message says which."""


class DamagedRun(RunError):
    """A file of a run directory cannot be read whole (a row of metrics.csv that does not parse,
    a summary of the wrong shape): the run is left exactly as it is for a person to look at."""


class Busy(RunError):
    """Another live process writes this directory (``Lock``)."""


def _umask() -> int:
    """The process's umask, read without changing it where Linux shows it (os.umask sets it,
    and another thread could create a file in between)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def atomic_write(path: Path, data: bytes | str) -> None:
    """Write ``path`` so that a reader sees the old file or the new one, never half of one; the
    file gets the permissions of any file the user creates (mkstemp's are 0600)."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            os.fchmod(f.fileno(), 0o666 & ~_umask())
            f.write(data.encode() if isinstance(data, str) else data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def remove_stale_tmp(folder: Path) -> None:
    """Remove the temporary files of atomic writes that a kill interrupted (call it only while
    holding the directory's ``Lock``: a live writer's temporary file is not stale)."""
    for tmp in Path(folder).glob(".*.tmp"):
        tmp.unlink(missing_ok=True)


# --------------------------------------------------------------------------------------------
# One writer per directory


_HELD: dict[str, list[int]] = {}  # folder -> [descriptor, depth] of the locks this process holds


class Lock:
    """An exclusive ``flock`` on ``FOLDER/.lock`` while a process writes the folder.

    A second writer is refused at once (``Busy``, naming the holder's PID, which the lock file
    holds while the lock is held). The kernel drops the lock when its holder dies, however it
    dies, so a lock left by a dead process is simply taken over. Readers never take it.
    """

    def __init__(self, folder: Path, what: str = "run") -> None:
        self.folder, self.what = Path(folder), what
        self._key = os.path.realpath(self.folder)

    def acquire(self) -> Lock:
        """Take the lock, or raise ``Busy``. Re-entrant within a process: a run group that
        trains a member again on its own holds its lock already."""
        if self._key in _HELD:
            _HELD[self._key][1] += 1
            return self
        self.folder.mkdir(parents=True, exist_ok=True)
        path = self.folder / LOCK
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            os.close(fd)
            if e.errno not in (errno.EAGAIN, errno.EACCES):
                raise
            holder = writer_pid(self.folder)
            who = f"process {holder}" if holder else "another process"
            raise Busy(
                f"{self.folder} is being written by {who} (another ponder {self.what}); "
                "wait for it to end or use another directory"
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        _HELD[self._key] = [fd, 1]
        return self

    def release(self) -> None:
        held = _HELD.get(self._key)
        if held is None:
            return
        held[1] -= 1
        if held[1] == 0:
            del _HELD[self._key]
            os.ftruncate(held[0], 0)  # no PID: nobody writes now
            os.close(held[0])  # closing the descriptor drops the flock

    def __enter__(self) -> Lock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


def writer_pid(folder: Path) -> int | None:
    """The PID of the live process writing ``folder`` (holding its ``Lock``), else None,
    without touching the lock: on Linux from the kernel's table of locks (a process that was
    killed holds none, even before it is reaped), elsewhere from the PID in the lock file."""
    path = Path(folder) / LOCK
    try:
        st = path.stat()
    except OSError:
        return None
    try:
        table = Path("/proc/locks").read_text()
    except OSError:
        return _pid_in_file(path)
    for line in table.splitlines():
        parts = line.split()
        # "1: FLOCK  ADVISORY  WRITE 6686 00:2f:1234 0 EOF" (a blocked waiter starts "1: ->")
        if len(parts) < 6 or parts[1] != "FLOCK" or parts[3] != "WRITE":
            continue
        # The inode alone: /proc/locks names the superblock's device, which stat() does not
        # give on btrfs subvolumes and some overlays; another file system's lock on the same
        # inode number at the same moment is a chance not worth a wrong "nobody writes".
        try:
            inode = int(parts[5].rsplit(":", 1)[1])
        except (ValueError, IndexError):
            continue
        if inode == st.st_ino:
            return int(parts[4])
    return None


def _pid_in_file(path: Path) -> int | None:
    try:
        text = path.read_text().strip()
    except (OSError, UnicodeDecodeError):
        return None
    if not text.isdigit():
        return None
    try:
        os.kill(int(text), 0)
    except ProcessLookupError:
        return None
    except PermissionError:  # alive, someone else's
        pass
    return int(text)


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
    """The rows of a run's metrics.csv as floats (step as int); [] if there is none.

    The last line is dropped when it has no newline (a kill tore it while it was written);
    any other row that does not parse raises ``DamagedRun`` naming the file and line.
    """
    path = Path(run_dir) / METRICS
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return []
    try:
        text = data.decode()
    except UnicodeDecodeError as e:
        line = data[: e.start].count(b"\n") + 1
        raise DamagedRun(f"{path}: line {line} is not text (not UTF-8)") from None
    lines = text.split("\n")
    lines = lines[:-1]  # after the last newline: "" or a torn row
    if not lines:
        return []
    header = next(csv.reader([lines[0]]))
    if not header or header[0] != "step":
        raise DamagedRun(f"{path}: line 1 is not metrics.csv's header")
    rows = []
    for number, values in enumerate(csv.reader(lines[1:]), start=2):
        if len(values) != len(header):
            raise DamagedRun(
                f"{path}: line {number} has {len(values)} fields where the header has {len(header)}"
            )
        try:
            parsed = {k: float(v) for k, v in zip(header, values, strict=True) if v != ""}
            parsed["step"] = int(values[0])
        except ValueError:
            raise DamagedRun(f"{path}: line {number} does not parse as numbers") from None
        if rows and parsed["step"] <= rows[-1]["step"]:
            raise DamagedRun(f"{path}: line {number}'s step does not follow the previous row's")
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
        summary = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (json.JSONDecodeError, UnicodeDecodeError):
        summary = None
    if not isinstance(summary, dict) or not isinstance(summary.get("step", 0), int):
        raise DamagedRun(f"{path} is corrupt; delete it to let the run finish again")
    return summary


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


def unusable_checkpoint(run_dir: Path, why: str) -> RunError:
    """The one message for a checkpoint a run cannot resume from (missing, corrupt, another
    network): the run's history is kept, so the way on is a fresh directory."""
    return RunError(
        f"{Path(run_dir) / CHECKPOINT} {why}; the run cannot resume: move {run_dir} away "
        "(or train into another --out) to start it again"
    )


def load_checkpoint(run_dir: Path) -> dict[str, Any]:
    """A run directory's checkpoint, on the CPU; a missing or broken one is a ``RunError``."""
    path = Path(run_dir) / CHECKPOINT
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise unusable_checkpoint(run_dir, "is missing") from None
    except Exception:
        raise unusable_checkpoint(run_dir, "is corrupt or truncated") from None
    if not isinstance(ckpt, dict) or not {"model", "optimizer", "step", "data_rng"} <= set(ckpt):
        raise unusable_checkpoint(run_dir, "is not a ponder checkpoint")
    return ckpt


def finished(summary: dict[str, Any] | None, config: RunConfig) -> bool:
    """Whether a run with this summary has nothing left to do under ``config``'s budget."""
    return summary is not None and bool(
        summary.get("diverged")
        or summary.get("step", 0) >= config.steps
        or (config.stop_when_solved and summary.get("stopped_when_solved"))
    )


def status(run_dir: Path, config: RunConfig) -> str:
    """One of ``STATUSES``: done, diverged, failed (error.txt), damaged (a summary.json that
    cannot be read), partial (has progress) or new. Reads no metrics (cheap enough to poll);
    ``check_readable`` looks at metrics.csv too."""
    try:
        summary = read_summary(run_dir)
    except DamagedRun:
        return "damaged"
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


def check_readable(run_dir: Path) -> None:
    """Raise ``DamagedRun`` if a file a run resumes from cannot be read whole (metrics.csv,
    summary.json): what a run, a sweep and a report check before they use it."""
    read_summary(run_dir)
    read_metrics(run_dir)


def check_out_dir(run_dir: Path) -> None:
    """Raise ``RunError`` if ``run_dir`` cannot become a run directory (a file is there, or a
    parent is not writable), before anything is created."""
    run_dir = Path(run_dir)
    if run_dir.exists() and not run_dir.is_dir():
        raise RunError(f"{run_dir} is a file, not a directory; use another --out")
    existing = next(p for p in (run_dir, *run_dir.parents) if p.exists())
    if not existing.is_dir():
        raise RunError(f"{existing} is a file, so {run_dir} cannot be made; use another --out")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise RunError(f"{existing} is not writable; use another --out")


def prepare(config: RunConfig, run_dir: Path) -> None:
    """Create ``run_dir`` for ``config`` (or check that it holds the same run) and record it."""
    run_dir = Path(run_dir)
    check_out_dir(run_dir)
    check_same_run(config, run_dir)
    check_readable(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    remove_stale_tmp(run_dir)
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
    """Remove the markers a killed sweep left in the run directories under ``sweep_dir`` (not
    those of a run a live process still writes)."""
    for marker in Path(sweep_dir).glob(f"*/{RUNNING}"):
        if writer_pid(marker.parent) is None:
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
