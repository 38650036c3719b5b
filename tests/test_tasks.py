"""Tests of the tasks against slow, independent per-sample decoders written in plain Python.

Each decoder reads one sample's inputs back into numbers / bits / gates, recomputes its targets
and difficulty from the papers' definitions (SPEC.md, "The tasks"), and checks the structure of
the encoding (one-hot chunks, zero padding, end flags) on the way.
"""

from __future__ import annotations

import math
from collections import Counter

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from ponder.tasks import IGNORE, TASKS, Addition, Logic, Parity, Sort, Task, make

SEEDS = st.integers(0, 2**32 - 1)
FEW = settings(max_examples=60, deadline=None)


def gen(seed: int, device: str = "cpu") -> torch.Generator:
    return torch.Generator(device=device).manual_seed(seed)


def one_hot_index(chunk: list[float]) -> int | None:
    """Index of the single 1 in ``chunk``, None if it is all zero; fails on anything else."""
    if all(v == 0 for v in chunk):
        return None
    assert sorted(chunk) == [0.0] * (len(chunk) - 1) + [1.0], chunk
    return chunk.index(1.0)


# ---------------------------------------------------------------- decoders, one sample each


def decode_parity(token: list[float]) -> tuple[int, int]:
    """(target, k) of one parity vector, checking the first-k-positions layout."""
    assert set(token) <= {-1.0, 0.0, 1.0}
    k = sum(v != 0 for v in token)
    assert k >= 1
    assert all(v != 0 for v in token[:k]) and all(v == 0 for v in token[k:])
    return token.count(1.0) % 2, k


def decode_addition(tokens: list[list[float]], digits: int) -> tuple[list[list[int]], list[int]]:
    """(targets, difficulty) of one addition sequence via decimal strings."""
    width = digits + 1
    total = 0
    targets, lengths = [], []
    for step, token in enumerate(tokens):
        assert len(token) == 10 * digits
        codes = [one_hot_index(token[10 * j : 10 * j + 10]) for j in range(digits)]
        text = "".join(str(c) for c in codes if c is not None)
        assert 1 <= len(text) <= digits
        assert all(c is not None for c in codes[: len(text)])  # digits fill a prefix
        total += int(text)
        lengths.append(len(text))
        if step == 0:
            targets.append([IGNORE] * width)
        else:
            written = [int(ch) for ch in str(total)]
            assert len(written) <= width
            targets.append(written + [10] * (width - len(written)))
    return targets, lengths


# Truth tables, from SPEC.md: P = b_i, Q = b_{i-1}; written out as dicts on purpose, independent of
# the string encoding the implementation uses.
T_, F_ = 1, 0
TRUTH: dict[str, dict[tuple[int, int], int]] = {
    "NOR": {(T_, T_): F_, (T_, F_): F_, (F_, T_): F_, (F_, F_): T_},
    "Xq": {(T_, T_): F_, (T_, F_): F_, (F_, T_): T_, (F_, F_): F_},
    "ABJ": {(T_, T_): F_, (T_, F_): T_, (F_, T_): F_, (F_, F_): F_},
    "XOR": {(T_, T_): F_, (T_, F_): T_, (F_, T_): T_, (F_, F_): F_},
    "NAND": {(T_, T_): F_, (T_, F_): T_, (F_, T_): T_, (F_, F_): T_},
    "AND": {(T_, T_): T_, (T_, F_): F_, (F_, T_): F_, (F_, F_): F_},
    "XNOR": {(T_, T_): T_, (T_, F_): F_, (F_, T_): F_, (F_, F_): T_},
    "if/then": {(T_, T_): T_, (T_, F_): F_, (F_, T_): T_, (F_, F_): T_},
    "then/if": {(T_, T_): T_, (T_, F_): T_, (F_, T_): F_, (F_, F_): T_},
    "OR": {(T_, T_): T_, (T_, F_): T_, (F_, T_): T_, (F_, F_): F_},
}
GATE_ORDER = ["NOR", "Xq", "ABJ", "XOR", "NAND", "AND", "XNOR", "if/then", "then/if", "OR"]


