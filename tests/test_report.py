"""The sweep report: numbers of hand-made runs whose answers are known, paper values beside
them, the reduced-experiment wording, figures that are real PNGs, and errors for bad input."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pytest

from ponder import metrics, report, rundir, train
from ponder.config import RunConfig, resolve, save_yaml

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
LOGS = 60  # hand-made runs log every 1,000 steps up to 60,000


def make_run(
    root: Path,
    name: str,
    *,
    solve_at: int | None = None,
    eval_at: int | None = None,
    accuracy: list[float] | None = None,
    repetitions: float = 1.0,
    mean_n: float = 2.0,
    status: str = "finished",
    **config: object,
) -> Path:
    """A run directory as ``ponder train`` leaves it, with a known learning curve.

    Training accuracy is 0.5 before ``solve_at`` and 1.0 from it on (or ``accuracy``); with
    ``solve_window=1`` (the default here) the smoothing is the identity, so the paper criterion
    is met exactly at ``solve_at``. The last row's repetitions column is ``repetitions``.
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
            "ponder_cost": rep + 1, "ponder_steps": mean_n, "repetitions": rep,
            "eval_accuracy": 1.0 if eval_at is not None and s >= eval_at else 0.4,
            "eval_ponder_cost": rep + 1, "eval_repetitions": rep, "elapsed_s": float(i),
        })  # fmt: skip
    with (run_dir / rundir.METRICS).open("w", newline="") as f:
        writer = csv.DictWriter(f, rundir.COLUMNS, lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
    if status in ("finished", "diverged"):
        summary = {"solved": solve_at is not None, "diverged": status == "diverged"}
        (run_dir / rundir.SUMMARY).write_text(json.dumps(summary | {"finished": True}))
    if status == "failed":
        (run_dir / "error.txt").write_text("RuntimeError: CUDA out of memory\nTraceback ...\n")
    return run_dir


def read_csv(sweep: Path) -> list[dict[str, str]]:
    with (sweep / "report.csv").open(newline="") as f:
        return list(csv.DictReader(f))


def find(rows: list[dict[str, str]], **match: str) -> dict[str, str]:
    hits = [r for r in rows if all(r[k] == v for k, v in match.items())]
    assert len(hits) == 1, (match, hits)
    return hits[0]


def assert_png(path: Path) -> None:
    data = path.read_bytes()
    assert data[:8] == PNG_SIGNATURE, path
    assert len(data) > 10_000, path  # axes, lines and text, not an empty canvas
    image = plt.imread(path)
    assert image.ndim == 3 and image.shape[0] > 300 and image.shape[1] > 300


@pytest.fixture
def paper_sweep(tmp_path: Path) -> Path:
    """A parity sweep on the paper's problem and budget: every count and median is known."""
    sweep = tmp_path / "sweep"
    act = {"model": "act", "tau": 0.01}
    # ACT tau=1e-2: solved at 10k, 20k, 40k, and a fourth seed still running, unsolved so far.
    for seed, solve, held, reps, n in [(0, 10_000, 15_000, 1.7, 2.6), (1, 20_000, 25_000, 1.9, 2.7),
                                       (2, 40_000, 45_000, 1.8, 2.7)]:  # fmt: skip
        make_run(sweep, f"act-s{seed}", solve_at=solve, eval_at=held, repetitions=reps,
                 mean_n=n, seed=seed, **act)  # fmt: skip
    make_run(sweep, "act-s3", repetitions=1.8, mean_n=2.9, seed=3, status="unfinished", **act)
    make_run(sweep, "act-big-tau", solve_at=50_000, model="act", tau=0.1, repetitions=1.0)
    make_run(sweep, "rnn", model="rnn", cell="rnn")
    make_run(sweep, "rnn-s1", model="rnn", seed=1, tau=0.5)  # tau means nothing to the RNN
    make_run(sweep, "repeat-s0", model="repeat", rho=2, repetitions=2.0, status="diverged")
    make_run(sweep, "repeat-s1", model="repeat", rho=2, seed=1, repetitions=2.0, status="failed")
    (sweep / "sweep.json").write_text("{}")
    (sweep / "logs").mkdir()  # not a run: no config.yaml
    return sweep


def test_csv_numbers_and_paper_values(paper_sweep: Path) -> None:
    path = report.build_report(paper_sweep, difficulty_samples=0)
    assert path == paper_sweep / "report.md"
    rows = read_csv(paper_sweep)
    assert len(rows) == 4  # RNN, ACT 1e-1, ACT 1e-2, Repeat 2: seeds grouped, "logs" ignored
    assert set(report.CSV_COLUMNS) <= set(rows[0])

    act = find(rows, model="act", tau="0.01")
    assert act["solved"] == "3/4"
    assert (act["median_steps_to_solve"], act["iqr25_steps_to_solve"]) == ("20000", "15000")
    assert act["iqr75_steps_to_solve"] == "30000"
    assert act["eval_solved"] == "3/4"
    assert act["median_eval_steps_to_solve"] == "25000"
    assert (act["iqr25_eval_steps_to_solve"], act["iqr75_eval_steps_to_solve"]) == (
        "20000",
        "35000",
    )
    assert float(act["median_repetitions"]) == pytest.approx(1.8)
    assert float(act["median_mean_n"]) == pytest.approx(2.7)
    assert (act["finished"], act["unfinished"], act["diverged"], act["failed"]) == (
        "3",
        "1",
        "0",
        "0",
    )
    assert act["rho"] == ""
    assert act["seeds"] == "0 1 2 3"
    assert act["budget"] == "2000000"
    assert (act["paper_solved"], act["paper_steps_to_solve"], act["paper_repetitions"]) == (
        "yes", "53k", "1.81",
    )  # fmt: skip

    big = find(rows, model="act", tau="0.1")
    assert (big["solved"], big["median_steps_to_solve"]) == ("1/1", "50000")
    assert (big["paper_solved"], big["paper_steps_to_solve"]) == ("no", "-")

    rnn = find(rows, model="rnn")
    assert (rnn["tau"], rnn["rho"], rnn["runs"], rnn["solved"]) == ("", "1", "2", "0/2")
    assert rnn["median_steps_to_solve"] == ""
    assert (rnn["paper_solved"], rnn["paper_repetitions"]) == ("no", "1.00")

    rep = find(rows, model="repeat")
    assert (rep["tau"], rep["rho"], rep["solved"]) == ("", "2", "0/2")
    assert (rep["diverged"], rep["failed"], rep["finished"]) == ("1", "1", "0")
    assert float(rep["median_repetitions"]) == 2.0
    assert (rep["paper_solved"], rep["paper_steps_to_solve"], rep["paper_repetitions"]) == (
        "yes", "22k", "2",
    )  # fmt: skip


def test_markdown_table_in_the_papers_order(paper_sweep: Path) -> None:
    text = report.build_report(paper_sweep, difficulty_samples=0, note="Nightly sweep.").read_text()
    assert text.splitlines()[2] == "Nightly sweep."  # the caller's note at the top
    table = [line for line in text.splitlines() if line.startswith("| ")]
    labels = [line.split(" | ")[0][2:] for line in table[1:5]]
    assert labels == ["RNN", "ACT tau=1e-1", "ACT tau=1e-2", "Repeat rho=2"]
    act = table[3]
    assert "| 3/4 | 20k [15k-30k] | 25k [20k-35k] | 1.80 | 2.70 | 1 unfinished |" in act
    assert act.endswith("| yes | 53k | 1.81 |")
    assert "1 diverged, 1 failed" in table[4]
    assert "9 runs in 4 configurations, 1 to 4 seeds per configuration" in text
    assert "Step budget: 2,000,000 training steps per run." in text
    assert "Task options: parity (bits=64)." in text
    assert "reduced experiment" not in text
    assert "RuntimeError: CUDA out of memory" in text  # the failed run's first error line
    assert "have not finished" in text


def test_reduced_problem_is_said_plainly(tmp_path: Path) -> None:
    sweep = tmp_path / "small"
    make_run(sweep, "a", solve_at=10_000, model="act", tau=0.01, task_options={"bits": 8},
             steps=60_000)  # fmt: skip
    make_run(sweep, "b", solve_at=10_000, model="repeat", rho=3, task_options={"bits": 8},
             steps=60_000, hidden=32)  # fmt: skip
    text = report.build_report(sweep, difficulty_samples=0).read_text()
    rows = read_csv(sweep)
    for row in rows:
        assert row["paper_solved"] == row["paper_steps_to_solve"] == "n/a (reduced problem)"
    assert "**This is a reduced experiment" in text
    assert "parity with bits=8 (paper: bits=64)" in text
    assert "parity with hidden 32 (paper: 128)" in text
    assert "a budget of 60,000 training steps (paper: 2,000,000)" in text
    assert "n/a (reduced problem)" in text
    # hidden differs between the two configurations, so it names the rows
    assert find(rows, model="repeat")["variant"] == "hidden=32"


def test_other_cell_and_rows_the_paper_lacks(tmp_path: Path) -> None:
    sweep = tmp_path / "s"
    make_run(sweep, "gru", model="rnn", cell="gru")
    make_run(sweep, "odd-tau", model="act", tau=0.05)
    make_run(sweep, "odd-rho", model="repeat", rho=4)
    report.build_report(sweep, difficulty_samples=0)
    rows = read_csv(sweep)
    assert find(rows, model="rnn")["paper_solved"] == "n/a (other cell)"
    assert find(rows, model="act")["paper_solved"] == ""
    assert find(rows, model="repeat")["paper_solved"] == ""


def test_paper_criterion_uses_the_runs_own_window(tmp_path: Path) -> None:
    """A lone spike to 100% is no solve under the 71-point smoothing; the slow ramp is."""
    accuracy = list(np.linspace(0.5, 1.0, 200))
    accuracy[20] = 1.0
    run = make_run(tmp_path / "s", "ramp", accuracy=accuracy, solve_window=71, model="rnn")
    report.build_report(tmp_path / "s", difficulty_samples=0)
    steps = [1000 * (i + 1) for i in range(200)]
    expected = metrics.steps_to_solve(steps, accuracy, 0.98, 71)
    assert expected is not None and expected > 21_000
    assert read_csv(tmp_path / "s")[0]["median_steps_to_solve"] == str(expected)
    assert report.read_run(run).steps_to_solve == expected


def test_accuracy_figures_are_pngs_linked_from_the_report(paper_sweep: Path) -> None:
    text = report.build_report(paper_sweep, difficulty_samples=0).read_text()
    for name in ("parity-accuracy-tau.png", "parity-accuracy-rho.png"):
        assert_png(paper_sweep / "figures" / name)
        assert f"](figures/{name})" in text
    assert not (paper_sweep / "figures" / "addition-ponder-position.png").exists()


def test_single_run_directory_and_repeat_free_sweep(tmp_path: Path) -> None:
    run = make_run(tmp_path, "only", solve_at=30_000, model="act", tau=0.001)
    report.build_report(run, difficulty_samples=0)
    assert read_csv(run)[0]["solved"] == "1/1"
    assert (run / "figures" / "parity-accuracy-tau.png").exists()
    assert not (run / "figures" / "parity-accuracy-rho.png").exists()  # no Repeat runs


def test_errors_for_a_missing_or_empty_directory(tmp_path: Path) -> None:
    with pytest.raises(rundir.RunError, match="not found"):
        report.build_report(tmp_path / "nope")
    with pytest.raises(rundir.RunError, match="holds no run"):
        report.build_report(tmp_path)
    (tmp_path / "sweep.json").write_text("{}")
    (tmp_path / "notes").mkdir()
    with pytest.raises(rundir.RunError, match="holds no run") as e:
        report.build_report(tmp_path)
    assert "\n" not in str(e.value)


def test_formats() -> None:
    assert [report.fmt_tau(t) for t in (0.1, 0.01, 0.005, 0.001, 1.0)] == [
        "1e-1", "1e-2", "5e-3", "1e-3", "1e0",
    ]  # fmt: skip
    assert [report.fmt_steps(s) for s in (None, 20, 53_000, 899_500)] == [
        "-", "20", "53k", "899.5k",
    ]  # fmt: skip


# ---------------------------------------------------------------- trained networks


def tiny(**overrides: object) -> RunConfig:
    base = dict(
        hidden=8, steps=20, log_every=10, eval_size=16, batch_size=16, progress=False,
        device="cpu", model="act", tau=0.01, solve_window=1,
    )  # fmt: skip
    return resolve(RunConfig(**(base | overrides)))


@pytest.fixture(scope="module")
def trained_sweep(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Real checkpoints: ACT on small parity and addition, two addition seeds, and an ACT run
    whose checkpoint is missing."""
    sweep = tmp_path_factory.mktemp("trained")
    train.run(tiny(task="parity", task_options={"bits": 4}), sweep / "parity-act")
    addition = {"task": "addition", "task_options": {"numbers": 3, "digits": 2}}
    for seed in (0, 1):
        train.run(tiny(seed=seed, **addition), sweep / f"addition-act-{seed}")
    train.run(tiny(seed=2, **addition), sweep / "addition-act-2")
    (sweep / "addition-act-2" / rundir.CHECKPOINT).unlink()
    return sweep


def test_trained_network_figures(trained_sweep: Path) -> None:
    text = report.build_report(trained_sweep, difficulty_samples=300).read_text()
    figures = trained_sweep / "figures"
    for name in (
        "addition-ponder-position.png", "addition-ponder-difficulty.png",
        "parity-ponder-difficulty.png", "parity-accuracy-tau.png", "addition-accuracy-tau.png",
    ):  # fmt: skip
        assert_png(figures / name)
        assert f"](figures/{name})" in text
    assert "addition-act-2: no checkpoint" in text
    assert find(read_csv(trained_sweep), task="addition")["runs"] == "3"


def test_probe_is_seeded_and_shaped(trained_sweep: Path) -> None:
    run = trained_sweep / "addition-act-0"
    ponder, difficulty = report.probe_ponder(run, samples=300, seed=5)
    assert ponder.shape == difficulty.shape == (300, 3)  # [samples, numbers], chunked 250 + 50
    assert set(np.unique(difficulty)) <= {1, 2}  # digits per number
    assert (ponder >= 0).all()
    again, _ = report.probe_ponder(run, samples=300, seed=5)
    np.testing.assert_array_equal(ponder, again)
