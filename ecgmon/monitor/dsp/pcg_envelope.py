"""Heart-sound (PCG) front end: a causal 25-400 Hz Butterworth bandpass and a causal
homomorphic envelope, decimated to a low rate for detection and display.

Pure and stateful: the filter states travel between chunks, and decimation keeps the phase
of absolute sample indices, so the output does not depend on how the audio was chunked.
"""

from __future__ import annotations

import numpy as np
from scipy import signal

PCG_FS = 2000.0
BAND_HZ = (25.0, 400.0)
BAND_ORDER = 4
# Springer et al. (2016) smooth log|x| at 8 Hz; a second-order causal low-pass keeps the
# envelope's delay short (about 28 ms of group delay at DC) while removing the carrier.
ENVELOPE_LOWPASS_HZ = 8.0
ENVELOPE_FS = 50.0
# Added to |x| before the log so digital silence stays finite (about -140 dBFS).
_LOG_FLOOR = 1e-7


def envelope_delay_s(fs_env_lowpass: float = ENVELOPE_LOWPASS_HZ) -> float:
    """Group delay at DC of the 2nd-order Butterworth envelope low-pass: sqrt(2) / (2 pi fc)."""
    return float(np.sqrt(2.0) / (2.0 * np.pi * fs_env_lowpass))


class PcgBandpass:
    """Causal 25-400 Hz Butterworth bandpass of 2 kHz audio, state kept between chunks."""

    def __init__(self, fs: float = PCG_FS, band: tuple[float, float] = BAND_HZ, order: int = BAND_ORDER) -> None:
        if band[1] >= fs / 2:
            raise ValueError(f"bandpass top {band[1]:g} Hz needs a rate above {2 * band[1]:g} Hz, got {fs:g}")
        self.fs = float(fs)
        self._sos = signal.butter(order, band, btype="bandpass", fs=fs, output="sos")
        # Audio starts from silence, so a zero state is the right start (no step transient).
        self._zi = np.zeros((self._sos.shape[0], 2))

    def __call__(self, x: np.ndarray) -> np.ndarray:
        y, self._zi = signal.sosfilt(self._sos, np.asarray(x, dtype=np.float64), zi=self._zi)
        return y


class HomomorphicEnvelope:
    """exp(low-pass(log|x|)) of bandpassed audio, every ``decimation``-th sample.

    Homomorphic filtering scales with the signal (a louder stethoscope gives a proportionally
    larger envelope), so the detector's thresholds can be relative. Output sample k is input
    sample ``k * decimation`` counted from the stream's start, whatever the chunking.
    """

    def __init__(self, fs: float = PCG_FS, out_fs: float = ENVELOPE_FS, lowpass_hz: float = ENVELOPE_LOWPASS_HZ) -> None:
        self.decimation = int(round(fs / out_fs))
        if self.decimation < 1 or abs(fs / self.decimation - out_fs) > 1e-6 * out_fs:
            raise ValueError(f"envelope rate {out_fs:g} Hz must divide the audio rate {fs:g} Hz")
        self.fs = fs / self.decimation
        self._sos = signal.butter(2, lowpass_hz, btype="lowpass", fs=fs, output="sos")
        # Start the low-pass at the log floor, as if the audio had been silent before.
        self._zi = signal.sosfilt_zi(self._sos) * np.log(_LOG_FLOOR)
        self._n = 0  # input samples seen, for the decimation phase

    def __call__(self, bandpassed: np.ndarray) -> np.ndarray:
        log_mag = np.log(np.abs(bandpassed) + _LOG_FLOOR)
        smooth, self._zi = signal.sosfilt(self._sos, log_mag, zi=self._zi)
        first = (-self._n) % self.decimation
        self._n += bandpassed.size
        return np.exp(smooth[first :: self.decimation])
