"""The QRS detector's candidate search takes the running maxima over just the span its windows
cover, with views instead of index arrays; the beats are those of the straightforward search
over the whole zero-padded history (kept here as the reference) on real records, any chunking."""

from __future__ import annotations

import numpy as np
import pytest
import wfdb
from scipy import ndimage

from ecgmon.monitor.dsp import qrs
from ecgmon.monitor.dsp.qrs import FEATURE_FLOOR, QRSDetector


class _Reference(QRSDetector):
    """The search as first written: both running maxima over the whole history."""

    def _find_candidates(self) -> list:
        h = self._hist
        last = h.end - 1 - self._ahead
        first = max(self._next_peak, h.base + 1)
        if last < first:
            return []
        self._next_peak = last + 1
        f = np.concatenate([np.zeros(self._back), h.feature])
        i = np.arange(first, last + 1) - h.base + self._back
        before = ndimage.maximum_filter1d(f, self._back, mode="constant")[i - self._back + self._back // 2]
        after = ndimage.maximum_filter1d(f, self._ahead, mode="constant")[i + 1 + self._ahead // 2]
        peak = (f[i] > before) & (f[i] >= after) & (f[i] > FEATURE_FLOOR)
        return [self._candidate(int(j) - self._back + h.base, float(f[j])) for j in i[peak]]


def _beats(det: QRSDetector, x: np.ndarray, chunk: int) -> list[qrs.Beat]:
    out: list[qrs.Beat] = []
    for i in range(0, x.size, chunk):
        out += det.process(x[i : i + chunk])
    return out


@pytest.mark.parametrize("db, record", [("mitdb", "203"), ("mitdb", "207"), ("svdb", "800"), ("cudb", "cu01")])
def test_same_beats_as_the_whole_history_search(data_dir, db, record):
    rec = wfdb.rdrecord(str(data_dir / db / record), channels=[0], sampto=120 * 360)
    fs = float(rec.fs)
    x = rec.p_signal[: int(120 * fs), 0]
    for chunk in (7, 36, 1000):
        expected = _beats(_Reference(fs), x, chunk)
        assert len(expected) > 50
        assert _beats(QRSDetector(fs), x, chunk) == expected, f"{db} {record}, chunks of {chunk}"
