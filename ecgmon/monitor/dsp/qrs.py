"""Online, causal R-peak detector for single-lead ECG at any rate from 125 to 1000 Hz.

After Pan & Tompkins (1985) and Hamilton & Tompkins (1986): a QRS-band filter, the
absolute derivative and a moving-window integral make a feature signal, computed per
chunk in numpy with filter state carried across chunks. Its peaks are the candidates
(a few per second); Python logic per candidate applies adaptive thresholds (means of the
last eight QRS and noise peaks), a refractory period, T-wave discrimination by slope, and
search-back for missed beats at half the threshold. Every decision is made at a definite
sample index, so the beats do not depend on how the stream was chunked.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

import numpy as np

from ecgmon.config import DetectorConfig
from ecgmon.monitor.dsp.filters import StatefulSOS, bandpass_sos
from ecgmon.monitor.dsp.max_filter import maximum_filter1d
from ecgmon.rates import check_ecg_rate

# Feature chain and decision constants; times in seconds so that any rate behaves alike.
QRS_BAND_HZ = (5.0, 15.0)
LOCATE_BAND_HZ = (0.5, 40.0)
DERIVATIVE_S = 0.01
INTEGRATION_S = 0.06
# A feature peak is a candidate once it has been the largest for this long before and after.
PEAK_BACK_S = 0.2
PEAK_AHEAD_S = 0.18
# Where the R wave can sit relative to the feature peak (filter and integration lag).
LOCATE_BACK_S = 0.25
THRESHOLD_FRACTION = 0.3125
SEARCHBACK_FRACTION = 0.5
T_WAVE_SLOPE_RATIO = 0.5
LEARN_S = 2.0
RELEARN_S = 4.0
RELEARN_DECAY = 0.5
RELEARN_MIN = 0.125
HISTORY = 8
# Feature peaks below this are not QRS complexes whatever the gain (input is in mV): about the
# peak of a 0.05 mV QRS at 360 Hz (0.07 mV at 128 Hz). A stream that starts, or a pipeline
# that starts again, in a pause has no beats to learn its thresholds from; with a floor of
# 0.002 it learnt 10-20 uV of amplifier noise as beats (65 a 30 s) and called asystole
# extreme tachycardia.
FEATURE_FLOOR = 0.0098


@dataclass(frozen=True, slots=True)
class Beat:
    """One detected heartbeat.

    ``sample`` is the R-peak index in the raw input signal (from the stream's start);
    ``detected_at`` is the index of the last input sample the decision needed, so the
    detection delay is ``(detected_at - sample) / fs`` whatever the chunking.
    """

    sample: int
    detected_at: int
    amplitude: float


@dataclass(slots=True)
class _Candidate:
    peak: int  # feature-peak index
    decided_at: int
    height: float
    slope: float
    r_sample: int
    r_amplitude: float


class _History:
    """The recent past of the feature, slope and locating signals, indexed absolutely."""

    def __init__(self, keep: int) -> None:
        self.keep = keep
        self.base = 0
        self.feature = np.zeros(0)
        self.slope = np.zeros(0)
        self.locate = np.zeros(0)

    @property
    def end(self) -> int:
        return self.base + self.feature.size

    def append(self, feature: np.ndarray, slope: np.ndarray, locate: np.ndarray) -> None:
        drop = max(0, self.feature.size - self.keep)
        self.feature = np.concatenate([self.feature[drop:], feature])
        self.slope = np.concatenate([self.slope[drop:], slope])
        self.locate = np.concatenate([self.locate[drop:], locate])
        self.base += drop

    def window(self, name: str, start: int, stop: int) -> np.ndarray:
        arr = getattr(self, name)
        return arr[max(0, start - self.base) : max(0, stop - self.base)]


class QRSDetector:
    """Feed raw single-lead ECG (mV) chunk by chunk; get the beats decided in each chunk."""

    def __init__(self, fs: float, config: DetectorConfig | None = None) -> None:
        self.fs = check_ecg_rate(fs)
        self.config = config or DetectorConfig()
        self._qrs_band = StatefulSOS(bandpass_sos(fs, *QRS_BAND_HZ, order=2))
        self._locate_band = StatefulSOS(bandpass_sos(fs, *LOCATE_BAND_HZ, order=2))
        self._lag = max(1, round(DERIVATIVE_S * fs))
        self._width = max(2, round(INTEGRATION_S * fs))
        self._back = round(PEAK_BACK_S * fs)
        self._ahead = round(PEAK_AHEAD_S * fs)
        self._locate_back = round(LOCATE_BACK_S * fs)
        self._refractory = round(self.config.refractory_s * fs)
        self._t_window = round(self.config.t_wave_window_s * fs)
        # Filter tails carried between chunks for the derivative and the integral.
        self._band_tail = np.zeros(self._lag)
        self._abs_tail = np.zeros(self._width - 1)
        keep = self._back + self._ahead + self._locate_back + self._width + 2
        self._hist = _History(keep)
        self._next_peak = 1  # first index not yet examined as a feature peak
        self._pending: list[_Candidate] = []
        self._learning: list[_Candidate] | None = []
        self._learn_end = round(LEARN_S * fs)
        self._qrs_heights: deque[float] = deque(maxlen=HISTORY)
        self._noise_heights: deque[float] = deque(maxlen=HISTORY)
        self._rr: deque[int] = deque(maxlen=HISTORY)
        self._since_beat: list[_Candidate] = []
        self._last_peak: int | None = None
        self._last_r: int | None = None
        self._last_slope = 0.0
        self._searched = False
        self._last_relearn: int | None = None
        self._beat_level = 0.0  # QRS level when the last beat was accepted

    # -- feature signal -------------------------------------------------------------

    def _features(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        band = self._qrs_band(x)
        ext = np.concatenate([self._band_tail, band])
        self._band_tail = ext[-self._lag :]
        slope = np.abs(ext[self._lag :] - ext[: -self._lag])
        ext = np.concatenate([self._abs_tail, slope])
        self._abs_tail = ext[-(self._width - 1) :]
        csum = np.concatenate([[0.0], np.cumsum(ext)])
        feature = (csum[self._width :] - csum[: -self._width]) / self._width
        return feature, slope, self._locate_band(x)

    # -- candidates -----------------------------------------------------------------

    def _find_candidates(self) -> list[_Candidate]:
        """Feature peaks that have been the largest for PEAK_BACK_S before and PEAK_AHEAD_S after."""
        h = self._hist
        last = h.end - 1 - self._ahead  # last peak index whose look-ahead is complete
        first = max(self._next_peak, h.base + 1)
        if last < first:
            return []
        self._next_peak = last + 1
        back, ahead = self._back, self._ahead
        # f[k] is the feature at stream index k + origin; the indices examined are f[i0:i1].
        if first - h.base >= back:
            f, origin = h.feature, h.base
        else:  # near the stream's start: zeros before it began (the feature is never negative)
            f, origin = np.concatenate([np.zeros(back), h.feature]), h.base - back
        i0, i1 = first - origin, last + 1 - origin
        # Each index's largest value in the PEAK_BACK_S before it and the PEAK_AHEAD_S after
        # it, filtered over just the span those windows cover (every window lies inside it,
        # so the maxima are those of the whole history).
        before = maximum_filter1d(f[i0 - back : i1 - 1], back)[back // 2 : back // 2 + i1 - i0]
        after = maximum_filter1d(f[i0 + 1 : i1 + ahead], ahead)[ahead // 2 : ahead // 2 + i1 - i0]
        x = f[i0:i1]
        peak = np.flatnonzero((x > before) & (x >= after) & (x > FEATURE_FLOOR))
        return [self._candidate(int(k) + first, float(x[k])) for k in peak]

    def _candidate(self, p: int, height: float) -> _Candidate:
        h = self._hist
        slope = float(h.window("slope", p - self._width + 1, p + 1).max(initial=0.0))
        start = p - self._locate_back
        seg = h.window("locate", start, p + 1)
        k = int(np.argmax(np.abs(seg)))
        r_sample = max(start, h.base) + k
        return _Candidate(p, p + self._ahead, height, slope, r_sample, float(seg[k]))

    # -- decisions ------------------------------------------------------------------

    @property
    def threshold(self) -> float:
        noise = sum(self._noise_heights) / len(self._noise_heights) if self._noise_heights else 0.0
        return noise + THRESHOLD_FRACTION * (self._qrs_level() - noise)

    def _qrs_level(self) -> float:
        return sum(self._qrs_heights) / len(self._qrs_heights) if self._qrs_heights else 0.0

    def _rr_mean(self) -> float:
        return sum(self._rr) / len(self._rr) if self._rr else self.fs

    def _accept(self, c: _Candidate, at: int, beats: list[Beat]) -> None:
        if self._last_peak is not None:
            rr = c.peak - self._last_peak
            if rr < 3 * self.fs:
                self._rr.append(rr)
        self._qrs_heights.append(c.height)
        self._beat_level = self._qrs_level()
        self._last_peak = c.peak
        self._last_r = c.r_sample
        self._last_slope = c.slope
        self._since_beat = []
        self._searched = False
        beats.append(Beat(c.r_sample, at, c.r_amplitude))

    def _is_t_wave(self, c: _Candidate) -> bool:
        return (
            self._last_peak is not None
            and c.peak - self._last_peak < self._t_window
            and c.slope < T_WAVE_SLOPE_RATIO * self._last_slope
        )

    def _repeats_last(self, c: _Candidate) -> bool:
        # The R search reaches back before the feature peak; a candidate whose largest
        # deflection is the last beat's R (a noisy tail just past the refractory period)
        # is not a new beat.
        return self._last_r is not None and c.r_sample <= self._last_r

    def _decide(self, c: _Candidate, at: int, beats: list[Beat]) -> None:
        if self._last_peak is not None and c.peak - self._last_peak < self._refractory:
            return
        if c.height > self.threshold and not self._is_t_wave(c) and not self._repeats_last(c):
            self._accept(c, at, beats)
            return
        self._noise_heights.append(c.height)
        self._since_beat.append(c)

    def _search_back(self, due: int, beats: list[Beat]) -> None:
        """A beat is overdue: accept the largest candidate above half the threshold."""
        floor = SEARCHBACK_FRACTION * self.threshold
        eligible = [
            c for c in self._since_beat
            if c.height > floor and not self._is_t_wave(c) and not self._repeats_last(c)
        ]
        if not eligible:
            self._searched = True
            return
        best = max(eligible, key=lambda c: c.height)
        later = [c for c in self._since_beat if c.peak - best.peak >= self._refractory]
        self._accept(best, due, beats)
        self._since_beat = later

    def _relearn(self, due: int) -> None:
        """After a long silence, rebuild the QRS level from what the feature shows now."""
        self._last_relearn = due
        recent = [c.height for c in self._since_beat if c.peak > due - RELEARN_S * self.fs]
        if recent:
            level = max(max(recent), RELEARN_DECAY * self._qrs_level(), RELEARN_MIN * self._beat_level)
            self._qrs_heights.clear()
            self._qrs_heights.append(level)
            self._searched = False

    def _run_timers(self, now: int, beats: list[Beat]) -> None:
        """Fire search-back and relearning, in time order, for every due time up to ``now``."""
        while self._last_peak is not None:
            timers = []
            if not self._searched:
                sb = self._last_peak + round(self.config.searchback_rr_factor * self._rr_mean())
                timers.append((max(sb, self._last_relearn or 0), 0))
            ref = max(self._last_peak, self._last_relearn or 0)
            timers.append((ref + round(RELEARN_S * self.fs), 1))
            due, which = min(timers)
            if due > now:
                return
            if which == 0:
                self._search_back(due, beats)
            else:
                self._relearn(due)

    def _finish_learning(self, beats: list[Beat]) -> None:
        learned = self._learning or []
        self._learning = None
        if learned:
            self._qrs_heights.append(max(c.height for c in learned))
        # The learning candidates are all decided now, at the end of learning.
        for c in learned:
            self._decide(c, max(c.decided_at, self._learn_end), beats)

    def _step(self, c: _Candidate, beats: list[Beat]) -> None:
        if self._learning is not None:
            if c.decided_at < self._learn_end:
                self._learning.append(c)
                return
            self._finish_learning(beats)
        self._run_timers(c.decided_at - 1, beats)
        self._decide(c, c.decided_at, beats)

    def process(self, x: np.ndarray) -> list[Beat]:
        x = np.asarray(x, dtype=np.float64).reshape(-1)
        if x.size == 0:
            return []
        self._hist.append(*self._features(x))
        beats: list[Beat] = []
        for c in self._find_candidates():
            self._step(c, beats)
        now = self._hist.end - 1
        if self._learning is not None and now >= self._learn_end:
            self._finish_learning(beats)
        if self._learning is None:
            self._run_timers(now, beats)
        return beats
