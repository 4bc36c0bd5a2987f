"""Causal filters keep their state across chunks: the output does not depend on chunking."""

from __future__ import annotations

import numpy as np
import pytest
import wfdb
from scipy import signal

from ecgmon.monitor.dsp.filters import ECGFilter, StatefulSOS, bandpass_sos, notch_sos


def _filter_in_chunks(x: np.ndarray, chunk: int, **kw) -> np.ndarray:
    f = ECGFilter(360.0, **kw)
    return np.concatenate([f(x[i : i + chunk]) for i in range(0, len(x), chunk)])


@pytest.mark.parametrize("notch", [0, 60])
def test_output_identical_for_any_chunking(data_dir, notch):
    x = wfdb.rdrecord(str(data_dir / "mitdb" / "100"), channels=[0], sampto=3600).p_signal[:, 0]
    whole = _filter_in_chunks(x, len(x), notch_hz=notch)
    for chunk in (1, 7, 360):
        np.testing.assert_allclose(_filter_in_chunks(x, chunk, notch_hz=notch), whole, atol=1e-9)


def test_passband_and_stopbands():
    fs = 360.0
    t = np.arange(int(20 * fs)) / fs
    f = ECGFilter(fs, notch_hz=60)
    y = f(np.sin(2 * np.pi * 10 * t) + np.sin(2 * np.pi * 60 * t) + 2.0 + 0.5 * np.sin(2 * np.pi * 0.05 * t))
    tail = y[int(10 * fs) :]
    reference = np.sin(2 * np.pi * 10 * t[int(10 * fs) :])
    # 10 Hz passes; DC, 0.05 Hz wander and 60 Hz mains are gone: what is left is the 10 Hz tone.
    assert np.std(tail) == pytest.approx(np.std(reference), rel=0.05)
    spectrum = np.abs(np.fft.rfft(tail))
    freqs = np.fft.rfftfreq(tail.size, 1 / fs)
    assert spectrum[np.argmin(np.abs(freqs - 60))] < 0.01 * spectrum[np.argmin(np.abs(freqs - 10))]


def test_nan_input_does_not_poison_the_state():
    f = ECGFilter(360.0)
    x = np.sin(np.arange(3600) / 20.0)
    x[100:110] = np.nan
    x[2000] = np.inf
    y = np.concatenate([f(x[:105]), f(x[105:])])
    assert np.isfinite(y).all()


@pytest.mark.parametrize("chunk", [1, 7, 36, 360, 3600])
def test_stateful_sos_is_bitwise_sosfilt(data_dir, chunk):
    """StatefulSOS calls scipy's compiled kernel itself (the wrapper's per-call cost dominated
    live chunks): on both leads of a real record, with a gap of NaNs that the filter holds at
    the last value, its output at any chunking is exactly what ``sosfilt`` gives on the whole
    held signal from the same steady-state start."""
    x = wfdb.rdrecord(str(data_dir / "mitdb" / "100"), sampto=3600).p_signal
    x[1000:1040, 1] = np.nan  # one lead drops out for 40 samples
    sos = np.vstack([bandpass_sos(360.0, 0.5, 40.0), notch_sos(360.0, 60.0)])
    f = StatefulSOS(sos, channels=2)
    got = np.concatenate([f(x[i : i + chunk]) for i in range(0, len(x), chunk)])
    held = x.copy()
    held[1000:1040, 1] = held[999, 1]
    zi = signal.sosfilt_zi(sos)[:, :, None] * held[0][None, None, :]
    want, _ = signal.sosfilt(sos, held, axis=0, zi=zi)
    np.testing.assert_array_equal(got, want)
    # One channel in, one channel out, the same numbers as that column filtered alone.
    g = StatefulSOS(sos)
    one = np.concatenate([g(held[i : i + chunk, 0]) for i in range(0, len(held), chunk)])
    assert one.ndim == 1
    np.testing.assert_array_equal(one, want[:, 0])
