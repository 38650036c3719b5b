import pytest
import torch

from ponder.config import RunConfig, resolve


@pytest.fixture
def float64():
    """Exact comparisons with a reference need double precision; restored after each test."""
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(old)


@pytest.fixture
def tf32_switches(monkeypatch):
    """PyTorch's two process-wide TF32 switches, set to its defaults (matmuls off, cuDNN on)
    for the test and restored after it. Returns ``spy(module, name)``: it wraps that function
    so that each call records the two switches as they were, into the list it returns."""
    matmul, cudnn = torch.backends.cuda.matmul, torch.backends.cudnn
    old = matmul.allow_tf32, cudnn.allow_tf32
    matmul.allow_tf32, cudnn.allow_tf32 = False, True

    def spy(module, name):
        seen, inner = [], getattr(module, name)

        def wrapped(*args, **kwargs):
            seen.append((matmul.allow_tf32, cudnn.allow_tf32))
            return inner(*args, **kwargs)

        monkeypatch.setattr(module, name, wrapped)
        return seen

    yield spy
    matmul.allow_tf32, cudnn.allow_tf32 = old


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


TINY_GRID = """
name: tiny
base:
  task: parity
  task_options: {bits: 4}
  hidden: 8
  batch_size: 16
  log_every: 10
  eval_size: 32
  device: cpu
seeds: 2
budget: 40
stop_when_solved: false
axes:
  - {model: rnn}
  - {model: act, tau: [0.1, 0.01]}
  - {model: repeat, rho: [2, 3]}
"""


@pytest.fixture(scope="session")
def tiny_grid():
    """A grid of five tiny configurations (rnn, act x2 taus, repeat x2 rhos), 2 seeds, 40 steps."""
    return TINY_GRID


@pytest.fixture(params=["torch", "sigmoid"])
def tanh_form(request, monkeypatch):
    """Run a test with each form of tanh (``ponder.tanh``): torch's kernel everywhere, or the
    sigmoid form at every size (its threshold is 0), so small test networks cover both."""
    from ponder.kernels import tanh as tanh_mod

    small = 0 if request.param == "sigmoid" else 1 << 60
    monkeypatch.setattr(tanh_mod, "_SMALL", small)
    monkeypatch.setattr(tanh_mod, "_SMALL_NO_GRAD", small)
    return request.param
