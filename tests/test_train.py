"""One run: files written, determinism, exact resume, divergence, initialisation."""

import dataclasses
import json
import math
import shutil

import pytest
import torch

from ponder import rundir
from ponder.training import engine, train
from ponder.training.models import ModelSpec, build_model


def _rows(d):
    return [{k: v for k, v in r.items() if k != "elapsed_s"} for r in rundir.read_metrics(d)]


def test_run_writes_all_files(tiny, tmp_path):
    summary = train.run(tiny(), tmp_path)
    for name in ("config.yaml", "metrics.csv", "checkpoint.pt", "summary.json"):
        assert (tmp_path / name).exists(), name
    assert list(tmp_path.glob("events.out.tfevents.*"))
    rows = rundir.read_metrics(tmp_path)
    assert [r["step"] for r in rows] == [10, 20, 30, 40, 50, 60]
    assert set(rundir.COLUMNS) <= set(rows[0])
    on_disk = json.loads((tmp_path / "summary.json").read_text())
    assert on_disk == summary
    for key in ("solved", "steps_to_solve", "eval_steps_to_solve", "final_eval_accuracy",
                "ponder_steps", "ponder_cost", "repetitions", "diverged"):  # fmt: skip
        assert key in summary
    # the paper's repetitions are N - 1 + R, and the ponder cost N + R: they differ by one
    assert summary["ponder_cost"] - summary["repetitions"] == pytest.approx(1.0)
    ckpt = torch.load(tmp_path / "checkpoint.pt", weights_only=True)
    assert ckpt["step"] == 60


def test_same_seed_same_run_other_seed_other_run(tiny, tmp_path):
    train.run(tiny(seed=3), tmp_path / "a")
    train.run(tiny(seed=3), tmp_path / "b")
    train.run(tiny(seed=4), tmp_path / "c")
    assert _rows(tmp_path / "a") == _rows(tmp_path / "b")
    assert _rows(tmp_path / "a") != _rows(tmp_path / "c")


