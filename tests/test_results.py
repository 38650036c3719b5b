"""Reading and aggregating a sweep: hand-made run directories whose numbers are known, the
paper's rows, configurations grouped over seeds, and the probe of a trained network.

``make_run`` and ``make_paper_sweep`` build run directories as ``ponder train`` leaves them; the
report and figure tests read the same ones.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from sweeps import LOGS, make_paper_sweep, make_run, tiny_config

from ponder import results, rundir, train
from ponder.config import RunConfig, resolve


@pytest.fixture
def paper_sweep(tmp_path: Path) -> Path:
    return make_paper_sweep(tmp_path)


def test_runs_grouped_over_seeds_in_the_papers_order(paper_sweep: Path) -> None:
    runs, skipped = results.load_runs(paper_sweep)
    assert len(runs) == 9 and skipped == []  # "logs" has no config: not a run, not skipped
    rows = results.aggregate(runs)
    assert [row.label for row in rows] == ["RNN", "ACT tau=1e-1", "ACT tau=1e-2", "Repeat rho=2"]
    rnn, _, act, repeat = rows

    assert [r.path.name for r in act.runs] == ["act-s0", "act-s1", "act-s2", "act-s3"]
    assert act.solved == 3
    assert (act.median_steps, act.q25_steps, act.q75_steps) == (20_000, 15_000, 30_000)
    assert act.eval_solved == 3
    assert (act.eval_median_steps, act.eval_q25_steps, act.eval_q75_steps) == (
        25_000, 20_000, 35_000,
    )  # fmt: skip
    assert act.median_repetitions == pytest.approx(1.8)
    assert act.median_ponder_steps == pytest.approx(2.7)
    assert act.counts == {"finished": 3, "diverged": 0, "failed": 0, "unfinished": 1}
    assert (act.tau, act.rho, act.paper) == (0.01, None, ("yes", "53k", "1.81"))

    assert (rnn.tau, rnn.rho, len(rnn.runs), rnn.solved) == (None, 1, 2, 0)
    assert rnn.median_steps is None and rnn.median_ponder_steps is None  # N(t) is ACT's

    assert repeat.counts == {"finished": 0, "diverged": 1, "failed": 1, "unfinished": 0}
    assert [r.error for r in repeat.runs] == ["", "RuntimeError: CUDA out of memory"]


def test_read_run_keeps_the_curves_and_the_last_row(paper_sweep: Path) -> None:
    run = results.read_run(paper_sweep / "act-s1")
    assert run.status == "finished"
    assert run.steps.tolist() == [1000 * (i + 1) for i in range(LOGS)]
    assert run.repetitions_curve.shape == run.accuracy.shape == (LOGS,)
    assert (run.repetitions_curve[0], run.repetitions_curve[-1]) == (1.5, 1.9)
    assert (run.steps_to_solve, run.eval_steps_to_solve) == (20_000, 25_000)
    assert (run.repetitions, run.ponder_steps) == (1.9, 2.7)
    assert results.read_run(paper_sweep / "rnn").ponder_steps is None


def test_config_key_ignores_the_seed_and_fields_the_model_ignores() -> None:
    def key(**c: object) -> dict:
        return results.config_key(resolve(RunConfig(task="parity", **c)))

    assert key(model="rnn") == key(model="rnn", seed=3, tau=0.5, rho=5)
    assert key(model="act", tau=0.01) != key(model="act", tau=0.001)
    assert key(model="act", tau=0.01)["bits"] == 64  # task options flattened in
    assert "seed" not in key(model="repeat", rho=3)


def test_paper_values() -> None:
    def paper(**c: object) -> tuple[str, str, str]:
        return results.paper_values(resolve(RunConfig(**c)))

    assert paper(task="parity", model="act", tau=0.01) == ("yes", "53k", "1.81")
    assert paper(task="addition", model="repeat", rho=5) == ("yes", "514k", "5")
    assert paper(task="parity", model="act", tau=0.05) == ("", "", "")  # no such row
    assert paper(task="logic", model="rnn") == ("", "", "")  # no such table
    small = paper(task="parity", model="rnn", task_options={"bits": 8})
    assert small == (results.REDUCED,) * 3
    assert paper(task="parity", model="rnn", cell="gru") == (results.OTHER_CELL,) * 3


def test_fmt_tau() -> None:
    assert [results.fmt_tau(t) for t in (0.1, 0.01, 0.005, 0.001, 1.0)] == [
        "1e-1", "1e-2", "5e-3", "1e-3", "1e0",
    ]  # fmt: skip


# ---------------------------------------------------------------- trained networks


@pytest.fixture(scope="module")
def addition_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real checkpoint: ACT on small addition (3 numbers of up to 2 digits)."""
    run = tmp_path_factory.mktemp("trained") / "addition-act-0"
    addition = {"task": "addition", "task_options": {"numbers": 3, "digits": 2}}
    train.run(tiny_config(**addition), run)
    return run


def test_probe_is_seeded_and_shaped(addition_run: Path) -> None:
    ponder, difficulty = results.probe_ponder(addition_run, samples=300, seed=5)
    assert ponder.shape == difficulty.shape == (300, 3)  # [samples, numbers], chunked 250 + 50
    assert set(np.unique(difficulty)) <= {1, 2}  # digits per number
    assert (ponder >= 0).all()
    again, _ = results.probe_ponder(addition_run, samples=300, seed=5)
    np.testing.assert_array_equal(ponder, again)


def test_probe_of_a_run_without_checkpoint(tmp_path: Path) -> None:
    run = make_run(tmp_path, "no-checkpoint", model="act", tau=0.01)
    with pytest.raises(rundir.RunError, match="checkpoint not found"):
        results.probe_ponder(run, samples=10, seed=0)