def decode_logic(tokens: list[list[float]], gates: int) -> tuple[list[int], list[int], int]:
    """(targets, difficulty, length) of one logic sequence, tracking b0 across tokens."""
    length = sum(any(v != 0 for v in token[2:]) for token in tokens)
    assert length >= 1
    targets, counts = [], []
    b0 = None
    for step, token in enumerate(tokens):
        if step >= length:
            assert all(v == 0 for v in token)
            targets.append(IGNORE)
            counts.append(0)
            continue
        assert token[0] in (0.0, 1.0) and token[1] in (0.0, 1.0)
        if step == 0:
            b0 = int(token[0])
        else:
            assert token[0] == 0.0  # the carried bit is hidden
        codes = [one_hot_index(token[2 + 10 * j : 12 + 10 * j]) for j in range(gates)]
        used = [c for c in codes if c is not None]
        assert 1 <= len(used) and all(c is not None for c in codes[: len(used)])
        older, newer = b0, int(token[1])
        for code in used:
            older, newer = newer, TRUTH[GATE_ORDER[code]][(newer, older)]
        targets.append(newer)
        counts.append(len(used))
        b0 = newer
    return targets, counts, length


def decode_sort(tokens: list[list[float]], max_length: int) -> tuple[list[int], list[int], int]:
    """(targets, difficulty, length) of one sort sequence via Python's sorted()."""
    flags = [i for i, (_, flag) in enumerate(tokens) if flag != 0]
    assert len(flags) == 1 and tokens[flags[0]][1] == 1.0
    length = flags[0] + 1
    values = [value for value, _ in tokens[:length]]
    for token in tokens[length:]:
        assert token == [0.0, 0.0]  # blank answer tokens, then padding
    order = sorted(range(length), key=lambda i: values[i])
    targets = [IGNORE] * length + order + [IGNORE] * (2 * max_length - 2 * length)
    difficulty = [length] * (2 * length) + [0] * (2 * max_length - 2 * length)
    return targets, difficulty, length


# ---------------------------------------------------------------- shapes, dtypes, devices

DEFAULT_SHAPES = {
    "parity": ((1, 64), (1,), 1),
    "addition": ((5, 50), (5, 6), 66),
    "logic": ((10, 102), (10,), 1),
    "sort": ((30, 2), (30,), 15),
}


@pytest.mark.parametrize("name", sorted(TASKS))
def test_default_shapes_dtypes_attributes(name: str) -> None:
    task = make(name)
    assert isinstance(task, Task) and task.name == name and type(task) is TASKS[name]
    inputs, targets = task.sample(7, gen(0))
    in_shape, target_shape, output_size = DEFAULT_SHAPES[name]
    assert inputs.shape == (7, *in_shape) and targets.shape == (7, *target_shape)
    assert inputs.dtype == torch.float32 and targets.dtype == torch.int64
    assert (task.seq_len, task.input_size) == in_shape
    assert task.output_size == output_size
    assert inputs.device == targets.device == torch.device("cpu")
    difficulty = task.difficulty(inputs)
    assert difficulty.shape == (7, task.seq_len) and difficulty.dtype == torch.int64


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("name", sorted(TASKS))
def test_cuda_sampling_stays_on_device(name: str) -> None:
    task = make(name)
    g = gen(3, "cuda")
    inputs, targets = task.sample(64, g)
    assert inputs.is_cuda and targets.is_cuda and task.difficulty(inputs).is_cuda
    logits = torch.zeros(*targets.shape[:2], task.output_size, device="cuda")
    assert task.loss(logits, targets).is_cuda and task.correct(logits, targets).is_cuda
    again = task.sample(64, gen(3, "cuda"))
    assert torch.equal(inputs, again[0]) and torch.equal(targets, again[1])


# ---------------------------------------------------------------- targets vs decoders


@FEW
@given(seed=SEEDS, bits=st.integers(1, 70))
def test_parity_matches_decoder(seed: int, bits: int) -> None:
    task = Parity(bits=bits)
    inputs, targets = task.sample(48, gen(seed))
    difficulty = task.difficulty(inputs).tolist()
    for token, target, diff in zip(
        inputs[:, 0].tolist(), targets.tolist(), difficulty, strict=True
    ):
        expected, k = decode_parity(token)
        assert target == [expected] and diff == [k]


