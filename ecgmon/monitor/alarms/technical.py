"""Technical conditions from one analysis window of the raw and filtered ECG: leads off or
flat line, signal loss (missing samples), clipping, and noise too high to analyse.

Noise is judged against the patient's own clean signal rather than an absolute limit: the
median slope of the filtered ECG is small between QRS complexes (P and T waves are slow)
and grows with muscle noise and electrode motion. Absolute measures (kurtosis, slope
ratios) overlap between clean paced or wide-QRS rhythms and noisy sinus rhythm on MIT-BIH,
so the window's median slope is compared with its running median over the last windows
that were not noisy.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

import numpy as np

from ecgmon.config import AlarmsConfig
from ecgmon.monitor.dsp.order_stats import median

# Leads off: peak-to-peak over this much of the newest raw signal below leads_off_mv.
FLAT_S = 2.0
# Windows of history that make the noise baseline (5 minutes at 1 s steps) and how many
# are needed before noise is judged at all.
NOISE_HISTORY = 300
NOISE_MIN_HISTORY = 10


@dataclass(frozen=True, slots=True)
class TechnicalState:
    leads_off: bool
    signal_loss: bool
    clipping: bool
    noise_ratio: float | None  # window median slope over the patient's baseline


class TechnicalMonitor:
    def __init__(self, fs: float, config: AlarmsConfig) -> None:
        self.fs = fs
        self.cfg = config
        self._slopes: deque[float] = deque(maxlen=NOISE_HISTORY)

    def assess(self, raw: np.ndarray, filtered: np.ndarray, step: int) -> TechnicalState:
        """One window (``raw``/``filtered`` end at the same sample; NaN = missing samples)."""
        cfg = self.cfg
        newest = raw[-step:]
        missing = ~np.isfinite(newest)
        signal_loss = bool(missing.mean() > 0.5)
        valid = raw[np.isfinite(raw)]
        flat = raw[-round(FLAT_S * self.fs):]
        flat = flat[np.isfinite(flat)]
        leads_off = bool(not signal_loss and flat.size > 0 and np.ptp(flat) < cfg.leads_off_mv)
        clipping = False
        if valid.size and not leads_off:
            hi, lo = valid.max(), valid.min()
            # ADC saturation: many samples sit exactly at the extremes (a QRS peak touches
            # its maximum for a sample or two).
            at_rail = np.count_nonzero(valid >= hi) + np.count_nonzero(valid <= lo)
            clipping = bool(at_rail / valid.size > cfg.clipping_fraction)
        ratio = None
        if not (signal_loss or leads_off) and np.isfinite(filtered).all():
            slope = median(np.abs(np.diff(filtered)))
            if len(self._slopes) >= NOISE_MIN_HISTORY:
                base = median(self._slopes)
                ratio = slope / base if base > 0 else None
            if ratio is None or ratio < cfg.noise_ratio:
                self._slopes.append(slope)
        return TechnicalState(leads_off, signal_loss, clipping, ratio)
