"""Ventricular fibrillation and flutter from the waveform, without beats.

During VF/flutter there are no QRS complexes to detect: the ECG is a fast, nearly
sinusoidal oscillation (flutter, 3-7 Hz) or an irregular one (fibrillation, 3-10 Hz).
Two classic measures from the shock-advisory literature are combined:

- **Threshold-crossing sample count** (TCSC, Arafat et al. 2009): the fraction of samples
  whose magnitude exceeds a fraction of the window's peak. A QRS complex is a narrow spike
  with a flat line between spikes (a small fraction); a fibrillatory wave is large most of
  the time (a large one).
- **Spectral concentration** (after Barro et al. 1989): VF/flutter puts most of its power
  around one dominant frequency between 2.5 and 10 Hz and little above 12 Hz, where a
  QRS complex's sharp edges put theirs. Broadband noise (muscle, electrode motion) spreads
  its power and fails this test even when its TCSC is high.

Each window is scored on its own; the engine asks for ``hold_s`` seconds of consecutive
VF windows (the bedside definition: a fibrillatory waveform for at least 4 s).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# Analysis window: 4 s gives 0.25 Hz resolution and holds several cycles at the lowest
# fibrillation frequency (2.5 Hz) and at least two beats of an ordinary rhythm.
WINDOW_S = 4.0
TCSC_LEVEL = 0.2  # Arafat's threshold, a fraction of the window's largest magnitude
VF_BAND_HZ = (2.5, 10.0)
HIGH_HZ = 12.0
TOTAL_BAND_HZ = (0.5, 30.0)
CONCENTRATION_HALFWIDTH_HZ = 1.0


@dataclass(frozen=True, slots=True)
class FibrillationFeatures:
    tcsc: float
    dominant_hz: float
    concentration: float
    high_fraction: float
    leakage: float


def features(x: np.ndarray, fs: float) -> FibrillationFeatures:
    """The VF measures of one window of the filtered ECG (mV)."""
    x = np.asarray(x, dtype=np.float64)
    x = x - x.mean()
    leak = vf_filter_leakage(x)
    peak = np.abs(x).max()
    tcsc = float(np.mean(np.abs(x) > TCSC_LEVEL * peak)) if peak > 0 else 0.0
    spec = np.abs(np.fft.rfft(x * np.hanning(x.size))) ** 2
    freqs = np.fft.rfftfreq(x.size, 1.0 / fs)
    total_band = (freqs >= TOTAL_BAND_HZ[0]) & (freqs <= TOTAL_BAND_HZ[1])
    total = spec[total_band].sum()
    if total <= 0:
        return FibrillationFeatures(tcsc, 0.0, 0.0, 0.0, leak)
    vf_band = (freqs >= VF_BAND_HZ[0]) & (freqs <= VF_BAND_HZ[1])
    dominant = float(freqs[vf_band][np.argmax(spec[vf_band])])
    near = np.abs(freqs - dominant) <= CONCENTRATION_HALFWIDTH_HZ
    concentration = float(spec[near].sum() / total)
    high = float(spec[total_band & (freqs > HIGH_HZ)].sum() / total)
    return FibrillationFeatures(tcsc, dominant, concentration, high, leak)


def vf_filter_leakage(x: np.ndarray) -> float:
    """Kuo and Dillman's VF filter: the signal's mean period N from the ratio of its mean
    magnitude to its mean slope, then the fraction of it that passes a notch at that period.
    A sine-like wave cancels against itself half a period later (leakage near 0); a train of
    QRS spikes does not (leakage near 1)."""
    d = np.abs(np.diff(x)).sum()
    if d <= 0:
        return 1.0
    n = int(np.floor(np.pi * np.abs(x).sum() / d + 0.5))
    n = max(1, min(n, x.size // 2))
    a, b = x[n:], x[:-n]
    den = (np.abs(a) + np.abs(b)).sum()
    return float(np.abs(a + b).sum() / den) if den > 0 else 1.0
