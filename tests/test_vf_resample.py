"""The VF detector's analysis window: resampling with the taps designed once per rate gives
exactly what ``resample_poly`` gives designing them on every call (the per-window design was a
measurable cost at 100 streams)."""

from __future__ import annotations

from fractions import Fraction

import numpy as np
import pytest
import wfdb
from scipy.signal import resample_poly

from ecgmon.monitor.alarms.fibrillation import ANALYSIS_FS, WINDOW_S, analysis_window
from ecgmon.monitor.dsp.filters import ECGFilter


@pytest.mark.parametrize("db, record", [("mitdb", "207"), ("svdb", "800")])
def test_cached_taps_give_resample_polys_output(data_dir, db, record):
    rec = wfdb.rdrecord(str(data_dir / db / record), channels=[0], sampto=130 * 360)
    fs = float(rec.fs)
    y = ECGFilter(fs)(rec.p_signal[: int(120 * fs), 0])
    ratio = Fraction(ANALYSIS_FS / fs).limit_denominator(1000)
    n = round(WINDOW_S * fs)
    for start in range(0, y.size - n, round(7.3 * fs)):
        w = y[start : start + n]
        expected = resample_poly(w, ratio.numerator, ratio.denominator)
        np.testing.assert_array_equal(analysis_window(w, fs), expected)
    # The cached taps stay as designed however often they are used.
    np.testing.assert_array_equal(analysis_window(y[:n], fs), resample_poly(y[:n], ratio.numerator, ratio.denominator))
