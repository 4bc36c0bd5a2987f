"""A second, deliberately simple QRS detector on the curve length of the ECG, whose
disagreement with the main detector measures signal quality (bSQI, Li & Clifford 2008).

After Zong et al. (2003), PhysioNet's ``wqrs``: the length of the 16 Hz low-passed curve
over 130 ms peaks at each QRS complex. Unlike the main detector (``qrs.QRSDetector``, a
5-15 Hz band, noise-level thresholds and search-back) it keeps to a fixed fraction of the
running QRS height, a 200 ms refractory period and one T-wave rule. On a clean ECG both find
the same beats;
electrode motion and muscle noise make this one fire on artefacts the main one rejects (or
the reverse), and the share of beats the two agree on falls. That share, not this
detector's beats, is what the alarm engine uses.

Chunk by chunk with its state carried, and its decisions made at definite sample indices,
so the detections do not depend on how the stream was chunked.
"""

from __future__ import annotations

import numpy as np
from scipy import signal

from ecgmon.monitor.dsp.filters import StatefulSOS
from ecgmon.monitor.dsp.max_filter import maximum_filter1d

LOWPASS_HZ = 16.0
LENGTH_S = 0.13
PEAK_HALF_S = 0.1  # a feature peak is the largest within this much either side
REFRACTORY_S = 0.2
THRESHOLD_FRACTION = 0.3
LEARN_S = 2.0
# Within this much of the last beat, a peak under half its height is that beat's T wave.
T_WAVE_S = 0.36
T_WAVE_RATIO = 0.5
# No beat for this long: the expected QRS height decays (a lost beat or a smaller QRS).
DECAY_AFTER_S = 1.5
DECAY_PER_S = 0.7
# ... but not below this share of the height at the last beat: in a pause (asystole) the
# threshold must not sink into the baseline and turn its wander into beats.
DECAY_FLOOR = 0.3
# The curve-length peak trails the R peak by about this much (measured on MIT-BIH: 60-100 ms).
LAG_S = 0.08


class CurveLengthDetector:
    """Feed the filtered ECG chunk by chunk; get the QRS marks decided in each chunk as
    ``(mark sample, decision sample)`` pairs, marks placed at the expected R peak."""

    def __init__(self, fs: float) -> None:
        self.fs = float(fs)
        self._lowpass = StatefulSOS(signal.butter(2, min(LOWPASS_HZ, 0.45 * fs), "low", fs=fs, output="sos"))
        self._width = max(1, round(LENGTH_S * fs))
        self._half = max(1, round(PEAK_HALF_S * fs))
        self._refractory = round(REFRACTORY_S * fs)
        self._learn = round(LEARN_S * fs)
        self._lag = round(LAG_S * fs)
        self._prev = None  # last low-passed sample (for the first difference)
        self._tail = np.zeros(self._width - 1)  # |differences| the moving sum still needs
        self._feature = np.zeros(0)  # curve length not yet examined for peaks, with context
        self._start = 0  # stream index of self._feature[0]
        self._next = 0  # first index not yet examined as a peak
        self._level: float | None = None
        self._learnt: list[float] = []
        self._last = -(10**12)
        self._last_height = 0.0
        self._beat_level = 0.0  # the expected height when the last beat was found
        self._since = 0  # last beat, or the last decay step

    def process(self, filtered: np.ndarray) -> list[tuple[int, int]]:
        y = self._lowpass(np.asarray(filtered, dtype=np.float64))
        if y.size == 0:
            return []
        prev = y[0] if self._prev is None else self._prev
        self._prev = y[-1]
        # np.diff(y, prepend=prev) without its broadcasting wrapper (a third of this call's cost).
        joined = np.concatenate(([prev], y))
        d = np.abs(joined[1:] - joined[:-1])
        ext = np.concatenate([self._tail, d])
        self._tail = ext[-(self._width - 1):] if self._width > 1 else self._tail
        csum = np.concatenate([[0.0], np.cumsum(ext)])
        length = csum[self._width:] - csum[: -self._width]
        self._feature = np.concatenate([self._feature, length])
        return self._peaks()

    def _peaks(self) -> list[tuple[int, int]]:
        f, h = self._feature, self._half
        # Peaks decided so far: those with a full half window after them.
        top = maximum_filter1d(f, 2 * h + 1, mode="nearest")
        first = max(self._next - self._start, h)
        last = f.size - h
        out: list[tuple[int, int]] = []
        if last > first:
            idx = np.arange(first, last)
            peak = (f[idx] == top[idx]) & (f[idx] > f[idx - 1]) & (f[idx] > 0)
            for i in idx[peak]:
                k = self._start + int(i)
                if self._decide(k, float(f[i])):
                    out.append((max(0, k - self._lag), k + h))
            self._next = self._start + last
        # Keep the context the next chunk's peaks need (a window either side).
        keep = max(0, f.size - 2 * h - 1)
        self._feature = f[keep:]
        self._start += keep
        return out

    def _decide(self, k: int, height: float) -> bool:
        if k < self._learn:
            self._learnt.append(height)
            return False
        if self._level is None:
            self._level = max(self._learnt, default=height)
        gap = k - max(self._last, self._since)
        if gap > DECAY_AFTER_S * self.fs:
            floor = DECAY_FLOOR * self._beat_level if self._beat_level else 0.0
            self._level = max(floor, self._level * DECAY_PER_S ** (gap / self.fs - 1.0))
            self._since = k
        since_last = k - self._last
        t_wave = since_last < T_WAVE_S * self.fs and height < T_WAVE_RATIO * self._last_height
        if height > THRESHOLD_FRACTION * self._level and since_last > self._refractory and not t_wave:
            self._level = 0.875 * self._level + 0.125 * min(height, 2.0 * self._level)
            self._last = self._since = k
            self._last_height = height
            self._beat_level = self._level
            return True
        return False


def agreement(main: np.ndarray, second: np.ndarray, fs: float, tolerance_s: float = 0.15) -> float | None:
    """bSQI: beats both detectors found over all beats either found (None when neither found
    any). ``main`` and ``second`` are sorted R-peak samples of the same span."""
    if main.size + second.size == 0:
        return None
    if main.size == 0 or second.size == 0:
        return 0.0
    pos = np.searchsorted(second, main)
    left = np.abs(main - second[np.clip(pos - 1, 0, second.size - 1)])
    right = np.abs(second[np.clip(pos, 0, second.size - 1)] - main)
    matched = int(np.count_nonzero(np.minimum(left, right) <= tolerance_s * fs))
    return matched / (main.size + second.size - matched)
