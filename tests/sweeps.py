"""Hand-made run directories and report readers shared by the results, report and figures tests."""

from __future__ import annotations

import csv
import json
from pathlib import Path

from ponder import rundir
from ponder.analysis import report
from ponder.config import RunConfig, resolve, save_yaml

LOGS = 60  # hand-made runs log every 1,000 steps up to 60,000


def make_run(
    root: Path,
    name: str,
    *,
    solve_at: int | None = None,
    eval_at: int | None = None,
    accuracy: list[float] | None = None,
    repetitions: float = 1.0,
    ponder_steps: float = 2.0,
    status: str = "finished",
    held_out: dict[str, tuple[float, ...]] | None = None,
    **config: object,
) -> Path:
    """A run directory as ``ponder train`` leaves it, with a known learning curve.

    Training accuracy is 0.5 before ``solve_at`` and 1.0 from it on (or ``accuracy``); with
    ``solve_window=1`` (the default here) the smoothing is the identity, so the paper criterion
    is met exactly at ``solve_at``. The last row's repetitions column is ``repetitions``.
    ``held_out`` (optional), per held-out set ("eval" or a name in the config's ``eval_sets``),
    ``(accuracy, steps)`` or ``(accuracy, steps, ponder_cost)`` of the last row: metrics.csv then
    has the columns of a run that logs its steps per token (``rundir.columns``).
    """
    base = {"task": "parity", "task_options": {"bits": 64}, "device": "cpu", "progress": False}
    base |= {"solve_window": 1}
    c = resolve(RunConfig(**(base | config)))
    run_dir = root / name
    run_dir.mkdir(parents=True)
    (run_dir / rundir.CONFIG).write_text(save_yaml(c))
    steps = [1000 * (i + 1) for i in range(len(accuracy) if accuracy else LOGS)]
    if accuracy is None:
        accuracy = [1.0 if solve_at is not None and s >= solve_at else 0.5 for s in steps]
    rows = []
    for i, (s, acc) in enumerate(zip(steps, accuracy, strict=True)):
        rep = repetitions if i == len(steps) - 1 else 1.5  # only the last row counts
        rows.append({
            "step": s, "loss": 0.1, "task_loss": 0.1, "train_accuracy": acc,
            "ponder_cost": rep + 1, "ponder_steps": ponder_steps, "repetitions": rep,
            "eval_accuracy": 1.0 if eval_at is not None and s >= eval_at else 0.4,
            "eval_ponder_cost": rep + 1, "eval_repetitions": rep, "elapsed_s": float(i),
        })  # fmt: skip
    names = rundir.COLUMNS
    if held_out is not None:
        names = rundir.columns(c.eval_sets)
        for set_name, values in held_out.items():
            rows[-1][f"{set_name}_accuracy"] = values[0]
            rows[-1][f"{set_name}_steps"] = values[1]
            if len(values) > 2:
                rows[-1][f"{set_name}_ponder_cost"] = values[2]
    with (run_dir / rundir.METRICS).open("w", newline="") as f:
        writer = csv.DictWriter(f, names, lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
    if status in ("finished", "diverged"):
        # a finished run has spent its budget (the curve here is only its logged start)
        summary = {"solved": solve_at is not None, "diverged": status == "diverged"}
        summary["step"] = c.steps
        (run_dir / rundir.SUMMARY).write_text(json.dumps(summary | {"finished": True}))
    if status == "failed":
        (run_dir / rundir.ERROR).write_text("RuntimeError: CUDA out of memory\nTraceback ...\n")
    return run_dir


def make_paper_sweep(root: Path) -> Path:
    """A parity sweep on the paper's problem and budget: every count and median is known."""
    sweep = root / "sweep"
    act = {"model": "act", "tau": 0.01}
    # ACT tau=1e-2: solved at 10k, 20k, 40k, and a fourth seed still running, unsolved so far.
    for seed, solve, held, reps, n in [(0, 10_000, 15_000, 1.7, 2.6), (1, 20_000, 25_000, 1.9, 2.7),
                                       (2, 40_000, 45_000, 1.8, 2.7)]:  # fmt: skip
        make_run(sweep, f"act-s{seed}", solve_at=solve, eval_at=held, repetitions=reps,
                 ponder_steps=n, seed=seed, **act)  # fmt: skip
    make_run(sweep, "act-s3", repetitions=1.8, ponder_steps=2.9, seed=3, status="unfinished", **act)
    make_run(sweep, "act-big-tau", solve_at=50_000, model="act", tau=0.1, repetitions=1.0)
    make_run(sweep, "rnn", model="rnn", cell="rnn")
    make_run(sweep, "rnn-s1", model="rnn", seed=1, tau=0.5)  # tau means nothing to the RNN
    make_run(sweep, "repeat-s0", model="repeat", rho=2, repetitions=2.0, status="diverged")
    make_run(sweep, "repeat-s1", model="repeat", rho=2, seed=1, repetitions=2.0, status="failed")
    (sweep / "sweep.json").write_text("{}")
    (sweep / "logs").mkdir()  # not a run: no config
    return sweep


def tiny_config(**overrides: object) -> RunConfig:
    """A config that trains in well under a second on the CPU."""
    base = dict(
        hidden=8, steps=20, log_every=10, eval_size=16, batch_size=16, progress=False,
        device="cpu", model="act", tau=0.01, solve_window=1,
    )  # fmt: skip
    return resolve(RunConfig(**(base | overrides)))


def read_csv(sweep: Path) -> list[dict[str, str]]:
    with (sweep / report.REPORT_CSV).open(newline="") as f:
        return list(csv.DictReader(f))


def find(rows: list[dict[str, str]], **match: str) -> dict[str, str]:
    hits = [r for r in rows if all(r[k] == v for k, v in match.items())]
    assert len(hits) == 1, (match, hits)
    return hits[0]
