"""Heart-sound cardiac-cycle segmentation (S1, systole, S2, diastole) and per-cycle features.

Springer et al.'s duration-dependent hidden semi-Markov model (IEEE TBME 2016, the PhysioNet/
CinC 2016 baseline), at a 50 Hz feature rate: four envelopes of the 25-400 Hz band
(homomorphic, Hilbert, 40-60 Hz power, 60-150 Hz), the heart cycle and systolic interval from
the homomorphic envelope's autocorrelation, Springer's Gaussian state durations, and an
explicit-duration Viterbi over the cycle S1 -> systole -> S2 -> diastole in which the first and
the last segment may be cut by the ends of the block.

The emission differs from Springer's: the pcg2016 copy in shared/data has no reference
segmentations to fit his logistic regression on, so ``emission=None`` (round 0) calls 'sound'
where the z-scored homomorphic envelope is high (S1 and S2 share it; the duration model tells
them apart, systole being shorter than diastole), and an :class:`Emission` (round 1) is a
multinomial logistic regression over the four envelopes and their squares, fitted on round 0's
state sequences of other recordings (no hand segmentation, no class label).

Features of one recording (:func:`recording_features`, :data:`FEATURE_NAMES`) are ratios between
states of the same recording in the same frequency band, so a stethoscope's gain and linear
frequency response cancel: 32 per-state values (median over complete cycles of log energy
ratios systole/S1, diastole/S2, systole/diastole in six bands and broadband, S2/S1; their
spread; interval ratios) and 84 cycle-aligned cells (log energy of 12 bands, 25-800 Hz, in 7
cells of the cycle, each band's mean over the recording's cells subtracted, median over cycles).

Block processing of audio already received: it sees only the past, so the daemon can run it on
the audio of a stream so far (zero-phase filtering inside the block delays the result, never
looks ahead of it). Pure numpy/scipy, no state between calls.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import signal

FS = 2000
FEATURE_FS = 50
_DEC = FS // FEATURE_FS
S1, SYSTOLE, S2, DIASTOLE = 0, 1, 2, 3
MIN_CYCLES = 3  # fewer complete cycles than this: no features (the verdict is 'uncertain')
# The autocorrelation looks for the heart cycle up to 2 s: a block needs at least this much audio.
MIN_SECONDS = 2.5
# The HSMM finds 'cycles' in anything, silence too; S1 and S2 must stand out of the gaps by this
# much z-scored homomorphic envelope, else there are no features. Every pcg2016 recording passes
# (lowest 0.40, median 1.74); digital silence scores 0.
MIN_CONTRAST = 0.3

_SOS_LP400 = signal.butter(2, 400, btype="lowpass", fs=FS, output="sos")
_SOS_HP25 = signal.butter(2, 25, btype="highpass", fs=FS, output="sos")
_SOS_ENV8 = signal.butter(1, 8, btype="lowpass", fs=FS, output="sos")
_SOS_60_150 = signal.butter(3, [60, 150], btype="bandpass", fs=FS, output="sos")
STATE_BANDS = ((25, 45), (45, 80), (80, 150), (150, 250), (250, 400), (400, 700))
_SOS_BANDS = [signal.butter(3, b, btype="bandpass", fs=FS, output="sos") for b in STATE_BANDS]
CELL_EDGES = np.geomspace(25, 800, 13)
CELLS = ("S1", "sys1", "sys2", "S2", "dia1", "dia2", "dia3")


def _names() -> tuple[str, ...]:
    bands = [f"{lo}-{hi}" for lo, hi in STATE_BANDS] + ["broad"]
    out = [f"{pair} {b}" for pair in ("sys/S1", "dia/S2", "sys/dia") for b in bands]
    out += ["S2/S1 broad", "IQR sys/S1", "IQR dia/S2", "IQR sys/dia", "IQR S2/S1",
            "RR", "sys/RR", "dia/RR", "S1 dur", "S2 dur", "RR CV"]
    edges = CELL_EDGES.round().astype(int)
    out += [f"cell {c} {edges[k]}-{edges[k + 1]}" for c in CELLS for k in range(12)]
    return tuple(out)


FEATURE_NAMES: tuple[str, ...] = _names()
STATE_FEATURES = 32  # the first 32 of FEATURE_NAMES; the other 84 are the cells


@dataclass(frozen=True)
class Emission:
    """Multinomial logistic regression: [F, F**2, 1] @ weights -> state logits (weights [9, 4])."""

    weights: np.ndarray


@dataclass(frozen=True)
class Segmentation:
    states: np.ndarray  # int8 state per 50 Hz sample
    cycle_s: float  # heart cycle from the envelope autocorrelation
    systole_s: float  # systolic interval (S1 onset to S2 onset) from the same
    contrast: float  # mean z-scored homomorphic envelope in S1 and S2 minus that in the gaps

    def cycles(self) -> list[tuple[int, int, int, int, int]]:
        """Complete cycles as (S1, systole, S2, diastole, next S1) onsets at 50 Hz."""
        st = self.states
        starts = np.r_[0, np.flatnonzero(np.diff(st) != 0) + 1]
        lab = st[starts]
        return [tuple(int(v) for v in starts[i:i + 5]) for i in range(len(starts) - 4)
                if lab[i] == S1 and list(lab[i:i + 5]) == [S1, SYSTOLE, S2, DIASTOLE, S1]]


def _z(v: np.ndarray) -> np.ndarray:
    return (v - v.mean()) / (v.std() + 1e-12)


def band_limited(audio: np.ndarray) -> np.ndarray:
    """25-400 Hz (zero phase within the block), spikes clipped at 12 robust amplitude scales."""
    y = signal.sosfiltfilt(_SOS_HP25, signal.sosfiltfilt(_SOS_LP400, audio.astype(np.float64)))
    scale = 1.4826 * np.median(np.abs(y)) + 1e-12
    return np.clip(y, -12 * scale, 12 * scale)


def envelopes(y: np.ndarray) -> np.ndarray:
    """[T, 4] z-scored features at 50 Hz: homomorphic, Hilbert, 40-60 Hz power, 60-150 Hz envelope."""
    a = np.abs(signal.hilbert(y)) + 1e-10
    hom = np.exp(signal.sosfiltfilt(_SOS_ENV8, np.log(a)))
    n = len(y) // _DEC

    def dec(v: np.ndarray) -> np.ndarray:
        return v[: n * _DEC].reshape(n, _DEC).mean(1)

    f, t, spec = signal.spectrogram(y, fs=FS, nperseg=FS // 20, noverlap=FS // 40)
    psd = np.abs(spec[(f >= 40) & (f <= 60)]).mean(0)
    psd_d = np.interp(np.arange(n) / FEATURE_FS, t, psd)
    band = dec(np.abs(signal.hilbert(signal.sosfiltfilt(_SOS_60_150, y))))
    return np.c_[_z(dec(hom)), _z(dec(a)), _z(psd_d), _z(band)]


def heart_cycle(hom: np.ndarray) -> tuple[float, float]:
    """(cycle s, systole s): autocorrelation peaks at 0.5-2 s and 0.2 s-half a cycle (Schmidt)."""
    e = hom - hom.mean()
    ac = np.correlate(e, e, "full")[len(e) - 1:]
    ac = ac / (ac[0] + 1e-12)
    lo, hi = int(0.5 * FEATURE_FS), min(int(2 * FEATURE_FS), len(ac) - 1)
    cycle = (lo + int(np.argmax(ac[lo:hi + 1]))) / FEATURE_FS
    slo = int(0.2 * FEATURE_FS)
    shi = max(slo + 1, int(cycle * FEATURE_FS / 2))
    return cycle, (slo + int(np.argmax(ac[slo:shi + 1]))) / FEATURE_FS


def durations(cycle_s: float, systole_s: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Springer's Gaussian state durations (mean, sd) at 50 Hz and [min, max] = mean -/+ 3 sd."""
    m_s1, s_s1 = 0.122 * FEATURE_FS, 0.022 * FEATURE_FS
    m_s2, s_s2 = 0.094 * FEATURE_FS, 0.022 * FEATURE_FS
    m_sys = max(systole_s * FEATURE_FS - m_s1, 0.05 * FEATURE_FS)
    m_dia = max((cycle_s - systole_s - 0.094) * FEATURE_FS, 0.1 * FEATURE_FS)
    mean = np.array([m_s1, m_sys, m_s2, m_dia])
    sd = np.array([s_s1, 0.025 * FEATURE_FS, s_s2, 0.07 * m_dia + 0.006 * FEATURE_FS])
    lo = np.maximum(np.round(mean - 3 * sd), 1).astype(int)
    hi = np.maximum(np.round(mean + 3 * sd), lo + 1).astype(int)
    return mean, sd, np.c_[lo, hi]


