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

from ponder import rundir
from ponder.analysis import figures, paper, results
from ponder.config import RunConfig, resolve
from ponder.methods import fmt_tau
from ponder.training import train


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
    # over all 4 seeds, the unfinished one censored at its last step (60k): a quarter solved by
    # 10k, half by 20k, three quarters by 40k (was numpy's percentiles of the 3 solved only)
    assert (act.median_steps, act.q25_steps, act.q75_steps) == (20_000, 10_000, 40_000)
    assert act.eval_solved == 3
    assert (act.eval_median_steps, act.eval_q25_steps, act.eval_q75_steps) == (
        25_000, 15_000, 45_000,
    )  # fmt: skip
    assert act.followed_steps == 60_000
    assert act.solved_interval == (pytest.approx(0.3006, abs=1e-4), pytest.approx(0.9544, abs=1e-4))
    assert act.provisional == "1 run unfinished"
    assert act.median_repetitions == pytest.approx(1.8)
    assert act.median_ponder_steps == pytest.approx(2.7)
    assert act.counts == {"finished": 3, "diverged": 0, "failed": 0, "unfinished": 1}
    assert (act.tau, act.rho, act.paper) == (0.01, None, ("yes", "53k", "1.81"))

    assert (rnn.tau, rnn.rho, len(rnn.runs), rnn.solved) == (None, 1, 2, 0)
    assert rnn.median_steps is None and rnn.median_ponder_steps is None  # N(t) is ACT's
    assert rnn.followed_steps == 2_000_000  # finished unsolved: censored at the budget
    assert rnn.provisional == ""

    assert repeat.counts == {"finished": 0, "diverged": 1, "failed": 1, "unfinished": 0}
    assert [r.error for r in repeat.runs] == ["", "RuntimeError: CUDA out of memory"]
    assert [r.censored_at for r in repeat.runs] == [60_000, 60_000]  # stopped, not at budget


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
    def row(**c: object) -> tuple[str, str, str]:
        return paper.paper_values(resolve(RunConfig(**c)))

    assert row(task="parity", model="act", tau=0.01) == ("yes", "53k", "1.81")
    assert row(task="addition", model="repeat", rho=5) == ("yes", "514k", "5")
    assert row(task="parity", model="act", tau=0.05) == ("", "", "")  # no such row
    assert row(task="logic", model="rnn") == ("", "", "")  # no such table
    small = row(task="parity", model="rnn", task_options={"bits": 8})
    assert small == (paper.REDUCED,) * 3
    # another cell was "n/a (other cell)"; now every departure from the protocol is named
    assert row(task="parity", model="rnn", cell="gru") == ("differs: cell=gru",) * 3
    assert row(task="parity", model="act", tau=0.01, init="torch") == ("differs: init=torch",) * 3
    many = row(task="addition", model="act", tau=0.01, lr=1e-4, epsilon=0.1, hidden=256)
    assert many == ("differs: hidden=256, lr=0.0001, epsilon=0.1",) * 3
    # the problem comes first: a reduced problem is not the paper's row whatever else differs
    assert row(task="parity", model="rnn", task_options={"bits": 8}, init="torch") == small


def test_protocol_differences_ignore_fields_the_model_ignores() -> None:
    def differs(**c: object) -> list[str]:
        return paper.protocol_differences(resolve(RunConfig(task="parity", **c)))

    assert differs(model="act", tau=0.01) == []
    # ACT's settings mean nothing to the RNN and Repeat: None in identity(), never "differs"
    odd = {"epsilon": 0.1, "halting_bias": -1.0, "ponder_loss": "sum", "max_ponder": 5}
    assert differs(model="rnn", **odd) == []
    assert differs(model="repeat", rho=3, **odd) == []
    assert differs(model="act", **odd) == [
        "max_ponder=5", "epsilon=0.1", "halting_bias=-1", "ponder_loss=sum",
    ]  # fmt: skip
    assert differs(model="repeat", batch_size=64, init="torch") == ["batch_size=64", "init=torch"]
    assert differs(model="rnn", steps=1000, seed=4, solve_window=11, log_every=10) == []


