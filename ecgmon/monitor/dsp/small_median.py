"""The median of a small 1-D array, exactly as ``np.median`` computes it, without its overhead.

``np.median`` on the few dozen values the alarm engine measures per beat or per window (a QRS
complex's 90 samples, the RR intervals of the last beats) spends most of its time in generic
reduction machinery (axis handling, NaN checks through ``_ureduce``), about 15-20 µs a call,
against 1-3 µs for the partition it ends in; the daemon calls it a few times per beat and per
window for every stream (bench/ward.py's profile: ``np.median`` ~5 % of the daemon at 100 beds).

``median`` does what ``np.median`` does for a 1-D array and nothing else: partition at
the middle (and the last element, where NaNs go), then the middle value, or the mean of the
two middle values computed as numpy does (their sum over two), so the result is the same
float bit for bit (tests/test_small_median.py checks it against ``np.median``).
"""

from __future__ import annotations

import numpy as np


def median(a: np.ndarray) -> float:
    """``float(np.median(a))`` for a 1-D array (or a sequence of floats); NaN if any value is
    NaN, as numpy gives. An empty array raises IndexError (numpy warns and gives NaN)."""
    x = np.asarray(a)
    if x.dtype.kind != "f":  # numpy's median of integers is a float64 mean
        x = x.astype(np.float64)
    n = x.size
    if n == 0:
        raise IndexError("median of an empty array")
    k = n // 2
    # The kth list mirrors numpy's _median: the middle value(s) and the last (NaNs end up
    # there, and one NaN makes the median NaN).
    kth = [k - 1, k, n - 1] if n % 2 == 0 else [k, n - 1]
    part = np.partition(x, kth)
    if np.isnan(part[-1]):
        return float("nan")
    if n % 2:
        return float(part[k])
    # numpy takes the mean of the two: add.reduce of two values is their sum, then / 2, in
    # the array's own precision (float32 stays float32, as np.mean keeps it).
    return float((part[k - 1] + part[k]) / x.dtype.type(2.0))