def viterbi(log_b: np.ndarray, mean: np.ndarray, sd: np.ndarray, limits: np.ndarray) -> np.ndarray:
    """Explicit-duration Viterbi over S1 -> systole -> S2 -> diastole -> S1; the state per sample.

    One step per 50 Hz sample, vectorised over durations and states (a few per second of audio)."""
    T, K = log_b.shape
    D = int(limits[:, 1].max())
    ds = np.arange(1, D + 1)
    log_pd = np.full((D, K), -np.inf)
    for j in range(K):
        ok = (ds >= limits[j, 0]) & (ds <= limits[j, 1])
        log_pd[ok, j] = -0.5 * ((ds[ok] - mean[j]) / sd[j]) ** 2 - np.log(sd[j])
    C = np.vstack([np.zeros((1, K)), np.cumsum(log_b, 0)])
    delta = np.full((T, K), -np.inf)
    psi = np.zeros((T, K), dtype=np.int32)
    prev = np.array([DIASTOLE, S1, SYSTOLE, S2])
    maxdur = limits[:, 1]
    init = np.log(1.0 / K)
    for t in range(T):
        dd = ds[: min(D, t + 1)]
        start = t + 1 - dd
        before = np.where((start - 1)[:, None] >= 0, delta[np.maximum(start - 1, 0)][:, prev], -np.inf)
        vals = before + log_pd[: len(dd)] + (C[t + 1] - C[start])
        # a first segment that began before the block: any length up to its maximum, no duration term
        first = np.where(t + 1 <= maxdur, init + C[t + 1], -np.inf)
        k = np.argmax(vals, 0)
        best = vals[k, np.arange(K)]
        use_first = first > best
        delta[t] = np.where(use_first, first, best)
        psi[t] = np.where(use_first, t + 1, dd[k])
    # the last segment may be cut by the end of the block: no duration term either
    best_v, best_j, best_d = -np.inf, 0, 1
    for j in range(K):
        for d in range(1, min(int(maxdur[j]), T) + 1):
            s = T - d
            v = (delta[s - 1, prev[j]] if s >= 1 else init) + C[T, j] - C[s, j]
            if v > best_v:
                best_v, best_j, best_d = v, j, d
    states = np.zeros(T, dtype=np.int8)
    t, j, d = T - 1, best_j, best_d
    while t >= 0:
        states[t - d + 1: t + 1] = j
        t -= d
        if t < 0:
            break
        j = int(prev[j])
        d = int(psi[t, j])
    return states


