"""The sweep's tables: report.csv and report.md hold the numbers of hand-made runs whose answers
are known, the paper's values beside them, the reduced-experiment wording, and errors for bad
input. The run directories are ``test_results``'s."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from sweeps import find, make_paper_sweep, make_run, read_csv

from ponder import metrics, rundir
from ponder.analysis import report, results


@pytest.fixture
def paper_sweep(tmp_path: Path) -> Path:
    return make_paper_sweep(tmp_path)


def test_csv_numbers_and_paper_values(paper_sweep: Path) -> None:
    path = report.build_report(paper_sweep, difficulty_samples=0)
    assert path == paper_sweep / "report.md"
    rows = read_csv(paper_sweep)
    assert len(rows) == 4  # RNN, ACT 1e-1, ACT 1e-2, Repeat 2: seeds grouped, "logs" ignored
    assert set(report.CSV_COLUMNS) <= set(rows[0])

    act = find(rows, model="act", tau="0.01")
    assert act["solved"] == "3/4"
    assert (act["solved_k"], act["solved_n"]) == ("3", "4")
    # Wilson, z = 1.959964: (0.75 + z^2/8 +- z sqrt(0.75 * 0.25 / 4 + z^2/64)) / (1 + z^2/4)
    assert (act["solved_wilson_low"], act["solved_wilson_high"]) == ("0.3006", "0.9544")
    # quartiles over all 4 seeds, the unfinished one censored (were 15000 and 30000: numpy's
    # percentiles over the 3 solved seeds only)
    assert (act["median_steps_to_solve"], act["iqr25_steps_to_solve"]) == ("20000", "10000")
    assert act["iqr75_steps_to_solve"] == "40000"
    assert act["eval_solved"] == "3/4"
    assert act["median_eval_steps_to_solve"] == "25000"
    assert (act["iqr25_eval_steps_to_solve"], act["iqr75_eval_steps_to_solve"]) == (
        "15000",
        "45000",
    )
    assert act["steps_followed"] == "60000"
    assert act["provisional"] == "1 run unfinished"
    assert float(act["median_repetitions"]) == pytest.approx(1.8)
    assert float(act["median_ponder_steps"]) == pytest.approx(2.7)
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
    assert rnn["median_steps_to_solve"] == ""  # not reached within...
    assert rnn["steps_followed"] == "2000000"  # ...the budget both seeds ran to
    assert (rnn["solved_wilson_low"], rnn["solved_wilson_high"]) == ("0", "0.6576")
    assert rnn["provisional"] == ""
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
    assert labels == ["RNN", "ACT tau=1e-1", "ACT tau=1e-2*", "Repeat rho=2"]
    act = table[3]
    # provisional (1 unfinished): marked *, with the reason under the table; k/n [Wilson 95%];
    # quartiles over all seeds (were "| 3/4 | 20k [15k-30k] | 25k [20k-35k] |", solved only)
    assert act.startswith("| ACT tau=1e-2* | 3/4 [0.30, 0.95] | 20k [10k, 40k] | 25k [15k, 45k] |")
    # repetitions: the last logged value, then the paper's statistic (mean of floor over
    # training: make_run logs 1.5, floor 1, before the last row)
    assert "| 1.80 | 1.00 | 2.70 | 1 unfinished |" in act
    # the paper's table, then its figure's first step at 98% (Figure 5's tau = 1e-2)
    assert act.endswith("| yes | 53k | 1.81 | 336k |")
    assert "\\* Provisional, the numbers may still change: ACT tau=1e-2 (1 run unfinished)." in text
    assert table[1].startswith("| RNN | 0/2 [0.00, 0.66] | > 2000k | > 2000k |")
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
    assert find(rows, model="rnn")["paper_solved"] == "differs: cell=gru"  # was "n/a (other cell)"
    assert find(rows, model="act")["paper_solved"] == ""
    assert find(rows, model="repeat")["paper_solved"] == ""


def test_protocol_differences_replace_the_papers_numbers(tmp_path: Path) -> None:
    sweep = tmp_path / "s"
    make_run(sweep, "torch", solve_at=10_000, model="act", tau=0.01, init="torch")
    make_run(sweep, "paper", solve_at=10_000, model="act", tau=0.001)
    make_run(sweep, "rnn", model="rnn", epsilon=0.1, ponder_loss="sum")  # ACT's: ignored
    text = report.build_report(sweep, difficulty_samples=0).read_text()
    rows = read_csv(sweep)
    torch_row = find(rows, model="act", tau="0.01")
    assert torch_row["paper_solved"] == torch_row["paper_repetitions"] == "differs: init=torch"
    assert find(rows, model="act", tau="0.001")["paper_solved"] == "yes"
    assert find(rows, model="rnn")["paper_solved"] == "no"
    line = next(x for x in text.splitlines() if x.startswith("| ACT tau=1e-2"))
    assert line.endswith("| differs: init=torch |  |  |  |")  # said once, for table and figure


def test_a_rare_solve_is_not_reported_fast(tmp_path: Path) -> None:
    """1 of 5 seeds solved at 20k must not read faster than 5 of 5 at 30k."""
    sweep = tmp_path / "s"
    for seed in range(5):
        once = 20_000 if seed == 0 else None
        make_run(sweep, f"act-{seed}", model="act", tau=0.01, seed=seed, solve_at=once,
                 eval_at=once)  # fmt: skip
        make_run(sweep, f"rep-{seed}", model="repeat", rho=2, seed=seed, solve_at=30_000,
                 eval_at=30_000)  # fmt: skip
    text = report.build_report(sweep, difficulty_samples=0).read_text()
    act = next(x for x in text.splitlines() if x.startswith("| ACT tau=1e-2"))
    repeat = next(x for x in text.splitlines() if x.startswith("| Repeat rho=2"))
    assert act.startswith("| ACT tau=1e-2 | 1/5 [0.04, 0.62] | > 2000k | > 2000k |")
    assert repeat.startswith(
        "| Repeat rho=2 | 5/5 [0.57, 1.00] | 30k [30k, 30k] | 30k [30k, 30k] |"
    )
    rows = read_csv(sweep)
    assert find(rows, model="act")["median_steps_to_solve"] == ""
    assert find(rows, model="repeat")["median_steps_to_solve"] == "30000"


def test_provisional_when_fewer_points_than_the_window(tmp_path: Path) -> None:
    sweep = tmp_path / "s"
    make_run(sweep, "short", model="rnn", solve_window=71)  # 60 logs: smoothed over 59
    text = report.build_report(sweep, difficulty_samples=0).read_text()
    why = "1 run with fewer logged points than the 71-point window: smoothed over 59"
    assert read_csv(sweep)[0]["provisional"] == why
    assert f"\\* Provisional, the numbers may still change: RNN ({why})." in text
    assert "| RNN* |" in text


def test_steps_cell() -> None:
    assert report.steps_cell(20_000, 10_000, 40_000, 60_000, 4) == "20k [10k, 40k]"
    assert report.steps_cell(30_000, 20_000, None, 300_000, 5) == "30k [20k, > 300k]"
    assert report.steps_cell(None, 20_000, None, 300_000, 5) == "> 300k [20k, > 300k]"
    assert report.steps_cell(None, None, None, 300_000, 5) == "> 300k"
    assert report.steps_cell(50_000, 50_000, 50_000, 60_000, 1) == "50k"
    assert report.steps_cell(None, None, None, 60_000, 1) == "> 60k"


def test_paper_criterion_uses_the_runs_own_window(tmp_path: Path) -> None:
    """A lone spike to 100% is no solve under the 71-point smoothing; the slow ramp is."""
    accuracy = list(np.linspace(0.5, 1.0, 150)) + [1.0] * 50
    accuracy[20] = 1.0
    run = make_run(tmp_path / "s", "ramp", accuracy=accuracy, solve_window=71, model="rnn")
    report.build_report(tmp_path / "s", difficulty_samples=0)
    steps = [1000 * (i + 1) for i in range(200)]
    expected = metrics.steps_to_solve(steps, accuracy, 0.98, 71)
    assert expected is not None and expected > 21_000
    assert read_csv(tmp_path / "s")[0]["median_steps_to_solve"] == str(expected)
    assert results.read_run(run).steps_to_solve == expected


def test_a_crossing_only_at_the_end_is_not_a_solve_and_is_marked(tmp_path: Path) -> None:
    """A run that jumps to 100% in its last 20 logs (of 200, window 71): the smoothed curve
    crosses 98% there, but the report counts it not solved, censored at the budget, names the
    crossing in the runs table and marks the row provisional."""
    sweep = tmp_path / "s"
    accuracy = [0.6] * 180 + [1.0] * 20
    make_run(sweep, "late", accuracy=accuracy, solve_window=71, model="rnn", steps=200_000)
    make_run(sweep, "early", accuracy=[0.6] * 100 + [1.0] * 100, solve_window=71, model="rnn",
             steps=200_000, seed=1)  # fmt: skip
    report.build_report(sweep, difficulty_samples=0)
    late = results.read_run(sweep / "late")
    assert late.steps_to_solve is None and late.time_to_solve() == (200_000, False)
    assert late.edge_crossing_at is not None and late.edge_crossing_at > 165_000
    assert results.read_run(sweep / "early").edge_crossing_at is None
    row = read_csv(sweep)[0]
    assert row["solved"] == "1/2"
    assert "crossing the threshold only in the last half window" in row["provisional"]
    text = (sweep / "report.md").read_text()
    assert f"crosses at {report.fmt_steps(late.edge_crossing_at)}, unconfirmed" in text
    assert "| RNN* |" in text


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


def test_fmt_steps() -> None:
    assert [report.fmt_steps(s) for s in (None, 20, 53_000, 899_500)] == [
        "-", "20", "53k", "899.5k",
    ]  # fmt: skip
