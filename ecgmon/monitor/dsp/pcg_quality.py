"""A heart-sound signal-quality index, 0 (unusable) to 1 (clean), for one stretch of audio.

A heart beats periodically, so a clean recording's envelope correlates strongly with itself
one cardiac cycle later (Springer et al. 2016 use this "degree of periodicity" as their main
quality feature); noise, speech and rubbing do not. Clipped and silent audio are penalised
outright. Pure functions of one window: the pipeline calls them on its ring buffers.
"""

from __future__ import annotations

import numpy as np

from ecgmon.monitor.dsp.pcg_rate import autocorrelation

# A heart repeats at some cycle of 0.3-2 s (30-200 bpm).
MIN_CYCLE_S, MAX_CYCLE_S = 0.3, 2.0
# Autocorrelation peaks below FLOOR are noise, above FULL are as periodic as real PCG gets.
PERIODICITY_FLOOR = 0.15
PERIODICITY_FULL = 0.6
# Audio this close to full scale counts as clipped; a window with CLIP_LIMIT of it clipped scores 0.
CLIP_LEVEL = 0.999
CLIP_LIMIT = 0.05
# Below this RMS (full scale) there is no stethoscope signal at all (-70 dBFS).
SILENCE_RMS = 10 ** (-70 / 20)
# Quality is judged on the last QUALITY_WINDOW_S of audio (a few cardiac cycles).
QUALITY_WINDOW_S = 5.0


def periodicity(env: np.ndarray, fs: float) -> float:
    """Largest normalised autocorrelation of the envelope at one plausible cardiac cycle."""
    ac = autocorrelation(np.log(np.asarray(env, dtype=np.float64)))
    lo, hi = int(MIN_CYCLE_S * fs), min(int(MAX_CYCLE_S * fs), ac.size - 1)
    if hi <= lo or ac[0] <= 0:
        return 0.0
    # Unbiased: divide each lag by its overlap, so long lags are not penalised for being long.
    ac = ac / (ac.size - np.arange(ac.size)) / (ac[0] / ac.size)
    return float(np.clip(ac[lo : hi + 1].max(), 0.0, 1.0))


def quality_index(audio: np.ndarray, env: np.ndarray, env_fs: float) -> float:
    """Quality of a window: its raw audio (full scale) and its envelope at ``env_fs``."""
    audio = np.asarray(audio, dtype=np.float64)
    if audio.size == 0 or np.sqrt(np.mean(audio**2)) < SILENCE_RMS:
        return 0.0
    clipped = float(np.mean(np.abs(audio) >= CLIP_LEVEL))
    clip_factor = max(0.0, 1.0 - clipped / CLIP_LIMIT)
    p = (periodicity(env, env_fs) - PERIODICITY_FLOOR) / (PERIODICITY_FULL - PERIODICITY_FLOOR)
    return float(np.clip(p, 0.0, 1.0) * clip_factor)
