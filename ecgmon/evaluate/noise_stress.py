"""Noise-stress records in the manner of the MIT-BIH Noise Stress Test Database: a clean
record plus recorded noise (``nstdb`` ``em`` electrode motion, ``ma`` muscle, ``bw``
baseline wander) scaled to a signal-to-noise ratio, added in alternating two-minute
segments after the first five minutes, as the ``nst`` program builds 118e06, 119e00, ….

The SNR follows ``nst``: the signal's power is that of a sine with the median
peak-to-peak amplitude of the QRS complexes (ptp² / 8), the noise's is its mean square
over the samples it is added to.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ecgmon.config import DataConfig
from ecgmon.replay.records import RecordError, load_record

CLEAN_START_S = 300.0
SEGMENT_S = 120.0
QRS_HALF_S = 0.05  # the QRS complex's peak-to-peak is taken within 50 ms of the R peak
NOISES = ("em", "ma", "bw")


@dataclass(frozen=True, slots=True)
class NoiseStress:
    noise: str  # "em", "ma" or "bw"
    snr_db: float


def noise_mask(n: int, fs: float) -> np.ndarray:
    """Samples that get noise: two minutes on, two off, from five minutes in."""
    t = np.arange(n) / fs - CLEAN_START_S
    return (t >= 0) & (np.floor(t / SEGMENT_S) % 2 == 0)


def add_noise(
    signal: np.ndarray, r_samples: np.ndarray, fs: float, stress: NoiseStress, data: DataConfig,
    noise_offset_s: float = 0.0,
) -> tuple[np.ndarray, np.ndarray]:
    """``signal`` (n, channels) with the noise added per channel, and the noisy-sample mask.
    ``noise_offset_s``: each sample gets the noise recorded that long before it (cyclically),
    so that a model can learn from other stretches of the noise than the ones it is tested on
    (120 s: the off-segments' noise in the on-segments).

    Raises RecordError when the nstdb noise record cannot be read.
    """
    if stress.noise not in NOISES:
        raise RecordError(f"unknown noise '{stress.noise}': one of {', '.join(NOISES)}")
    noise = load_record(f"nstdb:{stress.noise}", data, annotations=False)
    if noise.fs != fs:
        raise RecordError(f"nstdb:{stress.noise} is sampled at {noise.fs:g} Hz, the record at {fs:g} Hz")
    n = signal.shape[0]
    # A record longer than the noise takes it again from the start.
    shifted = np.roll(noise.signal, round(noise_offset_s * fs), axis=0)
    z = np.resize(shifted, (n, noise.signal.shape[1])).astype(np.float64)
    mask = noise_mask(n, fs)
    out = np.asarray(signal, dtype=np.float64).copy()
    half = round(QRS_HALF_S * fs)
    r = r_samples[(r_samples >= half) & (r_samples < n - half)]
    for ch in range(out.shape[1]):
        zc = z[:, ch % z.shape[1]]
        zc = zc - zc[mask].mean() if mask.any() else zc
        ptp = [np.ptp(out[k - half : k + half, ch]) for k in r[:: max(1, r.size // 500)]]
        if not ptp or not mask.any() or not zc[mask].any():
            continue
        power = float(np.median(ptp)) ** 2 / 8.0
        # The noise's power where it is added, so the SNR holds for what the record gets.
        gain = np.sqrt(power / float(np.mean(zc[mask] ** 2)) / 10 ** (stress.snr_db / 10.0))
        out[:, ch] += gain * zc * mask
    return out.astype(np.float32), mask
