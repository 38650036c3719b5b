"""The paper's solve criterion and the quantities read off a learning curve.

Fojo et al. log the training-batch accuracy every 1,000 steps, smooth the curve with a
Savitzky-Golay filter (window 71 points, cubic) and call a task solved at the first logged step
where the smoothed accuracy reaches 98%. A curve with fewer than 71 points uses the largest odd
window that fits (and a lower polynomial order where the window is too short for a cubic).
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


def steps_to_solve(
    steps: Sequence[int],
    accuracy: Sequence[float],
    threshold: float = PAPER_THRESHOLD,
    window: int = PAPER_WINDOW,
) -> int | None:
    """The paper's criterion: first logged step whose smoothed accuracy is >= ``threshold``."""
    if len(steps) == 0:
        return None
    i = first_crossing(smooth(accuracy, window), threshold)
    return None if i is None else int(steps[i])


def crossing_is_final(
    accuracy: Sequence[float], threshold: float = PAPER_THRESHOLD, window: int = PAPER_WINDOW
) -> bool:
    """Whether more points can no longer change the paper criterion's first crossing.

    Once the curve has a full window, the smoothed value at index i depends only on points
    i - w//2 .. i + w//2; so a crossing at i is final when i + w//2 points exist.
    """
    if len(accuracy) < window:
        return False
    i = first_crossing(smooth(accuracy, window), threshold)
    return i is not None and i + window // 2 <= len(accuracy) - 1