@FEW
@given(seed=SEEDS, numbers=st.integers(2, 10), digits=st.integers(1, 7))
def test_addition_matches_decoder(seed: int, numbers: int, digits: int) -> None:
    task = Addition(numbers=numbers, digits=digits)
    inputs, targets = task.sample(32, gen(seed))
    assert targets.shape == (32, numbers, digits + 1)
    difficulty = task.difficulty(inputs).tolist()
    for tokens, target, diff in zip(inputs.tolist(), targets.tolist(), difficulty, strict=True):
        expected, lengths = decode_addition(tokens, digits)
        assert target == expected and diff == lengths


def test_addition_sums_use_the_extra_place() -> None:
    # Ten one-digit numbers: running sums reach two places, the digits + 1 the target holds.
    task = Addition(numbers=10, digits=1)
    inputs, targets = task.sample(4000, gen(1))
    for tokens, target in zip(inputs[:200].tolist(), targets[:200].tolist(), strict=True):
        assert target == decode_addition(tokens, 1)[0]
    assert (targets[:, 1:] == 10).any() and (targets[:, 1:, 1] != 10).any()


@FEW
@given(seed=SEEDS, max_length=st.integers(1, 12), gates=st.integers(1, 12))
def test_logic_matches_decoder(seed: int, max_length: int, gates: int) -> None:
    task = Logic(max_length=max_length, gates=gates)
    inputs, targets = task.sample(32, gen(seed))
    assert inputs.shape == (32, max_length, 2 + 10 * gates)
    difficulty = task.difficulty(inputs).tolist()
    for tokens, target, diff in zip(inputs.tolist(), targets.tolist(), difficulty, strict=True):
        expected, counts, _ = decode_logic(tokens, gates)
        assert target == expected and diff == counts


def test_logic_truth_tables_each_gate_alone() -> None:
    # One gate per token and one-token sequences: every (gate, b1, b0) combination must show up
    # and give exactly the tabulated output.
    task = Logic(max_length=1, gates=1)
    inputs, targets = task.sample(2000, gen(5))
    seen = set()
    for token, (target,) in zip(inputs[:, 0].tolist(), targets.tolist(), strict=True):
        gate = GATE_ORDER[one_hot_index(token[2:12])]
        p, q = int(token[1]), int(token[0])
        assert target == TRUTH[gate][(p, q)]
        seen.add((gate, p, q))
    assert len(seen) == 40


@FEW
@given(
    seed=SEEDS,
    max_length=st.integers(1, 20),
    min_fraction=st.floats(0, 1),
)
def test_sort_matches_decoder(seed: int, max_length: int, min_fraction: float) -> None:
    min_length = 1 + round(min_fraction * (max_length - 1))
    task = Sort(max_length=max_length, min_length=min_length)
    inputs, targets = task.sample(32, gen(seed))
    assert inputs.shape == (32, 2 * max_length, 2) and task.output_size == max_length
    difficulty = task.difficulty(inputs).tolist()
    for tokens, target, diff in zip(inputs.tolist(), targets.tolist(), difficulty, strict=True):
        expected, expected_diff, length = decode_sort(tokens, max_length)
        assert min_length <= length <= max_length
        assert target == expected and diff == expected_diff


def test_sort_difficulty_counts_a_zero_value() -> None:
    task = Sort(max_length=4, min_length=4)
    inputs, _ = task.sample(2, gen(0))
    inputs[:, 1, 0] = 0.0
    assert task.difficulty(inputs).tolist() == [[4] * 8, [4] * 8]


# ---------------------------------------------------------------- randomness


@pytest.mark.parametrize("name", sorted(TASKS))
def test_deterministic_per_seed_and_different_across_seeds(name: str) -> None:
    task = make(name)
    a = task.sample(16, gen(11))
    b = task.sample(16, gen(11))
    c = task.sample(16, gen(12))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(a[0], c[0])
    # Successive batches from one generator differ too.
    g = gen(11)
    first, second = task.sample(16, g), task.sample(16, g)
    assert not torch.equal(first[0], second[0])


