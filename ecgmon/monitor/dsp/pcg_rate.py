"""Heart rate from heart sounds: the cardiac cycle is the lag at which the envelope of the last
few seconds best repeats itself (the autocorrelation method of Schmidt et al. 2010 and Springer
et al. 2016), taking the shortest of near-equal repeats so that a cycle's multiples do not win.

The envelope's whole shape takes part, not only the sound times: S1 and S2 differ in loudness
and shape, so the envelope repeats after a cycle, not after a systole, even when S1-S2 and
S2-S1 last about as long, and a few missed sounds hardly move the peak.
"""

from __future__ import annotations

import numpy as np
from scipy.signal import find_peaks

# The rate is measured on this much envelope: a few cycles, short enough to follow a change.
RATE_SPAN_S = 10.0
# Cycles of 0.4-2 s (30-150 bpm): below 0.4 s systole and diastole are both about half a
# cycle, and the envelope repeats after each, so a shorter lag is more often half a slower
# cycle than a real tachycardia.
MIN_CYCLE_S, MAX_CYCLE_S = 0.4, 2.0
# A rate needs at least this much envelope: two and a half of the longest cycles (shorter
# windows would only let short cycles show, and a half cycle pass for a whole one).
MIN_SPAN_S = 5.0
# The shortest lag whose autocorrelation peak reaches this fraction of the highest one wins:
# two or three cycles repeat about as well as one.
CYCLE_PREFERENCE = 0.85


def autocorrelation(x: np.ndarray) -> np.ndarray:
    """Autocorrelation of ``x`` minus its mean at lags 0 .. len(x) - 1 (not normalised)."""
    x = np.asarray(x, dtype=np.float64)
    x = x - x.mean()
    n = 1 << int(np.ceil(np.log2(2 * max(x.size, 1))))
    spec = np.fft.rfft(x, n)
    return np.fft.irfft(spec * np.conj(spec), n)[: x.size]


def envelope_rate_bpm(env: np.ndarray, fs: float) -> float | None:
    """Heart rate (bpm) of a stretch of heart-sound envelope sampled at ``fs``, or None when
    it is too short or does not repeat at any plausible cycle."""
    if len(env) < MIN_SPAN_S * fs:
        return None
    ac = autocorrelation(env)
    if ac[0] <= 0:
        return None
    lo, hi = int(np.ceil(MIN_CYCLE_S * fs)), int(MAX_CYCLE_S * fs)
    peaks, _ = find_peaks(ac[: hi + 2])
    peaks = peaks[(peaks >= lo) & (peaks <= hi)]
    heights = ac[peaks]
    if peaks.size == 0 or heights.max() <= 0:
        return None
    k = int(peaks[np.argmax(heights >= CYCLE_PREFERENCE * heights.max())])
    # A parabola through the peak and its neighbours places it between samples.
    a, b, c = ac[k - 1 : k + 2]
    curvature = a - 2 * b + c
    shift = 0.5 * (a - c) / curvature if curvature < 0 else 0.0
    return 60.0 * fs / (k + shift)
