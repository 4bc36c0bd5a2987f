"""``order_stats.median`` and ``percentile_rows`` are ``np.median`` and ``np.percentile`` bit for
bit, only cheaper (they replace numpy's in the alarm engine's per-beat and per-window measures,
whose outputs must not change)."""

from __future__ import annotations

import numpy as np
import pytest
import wfdb

from ecgmon.monitor.dsp.beat_template import BeatTemplate
from ecgmon.monitor.dsp.filters import ECGFilter
from ecgmon.monitor.dsp.order_stats import median, percentile_rows


def _same(a: float, b: float) -> bool:
    return a == b or (np.isnan(a) and np.isnan(b))


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_equals_numpy_on_random_arrays(dtype):
    rng = np.random.default_rng(16)
    for n in [*range(1, 40), 90, 91, 300]:
        for _ in range(50):
            x = (rng.normal(size=n) * rng.choice([1e-3, 1.0, 1e3])).astype(dtype)
            if rng.random() < 0.3:
                x = np.round(x, 1)  # ties
            expected = np.median(x)
            got = median(x)
            # float32 in, float32 arithmetic, as numpy: subtracting either from x agrees.
            assert np.array_equal(x - expected, x - got), (n, dtype)


def test_nan_and_integers_and_sequences():
    assert np.isnan(median(np.array([1.0, np.nan, 3.0])))
    assert np.isnan(median(np.array([np.nan, 1.0])))
    rng = np.random.default_rng(1)
    for n in range(1, 30):
        xi = rng.integers(-1000, 1000, size=n)
        assert median(xi) == float(np.median(xi))
        assert median(list(xi.astype(float))) == float(np.median(xi.astype(float)))
    with pytest.raises(IndexError):
        median(np.zeros(0))


def test_equals_numpy_on_real_complexes_and_rr(data_dir):
    """What the alarm engine takes medians of: QRS complexes (beat_template) and RR intervals."""
    rec = wfdb.rdrecord(str(data_dir / "mitdb" / "208"), channels=[0], sampto=360 * 120)
    ann = wfdb.rdann(str(data_dir / "mitdb" / "208"), "atr", sampto=360 * 120)
    y = ECGFilter(360.0)(rec.p_signal[:, 0])
    tpl = BeatTemplate(360.0)
    checked = 0
    for r in ann.sample:
        lo, hi = r - tpl.before, r + tpl.after
        if lo >= 0 and hi <= y.size:
            w = y[lo:hi]
            assert _same(median(w), float(np.median(w)))
            checked += 1
    assert checked > 100
    rr = np.diff(ann.sample / 360.0)
    for k in range(len(rr) - 20):
        for span in (8, 9, 16):
            assert median(rr[k : k + span]) == float(np.median(rr[k : k + span]))


def test_percentile_rows_equals_numpy_on_random_arrays():
    rng = np.random.default_rng(99)
    for n in [1, 2, 3, 7, 100, 101, 999, 1000]:
        x = rng.normal(size=(4, n)) * rng.choice([1e-3, 1.0, 1e3])
        x[1] = np.round(x[1], 1)
        for q in (0, 1, 25, 50, 75, 99, 99.5, 100):
            np.testing.assert_array_equal(percentile_rows(x, q), np.percentile(x, q, axis=1))
    x = rng.normal(size=(3, 50))
    x[1, 7] = np.nan
    np.testing.assert_array_equal(percentile_rows(x, 99), np.percentile(x, 99, axis=1))


def test_percentile_rows_equals_numpy_on_vf_windows(data_dir):
    """The VF detector's two percentiles (magnitude and slope, 99th) on real 4 s windows."""
    from ecgmon.monitor.alarms.fibrillation import analysis_window

    for db, record in (("mitdb", "207"), ("cudb", "cu01")):
        rec = wfdb.rdrecord(str(data_dir / db / record), channels=[0], sampto=300 * 250)
        fs = float(rec.fs)
        y = ECGFilter(fs)(rec.p_signal[:, 0])
        n = round(4 * fs)
        for start in range(0, y.size - n, round(fs)):
            w = analysis_window(y[start : start + n], fs)[None, :]
            x = w - w.mean(axis=1, keepdims=True)
            for v in (np.abs(x), np.abs(np.diff(x, axis=1))):
                np.testing.assert_array_equal(percentile_rows(v, 99), np.percentile(v, 99, axis=1))
