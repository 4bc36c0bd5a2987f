"""Ventricular fibrillation and flutter from the waveform, without beats.

During VF/flutter there are no QRS complexes to detect: the ECG is a fast, nearly
sinusoidal oscillation (flutter, 2-7 Hz) or an irregular one (fibrillation, 3-10 Hz). Each
``WINDOW_S`` window of the filtered ECG (every ``STEP_S``, resampled to ``ANALYSIS_FS`` so
that every stream rate 125-1000 Hz is measured alike) gets 22 classic measures from the
shock-advisory literature and 11 measures of how alike successive cycles are, and a small
network (33 -> 8 tanh -> 1, three fits averaged, weights in ``vf_model.py``) turns them into
P(VF). An alarm needs the mean P(VF) of the last ``HOLD_WINDOWS`` windows at ``P_VF`` or
more, a window with more than ``HIGH_MAX`` of its power above 12 Hz (muscle noise) counting
0: a mean rather than every window over the threshold, since P(VF) wavers within long
coarse-VF episodes (CUDB cu04, cu06) that a run of windows missed. Or one window that passes
the single-window flutter rule the engine used before the network (``flutter``: large most
of the time, its power around one frequency of 2.5 Hz or more, sine-like) with P(VF) of at
least ``FLUTTER_P``: the network needs several windows and misses a flutter shorter than
that (mitdb 207's 4.5 s run at 242.1 s), the rule catches it; alone, it also fired on a
regular wide-complex tachycardia (cu09, P(VF) 0.3-0.8). A window the network calls VF is not
"noise: cannot analyse" however busy it is, unless a second network fitted with muscle noise
(the noise veto, ``VETO_NETS``) disagrees: the first never met noise and calls much of heavy
muscle noise VF. The measures:

- threshold-crossing sample counts at 10, 20 and 50 % of the window's peak (TCSC, Arafat
  et al. 2009) and the mean magnitude over the peak (MEA): a QRS complex is a narrow spike
  with a flat line between spikes, a fibrillatory wave is large most of the time;
- VF filter leakage (Kuo and Dillman 1978): a sine-like wave cancels against itself half a
  period later, a train of QRS spikes does not;
- spectral measures (after Barro et al. 1989): dominant frequency (1-10 Hz), the power within
  1 Hz of it, above 12 Hz, below 2.5 Hz, in the VF band, and in its harmonics;
- phase-space and Hilbert box counting (PSR and HILB, Amann et al. 2007): the share of a
  40 x 40 grid that (x(t), x(t - 0.5 s)) or (x, Hilbert(x)) visits; a regular rhythm traces
  a thin loop, VF fills the plane;
- the shape of the distribution and the wave: kurtosis, zero crossings and peaks per second,
  autocorrelation at VF lags (0.1-0.4 s) and at heart-beat lags (0.4-2 s), the share of
  nearly flat samples (bCP), the amplitude (log std and 99th percentile, mV) and how much
  steeper the wave is than a sine of the dominant frequency would be;
- how organised the wave is (``_cycle_measures``): spectral entropy; the variation of the
  cycles' intervals and heights and the correlation of successive cycles; the variation of
  the amplitude envelope; the autocorrelation at the cycle length and at twice and three
  times it.

How the network and the thresholds were fitted (folds by record on CUDB and MIT-BIH, some
CUDB records never used) is ``bench/vf_detector.py``; the README gives the figures.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Generator
from dataclasses import dataclass
from fractions import Fraction
from functools import lru_cache
from typing import TypeVar

import numpy as np
from scipy.ndimage import maximum_filter1d
from scipy.signal import firwin, resample_poly

from ecgmon.monitor.alarms import vf_model
from ecgmon.monitor.dsp.order_stats import median, percentile_rows

WINDOW_S = 4.0
ANALYSIS_FS = 250.0  # every window is resampled to this rate before it is measured
DOMINANT_HZ = (1.0, 10.0)
HIGH_HZ = 12.0
TOTAL_BAND_HZ = (0.5, 30.0)
VF_BAND_HZ = (DOMINANT_HZ[0], DOMINANT_HZ[1])
PSR_LAG_S = 0.5
GRID = 40
HIGH_MAX = 0.3  # share of power above 12 Hz beyond which a window is not VF (see vf_like)
# The single-window flutter rule (``flutter``), the engine's VF rule before the network;
# its thresholds are that rule's, not fitted here.
FLUTTER_TCSC = 0.4
FLUTTER_CONCENTRATION = 0.4
FLUTTER_LEAKAGE = 0.5
FLUTTER_MIN_HZ = 2.5
NAMES = (
    "tcsc", "leakage", "dominant_hz", "concentration", "high_fraction", "low_fraction", "kurtosis",
    "zero_crossings_ps", "peaks_ps", "ac_vf", "ac_beat", "mea", "bcp", "vf_band", "tcsc10", "tcsc50",
    "psr", "hilb", "log_std", "log_p99", "harmonics", "steepness",
    # How organised the wave is from one cycle to the next (see _cycle_measures).
    "spectral_entropy", "cycle_interval_cv", "cycle_amplitude_cv", "cycle_corr_median", "cycle_corr_min",
    "envelope_cv", "cycles_ps", "ac_cycle", "ac_cycle2", "ac_cycle3", "cycle_s",
)
LOG_FEATURES = (1, 6)  # leakage and kurtosis enter the model as logarithms


@lru_cache(maxsize=16)
def _resample_taps(up: int, down: int) -> np.ndarray:
    """The anti-aliasing FIR ``resample_poly`` designs for ``up``/``down`` (its own design:
    ``firwin`` with its default Kaiser window, cutoff at the lower Nyquist, 10 lobes a side).
    Designed once per rate instead of once per window (``firwin`` was 1.6 % of the daemon at
    100 beds); ``resample_poly`` given these taps computes exactly what it computes designing
    them itself. Read-only: ``resample_poly`` copies the taps before scaling them."""
    max_rate = max(up, down)
    half_len = 10 * max_rate
    taps = firwin(2 * half_len + 1, 1.0 / max_rate, window=("kaiser", 5.0))
    taps.setflags(write=False)
    return taps


def analysis_window(x: np.ndarray, fs: float) -> np.ndarray:
    """One window of the filtered ECG at ``ANALYSIS_FS`` (polyphase resampling)."""
    x = np.asarray(x, dtype=np.float64)
    if fs == ANALYSIS_FS:
        return x
    up, down = _resample_ratio(fs)
    return resample_poly(x, up, down, window=_resample_taps(up, down))


@lru_cache(maxsize=16)
def _resample_ratio(fs: float) -> tuple[int, int]:
    """``ANALYSIS_FS / fs`` as up/down integers (found once per rate: ``Fraction`` is slow)."""
    ratio = Fraction(ANALYSIS_FS / fs).limit_denominator(1000)
    return ratio.numerator, ratio.denominator


@dataclass(frozen=True)
class _Grid:
    """What ``features`` computes from the window length and rate alone, made once per (n, fs)
    rather than per window (the same arrays, so the same features)."""

    hann: np.ndarray
    f: np.ndarray  # rfft frequencies, Hz
    band: np.ndarray  # TOTAL_BAND_HZ
    vf_band: np.ndarray  # DOMINANT_HZ
    high: np.ndarray  # band and above HIGH_HZ
    low: np.ndarray  # TOTAL_BAND_HZ's low edge to 2.5 Hz
    ac_vf: np.ndarray  # autocorrelation lags 0.1-0.4 s
    ac_beat: np.ndarray  # lags 0.4-2 s
    hilbert_sign: np.ndarray  # sign of the rfft bins for the Hilbert transform


@lru_cache(maxsize=16)
def _grid(n: int, fs: float) -> _Grid:
    f = np.fft.rfftfreq(n, 1.0 / fs)
    band = (f >= TOTAL_BAND_HZ[0]) & (f <= TOTAL_BAND_HZ[1])
    lag = np.arange(n) / fs
    grid = _Grid(
        hann=np.hanning(n), f=f, band=band, vf_band=(f >= DOMINANT_HZ[0]) & (f <= DOMINANT_HZ[1]),
        high=band & (f > HIGH_HZ), low=(f >= TOTAL_BAND_HZ[0]) & (f < 2.5),
        ac_vf=(lag >= 0.1) & (lag <= 0.4), ac_beat=(lag >= 0.4) & (lag <= 2.0),
        hilbert_sign=np.sign(np.fft.rfftfreq(n)),
    )
    for a in vars(grid).values():
        a.setflags(write=False)  # shared by every stream's windows of this length
    return grid


def features(windows: np.ndarray, fs: float = ANALYSIS_FS) -> np.ndarray:
    """The ``NAMES`` measures of each row of ``windows`` (filtered ECG, mV, at ``fs``):
    one row per window, all rows measured at once (training measures whole records so)."""
    W = np.atleast_2d(np.asarray(windows, dtype=np.float64))
    n = W.shape[1]
    g = _grid(n, fs)
    x = W - W.mean(axis=1, keepdims=True)
    ax = np.abs(x)
    peak = ax.max(axis=1)
    peak_safe = np.where(peak > 0, peak, 1.0)[:, None]
    tcsc = (ax > 0.2 * peak_safe).mean(axis=1)
    tcsc10 = (ax > 0.1 * peak_safe).mean(axis=1)
    tcsc50 = (ax > 0.5 * peak_safe).mean(axis=1)
    leakage = _leakage(x, ax)
    # Spectrum (Hann window): the dominant frequency and where the power lies around it.
    spec = np.abs(np.fft.rfft(x * g.hann[None, :], axis=1)) ** 2
    f, band, vf_band = g.f, g.band, g.vf_band

    def row_sums(cols: np.ndarray) -> np.ndarray:
        # A boolean column selection comes out Fortran-ordered, which numpy sums in another order
        # than a single row: made C-ordered, each row sums as it would alone (bit for bit), so
        # windows of many streams measured together get the features each would get alone.
        return np.ascontiguousarray(spec[:, cols]).sum(axis=1)

    total = np.maximum(row_sums(band), 1e-20)
    dominant = f[vf_band][np.argmax(spec[:, vf_band], axis=1)]
    near = np.abs(f[None, :] - dominant[:, None]) <= 1.0
    concentration = (spec * near).sum(axis=1) / total
    high = row_sums(g.high) / total
    low = row_sums(g.low) / total
    in_vf_band = row_sums(vf_band) / total
    harmonics = (spec * ((f[None, :] >= 1.5 * dominant[:, None]) & (f[None, :] <= TOTAL_BAND_HZ[1]))).sum(axis=1) / total
    m2 = (x**2).mean(axis=1)
    kurtosis = (x**4).mean(axis=1) / np.maximum(m2**2, 1e-20)
    seconds = n / fs
    zero_crossings = (np.diff(np.signbit(x).astype(np.int8), axis=1) != 0).sum(axis=1) / seconds
    # Autocorrelation (via the FFT, zero-padded): periodicity at VF lags and at beat lags.
    ac = np.fft.irfft(np.abs(np.fft.rfft(x, 2 * n, axis=1)) ** 2, axis=1)[:, :n]
    ac = ac / np.maximum(ac[:, :1], 1e-20)
    cycles = _cycle_measures(x, spec, ac, fs)
    ac_vf = ac[:, g.ac_vf].max(axis=1)
    ac_beat = ac[:, g.ac_beat].max(axis=1)
    # Peaks: samples that are the largest magnitude within +-0.1 s and above 30 % of the peak.
    h = max(1, int(0.1 * fs))
    local_max = maximum_filter1d(ax, 2 * h + 1, axis=1, mode="nearest")
    peaks = ((ax >= local_max) & (ax > 0.3 * peak_safe)).sum(axis=1) / seconds
    mea = ax.mean(axis=1) / peak_safe[:, 0]
    dx = np.abs(np.diff(x, axis=1))
    bcp = (dx < 0.1 * np.maximum(dx.max(axis=1, keepdims=True), 1e-12)).mean(axis=1)
    lag_n = round(PSR_LAG_S * fs)
    # The pairs (x(t), x(t - lag)) for t >= lag: what _box_fill keeps of x and np.roll(x, lag).
    psr = _box_fill(x[:, lag_n:], x[:, : n - lag_n], 0)
    hilbert = np.fft.irfft(-1j * g.hilbert_sign[None, :] * np.fft.rfft(x, axis=1), n, axis=1)
    hilb = _box_fill(x, hilbert, 0)
    std = np.sqrt(m2)
    p99 = percentile_rows(ax, 99)
    slope = percentile_rows(dx, 99) * fs
    steepness = slope / np.maximum(2 * np.pi * dominant * p99, 1e-9)
    return np.column_stack([
        tcsc, leakage, dominant, concentration, high, low, kurtosis, zero_crossings, peaks, ac_vf, ac_beat,
        mea, bcp, in_vf_band, tcsc10, tcsc50, psr, hilb, np.log(np.maximum(std, 1e-4)),
        np.log(np.maximum(p99, 1e-4)), harmonics, np.log(np.maximum(steepness, 1e-3)),
        cycles,
    ])


def _cycle_measures(x: np.ndarray, spec: np.ndarray, ac: np.ndarray, fs: float) -> np.ndarray:
    """Measures of each row of ``x`` (windows less their mean; ``spec`` their Hann power
    spectra and ``ac`` their autocorrelations over their value at lag 0, as ``features`` has
    them) that tell an organised fast rhythm (rapid VT, a wide-complex tachycardia) from
    fibrillation, whose cycles differ in length, height and shape:

    - spectral entropy over 0.5-30 Hz (normalised to 0-1: one line 0, white noise 1);
    - the cycles' peaks (on the wave's larger polarity: samples that are the largest within
      +-0.1 s and above 30 % of the window's peak): the variation of their intervals and
      heights, the median and least correlation of successive cycles (+-0.08 s around each
      peak), and how many per second;
    - the variation of the largest magnitude in each 0.5 s (the amplitude envelope);
    - the autocorrelation (corrected for the shrinking overlap) at its highest lag L in
      0.15-1 s and near 2L and 3L (a periodic wave keeps it, fibrillation loses it; 0 when
      the lag leaves no room in the window), and L in seconds.

    What all rows share is computed for all at once; the peaks, which differ in number from
    row to row, one row at a time."""
    rows, n = x.shape
    g = _grid(n, fs)
    s = np.ascontiguousarray(spec[:, g.band])  # C-ordered: each row sums as it would alone
    p = s / np.maximum(s.sum(axis=1, keepdims=True), 1e-20)
    entropy = -(p * np.log(np.maximum(p, 1e-20))).sum(axis=1) / np.log(p.shape[1])
    y = np.where((x.max(axis=1) >= -x.min(axis=1))[:, None], x, -x)
    h = int(0.1 * fs)
    local_max = maximum_filter1d(y, 2 * h + 1, axis=1, mode="nearest")
    is_peak = (y >= local_max) & (y > 0.3 * y.max(axis=1, keepdims=True))
    block = int(0.5 * fs)
    env = np.abs(x[:, : n // block * block]).reshape(rows, -1, block).max(axis=2)
    envelope_cv = env.std(axis=1) / np.maximum(env.mean(axis=1), 1e-12)
    ac = ac * n / (n - np.arange(n))
    lo, hi = int(0.15 * fs), int(1.0 * fs)
    lag = lo + np.argmax(ac[:, lo:hi], axis=1)
    out = np.empty((rows, 11))  # the last 11 of NAMES, in their order
    out[:, 0], out[:, 5], out[:, 7], out[:, 10] = entropy, envelope_cv, ac[np.arange(rows), lag], lag / fs
    half = int(0.08 * fs)
    for i in range(rows):
        pk = np.flatnonzero(is_peak[i])
        if pk.size:  # a flat top gives neighbouring samples: keep the first
            pk = pk[np.concatenate([[True], np.diff(pk) > 1])]
        if pk.size >= 3:
            iv = np.diff(pk)
            interval_cv = iv.std() / iv.mean()
            amplitude_cv = y[i, pk].std() / y[i, pk].mean()
        else:
            interval_cv = amplitude_cv = 1.0
        # Each cycle's segment with its mean removed, once (it pairs with the cycle before and after).
        cycles = (x[i, k - half : k + half + 1] for k in pk if k - half >= 0 and k + half + 1 <= n)
        segs = [seg - seg.mean() for seg in cycles]
        corr = []
        for a, b in zip(segs, segs[1:]):
            d = np.sqrt((a @ a) * (b @ b))
            corr.append(a @ b / d if d > 0 else 0.0)
        corr_median = median(np.array(corr)) if corr else 0.0
        corr_min = float(np.min(corr)) if corr else 0.0
        out[i, 1], out[i, 2], out[i, 3], out[i, 4] = interval_cv, amplitude_cv, corr_median, corr_min
        out[i, 6] = pk.size / (n / fs)
        # The autocorrelation near 2L and 3L (0 when the lag leaves no room in the window).
        for col, k in ((8, 2), (9, 3)):
            c = k * lag[i]
            r = max(2, int(0.1 * c))
            out[i, col] = ac[i, max(0, c - r) : min(n - 1, c + r) + 1].max() if c < n * 0.75 else 0.0
    return out


def _leakage(x: np.ndarray, ax: np.ndarray) -> np.ndarray:
    """Kuo and Dillman's VF filter per row: the mean period N from the ratio of the mean
    magnitude to the mean slope, then the share of the signal that passes a notch at N."""
    n = x.shape[1]
    d = np.abs(np.diff(x, axis=1)).sum(axis=1)
    period = np.floor(np.pi * ax.sum(axis=1) / np.where(d > 0, d, 1.0) + 0.5).astype(int)
    period = np.clip(period, 1, n // 2)
    idx = np.arange(n)[None, :] + period[:, None]
    valid = idx < n
    a = np.take_along_axis(x, np.minimum(idx, n - 1), axis=1) * valid
    b = x * valid
    return np.abs(a + b).sum(axis=1) / np.maximum((np.abs(a) + np.abs(b)).sum(axis=1), 1e-12)


def _box_fill(a: np.ndarray, b: np.ndarray, skip: int) -> np.ndarray:
    """Share of a GRID x GRID grid over each row's range that the points (a, b) visit,
    the first ``skip`` samples left out (they have no partner ``skip`` samples back)."""
    a, b = a[:, skip:], b[:, skip:]
    rows = a.shape[0]

    def cell(v: np.ndarray) -> np.ndarray:
        lo, hi = v.min(axis=1, keepdims=True), v.max(axis=1, keepdims=True)
        # np.minimum/np.maximum rather than np.clip: the same integers without clip's wrapper.
        return np.minimum(np.maximum(((v - lo) / np.maximum(hi - lo, 1e-12) * GRID).astype(int), 0), GRID - 1)

    idx = cell(a) * GRID + cell(b) + (np.arange(rows) * GRID * GRID)[:, None]
    counts = np.bincount(idx.ravel(), minlength=rows * GRID * GRID).reshape(rows, -1)
    return (counts > 0).sum(axis=1) / (GRID * GRID)


@dataclass(frozen=True)
class Weights:
    """One network: feature normalisation (leakage and kurtosis as logarithms), then
    tanh(z @ w1 + b1) @ w2 + b2 is the log-odds of VF."""

    mean: np.ndarray
    scale: np.ndarray
    w1: np.ndarray  # (33, hidden)
    b1: np.ndarray
    w2: np.ndarray  # (hidden,)
    b2: float


# The shipped fits (vf_model.py, generated), over their one shared feature normalisation.
MODELS = tuple(Weights(vf_model.FEATURE_MEAN, vf_model.FEATURE_SCALE, *net) for net in vf_model.NETS)
# The noise veto (fitted with muscle noise; none: no veto), see VFDetector.window. It takes the
# exemption only from a window it calls more likely not VF than VF: a veto that hesitates at a
# VF onset would suppress the VF alarm for clear_s.
VETO_MODELS = tuple(Weights(vf_model.VETO_MEAN, vf_model.VETO_SCALE, *net) for net in vf_model.VETO_NETS)
VETO_P = 0.5


def probability(feats: np.ndarray, models: tuple[Weights, ...] | None = None) -> np.ndarray:
    """P(VF) of each row of ``features`` output: the mean over the networks ``models`` (the
    shipped ones: the same network fitted from several random starts, which steadies it)."""
    z0 = np.array(feats, dtype=np.float64, ndmin=2)
    z0[:, LOG_FEATURES] = np.log(np.maximum(z0[:, LOG_FEATURES], 1e-6))
    out = np.zeros(z0.shape[0])
    nets = models or MODELS
    for m in nets:
        # Products summed along the weights' axis rather than ``@``: BLAS picks its kernel by
        # the number of rows, so a row's matrix product differed in the last bit between a
        # batch and the row alone; these sums add each row's terms in the same order however
        # many rows there are (``measure`` relies on it).
        z = (z0 - m.mean) / m.scale
        hidden = np.tanh((z[:, :, None] * m.w1[None, :, :]).sum(axis=1) + m.b1)
        out += 1.0 / (1.0 + np.exp(-np.clip((hidden * m.w2).sum(axis=1) + m.b2, -50, 50)))
    return out / len(nets)


@dataclass(frozen=True)
class Measured:
    """What ``VFDetector.decide`` needs of one analysis window."""

    features: np.ndarray  # its row of ``features`` (1 x len(NAMES))
    p: float  # P(VF) by the deciding networks
    veto_p: float  # P(VF) by the noise veto (1 without one)


def measure(windows: np.ndarray) -> list[Measured]:
    """Each row of ``windows`` (analysis windows of one length, as ``analysis_window`` makes
    them) measured, all rows in one call: each row gets bit for bit what it gets alone, so a
    daemon measures the windows of all its streams together (per-call overhead is most of a
    window's cost) without one stream's alarms depending on the others."""
    feats = features(windows)
    p = probability(feats)
    veto = probability(feats, VETO_MODELS) if VETO_MODELS else np.ones(len(feats))
    return [Measured(feats[i : i + 1], float(p[i]), float(veto[i])) for i in range(len(feats))]


def measure_one(window: np.ndarray) -> Measured:
    """One analysis window measured alone (``measure`` of a one-row batch)."""
    return measure(window[None, :])[0]


T = TypeVar("T")
# A feed run as steps: it yields each analysis window it needs measured (``measure``) and is
# sent back the window's ``Measured``; its return value is the feed's result.
WindowSteps = Generator[np.ndarray, Measured, T]


def measured_alone(steps: WindowSteps[T]) -> T:
    """Run ``steps`` to its end, measuring each window it asks for on its own."""
    try:
        window = next(steps)
        while True:
            window = steps.send(measure_one(window))
    except StopIteration as done:
        return done.value


def vf_like(p: np.ndarray, feats: np.ndarray, threshold: float) -> np.ndarray:
    """Windows the network calls VF: P(VF) at ``threshold`` or more and at most ``HIGH_MAX`` of
    the power above 12 Hz. VF and flutter keep their power below 10 Hz (Barro's spectral
    detector rests on it; 99 % of the VF windows of CUDB and 207 have under 0.3 above 12 Hz)
    while muscle noise spreads it up (nstdb 'ma' at -6 dB: median 0.54); the network, which
    never saw heavy muscle noise, is not asked about it. Such a window is not "noise: cannot
    analyse" however busy it is, unless the noise veto gives it P(VF) < ``VETO_P`` (a
    flutter-rule window is: the rule was never set against noise)."""
    return (np.asarray(p) >= threshold) & (np.atleast_2d(feats)[:, NAMES.index("high_fraction")] <= HIGH_MAX)


def flutter(feats: np.ndarray) -> np.ndarray:
    """The single-window flutter rule: TCSC above ``FLUTTER_TCSC`` (large most of the time),
    more than ``FLUTTER_CONCENTRATION`` of the power within 1 Hz of a dominant frequency of
    ``FLUTTER_MIN_HZ`` or more, VF-filter leakage under ``FLUTTER_LEAKAGE`` (sine-like), and
    no more than ``HIGH_MAX`` above 12 Hz. One window is enough; the detector asks P(VF) >=
    ``vf_model.FLUTTER_P`` of it too (chosen by bench/vf_detector.py with the network's rule).
    Unlike a network VF window, a rule window that is noisy stays noisy, and the noise alarm
    suppresses its VF alarm."""
    f = np.atleast_2d(feats)
    col = {n: f[:, NAMES.index(n)] for n in ("tcsc", "concentration", "leakage", "dominant_hz", "high_fraction")}
    return (
        (col["tcsc"] > FLUTTER_TCSC) & (col["concentration"] > FLUTTER_CONCENTRATION)
        & (col["leakage"] < FLUTTER_LEAKAGE) & (col["dominant_hz"] >= FLUTTER_MIN_HZ)
        & (col["high_fraction"] <= HIGH_MAX)
    )


class VFDetector:
    """Per stream: P(VF) of each analysis window and the alarm decision (the mean P(VF) of
    the last ``hold`` windows at ``threshold`` or more, a window with too much power above
    12 Hz counting 0; or this window passing the flutter rule with P(VF) of at least
    ``flutter_p``)."""

    def __init__(
        self, fs: float, threshold: float | None = None, hold: int | None = None, flutter_p: float | None = None
    ) -> None:
        self.fs = float(fs)
        self.threshold = vf_model.P_VF if threshold is None else threshold
        self.hold = vf_model.HOLD_WINDOWS if hold is None else hold
        self.flutter_p = vf_model.FLUTTER_P if flutter_p is None else flutter_p
        self._recent: deque[float] = deque(maxlen=self.hold)  # P(VF) of the last windows (0: too busy above 12 Hz)
        self._streak = 0  # consecutive windows, ending at the last, VF-like or passing the rule
        self.run_windows = 1  # windows the current VF decision rests on (its onset: their first start)

    def reset(self) -> None:
        self._recent.clear()
        self._streak = 0
        self.run_windows = 1

    def window(self, filtered: np.ndarray) -> tuple[float, bool, bool]:
        """One window of the filtered ECG, measured alone: see ``decide``."""
        return self.decide(measure_one(analysis_window(filtered, self.fs)))

    def decide(self, measured: Measured) -> tuple[float, bool, bool]:
        """The next window, measured (``measure``): its P(VF), whether it is exempt from the
        noise alarm as VF-like (the network calls it VF, ``vf_like``, and the noise veto gives
        it P(VF) of at least ``VETO_P``), and whether VF holds (the alarm's condition: the
        mean over this and the ``hold - 1`` windows before it, a missing one counting 0, at
        the threshold; or this one passing the flutter rule).

        The deciding network never met noise, and under heavy muscle noise it calls many
        windows VF; exempt from the noise suppression, they would raise false VF alarms. The
        veto, fitted with muscle noise, decides that exemption alone: fitted into the deciding
        network, the noise cost VF episodes found in time (README, VF under noise)."""
        feats, p = measured.features, measured.p
        like = bool(vf_like(np.array([p]), feats, self.threshold)[0])
        exempt = like and measured.veto_p >= VETO_P
        busy = feats[0, NAMES.index("high_fraction")] > HIGH_MAX
        self._recent.append(0.0 if busy else p)
        held = sum(self._recent) / self.hold >= self.threshold
        rule = bool(flutter(feats)[0]) and p >= self.flutter_p
        self._streak = self._streak + 1 if like or rule else 0
        # The mean rests on the last hold windows; a rule alarm on this window (and the
        # VF-like ones just before, up to hold).
        self.run_windows = self.hold if held else max(1, min(self._streak, self.hold))
        return p, exempt, held or rule

    def skip(self) -> None:
        """A window that could not be measured (missing samples, leads off) breaks the run."""
        self.reset()
