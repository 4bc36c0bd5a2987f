"""Online heart-sound detection on the PCG envelope: sounds as envelope peaks above an
adaptive threshold, and S1/S2 by the cardiac cycle's asymmetry (systole, S1 to S2, is shorter
than diastole, S2 to S1).

Pure and stateful, fed the decimated envelope chunk by chunk; the peak search is vectorised
per block and Python runs once per sound. A peak is decided once ``HALF_WINDOW_S`` of
envelope after its block has arrived, so detection lags the sound by 0.16-0.36 s.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Literal

import numpy as np
from scipy.ndimage import maximum_filter1d

# A sound is the largest envelope value within +/- this time: shorter than any systole
# (about 0.22 s at 180 bpm) and longer than a split S2 (up to about 0.08 s).
HALF_WINDOW_S = 0.16
# Sounds are decided in blocks of this length (adds up to this much to the detection delay).
DECISION_BLOCK_S = 0.2
# The threshold follows the last few seconds: a few cycles, short enough to follow a moved stethoscope.
HISTORY_S = 4.0
# Threshold between the envelope's floor (median) and its loud part (98th percentile), in the
# log domain because heart-sound loudness varies tenfold between patients and positions.
THRESHOLD_FRACTION = 0.4


@dataclass(frozen=True, slots=True)
class HeartSound:
    """One detected heart sound: its envelope index (at the envelope's rate, from the stream's
    start), its time, ``kind`` once the next sound has labelled it, and its envelope height."""

    index: int
    time_s: float
    amplitude: float
    kind: Literal["S1", "S2"]


class HeartSoundDetector:
    """Finds heart sounds in a stream of envelope samples and labels them S1 or S2.

    ``feed`` returns the sounds labelled by this chunk: a sound is labelled when the sound
    after it is found (it needs both intervals around it), so labels come one sound late.
    ``time_offset_s`` is subtracted from every time, to undo the envelope filter's delay.
    """

    def __init__(self, fs: float, time_offset_s: float = 0.0) -> None:
        self.fs = float(fs)
        self.time_offset_s = time_offset_s
        self._w = max(1, int(round(HALF_WINDOW_S * self.fs)))
        self._hist_n = int(round(HISTORY_S * self.fs))
        self._block = max(1, int(round(DECISION_BLOCK_S * self.fs)))
        self._buf = np.zeros(0)
        self._buf_start = 0  # absolute index of _buf[0]
        self._next = 0  # first absolute index not yet decided
        # Unlabelled tail: the last two sounds (time, index, amplitude).
        self._recent: deque[tuple[float, int, float]] = deque(maxlen=2)
        self.last_sound_s: float | None = None
        self.sounds = 0

    def feed(self, env: np.ndarray) -> list[HeartSound]:
        env = np.asarray(env, dtype=np.float64)
        self._buf = np.concatenate([self._buf, env])
        end = self._buf_start + self._buf.size
        out: list[HeartSound] = []
        # Decide whole blocks at fixed absolute indices, each once the +/- w neighbourhood of
        # its last sample has arrived, with a threshold from the history up to that point:
        # so the sounds found never depend on how the envelope was chunked.
        while self._next + self._block + self._w <= end:
            out.extend(self._decide(self._next, self._next + self._block))
            self._next += self._block
        # Keep the threshold's history and the neighbourhood of undecided samples.
        keep = max(self._hist_n, end - self._next) + self._w
        if self._buf.size > keep:
            cut = self._buf.size - keep
            self._buf = self._buf[cut:]
            self._buf_start += cut
        return out

    def _decide(self, lo: int, hi: int) -> list[HeartSound]:
        """Sounds at absolute indices [lo, hi); the envelope up to hi + w has arrived."""
        stop = hi + self._w - self._buf_start
        buf = self._buf[max(0, stop - self._hist_n - self._w) : stop]
        first = self._buf_start + max(0, stop - self._hist_n - self._w)  # absolute index of buf[0]
        log_env = np.log(buf)
        floor, loud = np.percentile(log_env[-self._hist_n :], [50.0, 98.0])
        threshold = floor + THRESHOLD_FRACTION * (loud - floor)
        local_max = maximum_filter1d(buf, size=2 * self._w + 1, mode="nearest")
        # Strictly above everything just before it: a flat top counts once, at its start.
        left_max = maximum_filter1d(buf, size=self._w, origin=(self._w - 1) // 2, mode="nearest")
        left_max = np.concatenate([[-np.inf], left_max[:-1]])
        seg = slice(max(lo - first, 0), hi - first)
        peak = (buf[seg] >= local_max[seg]) & (buf[seg] > left_max[seg]) & (log_env[seg] > threshold)
        out: list[HeartSound] = []
        for i in np.flatnonzero(peak) + seg.start:
            out.extend(self._add_sound(int(i) + first, float(buf[i])))
        return out

    def _add_sound(self, index: int, amplitude: float) -> list[HeartSound]:
        t = index / self.fs - self.time_offset_s
        self.sounds += 1
        self.last_sound_s = t
        out: list[HeartSound] = []
        if len(self._recent) == 2:
            (t0, _, _), (t1, i1, a1) = self._recent
            # The middle sound ends the shorter interval when it is S2 (systole before it).
            kind: Literal["S1", "S2"] = "S2" if (t1 - t0) < (t - t1) else "S1"
            out.append(HeartSound(i1, t1, a1, kind))
        self._recent.append((t, index, amplitude))
        return out
