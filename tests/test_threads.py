"""ponder.threads: one thread for networks too small for a second, more only where they pay
and cores are free; --threads overrides; the run records what it used."""

import json

import pytest
import torch

from ponder.cli import main
from ponder.training import threads

PARITY = ("rnn", 128, 65, 128)  # the Fojo parity network: cell, hidden, inputs + 1, batch
ADDITION = ("lstm", 512, 51, 32)


@pytest.fixture(autouse=True)
def keep_threads(monkeypatch):
    """Each test starts without OMP_NUM_THREADS and leaves PyTorch's threads as it found them."""
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    kept = torch.get_num_threads()
    yield
    torch.set_num_threads(kept)


def _machine(monkeypatch, cores: int, busy: float | None):
    monkeypatch.setattr(threads, "usable_cpus", lambda: cores)

    def sample(seconds: float = 0.0) -> float:
        if busy is None:
            raise AssertionError("the load was looked at")
        return busy

    monkeypatch.setattr(threads, "busy_cores", sample)


def test_small_networks_take_one_thread_whatever_the_load(monkeypatch):
    _machine(monkeypatch, 16, None)  # the load is not even sampled: results cannot depend on it
    assert threads.choose(*PARITY).threads == 1
    assert threads.choose("lstm", 128, 103, 16).threads == 1  # logic's network


@pytest.mark.parametrize(
    "cores, busy, want",
    [(2, 0.0, 2), (2, 0.2, 2), (2, 1.0, 1), (2, 2.0, 1), (16, 0.0, 4), (16, 14.0, 2)],
)
def test_larger_networks_take_the_free_cores_that_pay(monkeypatch, cores, busy, want):
    _machine(monkeypatch, cores, busy)
    got = threads.choose(*ADDITION)
    assert got.threads == want and got.busy == busy
    assert "cores free" in got.why


def test_overrides_and_the_gpu(monkeypatch):
    _machine(monkeypatch, 2, None)
    assert threads.choose(*ADDITION, override=3) == threads.Choice(3, "--threads")
    assert threads.choose(*ADDITION, device="cuda").threads == 1
    monkeypatch.setenv("OMP_NUM_THREADS", "5")
    assert threads.choose(*PARITY).threads == 5
    assert threads.choose(*PARITY, override=2).threads == 2  # the flag wins


def test_busy_cores_is_a_share_of_the_usable_cores():
    busy = threads.busy_cores(0.05)
    assert 0.0 <= busy <= threads.usable_cpus() + 1e-9


def _train(tmp_path, *flags):
    args = ["train", "--task", "parity", "--bits", "4", "--hidden", "8", "--batch-size", "8",
            "--steps", "10", "--log-every", "5", "--eval-size", "8", "--device", "cpu",
            "--no-progress", "--out", str(tmp_path), *flags]  # fmt: skip
    assert main(args) == 0
    return json.loads((tmp_path / "engine.json").read_text())[-1]["threads"]


def test_train_records_the_threads_it_used(tmp_path, monkeypatch, capsys):
    _machine(monkeypatch, 2, None)
    assert _train(tmp_path / "a") == 1
    assert "threads: 1 (rnn of 8 x batch 8" in capsys.readouterr().out
    assert _train(tmp_path / "b", "--threads", "2") == 2
    assert "threads: 2 (--threads)" in capsys.readouterr().out
    assert main(["train", "--threads", "0"]) == 2  # bad input: one line, exit 2
