"""`ponder reproduce`: the grids it runs, and the command end to end on a tiny stand-in."""

import dataclasses

import pytest
import torch

from ponder import rundir
from ponder.cli import main
from ponder.experiments import plan, reproduce, sweep


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


def test_full_grid_with_a_smaller_budget_says_what_it_cannot_reproduce():
    grid = reproduce.full_grid("parity", seeds=1, budget=50_000)
    assert len(grid.runs) == 1 + 7 + 11
    assert all(r.config.steps == 50_000 for r in grid.runs)
    assert "budget is 50,000 training steps per run instead of 2,000,000" in grid.note
    assert "solved later than 50,000 steps cannot be solved here" in grid.note
    # Table 1's rows solved after 50k: ACT 1e-2 (53k), 5e-3 (356k), 1e-3 (55k); Repeat is faster
    assert (
        "(Fojo et al. Table 1: ACT tau=1e-2 at 53k, ACT tau=5e-3 at 356k, ACT tau=1e-3 at 55k)"
        in (grid.note)
    )
    assert reproduce.full_grid("parity", seeds=1).note == ""  # the paper's budget: nothing to say
    assert "none of Fojo et al. Table 2's solved rows" in reproduce.budget_note("addition", 10**6)


def test_parity_figures_trains_both_figure_grids_to_their_budget():
    """Figures 5 and 6: the RNN, ACT at 7 tau, Repeat rho 2-12; 3 seeds, 200k steps, and no
    run stops once solved (the paper's late collapses must stay in view)."""
    grid = reproduce.full_grid("parity-figures")
    configs = [r.config for r in grid.runs]
    assert len(configs) == 3 * (1 + 7 + 11)
    assert {c.seed for c in configs} == {0, 1, 2}
    assert {c.steps for c in configs} == {200_000}
    assert not any(c.stop_when_solved for c in configs)
    assert {c.task_options["bits"] for c in configs} == {64}
    assert "Figures 5 and 6" in grid.note and "3 seeds, 200,000 training steps" in grid.note
    longer = reproduce.full_grid("parity-figures", seeds=1, budget=300_000)
    assert {c.config.steps for c in longer.runs} == {300_000} and len(longer.runs) == 19
    assert "1 seeds" not in longer.note and "300,000" in longer.note


def test_quick_addition_is_table_2s_grid_at_the_calibrated_size():
    q = reproduce.QUICK_ADDITION
    grid = reproduce.quick_addition_grid()
    configs = [r.config for r in grid.runs]
    assert len(configs) == 9 * q.seeds and {c.seed for c in configs} == set(range(q.seeds))
    kinds = sorted((c.model, c.tau if c.model == "act" else c.rho) for c in configs[:: q.seeds])
    acts = [("act", 0.001), ("act", 0.005), ("act", 0.01), ("act", 0.1)]
    assert kinds == [*acts, ("repeat", 2), ("repeat", 3), ("repeat", 5), ("repeat", 8), ("rnn", 2)]
    options = {"numbers": q.numbers, "digits": q.digits}
    assert all(c.task == "addition" and c.task_options == options for c in configs)
    assert {(c.hidden, c.cell, c.batch_size, c.max_ponder) for c in configs} == {
        (q.hidden, "lstm", 32, 20)  # the paper's cell, batch and M; a smaller LSTM
    }
    assert {(c.steps, c.log_every, c.solve_window) for c in configs} == {
        (q.steps, q.log_every, q.solve_window)
    }
    assert all(c.stop_when_solved for c in configs)
    assert f"Addition of {q.numbers} numbers of up to {q.digits} digits" in grid.note
    assert f"an LSTM of {q.hidden} cells instead of 512" in grid.note


