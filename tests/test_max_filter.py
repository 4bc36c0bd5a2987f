"""``max_filter.maximum_filter1d`` gives what ``scipy.ndimage.maximum_filter1d`` gives (it
calls the same compiled routine without the wrapper), on the detectors' real feature signals."""

from __future__ import annotations

import numpy as np
import pytest
import wfdb
from scipy import ndimage

from ecgmon.monitor.dsp.filters import StatefulSOS, bandpass_sos
from ecgmon.monitor.dsp.max_filter import maximum_filter1d


@pytest.mark.parametrize("mode", ["constant", "nearest"])
def test_equals_scipy(data_dir, mode):
    x = wfdb.rdrecord(str(data_dir / "mitdb" / "119"), channels=[0], sampto=360 * 60).p_signal[:, 0]
    feature = np.abs(StatefulSOS(bandpass_sos(360.0, 5.0, 15.0))(x))
    rng = np.random.default_rng(3)
    signals = [feature, feature[100:400], feature[::3], rng.normal(size=37), np.zeros(5), np.array([2.0])]
    with_nan = feature[:500].copy()
    with_nan[[3, 250, 251]] = np.nan
    signals.append(with_nan)
    for s in signals:
        for size in (1, 2, 57, 64, 65, 72, 73, 1000):
            expected = ndimage.maximum_filter1d(s, size, mode=mode)
            np.testing.assert_array_equal(maximum_filter1d(s, size, mode=mode), expected)


def test_other_inputs_take_the_public_function():
    x = np.arange(10, dtype=np.float32)
    np.testing.assert_array_equal(maximum_filter1d(x, 3), ndimage.maximum_filter1d(x, 3, mode="constant"))
    m = np.arange(12.0).reshape(3, 4)
    np.testing.assert_array_equal(maximum_filter1d(m, 3), ndimage.maximum_filter1d(m, 3, mode="constant"))
