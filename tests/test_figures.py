"""The sweep's figures: real PNGs linked from report.md, drawn only where the runs allow them,
and the trained-network figures from real checkpoints. The run directories are
``test_results``'s."""

from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pytest
from sweeps import find, make_paper_sweep, make_run, read_csv, tiny_config

from ponder import rundir
from ponder.analysis import figures, report, results
from ponder.training import train

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def assert_png(path: Path) -> None:
    data = path.read_bytes()
    assert data[:8] == PNG_SIGNATURE, path
    assert len(data) > 10_000, path  # axes, lines and text, not an empty canvas
    image = plt.imread(path)
    assert image.ndim == 3 and image.shape[0] > 300 and image.shape[1] > 300


@pytest.fixture
def paper_sweep(tmp_path: Path) -> Path:
    return make_paper_sweep(tmp_path)


def test_band_is_the_median_and_quartiles_at_every_logged_step() -> None:
    """A seed that stopped early leaves the later steps to the others."""
    long = (np.array([1, 2, 3]), np.array([0.0, 1.0, 2.0]))
    short = (np.array([1, 2]), np.array([2.0, 3.0]))
    x, mid, lo, hi = figures._band([long, short])
    assert x.tolist() == [1, 2, 3]
    assert mid.tolist() == [1.0, 2.0, 2.0]
    assert lo.tolist() == [0.5, 1.5, 2.0]
    assert hi.tolist() == [1.5, 2.5, 2.0]


def test_accuracy_figures_are_pngs_linked_from_the_report(paper_sweep: Path) -> None:
    text = report.build_report(paper_sweep, difficulty_samples=0).read_text()
    for name in ("parity-accuracy-tau.png", "parity-accuracy-rho.png", "parity-solved.png"):
        assert_png(paper_sweep / "figures" / name)
        assert f"](figures/{name})" in text
    assert not (paper_sweep / "figures" / "addition-ponder-position.png").exists()
    captions = [line for line in text.splitlines() if line.startswith("*parity: ")]
    solved = next(c for c in captions if "fraction of seeds solved" in c)
    assert "Kaplan-Meier" in solved and "censored at its last step" in solved
    for caption in (c for c in captions if "training accuracy" in c):
        assert "stopped because it was solved keeps its last value" in caption
        assert "unfinished, failed or diverged seeds end where they stopped" in caption


def _row(sweep: Path) -> results.ConfigRow:
    (row,) = results.aggregate(results.load_runs(sweep)[0])
    return row


def test_solved_seeds_are_carried_so_the_median_does_not_jump(tmp_path: Path) -> None:
    """Three seeds: two solved at 10k and 20k and stopped there, one never solves and runs to
    60k. Over all seeds the median is 1.0 from 20k to the end; over the seeds still logging
    (the old band) it fell back to 0.5 once the solved seeds stopped."""
    sweep = tmp_path / "s"
    make_run(sweep, "a", accuracy=[0.5] * 9 + [1.0] * 1, seed=0, model="rnn")  # stops at 10k
    make_run(sweep, "b", accuracy=[0.5] * 19 + [1.0] * 1, seed=1, model="rnn")  # stops at 20k
    make_run(sweep, "c", accuracy=[0.5] * 60, seed=2, model="rnn")  # to 60k, unsolved
    row = _row(sweep)
    curves = figures.seed_curves(row.runs, "accuracy", end=60_000)
    assert [own for _, _, own in curves] == [10, 20, 60]  # logged points of each seed
    assert all(steps[-1] == 60_000 for steps, _, _ in curves)  # everyone reaches the end
    x, mid, lo, hi = figures._band([(s, v) for s, v, _ in curves])
    assert x.tolist() == [1000 * (i + 1) for i in range(60)]
    assert mid[19:].tolist() == [1.0] * 41  # from 20k on: two of three seeds at 1.0
    assert mid[9:19].tolist() == [0.5] * 10
    assert np.all(np.diff(mid) >= 0)  # no jump down when seeds stop
    assert lo[19:].tolist() == [0.75] * 41  # percentiles over all three seeds
    # the old band, over the seeds still logging, dropped to the one unsolved seed
    _, old_mid, _, _ = figures._band([(r.steps, r.accuracy) for r in row.runs])
    assert old_mid[20:].tolist() == [0.5] * 40