@pytest.mark.parametrize("model", ["act", "repeat"])
def test_resume_after_interruption_equals_uninterrupted(tiny, tmp_path, monkeypatch, model):
    config = tiny(model=model, task="addition", task_options={"numbers": 3, "digits": 2})
    train.run(config, tmp_path / "full")

    calls = {"n": 0}
    real = engine.objective

    def dies_at_step_35(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 35:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(engine, "objective", dies_at_step_35)
    with pytest.raises(KeyboardInterrupt):
        train.run(config, tmp_path / "cut")
    monkeypatch.setattr(engine, "objective", real)
    assert [r["step"] for r in rundir.read_metrics(tmp_path / "cut")] == [10, 20, 30]
    assert torch.load(tmp_path / "cut" / "checkpoint.pt", weights_only=True)["step"] == 20
    assert not (tmp_path / "cut" / "summary.json").exists()
    train.run(config, tmp_path / "cut")
    assert _rows(tmp_path / "cut") == _rows(tmp_path / "full")


def test_a_checkpoint_from_another_device_kind_resumes_reseeded(tiny, tmp_path):
    """A CUDA generator's state (16 bytes of Philox seed and offset) cannot become a CPU one's:
    resuming on the CPU draws from a fresh stream seeded by (seed, device, step), recorded in
    engine.json, and the same resume gives the same run."""
    config = tiny(steps=40)
    train.run(dataclasses.replace(config, steps=20), tmp_path / "a")
    ckpt = rundir.load_checkpoint(tmp_path / "a")
    assert ckpt["data_device"] == "cpu"
    ckpt["data_rng"], ckpt["data_device"] = torch.zeros(16, dtype=torch.uint8), "cuda"
    rundir.save_checkpoint(tmp_path / "a", ckpt)
    shutil.copytree(tmp_path / "a", tmp_path / "b")
    del ckpt["data_device"]  # an older checkpoint: told by the state's size
    rundir.save_checkpoint(tmp_path / "b", ckpt)
    for d in ("a", "b"):
        assert train.run(config, tmp_path / d)["step"] == 40
        records = rundir.read_engine(tmp_path / d)
        assert [(r["from_step"], r["data_reseeded"]) for r in records] == [(0, False), (20, True)]
    assert _rows(tmp_path / "a") == _rows(tmp_path / "b")
    train.run(config, tmp_path / "straight")
    assert _rows(tmp_path / "a")[:2] == _rows(tmp_path / "straight")[:2]
    assert _rows(tmp_path / "a")[2:] != _rows(tmp_path / "straight")[2:]  # other batches


def test_longer_budget_continues_a_finished_run(tiny, tmp_path):
    train.run(tiny(steps=60), tmp_path / "full")
    train.run(tiny(steps=30), tmp_path / "grow")
    assert train.run(tiny(steps=30), tmp_path / "grow")["step"] == 30  # finished: untouched
    train.run(tiny(steps=60), tmp_path / "grow")
    assert _rows(tmp_path / "grow") == _rows(tmp_path / "full")


def test_stop_when_solved_stops_once_decided(tiny, tmp_path):
    config = tiny(model="repeat", rho=2, steps=4000, solve_window=5, lr=1e-2, hidden=16)
    summary = train.run(dataclass_replace(config, stop_when_solved=True), tmp_path)
    assert summary["solved"] and summary["stopped_when_solved"]
    rows = rundir.read_metrics(tmp_path)
    # stopped with exactly window // 2 points past the crossing, at the earliest, and well
    # before the budget
    crossing = [r["step"] for r in rows].index(summary["steps_to_solve"])
    assert len(rows) - 1 - crossing >= 2
    assert summary["step"] < 4000
    assert summary["eval_steps_to_solve"] is not None


def dataclass_replace(c, **kw):
    import dataclasses

    return dataclasses.replace(c, **kw)


def test_divergence_is_recorded_and_nothing_is_lost(tiny, tmp_path, monkeypatch):
    real = engine.objective
    calls = {"n": 0}

    def goes_nan(*args, **kwargs):
        calls["n"] += 1
        loss, task_loss = real(*args, **kwargs)
        return (loss * math.nan if calls["n"] > 44 else loss), task_loss

    monkeypatch.setattr(engine, "objective", goes_nan)
    summary = train.run(tiny(), tmp_path)
    assert summary["diverged"] is True
    assert json.loads((tmp_path / "summary.json").read_text())["diverged"] is True
    assert [r["step"] for r in rundir.read_metrics(tmp_path)] == [10, 20, 30, 40]
    assert torch.load(tmp_path / "checkpoint.pt", weights_only=True)["step"] == 40


def test_other_config_in_same_dir_is_refused(tiny, tmp_path):
    train.run(tiny(), tmp_path)
    with pytest.raises(rundir.RunError, match="different config.*tau"):
        train.run(tiny(tau=0.1), tmp_path)


def test_corrupt_checkpoint_is_a_clear_error(tiny, tmp_path):
    train.run(tiny(steps=20), tmp_path)
    data = (tmp_path / "checkpoint.pt").read_bytes()
    (tmp_path / "checkpoint.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(rundir.RunError, match="corrupt or truncated"):
        train.run(tiny(steps=40), tmp_path)


def test_a_kill_between_a_log_and_the_first_checkpoint_restarts_the_run(tiny, tmp_path):
    config = tiny(steps=40)  # log every 10, first checkpoint at step 20
    train.run(config, tmp_path / "full")
    train.run(dataclasses.replace(config, steps=20), tmp_path / "cut")
    (tmp_path / "cut" / "checkpoint.pt").unlink()  # killed after logging row 20, before saving
    (tmp_path / "cut" / "summary.json").unlink()
    assert train.run(config, tmp_path / "cut")["step"] == 40
    assert _rows(tmp_path / "cut") == _rows(tmp_path / "full")


def test_missing_checkpoint_with_progress_is_refused(tiny, tmp_path):
    train.run(tiny(steps=40), tmp_path)
    (tmp_path / "checkpoint.pt").unlink()
    with pytest.raises(rundir.RunError, match="checkpoint.pt is missing"):
        train.run(tiny(steps=60), tmp_path)


def _spec(cell, model="act"):
    return ModelSpec(input_size=5, output_size=3, model=model, cell=cell, hidden=32)


def test_tf_initialisation():
    net = build_model(_spec("lstm"), "tf", torch.Generator().manual_seed(0))
    cell = net.core.cell
    limit = math.sqrt(6 / (6 + 32 + 4 * 32))
    for w in (cell.weight_ih, cell.weight_hh):
        assert w.abs().max() <= limit and w.abs().max() > 0.95 * limit
        assert w.var().item() == pytest.approx(limit**2 / 3, rel=0.1)
    assert (cell.bias_ih[32:64] == 1).all() and (cell.bias_ih[:32] == 0).all()
    assert (cell.bias_hh == 0).all() and (cell.bias_ih[64:] == 0).all()
    assert (net.core.halting.bias == 1).all()
    rnn = build_model(_spec("rnn", "repeat"), "tf", torch.Generator().manual_seed(0)).core.rnn
    limit = math.sqrt(6 / (6 + 32 + 32))
    assert rnn.weight_hh_l0.abs().max() <= limit and rnn.weight_hh_l0.abs().max() > 0.9 * limit


def test_torch_initialisation_and_seeding():
    a = build_model(_spec("gru"), "torch", torch.Generator().manual_seed(0))
    b = build_model(_spec("gru"), "torch", torch.Generator().manual_seed(0))
    c = build_model(_spec("gru"), "torch", torch.Generator().manual_seed(1))
    for (name, pa), pb, pc in zip(
        a.named_parameters(), b.parameters(), c.parameters(), strict=True
    ):
        assert torch.equal(pa, pb)
        if name != "core.halting.bias":
            assert not torch.equal(pa, pc)
    bound = 1 / math.sqrt(32)
    assert a.core.cell.bias_hh.abs().max() <= bound
    assert a.core.cell.bias_hh.abs().max() > 0.8 * bound


def test_last_logged_step_reads_the_last_complete_row(tiny, tmp_path):
    assert rundir.last_logged_step(tmp_path) == 0
    train.run(tiny(steps=30), tmp_path)
    assert rundir.last_logged_step(tmp_path) == 30
    with (tmp_path / "metrics.csv").open("a") as f:
        f.write("40,0.5")  # a row still being written
    assert rundir.last_logged_step(tmp_path) == 30


@pytest.mark.parametrize("tf32", [False, True])
def test_training_sets_both_tf32_switches_and_restores_them(
    tiny, tmp_path, monkeypatch, tf32_switches, tf32
):
    """Both process-wide TF32 switches are the run's while it trains (PyTorch's defaults
    differ: cuDNN on, matmuls off) and are restored after, so no test depends on another."""
    seen = tf32_switches(train, "_loop")
    train.run(tiny(model="repeat", steps=10, tf32=tf32), tmp_path / "run")
    assert seen == [(tf32, tf32)]
    switches = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    assert switches == (False, True)
