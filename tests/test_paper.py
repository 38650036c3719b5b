"""The paper's numbers and curves (``ponder.paper``), and how a report shows them."""

from __future__ import annotations

import dataclasses
from importlib import resources
from pathlib import Path

import numpy as np
import pytest
from sweeps import LOGS, make_run, read_csv

from ponder.analysis import paper, report
from ponder.config import RunConfig, resolve


def test_the_curves_ship_with_their_provenance() -> None:
    folder = resources.files("ponder") / "data" / "fojo2018"
    assert "MIT License" in (folder / "LICENSE").read_text()
    provenance = (folder / "README.md").read_text()
    for fact in ("vector paths", "Savitzky-Golay", "d972588", "Figure"):
        assert fact in provenance
    families = {(c.task, c.method, c.panel, c.figure) for c in paper.curves().values()}
    assert ("parity", "act", "ponder", 5) in families
    assert ("parity", "repeat", "accuracy", 6) in families
    assert ("addition", "rnn", "accuracy", 7) in families  # the plain LSTM, "Without ACT"
    assert ("addition", "repeat", "accuracy", 8) in families
    assert len(paper.curves()) == 2 * (8 + 7) + 2 * 12  # per task: 8 accuracy, 7 ponder, 12 rho


def test_first_step_at_interpolates_between_vertices() -> None:
    c = paper.Curve(5, "parity", "act", 0.01, "accuracy",
                    np.array([1000, 3000, 7000]), np.array([0.5, 0.97, 0.99]))  # fmt: skip
    assert paper.first_step_at(c, 0.98) == pytest.approx(5000)
    assert paper.first_step_at(c, 0.995) is None
    assert paper.first_step_at(c, 0.4) == 1000


def test_the_papers_curves_against_its_tables() -> None:
    """What the reference README reads off the figures: Table 1 says 22k and 53k; the plotted
    runs first reach 98% at 182k and 336k, and the tables' repetitions are the mean of floor."""
    rho2 = paper.first_step_at(paper.curve("parity", "repeat", 2))
    assert rho2 == pytest.approx(182_000, abs=1_000)
    act = paper.curve("parity", "act", 0.01)
    assert paper.first_step_at(act) == pytest.approx(336_000, abs=1_000)
    assert paper.first_step_at(paper.curve("addition", "repeat", 3)) is None
    ponder = paper.curve("parity", "act", 0.01, "ponder")
    assert paper.mean_floor(ponder.steps, ponder.values) == pytest.approx(1.81, abs=0.1)
    addition = paper.curve("addition", "act", 0.01, "ponder")
    assert paper.mean_floor(addition.steps, addition.values) == pytest.approx(5.08, abs=0.05)
    assert paper.curve("parity", "pondernet", 0.1) is None  # not the paper's method


def test_mean_floor_reads_the_curve_every_1000_steps() -> None:
    steps = np.array([1000, 4000])
    assert paper.mean_floor(steps, np.array([1.5, 2.5])) == pytest.approx((1 + 1 + 2 + 2) / 4)


def _config(**c: object) -> RunConfig:
    return resolve(RunConfig(task="parity", device="cpu", **c))


def test_figure_steps_only_for_the_papers_problem() -> None:
    assert paper.figure_steps(_config(model="repeat", rho=2)) == "182k"
    assert paper.figure_steps(_config(model="rnn")).startswith("never in 1,999k (max 93.4%")
    assert paper.figure_steps(_config(model="act", tau=0.01, task_options={"bits": 16})) == (
        paper.REDUCED
    )
    assert paper.figure_steps(_config(model="act", tau=0.01, lr=1e-4)).startswith(paper.DIFFERS)
    assert paper.figure_steps(_config(model="act", tau=0.02)) == ""  # the paper drew no such tau
    assert paper.figure_curve(_config(model="repeat", rho=2, task_options={"bits": 16})) is None
    assert paper.figure_curve(_config(model="rnn"), as_repeat=True).figure == 6


def test_a_report_shows_the_paper_figure_column_and_both_repetitions(tmp_path: Path) -> None:
    sweep = tmp_path / "s"
    for seed in range(2):
        make_run(sweep, f"act-{seed}", model="act", tau=0.01, seed=seed, solve_at=50_000,
                 repetitions=2.5)  # fmt: skip
    report.build_report(sweep, difficulty_samples=0)
    row = read_csv(sweep)[0]
    assert row["paper_figure_steps_to_solve"] == "336k"
    assert row["paper_steps_to_solve"] == "53k"
    # make_run logs 1.5 repetitions at every row but the last (2.5): floor 1, then 2
    assert float(row["median_floor_repetitions"]) == pytest.approx((LOGS - 1 + 2) / LOGS)
    assert row["median_repetitions"] == "2.5"
    text = (sweep / "report.md").read_text()
    assert "paper figure: first step at 98%" in text and "| 336k |" in text
    assert "Fojo et al. 2018, Figures 5" in text  # the figures' caption names the dashed curves


def test_a_reduced_problem_is_said_once_for_table_and_figure(tmp_path: Path) -> None:
    """Repeat rho = 4 has no Table 1 row but a Figure 6 curve: on a smaller problem the report
    says "n/a (reduced problem)" once, in the first of the paper's columns."""
    sweep = tmp_path / "s"
    make_run(sweep, "r4", model="repeat", rho=4, task_options={"bits": 16})
    report.build_report(sweep, difficulty_samples=0)
    assert read_csv(sweep)[0]["paper_figure_steps_to_solve"] == paper.REDUCED
    line = next(x for x in (sweep / "report.md").read_text().splitlines() if "Repeat rho=4" in x)
    assert line.endswith(f"| {paper.REDUCED} |  |  |  |")


def test_an_addition_run_of_the_papers_size_gets_its_figures_curves() -> None:
    """Table 2's protocol (5 numbers of 5 digits, LSTM 512): the report's figures draw Figures
    7 and 8's curves beside ours; the reduced addition of ``--quick`` gets none."""
    from ponder.analysis import figures
    from ponder.analysis.results import ConfigRow

    full = resolve(RunConfig(task="addition", model="repeat", rho=3, device="cpu"))
    assert paper.figure_curve(full).figure == 8
    act = resolve(RunConfig(task="addition", model="act", tau=0.01))
    assert paper.figure_curve(act).figure == 7
    assert paper.figure_steps(full).startswith("never in")  # rho = 3 never reaches 98% there
    drawn: list[tuple[float, str]] = []

    class Axis:
        def plot(self, steps, values, **style):
            drawn.append((steps[-1], style["ls"]))

    class Run:
        def __init__(self, config):
            self.config = config

    for config, expected in ((full, [(500_000, "--")]), (dataclasses.replace(
            full, task_options={"numbers": 3, "digits": 2}), [])):  # fmt: skip
        drawn.clear()
        row = ConfigRow("addition", config.task_options, "repeat", "lstm", None, 3, "",
                        runs=[Run(config)])  # fmt: skip
        figures._plot_paper(Axis(), row, "accuracy", 500_000, "C0", set())
        assert drawn == expected