def log_emission(F: np.ndarray, emission: Emission | None) -> np.ndarray:
    """log P(observation | state) up to a per-sample constant."""
    if emission is None:
        p = np.clip(1 / (1 + np.exp(-2.5 * (F[:, 0] - 0.3))), 0.02, 0.98)
        return np.log(np.c_[p, 1 - p, p, 1 - p])
    z = np.c_[F, F ** 2, np.ones(len(F))] @ emission.weights
    z -= z.max(1, keepdims=True)
    p = np.exp(z)
    p /= p.sum(1, keepdims=True)
    # the emission was fitted with every state weighted equally, so its posterior over a flat
    # prior (1/4) is the likelihood up to a constant
    return np.log(np.clip(p, 1e-6, 1)) - np.log(0.25)


def segment(audio: np.ndarray, emission: Emission | None = None) -> tuple[np.ndarray, np.ndarray, Segmentation]:
    """(band-limited audio, [T, 4] envelopes, segmentation) of 2 kHz audio (>= MIN_SECONDS)."""
    if len(audio) < MIN_SECONDS * FS:
        raise ValueError(f"{len(audio) / FS:.2f} s of audio is too short to segment (needs {MIN_SECONDS:g} s)")
    y = band_limited(audio)
    F = envelopes(y)
    cycle, systole = heart_cycle(F[:, 0])
    mean, sd, limits = durations(cycle, systole)
    states = viterbi(log_emission(F, emission), mean, sd, limits)
    sound = (states == S1) | (states == S2)
    contrast = float(F[sound, 0].mean() - F[~sound, 0].mean()) if sound.any() and not sound.all() else 0.0
    return y, F, Segmentation(states, cycle, systole, contrast)