def test_unfinished_and_diverged_seeds_end_where_they_stopped(tmp_path: Path) -> None:
    sweep = tmp_path / "s"
    make_run(sweep, "a", accuracy=[1.0] * 10, seed=0, model="rnn", status="unfinished")
    make_run(sweep, "b", accuracy=[0.5] * 20, seed=1, model="rnn", status="diverged")
    make_run(sweep, "c", accuracy=[0.5] * 30, seed=2, model="rnn", status="failed")
    make_run(sweep, "d", accuracy=[0.5] * 40, seed=3, model="rnn")  # finished, unsolved
    curves = figures.seed_curves(_row(sweep).runs, "accuracy", end=60_000)
    assert [steps[-1] for steps, _, _ in curves] == [10_000, 20_000, 30_000, 40_000]
    assert [figures.carried(r) for r in _row(sweep).runs] == [False] * 4


def test_carried_curves_keep_the_smoothed_last_value(tmp_path: Path) -> None:
    sweep = tmp_path / "s"
    accuracy = list(np.linspace(0.9, 1.0, 30))  # 98% at 24, with the 5 points that confirm it
    make_run(sweep, "a", accuracy=accuracy, model="rnn", solve_window=11)
    make_run(sweep, "b", accuracy=[0.5] * 45, seed=1, model="rnn", solve_window=11)
    steps, values, own = figures.seed_curves(_row(sweep).runs, "accuracy", end=50_000)[0]
    assert own == 30 and steps[30:].tolist() == [1000 * i for i in range(31, 46)] + [50_000]
    np.testing.assert_allclose(values[:30], accuracy)  # a line: the cubic filter keeps it
    assert values[30:].tolist() == [values[29]] * 16


def test_solved_fraction_is_kaplan_meier_over_the_runs(tmp_path: Path) -> None:
    """Solves at 10k and 20k, one seed unfinished at 15k (censored there), one unsolved at its
    60k budget: 1/4 solved by 10k, then 2 seeds at risk at 20k: 1 - 3/4 * 1/2 = 5/8."""
    sweep = tmp_path / "s"
    common = {"model": "act", "tau": 0.01, "steps": 60_000}
    make_run(sweep, "a", solve_at=10_000, seed=0, **common)
    make_run(sweep, "b", accuracy=[0.5] * 15, status="unfinished", seed=1, **common)
    make_run(sweep, "c", solve_at=20_000, seed=2, **common)
    make_run(sweep, "d", seed=3, **common)
    x, y = figures.solved_fraction(_row(sweep).runs)
    assert x.tolist() == [0, 10_000, 20_000, 60_000]
    np.testing.assert_allclose(y, [0, 1 / 4, 5 / 8, 5 / 8])
    # nothing solved: flat at 0 to the last step followed
    none = tmp_path / "none"
    make_run(none, "a", seed=0, **common)
    make_run(none, "b", accuracy=[0.5] * 15, status="unfinished", seed=1, **common)
    x, y = figures.solved_fraction(_row(none).runs)
    assert (x.tolist(), y.tolist()) == ([0, 60_000], [0, 0])


def test_single_run_directory_and_repeat_free_sweep(tmp_path: Path) -> None:
    run = make_run(tmp_path, "only", solve_at=30_000, model="act", tau=0.001)
    report.build_report(run, difficulty_samples=0)
    assert read_csv(run)[0]["solved"] == "1/1"
    assert (run / "figures" / "parity-accuracy-tau.png").exists()
    assert not (run / "figures" / "parity-accuracy-rho.png").exists()  # no Repeat runs


# ---------------------------------------------------------------- trained networks


@pytest.fixture(scope="module")
def trained_sweep(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Real checkpoints: ACT on small parity and addition, two addition seeds, and an ACT run
    whose checkpoint is missing."""
    sweep = tmp_path_factory.mktemp("trained")
    train.run(tiny_config(task="parity", task_options={"bits": 4}), sweep / "parity-act")
    addition = {"task": "addition", "task_options": {"numbers": 3, "digits": 2}}
    for seed in (0, 1):
        train.run(tiny_config(seed=seed, **addition), sweep / f"addition-act-{seed}")
    train.run(tiny_config(seed=2, **addition), sweep / "addition-act-2")
    (sweep / "addition-act-2" / rundir.CHECKPOINT).unlink()
    return sweep


def test_trained_network_figures(trained_sweep: Path) -> None:
    text = report.build_report(trained_sweep, difficulty_samples=300).read_text()
    out = trained_sweep / "figures"
    for name in (
        "addition-ponder-position.png", "addition-ponder-difficulty.png",
        "parity-ponder-difficulty.png", "parity-accuracy-tau.png", "addition-accuracy-tau.png",
    ):  # fmt: skip
        assert_png(out / name)
        assert f"](figures/{name})" in text
    assert "addition-act-2: no checkpoint" in text
    assert find(read_csv(trained_sweep), task="addition")["runs"] == "3"
