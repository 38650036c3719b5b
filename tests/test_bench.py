"""ponder bench: the naive reference computes ponder's math, and the report gets written."""

import pytest
import torch

from ponder import cli
from ponder.cli import main
from ponder.config import RunConfig, resolve
from ponder.experiments import bench, timing
from ponder.methods import method
from ponder.methods.naive import copy_weights, naive_loss, naive_model
from ponder.training import engine, graphs


def _pair(model, task, options, **fields):
    config = resolve(
        RunConfig(task=task, task_options=options, model=model, hidden=12, device="cpu", **fields)
    )
    task_obj, spec = engine.build(config)
    net = timing.init_net(config, spec, 3)
    naive = copy_weights(naive_model(config, task_obj, method(model).naive), net)
    x, y = task_obj.sample(9, torch.Generator().manual_seed(1))
    return config, task_obj, net, naive, x, y


@pytest.mark.parametrize(
    "task, options, cell",
    [("parity", {"bits": 6}, None), ("addition", {"numbers": 3, "digits": 2}, None)],
)
def test_naive_act_matches_ponder(task, options, cell):
    config, task_obj, net, naive, x, y = _pair("act", task, options, tau=0.01, halting_bias=-1.0)
    logits, info = net(x)
    n_logits, n_cost = naive(x)
    assert info["ponder_steps"].max() > 1  # the halting loop really ponders
    torch.testing.assert_close(n_logits, logits)
    torch.testing.assert_close(n_cost, info["ponder_cost"])
    # the same loss, and the same gradients through the remainder
    loss, _ = engine.objective(method("act"), task_obj, logits, y, info, {"tau": 0.01})
    n_loss = naive_loss(task_obj, n_logits, y, n_cost, 0.01)
    torch.testing.assert_close(n_loss, loss.mean())
    loss.mean().backward()
    n_loss.backward()
    torch.testing.assert_close(naive.halt.weight.grad, net.core.halting.weight.grad)


@pytest.mark.parametrize("model, rho", [("repeat", 3), ("rnn", 1)])
@pytest.mark.parametrize(
    "task, options", [("parity", {"bits": 6}), ("addition", {"numbers": 3, "digits": 2})]
)
def test_naive_repeat_matches_ponder(model, rho, task, options):
    config, task_obj, net, naive, x, y = _pair(model, task, options, rho=rho)
    logits, info = net(x)
    n_logits, n_cost = naive(x)
    torch.testing.assert_close(n_logits, logits)
    torch.testing.assert_close(n_cost, info["ponder_cost"])
    loss, _ = engine.objective(method(model), task_obj, logits, y, info, {})
    torch.testing.assert_close(naive_loss(task_obj, n_logits, y, n_cost, 0.0), loss.mean())


def test_run_bench_writes_table(tmp_path, capsys):
    tiny = {"task_options": {"bits": 4}, "hidden": 8, "batch_size": 8}
    cases = [
        bench.Case(
            "act tau=1e-2", {"task": "parity", "model": "act", "tau": 1e-2, **tiny}, quick_ks=(1, 2)
        ),
        bench.Case(
            "repeat rho=2",
            {"task": "addition", "task_options": {"numbers": 2, "digits": 2}, "model": "repeat",
             "rho": 2, "hidden": 8, "batch_size": 4},
            quick_ks=(1,),
        ),
    ]  # fmt: skip
    out = tmp_path / "BENCH.md"
    timing = bench.Timing(warmup=1, repeats=2, seconds=0.01, max_steps=3)
    profile_case = bench.Case("act", {"task": "parity", "model": "act", **tiny})
    got = bench.run_bench(
        quick=True, device="cpu", out=out, _cases=cases, _timing=timing, _ks=(1, 2),
        _profile_case=profile_case, _neighbours=cases[:1],
    )  # fmt: skip
    text = got.text
    assert out.read_text() == text and got.failed == []
    assert "- load: " in text and "in progress" not in text
    assert "| case | naive steps/s | single steps/s (ratio) | K=1 run-steps/s (ratio)" in text
    assert "## parity" in text and "## addition" in text
    assert "skipped (quick)" in text
    assert "Projected time for the addition table" in text
    row = next(line for line in text.splitlines() if line.startswith("| act tau=1e-2"))
    numbers = [float(c.split()[0].replace(",", "")) for c in row.split("|")[2:-1]]
    assert len(numbers) == 4 and all(n > 0 for n in numbers)
    assert "parity act tau=1e-2" in capsys.readouterr().out
    assert "## parity ACT ensembles of 16 by how their members ponder" in text
    profiles = [line for line in text.splitlines() if line.startswith(("| every", "| 15 "))]
    assert [p.split(" | ")[0] for p in profiles] == [
        "| every member halts at once",
        "| every member ponders 6 steps",
        "| 15 halt at once, 1 ponders 6",
        "| 15 halt at once, 1 ponders to M",
    ]
    assert profiles[0].split(" | ")[3] == "1.00x"  # the at-once case against itself
    assert "## A single run beside a busy loop" in text
    beside = next(line for line in text.splitlines() if line.startswith("| parity act"))
    assert "1 thread" in beside  # parity's network: one thread, whatever the load


