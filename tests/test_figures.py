"""The sweep's figures: real PNGs linked from report.md, drawn only where the runs allow them,
and the trained-network figures from real checkpoints. The run directories are
``test_results``'s."""

from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pytest
from sweeps import find, make_paper_sweep, make_run, read_csv, tiny_config

from ponder import figures, report, rundir, train

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
