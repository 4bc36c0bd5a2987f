"""Causal IIR filters that keep their state across chunks (``sosfilt`` with ``zi``).

Filtering a signal in pieces gives the same output, to float tolerance, as filtering it
whole: the state after one chunk is the initial state of the next.

At live chunk sizes (36 samples a chunk at 360 Hz) ``signal.sosfilt``'s Python wrapper costs
far more than the filtering: it validates the sections, moves axes and copies the state on
every call (bench/ward.py's profile: ``sosfilt`` was 18 % of the daemon at 100 streams). So
``StatefulSOS`` keeps its state in the layout of scipy's compiled kernel and calls the kernel
itself, the very computation ``sosfilt`` ends in, so the output is bit for bit the same
(tests/test_filters.py checks it against ``sosfilt``); where that private kernel is missing
it falls back to ``sosfilt``.
"""

from __future__ import annotations

import math

import numpy as np
from scipy import signal

from ecgmon.config import DspConfig

try:  # scipy's compiled kernel behind sosfilt: in place on (rows, n) and (rows, sections, 2)
    from scipy.signal._sosfilt import _sosfilt as _sosfilt_kernel
except ImportError:  # pragma: no cover - another scipy layout: the public wrapper does it all
    _sosfilt_kernel = None


def bandpass_sos(fs: float, low_hz: float, high_hz: float, order: int = 2) -> np.ndarray:
    """Butterworth bandpass as second-order sections; the upper edge is clipped below Nyquist."""
    high = min(high_hz, 0.45 * fs)
    return signal.butter(order, [low_hz, high], btype="bandpass", fs=fs, output="sos")


def notch_sos(fs: float, mains_hz: float, q: float = 30.0) -> np.ndarray:
    b, a = signal.iirnotch(mains_hz, q, fs=fs)
    return signal.tf2sos(b, a)


class StatefulSOS:
    """An SOS filter applied chunk by chunk along axis 0 of ``(n, channels)`` arrays."""

    def __init__(self, sos: np.ndarray, channels: int = 1) -> None:
        # Validated once here (sosfilt checks the shape: (sections, 6), a0 = 1), not per chunk.
        signal.sosfilt(sos, np.zeros(1))
        self.sos = np.ascontiguousarray(sos, dtype=np.float64)
        # The state in the kernel's layout, (channels, sections, 2) C-contiguous: sosfilt's
        # (sections, 2, channels) moved, so no per-chunk reshaping or copying.
        self._zi = np.zeros((channels, self.sos.shape[0], 2))
        self._primed = False
        self._last = np.zeros(channels)

    def __call__(self, x: np.ndarray) -> np.ndarray:
        x = np.asarray(x)
        squeeze = x.ndim == 1
        # What sosfilt does after its checks: filter a C-contiguous (channels, n) float64 copy
        # and the state in place. The copy is made first and everything else works on it.
        rows = np.array(x[None, :] if squeeze else x.T, dtype=np.float64, order="C")
        if rows.shape[1] == 0:
            return rows[0] if squeeze else rows.T
        self._hold_finite(rows)
        if not self._primed:
            # Start from the steady state for the first sample's level so that a DC
            # offset does not ring through the first seconds.
            zi = signal.sosfilt_zi(self.sos)[:, :, None] * rows[None, None, :, 0]
            self._zi = np.ascontiguousarray(np.moveaxis(zi, 2, 0))
            self._primed = True
        if _sosfilt_kernel is None:
            y, zi = signal.sosfilt(self.sos, rows, axis=1, zi=np.moveaxis(self._zi, 0, 1))
            self._zi = np.ascontiguousarray(np.moveaxis(zi, 1, 0))
            return y[0] if squeeze else y.T
        _sosfilt_kernel(self.sos, rows, self._zi)
        return rows[0] if squeeze else rows.T

    def _hold_finite(self, rows: np.ndarray) -> None:
        """Replace NaN/inf in ``rows`` (channels, n) by the channel's last finite input, in
        place: one NaN would poison the state for good."""
        # A finite sum means every sample is finite (a NaN or an infinity makes the sum NaN or
        # infinite): one reduction instead of a mask, for the chunks that have nothing to hold.
        if not math.isfinite(np.add.reduce(rows, axis=None)):
            bad = ~np.isfinite(rows)
            for ch in np.flatnonzero(bad.any(axis=1)):
                idx = np.where(bad[ch], 0, np.arange(rows.shape[1]))
                np.maximum.accumulate(idx, out=idx)
                filled = rows[ch, idx]
                # Samples before the first finite one in this chunk take the last finite input.
                filled[~np.isfinite(filled)] = self._last[ch]
                rows[ch] = filled
        self._last = rows[:, -1].copy()


class ECGFilter:
    """The display/analysis chain: bandpass, then an optional mains notch."""

    def __init__(
        self,
        fs: float,
        highpass_hz: float = 0.5,
        lowpass_hz: float = 40.0,
        order: int = 2,
        notch_hz: float = 0.0,
        notch_q: float = 30.0,
        channels: int = 1,
    ) -> None:
        sos = bandpass_sos(fs, highpass_hz, lowpass_hz, order)
        if notch_hz and notch_hz < fs / 2:
            sos = np.vstack([sos, notch_sos(fs, notch_hz, notch_q)])
        self._filter = StatefulSOS(sos, channels)

    @classmethod
    def configured(cls, fs: float, dsp: DspConfig) -> ECGFilter:
        """The chain ``[dsp]`` sets: what a stream pipeline runs and training reproduces."""
        return cls(fs, dsp.highpass_hz, dsp.lowpass_hz, dsp.order, dsp.notch_hz, dsp.notch_q)

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return self._filter(x)
