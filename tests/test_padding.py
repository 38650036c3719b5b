"""ACT's ponder cost and PonderNet's KL, and the logged ponder statistics, are means over a
sequence's own tokens: padding a batch further changes none of them (``Task.tokens``)."""

from __future__ import annotations

import pytest
import torch

from ponder import tasks
from ponder.config import RunConfig, resolve
from ponder.tasks.base import IGNORE
from ponder.training import engine, train
from ponder.training.models import build_model

LENGTH = 4  # every sequence of the batch has 4 tokens; padded to 10, or not at all


def _batch(n: int = 6) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` logic sequences of exactly LENGTH tokens, as a max_length 10 batch pads them."""
    task = tasks.make("logic", max_length=10)
    x, y = task.sample(400, torch.Generator().manual_seed(0))
    keep = ((y != IGNORE).sum(-1) == LENGTH).nonzero().flatten()[:n]
    assert len(keep) == n
    return x[keep], y[keep]


def _net(model: str, **knobs: object):
    config = resolve(
        RunConfig(task="logic", model=model, hidden=16, device="cpu", progress=False, **knobs)
    )
    task, spec = engine.build(config)
    return config, task, build_model(spec, config.init, torch.Generator().manual_seed(1))


def _step(config, task, net, x, y, uniforms):
    opt = engine.make_adam(net.parameters(), 1e-3, torch.device("cpu"), False)
    loss, task_loss, _, info = engine.forward_backward(
        net, opt, task, x, y, net.method, engine.loss_weights([config], torch.device("cpu")),
        config.ponder_loss, uniforms=uniforms,
    )  # fmt: skip
    grads = [p.grad.clone() for p in net.parameters()]
    return loss, grads, engine.window_terms(loss, info)


@pytest.mark.parametrize(
    "model, knobs",
    [("act", {"tau": 0.01}), ("pondernet", {"lambda_p": 0.3, "max_ponder": 6})],
)
def test_padding_changes_no_loss_gradient_or_logged_value(model: str, knobs: dict) -> None:
    config, task, net = _net(model, **knobs)
    x, y = _batch()
    assert task.tokens(x, y).sum(-1).tolist() == [LENGTH] * len(y)
    uniforms = None
    if model == "pondernet":
        uniforms = torch.rand(
            len(y), 10, config.max_ponder, generator=torch.Generator().manual_seed(2)
        )
    padded = _step(config, task, net, x, y, uniforms)
    cut = uniforms[:, :LENGTH] if uniforms is not None else None
    unpadded = _step(config, task, net, x[:, :LENGTH], y[:, :LENGTH], cut)
    torch.testing.assert_close(padded[0], unpadded[0], rtol=1e-6, atol=1e-7)
    for a, b in zip(padded[1], unpadded[1], strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(padded[2], unpadded[2], rtol=1e-6, atol=1e-7)
    # and the padding is real work the old means counted: ACT ponders on it too
    with torch.no_grad():
        _, info = net(x)
    assert float(engine.token_mean(info["ponder_cost"], None, 0)) != pytest.approx(
        float(padded[2][1].detach())
    )


def test_sort_tokens_are_the_reading_and_answering_steps() -> None:
    task = tasks.make("sort", max_length=5, min_length=2)
    x, y = task.sample(64, torch.Generator().manual_seed(0))
    length = (x[..., 1] != 0).float().argmax(-1) + 1  # the end flag's position
    assert torch.equal(task.tokens(x, y).sum(-1), 2 * length)
    # every target lies on a token
    assert bool(((y != IGNORE) <= task.tokens(x, y)).all())


def test_evaluation_means_are_over_tokens() -> None:
    """``train.evaluate``'s logged steps are the same for a padded and an unpadded batch."""
    config, task, net = _net("act", tau=0.01)
    x, y = _batch()
    eng = train.Single(config, None, torch.device("cpu"))
    padded = train.evaluate(eng, task, x, y)
    unpadded = train.evaluate(eng, task, x[:, :LENGTH], y[:, :LENGTH])
    for key in ("eval_ponder_cost", "eval_steps", "eval_repetitions"):
        assert padded[key] == pytest.approx(unpadded[key], rel=1e-6), key