def state_features(y: np.ndarray, seg: Segmentation) -> np.ndarray | None:
    """The 32 per-state values of FEATURE_NAMES (None below MIN_CYCLES complete cycles)."""
    cyc = seg.cycles()
    if len(cyc) < MIN_CYCLES:
        return None
    power = np.stack([signal.sosfiltfilt(s, y) ** 2 for s in _SOS_BANDS] + [y ** 2])
    C = np.concatenate([np.zeros((power.shape[0], 1)), np.cumsum(power, 1)], 1)
    dur, E = [], []
    for c in cyc:
        b = np.array(c) * _DEC
        E.append(np.stack([(C[:, b[k + 1]] - C[:, b[k]]) / max(b[k + 1] - b[k], 1) for k in range(4)]))
        dur.append([(c[4] - c[0]) / FEATURE_FS] + [(c[k + 1] - c[k]) / FEATURE_FS for k in range(4)])
    L = np.log(np.array(E) + 1e-12)
    dur = np.array(dur)
    per = np.c_[L[:, SYSTOLE] - L[:, S1], L[:, DIASTOLE] - L[:, S2], L[:, SYSTOLE] - L[:, DIASTOLE],
                L[:, S2, -1] - L[:, S1, -1]]
    q75, q25 = np.percentile(per[:, [6, 13, 20, 21]], [75, 25], 0)
    rr = dur[:, 0]
    intervals = [np.median(rr), np.median(dur[:, 2] / rr), np.median(dur[:, 4] / rr),
                 np.median(dur[:, 1]), np.median(dur[:, 3]), np.std(rr) / np.mean(rr)]
    return np.r_[np.median(per, 0), q75 - q25, intervals]


def cell_features(audio: np.ndarray, seg: Segmentation) -> np.ndarray | None:
    """The 84 cycle-aligned cells of FEATURE_NAMES (None below MIN_CYCLES usable cycles)."""
    x = signal.sosfiltfilt(_SOS_HP25, audio.astype(np.float64))
    f, _, spec = signal.stft(x, fs=FS, nperseg=160, noverlap=120, boundary=None, padded=False)
    P = np.abs(spec) ** 2
    B = np.stack([P[(f >= lo) & (f < hi)].sum(0) for lo, hi in zip(CELL_EDGES[:-1], CELL_EDGES[1:])])
    # STFT frame k is centred on sample 80 + 40 k, i.e. 50 Hz sample k + 2
    T = len(seg.states)
    Bt = np.full((len(B), T), np.nan)
    centre = np.arange(B.shape[1]) + 2
    ok = centre < T
    if not ok.any():
        return None
    Bt[:, centre[ok]] = B[:, ok]
    Bt[:, :2] = Bt[:, [2]]
    last = int(centre[ok].max())
    Bt[:, last + 1:] = Bt[:, [last]]
    C = np.concatenate([np.zeros((len(B), 1)), np.cumsum(Bt, 1)], 1)
    out = []
    for a, s, b, d, e in seg.cycles():
        bounds = [a, s, (s + b) // 2, b, d, d + (e - d) // 3, d + 2 * (e - d) // 3, e]
        if min(np.diff(bounds)) < 1:
            continue
        out.append(np.stack([(C[:, bounds[i + 1]] - C[:, bounds[i]]) / (bounds[i + 1] - bounds[i])
                             for i in range(7)]))
    if len(out) < MIN_CYCLES:
        return None
    L = np.log(np.array(out) + 1e-14)
    L = L - L.mean(axis=(0, 1), keepdims=True)  # each band's level over the recording: the device's colour
    return np.median(L, 0).ravel()


def recording_features(audio: np.ndarray, emission: Emission | None) -> tuple[np.ndarray, Segmentation | None]:
    """FEATURE_NAMES' 116 values of a recording (NaN where too few cycles) and its segmentation
    (None for audio shorter than MIN_SECONDS)."""
    if len(audio) < MIN_SECONDS * FS:
        return np.full(len(FEATURE_NAMES), np.nan), None
    y, _, seg = segment(audio, emission)
    if seg.contrast < MIN_CONTRAST:
        return np.full(len(FEATURE_NAMES), np.nan), seg
    a = state_features(y, seg)
    b = cell_features(audio, seg)
    return np.r_[a if a is not None else np.full(STATE_FEATURES, np.nan),
                 b if b is not None else np.full(84, np.nan)], seg
