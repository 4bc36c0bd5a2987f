"""Signal quality from the agreement of two QRS detectors of different kinds (bSQI, Li &
Clifford 2008; the PhysioNet/CinC 2015 false-alarm challenge entries).

On a clean ECG the main detector and the curve-length detector find the same beats; noise
that looks like beats to one of them (electrode motion, muscle) makes them disagree. The
agreement over the last ``WINDOW_S`` is computed every analysis step from the beats both
had decided by then, so it does not depend on chunking or on when beat classes come back.
A ventricular run in a stretch of poor agreement needs firmer evidence before it is V-tach
(``beats.BeatRhythm``): electrode motion makes runs of wide, odd "beats" that the
morphology cues alone would call ventricular.
"""

from __future__ import annotations

from collections import deque

import numpy as np

from ecgmon.monitor.dsp.curve_length_qrs import LEARN_S, CurveLengthDetector, agreement

WINDOW_S = 10.0
# Beats within this much of the window's end are left out: either detector may still be
# deciding them (the main one's search-back comes later; it is then simply not counted).
MARGIN_S = 0.5
KEEP = 64  # agreement values kept (one per analysis step)
# Fewer main-detector beats than this in a window (asystole, a pause, extreme brady) and the
# agreement is not judged: the second detector lowers its threshold into the baseline when
# beats stop, and a pause must stay an asystole alarm, not become "noise".
MIN_BEATS = 6
# Below this agreement the signal is too noisy to analyse (the technical noise alarm, which
# suppresses the physiological ones). On MIT-BIH clean signal and in VT the agreement stays
# above 0.85 in 95 % of windows; under electrode motion at 6 dB it is below 0.75 in 30-60 %.
NOISE_AGREEMENT = 0.8


class BeatAgreement:
    """bSQI of one stream, step by step on the signal clock."""

    def __init__(self, fs: float, start: int = 0) -> None:
        self.fs = fs
        self._second = CurveLengthDetector(fs)
        # The first window judged lies wholly after both detectors have learnt.
        self._ready = start + round((LEARN_S + WINDOW_S + MARGIN_S) * fs)
        self._start = start  # the second detector counts samples from its first one
        self._window = round(WINDOW_S * fs)
        self._margin = round(MARGIN_S * fs)
        self._main: deque[tuple[int, int]] = deque()  # (R sample, decision sample)
        self._marks: deque[tuple[int, int]] = deque()
        self._values: deque[tuple[int, float | None]] = deque(maxlen=KEEP)  # (window end, bSQI)

    def feed(self, filtered: np.ndarray, beats: list[tuple[int, int]]) -> None:
        """One chunk of the filtered ECG and the main detector's beats decided in it."""
        self._marks.extend((m + self._start, d + self._start) for m, d in self._second.process(filtered))
        self._main.extend(beats)

    def check(self, end: int) -> float | None:
        """bSQI over ``WINDOW_S`` before ``end`` less the margin, from beats decided before ``end``
        (None while the detectors learn, or with too few beats to judge)."""
        hi = end - self._margin
        lo = hi - self._window
        for q in (self._main, self._marks):
            # Roughly in R order (a search-back beat comes late): drop what is surely behind.
            while q and q[0][0] < lo - self._window:
                q.popleft()
        main, second = (
            np.array(sorted(r for r, d in q if lo <= r < hi and d < end), dtype=np.int64)
            for q in (self._main, self._marks)
        )
        value = agreement(main, second, self.fs) if end >= self._ready and main.size >= MIN_BEATS else None
        self._values.append((end, value))
        return value

    def at(self, sample: int) -> float | None:
        """The bSQI of the last step at or before ``sample`` (None before the first)."""
        for end, value in reversed(self._values):
            if end <= sample:
                return value
        return None
