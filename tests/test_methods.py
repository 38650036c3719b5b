"""One test over the table of methods (``ponder.methods``), parametrized by method: what every
method must do for the rest of ponder to work with it."""

from __future__ import annotations

import pytest
import torch

from ponder.config import ConfigError, RunConfig, resolve
from ponder.methods import METHODS, UnknownMethod, method
from ponder.methods.naive import copy_weights, naive_model
from ponder.training import engine
from ponder.training.ensemble import Ensemble
from ponder.training.models import TaskNet, build_model

pytestmark = pytest.mark.usefixtures("float64")  # exact comparisons (conftest.py)
NAMES = list(METHODS)
K = 3


def _configs(name: str, cell: str, **fields) -> list[RunConfig]:
    """K configs of one method that differ in seed and in each method's member fields."""
    knobs = [
        {"tau": 0.01, "lambda_p": 0.2, "beta": 0.01},
        {"tau": 0.005, "lambda_p": 0.3, "beta": 0.02},
        {"tau": 0.001, "lambda_p": 0.5, "beta": 0.05},
    ]
    base = {"task": "addition", "task_options": {"numbers": 3, "digits": 2}}
    base.update(model=name, cell=cell, hidden=10, rho=3, max_ponder=6, device="cpu", **fields)
    return [resolve(RunConfig(**base, seed=k, **knobs[k])) for k in range(K)]


def _halting_varies(net: TaskNet) -> None:
    """Halting weights far from zero, so that samples and tokens halt at different steps."""
    halting = getattr(net.core, "halting", None)
    if halting is not None:
        with torch.no_grad():
            halting.weight.normal_(0, 1.0, generator=torch.Generator().manual_seed(7))
            halting.bias.fill_(-1.0)


@pytest.mark.parametrize("cell", ["rnn", "lstm"])
@pytest.mark.parametrize("name", NAMES)
def test_k_stacked_runs_equal_k_single_runs(name, cell, tanh_form):
    """Values and gradients: the stacked forward and the one-run forward, the method's loss
    with each run's own weights (``engine.loss_weights``: one run's floats, K runs' tensors)."""
    spec = method(name)
    configs = _configs(name, cell)
    task, model_spec = engine.build(configs[0])
    nets = [build_model(model_spec, "tf", torch.Generator().manual_seed(k)) for k in range(K)]
    for net in nets:
        _halting_varies(net)
    ens = Ensemble(nets)
    batches = [task.sample(5, torch.Generator().manual_seed(10 + k)) for k in range(K)]
    x = torch.stack([b[0] for b in batches]).double()
    y = torch.stack([b[1] for b in batches])
    tokens = task.tokens(x, y)
    u = engine.halting_uniforms(configs[0], (K, *x.shape[1:3]), torch.Generator().manual_seed(3))
    logits, info = ens(x, uniforms=u)
    weights = engine.loss_weights(configs, torch.device("cpu"))
    loss, _ = spec.loss(task, logits, y, {**info}, weights, "mean", tokens)
    loss.mean(-1).sum().backward()
    if spec.adaptive:  # the comparison covers halting that varies
        assert len(set(info["ponder_steps"].flatten().tolist())) > 1
    for k, net in enumerate(nets):
        want, want_info = net(x[k], uniforms=None if u is None else u[k])
        torch.testing.assert_close(logits[k], want)
        for key in ("ponder_steps", "ponder_cost", "repetitions"):
            torch.testing.assert_close(info[key][k], want_info[key])
        w = engine.loss_weights([configs[k]], torch.device("cpu"))
        want_loss, _ = spec.loss(task, want, y[k], want_info, w, "mean", tokens[k])
        torch.testing.assert_close(loss[k], want_loss)
        want_loss.mean().backward()
        for pname, p in net.named_parameters():
            torch.testing.assert_close(ens.p(pname).grad[k], p.grad, msg=f"{name}: {pname}")


@pytest.mark.parametrize("name", NAMES)
def test_loss_equals_the_naive_reference(name):
    """The method's network and loss against its naive reference (``MethodSpec.naive``): the
    same loss and the same gradients from the same weights."""
    spec = method(name)
    if spec.naive is None:
        pytest.skip(f"{name} has no naive reference")
    config = resolve(
        RunConfig(
            task="parity",
            task_options={"bits": 6},
            model=name,
            hidden=12,
            tau=0.05,
            rho=3,
            max_ponder=5,
            halting_bias=-1.0,
            device="cpu",
        )  # fmt: skip
    )
    task, model_spec = engine.build(config)
    net = build_model(model_spec, config.init, torch.Generator().manual_seed(2))
    naive = copy_weights(naive_model(config, task, spec.naive), net)
    x, y = task.sample(9, torch.Generator().manual_seed(1))
    x = x.double()
    u = engine.halting_uniforms(config, x.shape[:2], torch.Generator().manual_seed(4))
    logits, info = net(x, uniforms=u)
    weights = spec.loss_weights(config)
    loss = spec.loss(task, logits, y, info, weights, config.ponder_loss, task.tokens(x, y))[0]
    n_logits, extra = naive(x)
    n_loss = spec.naive.loss(task, n_logits, extra, y, config)
    torch.testing.assert_close(n_loss, loss.mean())
    loss.mean().backward()
    n_loss.backward()
    torch.testing.assert_close(naive.out.weight.grad, net.readout.weight.grad)
    if spec.adaptive:
        assert info["ponder_steps"].max() > 1  # the halting really varies
        torch.testing.assert_close(naive.halt.weight.grad, net.core.halting.weight.grad)


def test_names_labels_and_figures_are_unique():
    specs = list(METHODS.values())
    assert len({s.title for s in specs}) == len(specs)
    assert len({s.color for s in specs}) == len(specs)
    with_knob = [s for s in specs if s.knob is not None]
    stems = [s.figure or s.knob.symbol for s in with_knob]
    assert len(set(stems)) == len(stems)  # one figure file per method
    labels = [s.label_at(v) for s in with_knob for v in (1, 2)]
    assert len(set(labels)) == len(labels)
    for s in specs:
        assert set(s.per_member) <= set(s.fields)  # a member field is one the method reads
        assert set(s.defaults) <= set(s.fields)
        assert s.adaptive == (s.fixed_steps is None)


def test_an_unknown_method_raises_where_it_is_named():
    with pytest.raises(UnknownMethod, match=r"unknown model 'halt' \(known: rnn, act, repeat"):
        method("halt")
    with pytest.raises(ConfigError, match="unknown model 'halt'"):
        resolve(RunConfig(model="halt"))
    with pytest.raises(UnknownMethod):
        RunConfig(model="halt").identity()  # never another method's identity
