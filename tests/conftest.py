import pytest

from ponder.config import RunConfig, resolve


@pytest.fixture
def tiny():
    """A resolved config that trains in about a second on the CPU."""

    def make(**overrides):
        base = dict(
            task="parity", task_options={"bits": 4}, model="act", hidden=8, steps=60,
            log_every=10, checkpoint_every=2, eval_size=32, batch_size=16, device="cpu",
            progress=False, tau=0.01,
        )  # fmt: skip
        base.update(overrides)
        return resolve(RunConfig(**base))

    return make