@pytest.mark.parametrize("name", sorted(TASKS))
def test_global_rng_untouched(name: str) -> None:
    torch.manual_seed(123)
    expected = torch.rand(5)
    torch.manual_seed(123)
    make(name).sample(8, gen(0))
    assert torch.equal(torch.rand(5), expected)


def roughly_uniform(counts: Counter, values: range, total: int) -> None:
    assert set(counts) == set(values), sorted(counts)
    expected = total / len(values)
    for value in values:
        assert 0.8 * expected < counts[value] < 1.2 * expected, (value, counts[value], expected)


def test_parity_distribution() -> None:
    inputs, targets = Parity().sample(20000, gen(2))
    k = Counter((inputs[:, 0] != 0).sum(-1).tolist())
    roughly_uniform(k, range(1, 65), 20000)
    nonzero = inputs[inputs != 0]
    assert abs((nonzero == 1).float().mean().item() - 0.5) < 0.01
    assert abs(targets.float().mean().item() - 0.5) < 0.02


def test_addition_distribution() -> None:
    task = Addition()
    inputs, _ = task.sample(4000, gen(3))
    roughly_uniform(Counter(task.difficulty(inputs).flatten().tolist()), range(1, 6), 20000)
    chunks = inputs.reshape(-1, 10)
    chunks = chunks[chunks.sum(-1) > 0]
    roughly_uniform(Counter(chunks.argmax(-1).tolist()), range(10), len(chunks))


def test_logic_distribution() -> None:
    task = Logic()
    inputs, targets = task.sample(6000, gen(4))
    lengths = (targets != IGNORE).sum(-1)
    roughly_uniform(Counter(lengths.tolist()), range(1, 11), 6000)
    counts = task.difficulty(inputs)
    real = targets != IGNORE
    roughly_uniform(Counter(counts[real].tolist()), range(1, 11), int(real.sum()))
    chunks = inputs[..., 2:].reshape(-1, 10)
    chunks = chunks[chunks.sum(-1) > 0]
    roughly_uniform(Counter(chunks.argmax(-1).tolist()), range(10), len(chunks))
    assert abs(inputs[:, :, 1][real].mean().item() - 0.5) < 0.02  # b1
    assert abs(inputs[:, 0, 0].mean().item() - 0.5) < 0.03  # the first token's b0


def test_sort_distribution() -> None:
    task = Sort()
    inputs, _ = task.sample(7000, gen(5))
    lengths = inputs[..., 1].argmax(-1) + 1
    roughly_uniform(Counter(lengths.tolist()), range(2, 16), 7000)
    values = inputs[:, :15, 0][torch.arange(15) < lengths[:, None]]
    assert abs(values.mean().item()) < 0.02 and abs(values.std().item() - 1) < 0.02


# ---------------------------------------------------------------- loss


def bce(logit: float, target: int) -> float:
    return math.log1p(math.exp(-logit)) if target == 1 else math.log1p(math.exp(logit))


def ce(logits: list[float], target: int) -> float:
    return math.log(sum(math.exp(v) for v in logits)) - logits[target]


def test_parity_loss_by_hand() -> None:
    task = Parity(bits=4)
    logits = torch.tensor([[[2.0]], [[-1.0]], [[0.5]]])
    targets = torch.tensor([[1], [1], [0]])
    expected = [bce(2.0, 1), bce(-1.0, 1), bce(0.5, 0)]
    assert torch.allclose(task.loss(logits, targets), torch.tensor(expected))


def test_logic_loss_by_hand_ignores_padding() -> None:
    task = Logic(max_length=4)
    logits = torch.tensor([[[1.5], [-0.5], [3.0], [-2.0]], [[0.2], [7.0], [9.0], [9.0]]])
    targets = torch.tensor([[1, 0, IGNORE, IGNORE], [0, IGNORE, IGNORE, IGNORE]])
    expected = [(bce(1.5, 1) + bce(-0.5, 0)) / 2, bce(0.2, 0)]
    loss = task.loss(logits, targets)
    assert torch.allclose(loss, torch.tensor(expected))
    changed = logits.clone()
    changed[:, 2:] = torch.tensor([[-50.0], [float("inf")]])
    assert torch.allclose(task.loss(changed, targets), loss)


