"""The solve criterion and the statistics over seeds, against answers computed here from their
definitions (a least-squares cubic, curves whose crossing is known, binomial and Kaplan-Meier
arithmetic done by hand), never with the code under test."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ponder import metrics


def savgol_by_definition(y: np.ndarray, window: int, order: int = 3) -> np.ndarray:
    """Savitzky-Golay from its definition: at every point, the least-squares polynomial of
    ``order`` through the ``window`` points centred on it, evaluated there. Within ``window // 2``
    of an end, where no centred window fits, the polynomial fitted to the first (last) ``window``
    points, evaluated at the point (scipy's mode="interp", which the paper's authors used)."""
    n, half = len(y), window // 2
    out = np.empty(n)
    for i in range(n):
        lo = min(max(i - half, 0), n - window)
        x = np.arange(lo, lo + window) - i  # positions relative to the point smoothed
        vandermonde = np.vander(x.astype(float), order + 1, increasing=True)
        coef, *_ = np.linalg.lstsq(vandermonde, y[lo : lo + window], rcond=None)
        out[i] = coef[0]  # the polynomial at x = 0
    return out


# ---------------------------------------------------------------- smoothing and the criterion


@pytest.mark.parametrize("window", [5, 11, 71])
def test_smooth_is_the_least_squares_cubic_over_the_window(window: int) -> None:
    rng = np.random.default_rng(window)
    y = np.clip(np.linspace(0.4, 1.0, 150) + rng.normal(0, 0.05, 150), 0, 1)
    np.testing.assert_allclose(
        metrics.smooth(y, window), savgol_by_definition(y, window), atol=1e-9
    )


def test_a_short_curve_uses_the_largest_odd_window_that_fits() -> None:
    y = np.array([0.5, 0.6, 0.55, 0.7, 0.8, 0.75, 0.9, 0.95, 0.97, 0.99])  # 10 points < 71
    np.testing.assert_allclose(metrics.smooth(y, 71), savgol_by_definition(y, 9), atol=1e-12)
    np.testing.assert_allclose(metrics.smooth(y[:3], 71), savgol_by_definition(y[:3], 3, 2))


def test_the_centre_weight_of_the_papers_filter() -> None:
    """The cubic filter's weight on the centre point, 3(3m^2 + 3m - 1) / ((2m+3)(2m+1)(2m-1))
    with m = 35 (Savitzky and Golay 1964's tables): a lone spike of height h on a flat curve is
    smoothed to that fraction of h."""
    m = 35
    weight = 3 * (3 * m * m + 3 * m - 1) / ((2 * m + 3) * (2 * m + 1) * (2 * m - 1))
    y = np.full(201, 0.5)
    y[100] = 1.0
    assert metrics.smooth(y, 71)[100] == pytest.approx(0.5 + 0.5 * weight, abs=1e-12)


def test_a_cubic_curve_crosses_where_the_curve_does() -> None:
    """The cubic filter reproduces any cubic exactly, so the criterion's crossing is the curve's
    own first point at or above 98%."""
    i = np.arange(300)
    steps = [1000 * (k + 1) for k in i]
    cubic = 0.5 + 0.48 * (i / 200.5) ** 3  # 0.98 at i = 200.5: 0.9764 at 200, 0.9836 at 201
    assert metrics.steps_to_solve(steps, cubic, 0.98, 71) == 202_000
    linear = 0.5 + 0.0025 * (i - 0.5)  # 0.98 at i = 192.5
    assert metrics.steps_to_solve(steps, linear, 0.98, 71) == 194_000


def test_a_lone_spike_is_no_solve_and_a_plateau_is() -> None:
    steps = [500 * (k + 1) for k in range(200)]  # steps are read off the log, not assumed 1k
    spike = [0.5] * 200
    spike[50] = 1.0
    assert metrics.steps_to_solve(steps, spike, 0.98, 71) is None
    plateau = [0.5] * 100 + [1.0] * 100  # a step: the cubic crosses 98% only past the jump
    stp = metrics.steps_to_solve(steps, plateau, 0.98, 71)
    by_definition = savgol_by_definition(np.array(plateau), 71)
    first = int(np.flatnonzero(by_definition >= 0.98)[0])
    assert first > 100 and stp == steps[first]


def test_unsmoothed_criterion_is_the_first_log_at_the_threshold() -> None:
    assert metrics.steps_to_solve([10, 20, 30], [0.5, 0.98, 0.7], 0.98, 1) == 20
    assert metrics.steps_to_solve([10, 20, 30], [0.5, 0.97, 0.7], 0.98, 1) is None
    assert metrics.steps_to_solve([], [], 0.98, 71) is None


def test_crossing_is_final_needs_a_full_window_and_half_a_window_after() -> None:
    ramp = [0.9 + 0.001 * (k + 0.5) for k in range(150)]  # smoothed = itself; 0.9805 at 80
    assert metrics.crossing_is_final(ramp[: 80 + 35 + 1], 0.98, 71)  # 35 points after 80
    assert not metrics.crossing_is_final(ramp[: 80 + 35], 0.98, 71)
    assert not metrics.crossing_is_final(ramp[:60], 0.98, 71)  # fewer points than the window


ACCURACY = st.one_of(st.sampled_from([0.0, 0.5, 0.97, 0.98, 1.0]), st.floats(0.0, 1.0))


@settings(max_examples=200, deadline=None)
@given(
    curve=st.lists(ACCURACY, min_size=1, max_size=90),
    window=st.sampled_from([1, 3, 5, 7, 11, 15]),
    threshold=st.sampled_from([0.5, 0.8, 0.98]),
)
def test_a_final_crossing_never_moves(curve: list[float], window: int, threshold: float) -> None:
    """Once ``crossing_is_final`` says so for the first n points, no further points change
    ``steps_to_solve``: every prefix said final has the whole curve's crossing (the rest of the
    curve is any continuation; the first prefix said final is the boundary case)."""
    steps = [100 * (k + 1) for k in range(len(curve))]
    whole = metrics.steps_to_solve(steps, curve, threshold, window)
    for n in range(1, len(curve) + 1):
        if metrics.crossing_is_final(curve[:n], threshold, window):
            assert metrics.steps_to_solve(steps[:n], curve[:n], threshold, window) == whole, n


@settings(max_examples=50, deadline=None)
@given(
    step=st.integers(0, 40),
    noise=st.lists(st.floats(-0.2, 0.2), min_size=90, max_size=90),
)
def test_a_final_crossing_never_moves_on_learning_curves(step: int, noise: list[float]) -> None:
    """The same on curves that look like training: noise around a jump from 50% to 100%."""
    curve = [min(1.0, max(0.0, (0.5 if i < step else 1.0) + e)) for i, e in enumerate(noise)]
    steps = list(range(len(curve)))
    whole = metrics.steps_to_solve(steps, curve, 0.98, 11)
    for n in range(1, len(curve) + 1):
        if metrics.crossing_is_final(curve[:n], 0.98, 11):
            assert metrics.steps_to_solve(steps[:n], curve[:n], 0.98, 11) == whole, n


# ---------------------------------------------------------------- statistics over seeds


def test_wilson_interval_by_hand() -> None:
    # k=3, n=5, z=1.959964: centre (0.6 + z^2/10) / (1 + z^2/5) = 0.556553, half width
    # z sqrt(0.6 * 0.4 / 5 + z^2 / 100) / (1 + z^2/5) = 0.325826
    low, high = metrics.wilson_interval(3, 5)
    assert (low, high) == (pytest.approx(0.2307, abs=1e-4), pytest.approx(0.8824, abs=1e-4))
    # k=0: [0, z^2 / (n + z^2)]; k=n: its mirror
    z2 = 1.959964**2
    assert metrics.wilson_interval(0, 5) == (0.0, pytest.approx(z2 / (5 + z2), abs=1e-6))
    assert metrics.wilson_interval(5, 5) == (pytest.approx(5 / (5 + z2), abs=1e-6), 1.0)
    with pytest.raises(ValueError):
        metrics.wilson_interval(1, 0)


def test_kaplan_meier_by_hand() -> None:
    """Seeds solved at 10 and 20 and 30, one censored at 20 (still at risk there: solves come
    first) and one at 40. Risk sets 5, 4, 2: F = 1/5, 1 - 4/5 * 3/4, 1 - 4/5 * 3/4 * 1/2."""
    t, f = metrics.kaplan_meier([10, 20, 20, 30, 40], [True, False, True, True, False])
    assert t.tolist() == [10, 20, 30]
    np.testing.assert_allclose(f, [0.2, 0.4, 0.7])
    assert metrics.censored_quartiles([10, 20, 20, 30, 40], [True, False, True, True, False]) == (
        30, 20, None,  # median, 25th, 75th: 70% < 75% never reached
    )  # fmt: skip
    t, f = metrics.kaplan_meier([5, 8], [False, False])
    assert t.size == 0 and f.size == 0
    assert metrics.censored_quartiles([5, 8], [False, False]) == (None, None, None)


def test_censored_quantiles_without_early_censoring_are_the_empirical_ones() -> None:
    """Every unsolved seed ran to the budget: the quantile is the ceil(q n)-th smallest steps to
    solve over all seeds, the unsolved counted as slower than any."""
    budget = 100_000
    times = [30_000, 10_000, 50_000, budget, budget]
    solved = [True, True, True, False, False]
    assert metrics.censored_quartiles(times, solved) == (50_000, 30_000, None)  # 3rd, 2nd, 4th
    one_of_five = metrics.censored_quartiles([20_000] + [budget] * 4, [True] + [False] * 4)
    assert one_of_five == (None, None, None)  # 1/5 < 1/4: not even the 25th percentile
    all_five = metrics.censored_quartiles([30_000] * 5, [True] * 5)
    assert all_five == (30_000, 30_000, 30_000)
    # with n = 5 and nothing censored, numpy's percentiles agree (positions 1, 2, 3 exactly)
    five = [10_000, 20_000, 35_000, 40_000, 70_000]
    q50, q25, q75 = np.percentile(five, [50, 25, 75])
    assert metrics.censored_quartiles(five, [True] * 5) == (q50, q25, q75)


def test_early_censoring_leaves_the_risk_set() -> None:
    """A seed that stopped unsolved at 5k says nothing about later steps: of the 4 seeds still
    followed at 10k, half have solved by 20k (KM), although 2/5 solved in all."""
    times = [5_000, 10_000, 20_000, 60_000, 60_000]
    solved = [False, True, True, False, False]
    t, f = metrics.kaplan_meier(times, solved)
    np.testing.assert_allclose(f, [1 / 4, 1 - 3 / 4 * 2 / 3])
    assert metrics.censored_quantile(times, solved, 0.5) == 20_000
    assert math.isclose(f[-1], 0.5)


# ------------------------------------------------------- the criterion at the end of a curve


def test_a_jump_only_in_the_last_half_window_is_not_a_solve() -> None:
    """A curve that reaches the threshold only in its last 35 points crosses there after
    smoothing (the filter extrapolates its last cubic), but nothing confirms it: not solved,
    and ``edge_crossing`` names where it crossed."""
    steps = [1000 * (k + 1) for k in range(300)]
    curve = [0.6] * 280 + [1.0] * 20
    assert metrics.first_crossing(metrics.smooth(curve, 71), 0.98) is not None  # the artefact
    assert metrics.steps_to_solve(steps, curve, 0.98, 71) is None
    assert not metrics.crossing_is_final(curve, 0.98, 71)
    edge = metrics.edge_crossing(curve, 0.98, 71)
    assert edge is not None and edge > 300 - 1 - 35
    # The same jump earlier, with half a window behind it, is a solve, and no edge crossing.
    early = [0.6] * 200 + [1.0] * 100
    assert metrics.steps_to_solve(steps, early, 0.98, 71) is not None
    assert metrics.edge_crossing(early, 0.98, 71) is None


@settings(max_examples=60, deadline=None)
@given(
    at=st.integers(40, 300 - 71),
    seed=st.integers(0, 2**31 - 1),
)
def test_a_true_crossing_is_found_within_one_window(at: int, seed: int) -> None:
    """Training-batch accuracy (binomial over a batch of 128) that moves from a plateau at 60%
    to one at 100% at log index ``at``, with a window or more of points after it: the
    criterion's crossing is within one window of ``at``."""
    rng = np.random.default_rng(seed)
    p = np.where(np.arange(300) < at, 0.6, 1.0)
    curve = rng.binomial(128, p) / 128
    steps = [1000 * (k + 1) for k in range(300)]
    stp = metrics.steps_to_solve(steps, curve, 0.98, 71)
    assert stp is not None and abs(stp - steps[at]) <= 71 * 1000


def test_a_plateau_below_the_threshold_is_almost_never_solved() -> None:
    """300 points of training-batch accuracy at a 96% plateau (binomial noise, batch 128): the
    criterion calls it solved in well under 2% of runs (about 0.4% in 2,000 runs)."""
    rng = np.random.default_rng(7)
    steps = list(range(300))
    solved = sum(
        metrics.steps_to_solve(steps, rng.binomial(128, 0.96, 300) / 128, 0.98, 71) is not None
        for _ in range(300)
    )
    assert solved <= 6, solved  # 2% of 300
    # Closer to the threshold the criterion is noisy by nature (the report's note says so):
    near = sum(
        metrics.steps_to_solve(steps, rng.binomial(128, 0.975, 300) / 128, 0.98, 71) is not None
        for _ in range(300)
    )
    assert 0.3 * 300 < near < 0.8 * 300, near