def _tiny_cases():
    tiny = {"task_options": {"bits": 4}, "hidden": 8, "batch_size": 8}
    return [
        bench.Case(label, {"task": "parity", "model": model, **tiny}, quick_ks=(1,))
        for label, model in [("act", "act"), ("repeat", "repeat"), ("rnn", "rnn")]
    ]


def test_a_failing_case_leaves_the_others_and_the_file(tmp_path, monkeypatch, capsys):
    """One case's failure (here a recording error, as PonderNet's on a GPU was) is one line;
    the others are measured, the file is written after every case, the exit status is 1."""
    written = []
    write = bench.Report.write

    def record(report, out):
        text = write(report, out)
        written.append(text)
        return text

    single = bench.single_step

    def broken(config, device):
        if config.model == "repeat":
            raise graphs.RecordError("recording the training step failed (test)")
        return single(config, device)

    monkeypatch.setattr(bench.Report, "write", record)
    monkeypatch.setattr(bench, "single_step", broken)
    monkeypatch.setattr(bench, "CASES", _tiny_cases())
    monkeypatch.setattr(
        bench, "QUICK", bench.Timing(warmup=1, repeats=1, seconds=0.01, max_steps=2)
    )
    monkeypatch.setattr(bench, "PROFILE_CASE", False)
    monkeypatch.setattr(bench, "run_bench", _without_extras(bench.run_bench))
    out = tmp_path / "BENCH.md"
    assert main(["bench", "--quick", "--device", "cpu", "--out", str(out)]) == 1
    printed = capsys.readouterr().out
    failed = [line for line in printed.splitlines() if "failed" in line]
    assert failed == ["parity repeat            failed: RecordError: recording the training step "
                      "failed (test)"]  # fmt: skip
    text = out.read_text()
    assert len(written) == 4 and "in progress: 1 of 3 cases so far" in written[0]
    rows = [line for line in text.splitlines() if line.startswith("| ")][1:]
    assert [r.split(" | ")[0] for r in rows] == ["| act (1 thread)", "| repeat", "| rnn (1 thread)"]
    assert "failed: RecordError" in rows[1] and "**failed** (1)" in text


def _without_extras(run):
    """``run_bench`` without the ACT profiles and the busy-loop case (kept short)."""

    def quick(*args, **kwargs):
        return run(*args, **kwargs, _profile_case=False, _neighbours=[])

    return quick


def test_bench_runs_with_trainings_tf32_switches(tmp_path, monkeypatch, tf32_switches):
    """The bench sets both TF32 switches as training does (off unless opted in), and restores
    them: PyTorch's own defaults differ (cuDNN's on), and tests must not depend on order."""
    seen = tf32_switches(bench, "measure_against")
    timing = bench.Timing(warmup=1, repeats=1, seconds=0.01, max_steps=2)
    bench.run_bench(device="cpu", out=tmp_path / "b.md", _cases=_tiny_cases()[1:2],
                    _timing=timing, _ks=(1,), _profile_case=False, _neighbours=[])  # fmt: skip
    assert seen == [(False, False)]
    assert torch.backends.cudnn.allow_tf32 and not torch.backends.cuda.matmul.allow_tf32


def test_add_parser_defaults():
    import argparse

    parser = argparse.ArgumentParser()
    cli._add_bench(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["bench", "--quick", "--device", "cpu"])
    assert args.quick and args.device == "cpu" and str(args.out) == "BENCHMARKS.md"
    assert args.cuda_graphs and args.threads is None
    assert not parser.parse_args(["bench", "--no-cuda-graphs"]).cuda_graphs
    assert args.func is cli._cmd_bench