def test_addition_loss_by_hand() -> None:
    task = Addition(numbers=2, digits=1)  # 2 places of 11 classes per step
    assert task.output_size == 22
    logits = torch.randn(2, 2, 22, generator=gen(0))
    targets = torch.tensor([[[IGNORE, IGNORE], [1, 10]], [[IGNORE, IGNORE], [IGNORE, 4]]])
    rows = logits.tolist()
    first = (ce(rows[0][1][0:11], 1) + ce(rows[0][1][11:22], 10)) / 2  # digit-major layout
    second = ce(rows[1][1][11:22], 4)
    assert torch.allclose(task.loss(logits, targets), torch.tensor([first, second]))


def test_sort_loss_by_hand() -> None:
    task = Sort(max_length=3, min_length=2)
    logits = torch.randn(1, 6, 3, generator=gen(1))
    targets = torch.tensor([[IGNORE, IGNORE, 1, 0, IGNORE, IGNORE]])
    rows = logits[0].tolist()
    expected = (ce(rows[2], 1) + ce(rows[3], 0)) / 2
    assert torch.allclose(task.loss(logits, targets), torch.tensor([expected]))


@pytest.mark.parametrize("name", sorted(TASKS))
def test_loss_leading_dims_gradients_and_stability(name: str) -> None:
    task = make(name)
    _, targets = task.sample(4, gen(6))
    steps = targets.shape[1]
    logits = (torch.randn(3, 4, steps, task.output_size, generator=gen(7)) * 1e4).requires_grad_()
    loss = task.loss(logits, targets.expand(3, *targets.shape))
    assert loss.shape == (3, 4) and torch.isfinite(loss).all()
    for k in range(3):  # the same as each slice on its own
        assert torch.allclose(loss[k], task.loss(logits[k], targets))
    # Targets shared by K runs broadcast over the leading axis.
    assert torch.allclose(task.loss(logits, targets), loss)
    loss.sum().backward()
    assert torch.isfinite(logits.grad).all()
    # No gradient reaches the logits of steps without a target.
    ignored = (targets == IGNORE).reshape(4, steps, -1).all(-1)
    assert (logits.grad[:, ignored] == 0).all()
    assert task.correct(logits, targets).shape == (3, 4)
    assert task.accuracy(logits, targets).shape == (3,)


@pytest.mark.parametrize("name", sorted(TASKS))
def test_sequence_without_targets_has_zero_loss(name: str) -> None:
    task = make(name)
    _, targets = task.sample(2, gen(8))
    targets[0] = IGNORE
    logits = torch.randn(2, task.seq_len, task.output_size, generator=gen(1)).requires_grad_()
    loss = task.loss(logits, targets)
    assert loss[0].item() == 0.0 and loss[1].item() > 0
    loss.sum().backward()
    assert (logits.grad[0] == 0).all() and torch.isfinite(logits.grad).all()


@pytest.mark.parametrize("name", sorted(TASKS))
def test_mismatched_time_axis_is_refused(name: str) -> None:
    task = make(name)
    _, targets = task.sample(2, gen(0))
    logits = torch.zeros(2, task.seq_len + 1, task.output_size)
    with pytest.raises(ValueError):
        task.loss(logits, targets)
    with pytest.raises(ValueError):
        task.correct(torch.zeros(2, task.seq_len, task.output_size + 1), targets)


# ---------------------------------------------------------------- correct / accuracy


def perfect_logits(task: Task, targets: torch.Tensor) -> torch.Tensor:
    """Logits that predict every valid target (random at ignored positions)."""
    noise = torch.randn(*targets.shape[:2], task.output_size, generator=gen(9))
    if task.output_size == 1:
        sign = (2 * targets - 1).float().unsqueeze(-1) * 5
        return torch.where((targets == IGNORE).unsqueeze(-1), noise, sign)
    classes = 11 if isinstance(task, Addition) else task.output_size
    hot = F.one_hot(targets.clamp(min=0), classes).float() * 20
    hot = hot.flatten(-2) if isinstance(task, Addition) else hot
    valid = targets != IGNORE
    if isinstance(task, Addition):
        valid = valid.repeat_interleave(classes, -1)
    else:
        valid = valid.unsqueeze(-1)
    return torch.where(valid, hot + noise, noise)