def test_one_of_five_is_not_faster_than_five_of_five(tmp_path: Path) -> None:
    """1 of 5 seeds solved at 20k, the others ran to their budget unsolved: its median is not
    reached, so it is not faster than a configuration whose 5 seeds all solved at 30k."""
    sweep = tmp_path / "s"
    for seed in range(5):
        make_run(sweep, f"act-{seed}", model="act", tau=0.01, seed=seed,
                 solve_at=20_000 if seed == 0 else None, steps=60_000)  # fmt: skip
        make_run(sweep, f"rep-{seed}", model="repeat", rho=2, seed=seed, solve_at=30_000,
                 steps=60_000)  # fmt: skip
    act, repeat = results.aggregate(results.load_runs(sweep)[0])
    assert (act.solved, repeat.solved) == (1, 5)
    assert (act.median_steps, act.q25_steps, act.q75_steps) == (None, None, None)
    assert act.followed_steps == 60_000  # the budget every unsolved seed ran to
    assert (repeat.median_steps, repeat.q25_steps, repeat.q75_steps) == (30_000,) * 3


def test_seeds_that_stopped_unsolved_are_censored_at_their_last_step(tmp_path: Path) -> None:
    """Kaplan-Meier over runs: one unfinished at 5k, solves at 10k and 20k, two unsolved at the
    60k budget. The unfinished seed leaves the risk set at 5k: by 20k half the seeds followed
    have solved (1 - 3/4 * 2/3), though only 2 of 5 did."""
    sweep = tmp_path / "s"
    common = {"model": "act", "tau": 0.01, "steps": 60_000}
    make_run(sweep, "a", accuracy=[0.5] * 5, status="unfinished", seed=0, **common)
    make_run(sweep, "b", solve_at=10_000, seed=1, **common)
    make_run(sweep, "c", solve_at=20_000, seed=2, **common)
    make_run(sweep, "d", seed=3, **common)
    make_run(sweep, "e", seed=4, status="diverged", **common)  # diverged at its last log, 60k
    runs = results.load_runs(sweep)[0]
    assert [r.time_to_solve() for r in runs] == [
        (5_000, False), (10_000, True), (20_000, True), (60_000, False), (60_000, False),
    ]  # fmt: skip
    (row,) = results.aggregate(runs)
    assert (row.solved, row.median_steps, row.q25_steps, row.q75_steps) == (2, 20_000, 10_000, None)
    assert row.provisional == "1 run unfinished"


def test_provisional_when_fewer_points_than_the_window(tmp_path: Path) -> None:
    sweep = tmp_path / "s"
    make_run(sweep, "short", model="rnn", solve_window=71)  # 60 logs: smoothed over 59
    make_run(sweep, "full", model="rnn", seed=1, solve_window=71, accuracy=[0.5] * 80)
    make_run(sweep, "act", model="act", solve_window=71, accuracy=[0.5] * 80)
    rnn, act = results.aggregate(results.load_runs(sweep)[0])
    why = "1 run with fewer logged points than the 71-point window: smoothed over 59"
    assert rnn.provisional == why
    assert act.provisional == ""


def test_fmt_tau() -> None:
    assert [fmt_tau(t) for t in (0.1, 0.01, 0.005, 0.001, 1.0)] == [
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
    ponder, difficulty = figures.probe_ponder(addition_run, samples=300, seed=5)
    assert ponder.shape == difficulty.shape == (300, 3)  # [samples, numbers], chunked 250 + 50
    assert set(np.unique(difficulty)) <= {1, 2}  # digits per number
    assert (ponder >= 0).all()
    again, _ = figures.probe_ponder(addition_run, samples=300, seed=5)
    np.testing.assert_array_equal(ponder, again)


def test_probe_of_a_run_without_checkpoint(tmp_path: Path) -> None:
    run = make_run(tmp_path, "no-checkpoint", model="act", tau=0.01)
    with pytest.raises(rundir.RunError, match="checkpoint.pt is missing"):
        figures.probe_ponder(run, samples=10, seed=0)
