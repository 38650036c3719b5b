"""The paper's solve criterion and the quantities read off a learning curve.

Fojo et al. log the training-batch accuracy every 1,000 steps, smooth the curve with a
Savitzky-Golay filter (window 71 points, cubic) and call a task solved at the first logged step
where the smoothed accuracy reaches 98%. Near the end of a curve the filter has no centred
window (it extrapolates the cubic fitted to the last 71 points), so a crossing counts only where
half a window of later points confirms it (``confirmed_crossing``); one only in the last half
window is not a solve within the logged steps (``edge_crossing``). A curve with fewer than 71
points uses the largest odd window that fits (and a lower polynomial order where the window is
too short for a cubic).

Over seeds, steps to solve is censored data (SPEC.md, "Statistics over seeds"): ``kaplan_meier``
gives the fraction of seeds solved against steps, ``censored_quartiles`` its median and quartiles
("not reached" as None), ``wilson_interval`` the 95% interval of k/n seeds solved.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy.signal import savgol_filter

PAPER_WINDOW = 71
PAPER_ORDER = 3
PAPER_THRESHOLD = 0.98


def smoothing_window(points: int, window: int = PAPER_WINDOW) -> int:
    """The window used for a curve of ``points`` points: ``window``, or the largest odd fit."""
    if points < 1:
        return 0
    if points >= window:
        return window
    return points if points % 2 == 1 else points - 1


def smooth(values: Sequence[float], window: int = PAPER_WINDOW, order: int = PAPER_ORDER):
    """Savitzky-Golay smoothing of a learning curve, as a float numpy array."""
    y = np.asarray(values, dtype=float)
    w = smoothing_window(len(y), window)
    if w <= 1:
        return y.copy()
    return savgol_filter(y, w, min(order, w - 1))


def first_crossing(values: Sequence[float], threshold: float) -> int | None:
    """Index of the first value >= threshold, or None."""
    hits = np.flatnonzero(np.asarray(values, dtype=float) >= threshold)
    return int(hits[0]) if hits.size else None


def crossings(
    values: Sequence[float], threshold: float = PAPER_THRESHOLD, window: int = PAPER_WINDOW
) -> tuple[int | None, int | None]:
    """``(confirmed, edge)`` from one smoothing of ``values``: the index of the first smoothed
    value >= ``threshold`` that half a window of later points confirms, and, when there is
    none, the index of a crossing that lies only in the last half window (each None if absent).

    In the last half window the Savitzky-Golay filter has no centred window: its value there is
    the cubic fitted to the last ``window`` points, extrapolated towards the end. A crossing
    there is the polynomial's, not the data's, and more training could undo it. So a crossing
    counts only at an index i with ``window // 2`` logged points after it (the window the curve
    was smoothed with, ``smoothing_window``); an edge crossing is a run that may be about to
    solve, which the criterion does not count yet.
    """
    y = smooth(values, window)
    half = smoothing_window(len(y), window) // 2
    confirmed = first_crossing(y[: max(0, len(y) - half)], threshold)
    return confirmed, (first_crossing(y, threshold) if confirmed is None else None)


def confirmed_crossing(
    values: Sequence[float], threshold: float = PAPER_THRESHOLD, window: int = PAPER_WINDOW
) -> int | None:
    """Index of the first smoothed value >= ``threshold`` confirmed by half a window of later
    points, or None (``crossings``)."""
    return crossings(values, threshold, window)[0]


def edge_crossing(
    values: Sequence[float], threshold: float = PAPER_THRESHOLD, window: int = PAPER_WINDOW
) -> int | None:
    """Index of a smoothed crossing of ``threshold`` that lies only in the last half window
    (no confirmed crossing before it), or None (``crossings``)."""
    return crossings(values, threshold, window)[1]


def steps_to_solve(
    steps: Sequence[int],
    accuracy: Sequence[float],
    threshold: float = PAPER_THRESHOLD,
    window: int = PAPER_WINDOW,
) -> int | None:
    """The paper's criterion: the first logged step whose smoothed accuracy is >= ``threshold``,
    confirmed by half a window of later points (``confirmed_crossing``); None when not solved
    within the logged steps."""
    if len(steps) == 0:
        return None
    i = confirmed_crossing(accuracy, threshold, window)
    return None if i is None else int(steps[i])


def crossing_is_final(
    accuracy: Sequence[float], threshold: float = PAPER_THRESHOLD, window: int = PAPER_WINDOW
) -> bool:
    """Whether more points can no longer change the criterion's crossing.

    Once the curve has a full window, the smoothed value at index i <= L - 1 - w//2 depends only
    on points that already exist (the centred window, or the first window near the start), so a
    confirmed crossing is final. A shorter curve is smoothed over a shorter window that grows
    with it: nothing is final yet.
    """
    return len(accuracy) >= window and confirmed_crossing(accuracy, threshold, window) is not None


# --------------------------------------------------------------------------------------------
# Statistics over seeds (SPEC.md, "Statistics over seeds")
#
# Steps to solve over seeds is a time-to-event quantity: a seed that has not met the criterion
# when it stopped is right-censored at the step it stopped at, not dropped. The fraction of seeds
# solved by step t is the Kaplan-Meier estimate 1 - S(t); its quantiles are the steps by which a
# quarter, half, three quarters of the seeds are estimated to have solved.


def wilson_interval(k: int, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """The Wilson score interval of a proportion k/n (``confidence`` two-sided).

    Unlike the normal approximation p +- z sqrt(p(1-p)/n), it stays inside [0, 1] and is not
    empty at k = 0 or k = n, which matters at the 3 to 10 seeds a configuration has.
    """
    if n < 1 or not 0 <= k <= n:
        raise ValueError(f"wilson_interval needs 0 <= k <= n and n >= 1, got k={k}, n={n}")
    from scipy.stats import norm

    z = float(norm.ppf(0.5 + confidence / 2))
    p = k / n
    denominator = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denominator
    half = z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denominator
    return max(0.0, float(centre - half)), min(1.0, float(centre + half))


def kaplan_meier(times: Sequence[float], solved: Sequence[bool]) -> tuple[np.ndarray, np.ndarray]:
    """The Kaplan-Meier estimate of the fraction of seeds solved, 1 - S(t).

    ``times[i]`` is seed i's steps to solve when ``solved[i]``, else the step it was censored at
    (the last it reached). Returns the distinct solve times ``t`` (ascending) and ``F`` with
    ``F[j]`` the fraction solved by ``t[j]`` inclusive; F is constant between them and 0 before
    ``t[0]``. A seed censored at a solve time is still at risk there (solves come first).
    """
    t = np.asarray(times, dtype=float)
    e = np.asarray(solved, dtype=bool)
    event_times = np.unique(t[e])
    survival, solved_fraction = 1.0, []
    for u in event_times:
        at_risk = int(np.sum(t >= u))
        events = int(np.sum(e & (t == u)))
        survival *= 1.0 - events / at_risk
        solved_fraction.append(1.0 - survival)
    return event_times, np.asarray(solved_fraction, dtype=float)


def censored_quantile(times: Sequence[float], solved: Sequence[bool], q: float) -> float | None:
    """The first step by which the Kaplan-Meier fraction solved reaches ``q``; None when it never
    does (fewer seeds solved than the quantile needs: "not reached").

    Without censoring before the last solve (every unsolved seed ran at least as long as the
    solved ones) this is the plain empirical quantile over all seeds, the unsolved ones counted
    as infinitely slow: the ceil(q n)-th smallest steps to solve.
    """
    t, f = kaplan_meier(times, solved)
    hits = np.flatnonzero(f >= q - 1e-9)  # 1 - prod(...) is not exact: 0.25 may be 0.2499...
    return float(t[hits[0]]) if hits.size else None


def censored_quartiles(
    times: Sequence[float], solved: Sequence[bool]
) -> tuple[float | None, float | None, float | None]:
    """Median, 25th and 75th percentile of steps to solve over all seeds (``censored_quantile``),
    None for each one not reached."""
    median, q25, q75 = (censored_quantile(times, solved, q) for q in (0.5, 0.25, 0.75))
    return median, q25, q75