@pytest.mark.parametrize("name", sorted(TASKS))
def test_correct_needs_every_target(name: str) -> None:
    task = make(name)
    _, targets = task.sample(6, gen(10))
    logits = perfect_logits(task, targets)
    assert task.correct(logits, targets).all()
    assert task.accuracy(logits, targets).item() == 1.0
    # Make one classification of sample 2 wrong.
    if isinstance(task, Addition):
        wrong = targets.clone()
        wrong[2, 3, 4] = (wrong[2, 3, 4] + 1) % 11
    else:
        step = int((targets[2] != IGNORE).nonzero()[-1])  # its last step with a target
        wrong = targets.clone()
        wrong[2, step] = (wrong[2, step] + 1) % max(task.output_size, 2)
    expected = torch.ones(6, dtype=torch.bool)
    expected[2] = False
    assert torch.equal(task.correct(logits, wrong), expected)
    assert math.isclose(task.accuracy(logits, wrong).item(), 5 / 6, rel_tol=1e-6)


def test_binary_correct_threshold() -> None:
    task = Parity(bits=2)
    targets = torch.tensor([[1], [0], [1], [0]])
    logits = torch.tensor([[[0.1]], [[-0.1]], [[-0.1]], [[0.0]]])
    assert task.correct(logits, targets).tolist() == [True, True, False, True]


# ---------------------------------------------------------------- make() and validation


def test_make_builds_each_task_with_options() -> None:
    assert make("parity", bits=8).input_size == 8
    add = make("addition", numbers=3, digits=2)
    assert (add.seq_len, add.input_size, add.output_size) == (3, 20, 33)
    logic = make("logic", max_length=4, gates=3)
    assert (logic.seq_len, logic.input_size) == (4, 32)
    sort = make("sort", max_length=5, min_length=5)
    assert (sort.seq_len, sort.output_size) == (10, 5)
    assert set(TASKS) == {"parity", "addition", "logic", "sort"}


@pytest.mark.parametrize(
    ("name", "options", "fragment"),
    [
        ("chess", {}, "known tasks: parity, addition, logic, sort"),
        ("parity", {"digits": 3}, "digits"),
        ("parity", {"bits": 0}, "bits"),
        ("parity", {"bits": 2.0}, "bits"),
        ("parity", {"bits": True}, "bits"),
        ("addition", {"numbers": 11}, "numbers"),
        ("addition", {"numbers": 1}, "numbers must be an integer in 2..10"),
        ("addition", {"digits": 0}, "digits"),
        ("logic", {"gates": 0}, "gates"),
        ("logic", {"max_length": -1}, "max_length"),
        ("sort", {"max_length": 3, "min_length": 4}, "min_length"),
        ("sort", {"min_length": 0}, "min_length"),
    ],
)
def test_make_errors(name: str, options: dict, fragment: str) -> None:
    with pytest.raises(ValueError, match=fragment) as error:
        make(name, **options)
    assert "\n" not in str(error.value)


@pytest.mark.parametrize("name", sorted(TASKS))
@pytest.mark.parametrize("batch_size", [0, -3, 2.5])
def test_sample_refuses_bad_batch_size(name: str, batch_size: object) -> None:
    with pytest.raises(ValueError, match="batch_size"):
        make(name).sample(batch_size, gen(0))  # type: ignore[arg-type]


@pytest.mark.parametrize("name", ["parity", "addition", "logic", "sort"])
def test_sample_many_is_sample_per_generator(name):
    """An ensemble's batched draw gives each member exactly its own single-run batch."""
    task = make(name)
    gens = [torch.Generator().manual_seed(s) for s in (3, 4, 5)]
    x, y = task.sample_many(16, gens)
    for k, s in enumerate((3, 4, 5)):
        xs, ys = task.sample(16, torch.Generator().manual_seed(s))
        assert torch.equal(x[k], xs) and torch.equal(y[k], ys)
    # and the generators advanced as sample() advances them
    again = task.sample_many(16, gens)
    assert not torch.equal(again[0], x)
