"""`ponder reproduce`: the grids it runs, and the command end to end on a tiny stand-in."""

from ponder import reproduce, sweep
from ponder.cli import main


def test_quick_grid_is_the_reduced_parity_experiment():
    grid = reproduce.quick_grid()
    configs = [r.config for r in grid.runs]
    assert len(configs) == 12
    assert {c.task for c in configs} == {"parity"}
    assert {c.task_options["bits"] for c in configs} == {reproduce.QUICK.bits}
    kinds = sorted({(c.model, c.tau if c.model == "act" else c.rho) for c in configs})
    assert kinds == [("act", 0.01), ("repeat", 2), ("repeat", 3), ("rnn", 2)]
    assert {c.seed for c in configs} == {0, 1, 2}
    assert all(c.stop_when_solved and c.hidden == 128 and c.batch_size == 128 for c in configs)
    assert "Reduced experiment" in grid.note and f"{reproduce.QUICK.bits} input bits" in grid.note


def test_full_grid_merges_the_table_and_figure_grids():
    grid = reproduce.full_grid("parity", seeds=1)
    models = sorted((r.config.model, r.config.tau, r.config.rho) for r in grid.runs)
    taus = {t for m, t, _ in models if m == "act"}
    rhos = {r for m, _, r in models if m == "repeat"}
    assert taus == {1.0, 0.5, 0.1, 0.05, 0.01, 0.005, 0.001}
    assert rhos == set(range(2, 13))
    assert len(grid.runs) == 1 + 7 + 11  # shared configurations train once
    assert all(r.config.steps == 2_000_000 for r in grid.runs)


def test_quick_only_for_parity(capsys, tmp_path):
    assert main(["reproduce", "addition", "--quick", "--out", str(tmp_path)]) == 2
    assert "--quick reproduces parity only" in capsys.readouterr().err


def test_reproduce_runs_the_sweep_and_writes_the_report(tmp_path, monkeypatch, tiny_grid):
    path = tmp_path / "tiny.yaml"
    path.write_text(tiny_grid)
    tiny = sweep.load_grid(path, seeds=1, budget=20, progress=False)
    tiny.note = "A tiny stand-in for the quick experiment."
    monkeypatch.setattr(reproduce, "quick_grid", lambda: tiny)
    out = tmp_path / "out"
    assert main(["reproduce", "parity", "--quick", "--out", str(out), "--jobs", "2"]) == 0
    report = (out / "report.md").read_text()
    assert "A tiny stand-in" in report and (out / "report.csv").exists()
    assert len(list(out.glob("*/summary.json"))) == 5