def test_quick_only_for_parity_extrapolation_and_addition(capsys, tmp_path):
    for what in ("pondernet", "all"):
        assert main(["reproduce", what, "--quick", "--out", str(tmp_path)]) == 2
        assert "--quick is for parity, extrapolation and addition" in capsys.readouterr().err
    assert main(["reproduce", "parity", "--quick", "--seeds", "5", "--out", str(tmp_path)]) == 2
    assert "--quick runs 3 seeds" in capsys.readouterr().err
    assert main(["reproduce", "parity", "--quick", "--budget", "500", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--budget is for the full protocol" in err
    argv = ["reproduce", "addition", "--quick", "--budget", "500", "--out", str(tmp_path)]
    assert main(argv) == 2
    steps = f"{reproduce.QUICK_ADDITION.steps:,}"
    assert f"--quick trains {steps} steps per run" in capsys.readouterr().err
    assert main(["reproduce", "parity", "--budget", "0", "--out", str(tmp_path)]) == 2
    assert "must be >= 1" in capsys.readouterr().err
    assert not any(tmp_path.iterdir())


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


TINY_ADDITION = """
name: tiny-addition
base:
  task: addition
  task_options: {numbers: 2, digits: 1}
  hidden: 8
  batch_size: 16
  log_every: 10
  eval_size: 32
  device: cpu
seeds: 1
budget: 20
stop_when_solved: false
axes:
  - {model: repeat, rho: [2]}
"""


@pytest.fixture
def tiny_full(tmp_path, monkeypatch, tiny_grid):
    """``full_grid`` gives a tiny stand-in per task; no throughput is measured; runs train in
    this process (the sweep's local executor is covered in test_sweep)."""
    (tmp_path / "parity.yaml").write_text(tiny_grid.replace("rho: [2, 3]", "rho: [2]"))
    (tmp_path / "addition.yaml").write_text(TINY_ADDITION)
    grids = {
        "parity": sweep.load_grid(tmp_path / "parity.yaml", seeds=1, budget=20, progress=False),
        "addition": sweep.load_grid(tmp_path / "addition.yaml", progress=False),
    }
    asked = []
    monkeypatch.setattr(reproduce, "full_grid", lambda task, seeds=None, budget=None: grids[task])
    monkeypatch.setattr(
        reproduce,
        "estimate",
        lambda grid, *a: asked.append(grid.name) or reproduce.Estimate(0.5, 1, 1, 1, "cpu", 1.0),
    )
    monkeypatch.setattr(sweep, "LocalExecutor", lambda jobs=1: sweep.InlineExecutor())
    return grids, asked


def test_reproduce_all_sweeps_each_task_into_its_own_directory(tmp_path, tiny_full, capsys):
    grids, asked = tiny_full
    out = tmp_path / "out"
    assert main(["reproduce", "all", "--out", str(out), "--no-cuda-graphs"]) == 0
    for task, grid in grids.items():
        for r in grid.runs:
            config = rundir.read_config(out / task / r.name)
            assert config.task == task and config.cuda_graphs is False, r.name
            assert sweep.run_status(out / task / r.name, r.config) == "done", r.name
        assert (out / task / "report.md").exists() and (out / task / "report.csv").exists()
    assert sorted(p.name for p in out.iterdir()) == ["addition", "parity"]  # nothing at the top
    assert asked == ["tiny", "tiny-addition"]
    stdout = capsys.readouterr().out
    assert f"report: {out / 'parity' / 'report.md'}" in stdout
    assert f"report: {out / 'addition' / 'report.md'}" in stdout
    # the estimates come before any training
    assert stdout.index("ponder reproduce addition") < stdout.index("sweep tiny:")


def test_reproduce_all_refuses_a_clash_before_anything_trains(tmp_path, tiny_full, capsys):
    grids, asked = tiny_full
    out = tmp_path / "out"
    clash = grids["addition"].runs[0]
    other = dataclasses.replace(clash.config, hidden=4)  # another run under the same name
    rundir.prepare(other, out / "addition" / clash.name)
    assert main(["reproduce", "all", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("ponder: error:") and err.count("\n") == 1 and "different config" in err
    assert not list(out.rglob(rundir.METRICS))  # parity did not train first
    assert asked == []  # nor was throughput measured


def test_reproduce_budget_trains_the_papers_grids_for_fewer_steps(tmp_path, monkeypatch, capsys):
    """``--budget`` goes through ``full_grid`` to every run's steps and into the report's note
    (the paper's grid files are swapped for a tiny one: same code path, seconds to train)."""
    tiny = tmp_path / "tiny-parity.yaml"
    tiny.write_text(TINY_ADDITION.replace("addition", "parity").replace(
        "task_options: {numbers: 2, digits: 1}", "task_options: {bits: 4}"))  # fmt: skip
    monkeypatch.setitem(reproduce.FULL_GRIDS, "parity", ["tiny-parity"])
    monkeypatch.setattr(sweep, "builtin_grid", lambda name: tmp_path / f"{name}.yaml")
    monkeypatch.setattr(sweep, "LocalExecutor", lambda jobs=1: sweep.InlineExecutor())
    out = tmp_path / "out"
    assert main(["reproduce", "parity", "--budget", "30", "--out", str(out), "--jobs", "1"]) == 0
    configs = [rundir.read_config(p.parent) for p in out.glob("*/config.yaml")]
    assert configs and {c.steps for c in configs} == {30}
    stdout = capsys.readouterr().out
    assert "with a budget of 30 steps" in stdout
    # the projected time and memory, measured here with the sweep's ensembles, before training
    planned = sweep.plan_jobs(sweep.load_grid(tiny, budget=30).runs, tmp_path / "none", 16)
    said = f"expect up to 0.0 hours on cpu with --jobs 1: {len(planned)} jobs ("
    assert said in stdout and "GiB of memory (measured here)" in stdout
    assert stdout.index("expect up to") < stdout.index("sweep parity-full:")
    text = (out / "report.md").read_text()
    assert "**Reduced budget (`--budget 30`).** The budget is 30 training steps" in text
    assert "a budget of 30 training steps (paper: 2,000,000)" in text


def test_makespan_starts_the_longest_jobs_first_on_the_first_free_worker():
    assert plan.makespan([], 2) == 0.0
    assert plan.makespan([2.0, 3.0, 2.0, 3.0, 2.0], 2) == 7.0  # 3+2+2 | 3+2
    assert plan.makespan([5.0, 1.0, 1.0], 1) == 7.0
    assert plan.makespan([5.0, 4.0, 3.0], 5) == 5.0
    assert plan.makespan([2.0, 3.0, 3.0], 2, in_order=True) == 5.0  # as started: 2+3 | 3


def test_the_estimate_bounds_act_at_its_cap_and_says_what_it_would_be_at_the_start(
    tmp_path, tiny_grid, monkeypatch
):
    """ACT's step costs what its halting unit has learned, so a step timed before training
    says little: its jobs are timed held at the cap (the bound, ``hours``) and as they start
    (``hours_at_start``); a fixed method's only once. Rates are stubbed: the arithmetic and
    what is measured are under test, not this machine's speed."""
    grid = sweep.load_grid(_write(tmp_path / "g.yaml", tiny_grid), seeds=2, budget=3600)
    calls = []

    def rate(config, k=1, steps=5, at_cap=False):
        calls.append((config.model, k, at_cap))
        return 0.5 if at_cap else 2.0  # steps/s

    monkeypatch.setattr(reproduce, "measure_steps_per_second", rate)
    e = reproduce.estimate(grid, tmp_path / "none", workers=1, batch=16)
    jobs = sweep.spread(sweep.plan_jobs(grid.runs, tmp_path / "none", 16), 1)
    act = [j for j in jobs if j[0][0].model == "act"]
    assert act and e.pondering == ("ACT",)
    assert {c for c in calls if c[0] != "act"} == {(j[0][0].model, len(j), False) for j in jobs
                                                   if j[0][0].model != "act"}  # fmt: skip
    assert {c for c in calls if c[0] == "act"} == {("act", len(j), cap) for j in act
                                                   for cap in (False, True)}  # fmt: skip
    # One worker: the hours add up, 3,600 steps a job at 2 steps/s, ACT's at 0.5 at its cap.
    assert e.hours_at_start == pytest.approx(len(jobs) * 1800 / 3600)
    assert e.hours == pytest.approx(e.hours_at_start + len(act) * (7200 - 1800) / 3600)
    repeat_only = sweep.load_grid(_write(tmp_path / "r.yaml", TINY_ADDITION), budget=3600)
    assert reproduce.estimate(repeat_only, tmp_path / "none2", 1, 16).hours_at_start is None


def test_at_cap_every_token_ponders_to_m():
    """``AT_CAP``, the halting bias the estimate times ACT at, halts no token before M."""
    from ponder import ACT

    act = ACT(torch.nn.LSTMCell(4, 8), max_steps=100)
    with torch.no_grad():
        act.halting.weight.zero_()
        act.halting.bias.fill_(reproduce.AT_CAP)
    _, _, info = act(torch.randn(3, 5, 3))
    assert (info["steps"] == 100).all()


def _write(path, text: str):
    path.write_text(text)
    return path


def test_the_announcement_gives_the_bound_and_the_start(tmp_path, tiny_grid, monkeypatch, capsys):
    grid = sweep.load_grid(_write(tmp_path / "g.yaml", tiny_grid), seeds=1, budget=20)
    bound = reproduce.Estimate(12.0, 4, 2, 2, "cpu", 0.5, hours_at_start=1.5, pondering=("ACT",))
    monkeypatch.setattr(reproduce, "estimate", lambda *a: bound)
    reproduce._announce("parity", grid, False, 2, tmp_path / "out", 16, None)
    out = capsys.readouterr().out
    assert "expect up to 12.0 hours on cpu with --jobs 2" in out
    assert "the bound holds every ACT run at its cap" in out and "starts, 1.5 hours" in out
    fixed = dataclasses.replace(bound, hours_at_start=None, pondering=())
    monkeypatch.setattr(reproduce, "estimate", lambda *a: fixed)
    reproduce._announce("parity", grid, False, 2, tmp_path / "out", 16, None)
    assert "cap" not in capsys.readouterr().out


@pytest.mark.parametrize("cell", ["rnn", "lstm"])
def test_the_estimates_steps_ponder_to_the_cap_when_held(tiny, monkeypatch, cell):
    """The steps ``estimate`` times at the cap: one run's and an ensemble's, through the
    training loop's own steppers, log M ponder steps on every token (the window's N)."""
    from ponder.experiments import timing
    from ponder.training.engine import WINDOW

    made = []
    for name in ("Single", "Stacked"):
        real = getattr(timing, name)
        monkeypatch.setattr(timing, name, lambda *a, real=real: made.append(real(*a)) or made[-1])
    config = tiny(max_ponder=5, cell=cell)
    device = torch.device("cpu")
    for step in (
        timing.single_step(config, device, reproduce.AT_CAP),
        timing.ensemble_step(config, device, 2, (reproduce.AT_CAP,) * 2),
    ):
        step()
        step()
    n = WINDOW.index("ponder_steps")
    assert made[0].stepper.window[..., n].tolist() == pytest.approx([2 * 5])
    assert made[1].stepper.window[..., n].tolist() == pytest.approx([2 * 5, 2 * 5])
