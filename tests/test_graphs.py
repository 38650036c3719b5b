"""CUDA-graph training steps: ACT's fixed unroll and its exact fallback, and the stepper.

A CPU cannot record CUDA graphs, so most tests run the stepper with ``graphs.Emulated`` (the
same logic around the graphs, replayed eagerly) and check it against eager training; the tests
marked for CUDA compare real graphs with eager runs on a GPU.
"""

import dataclasses

import pytest
import torch

from ponder import rundir
from ponder.cli import main
from ponder.kernels import tanh as ponder_tanh
from ponder.methods import pondernet
from ponder.training import engine, ensemble, graphs, train
from ponder.training.models import ModelSpec, build_model

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def _spec(cell: str, max_ponder: int = 12) -> ModelSpec:
    return ModelSpec(6, 1, model="act", cell=cell, hidden=10, max_ponder=max_ponder)


def _net(spec: ModelSpec, seed: int = 0):
    net = build_model(spec, "tf", torch.Generator().manual_seed(seed)).double()
    with torch.no_grad():  # spread the halting so that samples ponder 1 to several steps
        net.core.halting.weight.normal_(0, 0.5, generator=torch.Generator().manual_seed(seed))
        net.core.halting.bias.fill_(0.5)
    return net


def _value_and_grads(net, x, unroll=None):
    net.zero_grad()
    logits, info = net(x, unroll=unroll)
    (logits.square().sum() + info["ponder_cost"].sum()).backward()
    return logits.detach(), info, [p.grad.clone() for p in net.parameters()]


