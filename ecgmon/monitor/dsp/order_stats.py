"""Medians and percentiles of small arrays, exactly as numpy computes them, without its overhead.

``np.median`` and ``np.percentile`` on the arrays the alarm engine measures per beat and per
analysis window (a QRS complex's 90 samples, the RR intervals of the last beats, a 4 s VF
window's 1000 samples) spend most of their time in generic machinery (``_ureduce``, axis
moves, index bookkeeping), 15-60 µs a call against a few µs for the partition they end in;
the daemon makes such calls per beat and per window for every stream (bench/ward.py's profile
at 100 beds: ``np.median`` about 5 % of the daemon, the VF detector's two percentiles 1.6 %).

Both functions do what numpy does for their one case and nothing else: partition at the
order statistics needed (and at the last element, where NaNs go: one NaN makes the result
NaN), then numpy's own arithmetic on them (the mean of the two middle values as their sum
over two; the percentile's linear interpolation as ``np.lib``'s ``_lerp`` computes it), so
the results are the same floats bit for bit (tests/test_order_stats.py checks both against
numpy on real recordings).
"""

from __future__ import annotations

import math

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


def percentile_rows(a: np.ndarray, q: float) -> np.ndarray:
    """``np.percentile(a, q, axis=1)`` (method "linear") for a 2-D float64 array and a
    percentile ``q`` given as a Python number, one value per row."""
    x = np.asarray(a, dtype=np.float64)
    n = x.shape[1]
    # numpy: q / 100, the virtual index (n - 1) * q, its floor and the next index (both the
    # last one when the virtual index reaches it), gamma = virtual - floor as a Python float.
    virtual = (n - 1) * (q / 100)
    if virtual >= n - 1:
        lo = hi = -1
    elif virtual < 0:
        lo = hi = 0
    else:
        lo = math.floor(virtual)
        hi = lo + 1
    gamma = float(virtual - lo)
    kth = sorted({0, n - 1, lo % n, hi % n})
    part = np.partition(x, kth, axis=1)
    prev, nxt = part[:, lo], part[:, hi]
    # numpy's _lerp: from the lower value below a half, from the upper one from a half on.
    diff = nxt - prev
    out = nxt - diff * (1 - gamma) if gamma >= 0.5 else prev + diff * gamma
    nan = np.isnan(part[:, -1])
    if nan.any():
        out[nan] = np.nan
    return out