@pytest.mark.parametrize("cell", ["rnn", "gru", "lstm"])
def test_unroll_equals_exact_act_when_long_enough(cell):
    net = _net(_spec(cell))
    x = torch.randn(9, 3, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    want, info, grads = _value_and_grads(net, x)
    need = int(info["ponder_steps"].max())
    assert 2 <= need < 12  # samples halt after different numbers of steps, before the cap
    got, got_info, got_grads = _value_and_grads(net, x, unroll=need)
    assert not bool(got_info["overflow"])
    torch.testing.assert_close(got, want)
    torch.testing.assert_close(got_info["ponder_steps"], info["ponder_steps"])
    torch.testing.assert_close(got_info["ponder_cost"], info["ponder_cost"])
    for a, b in zip(got_grads, grads, strict=True):
        torch.testing.assert_close(a, b)
    # One step short: some sample has not halted, and the flag says so.
    _, short, _ = _value_and_grads(net, x, unroll=need - 1)
    assert bool(short["overflow"])


def test_unroll_at_the_cap_never_overflows():
    net = _net(_spec("rnn", max_ponder=3))
    with torch.no_grad():
        net.core.halting.bias.fill_(-20.0)  # h ~ 0: no sample halts before the cap M = 3
    x = torch.randn(5, 2, 6, dtype=torch.float64)
    want, info, grads = _value_and_grads(net, x)
    assert (info["ponder_steps"] == 3).all()
    for unroll in (3, 10):
        got, got_info, got_grads = _value_and_grads(net, x, unroll=unroll)
        assert not bool(got_info["overflow"])
        torch.testing.assert_close(got, want)
        for a, b in zip(got_grads, grads, strict=True):
            torch.testing.assert_close(a, b)


def test_ensemble_unroll_equals_exact():
    spec = _spec("lstm")
    ens = ensemble.Ensemble([_net(spec, s) for s in range(3)]).double()
    x = torch.randn(3, 7, 2, 6, dtype=torch.float64)
    want, info = ens(x)
    need = int(info["ponder_steps"].max())
    got, got_info = ens(x, unroll=need)
    assert not bool(got_info["overflow"])
    torch.testing.assert_close(got, want)
    torch.testing.assert_close(got_info["ponder_cost"], info["ponder_cost"])
    assert bool(ens(x, unroll=need - 1)[1]["overflow"])


# ---- the stepper


def _stepper(config, record_graphs: bool, record=graphs.Emulated):
    """The pieces ``train.run`` builds, with a stepper that records graphs (emulated unless
    ``record`` says otherwise) or is eager; returns it, the net, the window and the generator."""
    device = torch.device(config.device)
    task, spec = engine.build(config)
    net = build_model(spec, config.init, torch.Generator().manual_seed(3)).to(device)
    opt = engine.make_adam(net.parameters(), config.lr, device, record_graphs)
    gen = torch.Generator(device).manual_seed(4)
    window = torch.zeros(len(engine.WINDOW), device=device)
    stepper = graphs.Stepper(
        sample=lambda: task.sample(config.batch_size, gen),
        grad=lambda x, y, unroll: engine.forward_backward(
            net, opt, task, x, y, net.method, net.method.loss_weights(config), unroll=unroll
        ),
        opt=opt,
        window=window,
        terms=engine.window_terms,
        generators=[gen],
        graphs=record_graphs,
        max_ponder=config.max_ponder if config.model == "act" else None,
        record=record,
    )
    return stepper, net, window, gen


def _train_side_by_side(config, record, steps=30):
    """An eager stepper and a graphed one whose first recorded ACT unroll is far too short."""
    eager, eager_net, eager_window, eager_gen = _stepper(config, False)
    graphed, net, window, gen = _stepper(config, True, record)
    for step in range(1, steps + 1):
        eager()
        if config.model == "act" and step == graphs.WARMUP + 1:
            graphed.unroll = 1  # far too short: the first recorded steps must be redone
        graphed()
        torch.testing.assert_close(graphed.last[1], eager.last[1], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(window, eager_window, rtol=1e-5, atol=1e-5)
    for a, b in zip(net.parameters(), eager_net.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    assert torch.equal(gen.get_state(), eager_gen.get_state())  # the same batches drawn
    assert graphed.records >= 1
    if config.model == "act":
        assert graphed.overflows >= 1 and graphed.unroll >= 2
        assert graphed.records >= 2  # recorded again with the longer unroll


@pytest.mark.parametrize("model", ["act", "repeat"])
def test_emulated_graphs_train_as_eager(tiny, model):
    _train_side_by_side(tiny(model=model, task_options={"bits": 8}, hidden=16), graphs.Emulated)


def test_act_warm_up_runs_the_recorded_computation(tiny):
    """After the first (exact, eager) step, ACT's warm-up steps run the autograd unroll the
    graph records, not the hand-written backward of the eager path; one that overflows U is
    redone exactly, and the warm-up trains as the eager stepper does."""
    config = tiny(model="act", task_options={"bits": 8}, hidden=16)
    eager, eager_net, _, _ = _stepper(config, False)
    stepper, net, _, _ = _stepper(config, True)
    unrolls = []
    grad = stepper.grad
    stepper.grad = lambda x, y, unroll: unrolls.append(unroll) or grad(x, y, unroll)
    for step in range(1, graphs.WARMUP + 1):
        if step == graphs.WARMUP:
            stepper.unroll = 1  # too short: this warm-up step must be redone, exactly
        eager()
        stepper()
        torch.testing.assert_close(stepper.last[1], eager.last[1], rtol=1e-5, atol=1e-6)
    assert unrolls[0] is None and unrolls[1] >= 1 and unrolls[2:4] == [1, None]
    assert stepper.records == 0 and stepper.overflows == 1 and stepper.unroll > 1
    for a, b in zip(net.parameters(), eager_net.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_unroll_follows_the_need_down(tiny):
    config = tiny(model="act", max_ponder=60)
    stepper, _, _, _ = _stepper(config, True)
    for _ in range(graphs.WARMUP):
        stepper()
    stepper.unroll = 60
    for _ in range(5):
        stepper()
    assert stepper.overflows == 0
    stepper.logged()
    assert stepper.unroll < 20  # the tiny net needs a few steps, not 60
    records = stepper.records
    stepper()
    assert stepper.records == records + 1
    # After a redo the window's largest N is still read and reset at the next log.
    stepper._graph, stepper.unroll = None, 1  # re-record with a far too short unroll
    stepper()
    assert stepper.overflows == 1 and stepper._graph is None
    stepper.logged()
    assert float(stepper._nmax) == 0.0


def test_a_failed_recording_stops_the_run_with_what_to_do(tiny, tmp_path, monkeypatch, capsys):
    class Broken(graphs.Emulated):
        def __init__(self, fn, generators):
            raise RuntimeError("operation not permitted when stream is capturing")

    monkeypatch.setattr(engine, "uses_graphs", lambda config, device: True)
    monkeypatch.setattr(graphs, "CudaGraph", Broken)
    config = tiny(model="repeat")
    with pytest.raises(graphs.RecordError, match="--no-cuda-graphs"):
        train.run(config, tmp_path / "run")
    args = ["train", "--task", "parity", "--bits", "4", "--hidden", "8", "--device", "cpu"]
    assert main([*args, "--no-progress", "--out", str(tmp_path / "cli")]) == 2
    assert capsys.readouterr().err.count("\n") == 1  # one line, no traceback
    monkeypatch.undo()
    train.run(dataclasses.replace(config, cuda_graphs=False), tmp_path / "run")
    assert rundir.read_metrics(tmp_path / "run")[-1]["step"] == config.steps


def _patch_graphs(monkeypatch):
    monkeypatch.setattr(engine, "uses_graphs", lambda config, device: True)
    monkeypatch.setattr(graphs, "CudaGraph", graphs.Emulated)


@pytest.mark.parametrize("model", ["act", "repeat", "pondernet"])
def test_runs_with_graphs_log_what_eager_runs_log(tiny, tmp_path, monkeypatch, model):
    config = tiny(model=model, steps=40, max_ponder=6 if model == "pondernet" else None)
    train.run(config, tmp_path / "eager")
    configs = [dataclasses.replace(config, seed=s) for s in (0, 1)]
    train.run_group(configs, [tmp_path / "e-eager0", tmp_path / "e-eager1"])
    _patch_graphs(monkeypatch)
    train.run(config, tmp_path / "graphs")
    train.run_group(configs, [tmp_path / "e-graphs0", tmp_path / "e-graphs1"])
    for a, b in [("eager", "graphs"), ("e-eager0", "e-graphs0"), ("e-eager1", "e-graphs1")]:
        want, got = rundir.read_metrics(tmp_path / a), rundir.read_metrics(tmp_path / b)
        assert [r["step"] for r in got] == [10, 20, 30, 40]
        for r, s in zip(got, want, strict=True):
            for k in ("loss", "train_accuracy", "ponder_cost", "eval_accuracy"):
                assert r[k] == pytest.approx(s[k], rel=1e-4, abs=1e-5), (a, k, r["step"])


def test_host_data_catches_what_capture_refuses():
    x = torch.ones(3)
    host = [
        lambda: torch.tensor([1.0]),
        lambda: torch.as_tensor(0.2, device=x.device),  # pondernet.log_prior before the fix
        lambda: x.new_tensor([1]),
        lambda: x.to(x.device),
        lambda: x.to(device="cpu"),
        lambda: torch.as_tensor(x, device="cpu"),
    ]
    with graphs.HostData():
        for make in host:
            with pytest.raises(graphs.CaptureError):
                make()
        # operands and fills are kernel arguments, not copies: they record
        x * 0.5, torch.where(x > 0, 0.0, x), torch.full((2,), 0.3), x.to(torch.float64)
        torch.zeros(3).copy_(x), torch.as_tensor(x), x.new_zeros(2)


@pytest.mark.parametrize("k", [1, 3])
@pytest.mark.parametrize("model", ["act", "repeat", "rnn", "pondernet"])
@pytest.mark.parametrize(
    "task, fields",
    [
        ("parity", {"task_options": {"bits": 4}}),
        ("addition", {"task_options": {"numbers": 2, "digits": 2}, "batch_size": 4}),
    ],
)
def test_recorded_steps_make_no_tensor_from_host_data(tiny, monkeypatch, task, fields, model, k):
    """The step a GPU records, for every method and engine, replayed under ``HostData``: it
    fails on a tensor made from a Python number (as ``log_prior``'s was for one PonderNet run)
    or a CPU tensor moved to the device, which CUDA graph capture refuses."""
    _patch_graphs(monkeypatch)
    # the paths a GPU takes: torch's tanh, PonderNet's autograd unroll
    monkeypatch.setattr(pondernet, "HAND_WRITTEN_PONDERNET", set())
    monkeypatch.setattr(ponder_tanh, "_SMALL", 1 << 60)
    replays = []
    replay = graphs.Emulated.replay
    monkeypatch.setattr(graphs.Emulated, "replay", lambda g: replays.append(g) or replay(g))
    config = tiny(task=task, model=model, max_ponder=6, lambda_p=0.2, **fields)
    configs = [dataclasses.replace(config, seed=s) for s in range(k)]
    eng = train._engine(configs, [None] * k, torch.device("cpu"), stacked=k > 1)
    for _ in range(graphs.WARMUP + 3):
        eng.stepper()
    assert eng.stepper.records >= 1 and len(replays) >= 3  # the recorded step ran, guarded


def test_capturable_checkpoints_resume_without_it(tiny, tmp_path, monkeypatch):
    config = tiny(model="act", steps=20)
    _patch_graphs(monkeypatch)
    train.run(config, tmp_path / "run")
    ckpt = rundir.load_checkpoint(tmp_path / "run")
    assert ckpt["optimizer"]["param_groups"][0]["capturable"]
    monkeypatch.undo()
    train.run(dataclasses.replace(config, steps=30), tmp_path / "run")  # eager, on the CPU
    assert rundir.read_metrics(tmp_path / "run")[-1]["step"] == 30


# ---- on a GPU


@needs_cuda
@pytest.mark.parametrize("model", ["act", "repeat"])
def test_cuda_graph_run_equals_eager_and_resumes(tiny, tmp_path, model):
    config = tiny(model=model, device="cuda", steps=40, task_options={"bits": 8})
    train.run(dataclasses.replace(config, cuda_graphs=False), tmp_path / "eager")
    train.run(dataclasses.replace(config, steps=20), tmp_path / "graphs")
    train.run(config, tmp_path / "graphs")  # resumes at step 20
    want, got = rundir.read_metrics(tmp_path / "eager"), rundir.read_metrics(tmp_path / "graphs")
    assert [r["step"] for r in got] == [10, 20, 30, 40]
    for r, s in zip(got, want, strict=True):
        for k in ("loss", "train_accuracy", "ponder_cost", "eval_accuracy"):
            assert r[k] == pytest.approx(s[k], rel=1e-4, abs=1e-5), (k, r["step"])


@needs_cuda
@pytest.mark.parametrize("model", ["act", "repeat"])
def test_cuda_graphs_train_as_eager_with_redone_steps(tiny, model):
    config = tiny(model=model, task_options={"bits": 8}, hidden=16, device="cuda")
    _train_side_by_side(config, graphs.CudaGraph)


@needs_cuda
def test_cuda_graph_ensemble_equals_eager(tiny, tmp_path):
    configs = [tiny(model="act", device="cuda", seed=s, steps=30) for s in range(3)]
    train.run_group(configs, [tmp_path / f"g{k}" for k in range(3)])
    eager = [dataclasses.replace(c, cuda_graphs=False) for c in configs]
    train.run_group(eager, [tmp_path / f"e{k}" for k in range(3)])
    for k in range(3):
        want, got = rundir.read_metrics(tmp_path / f"e{k}"), rundir.read_metrics(tmp_path / f"g{k}")
        for r, s in zip(got, want, strict=True):
            assert r["loss"] == pytest.approx(s["loss"], rel=1e-4, abs=1e-5)


@needs_cuda
@pytest.mark.parametrize("k", [1, 3])
@pytest.mark.parametrize("model", ["act", "repeat", "rnn", "pondernet"])
def test_cuda_graphs_record_every_method(tiny, model, k):
    """What the CPU test above checks with ``HostData``, with real CUDA graph capture."""
    config = tiny(model=model, device="cuda", max_ponder=6, lambda_p=0.2)
    configs = [dataclasses.replace(config, seed=s) for s in range(k)]
    eng = train._engine(configs, [None] * k, torch.device("cuda"), stacked=k > 1)
    for _ in range(graphs.WARMUP + 3):
        eng.stepper()
    torch.cuda.synchronize()
    assert eng.stepper.records >= 1
