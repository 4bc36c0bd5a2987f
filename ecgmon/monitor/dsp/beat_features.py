"""Beat features shared by training and the live daemon: RR intervals and the beat window.

Pure numpy, and causal except for the next RR interval (the live pipeline gets it by
waiting one beat before classifying), so the daemon can compute exactly what a model was
trained on. It lives in dsp/ because the daemon may not import the training code in models/.
"""

from __future__ import annotations

from collections import deque
import math

import numpy as np

from ecgmon.monitor.dsp.beat_template import BeatTemplate, learning_weight

# Models run at one rate: MIT-BIH's own, so its 27 training records need no resampling;
# other sources are resampled to it.
FS_MODEL = 360.0

# The beat window around the R peak. 0.25 s before holds the P wave (PR interval up to
# 0.20 s plus the P wave's onset), whose absence or early arrival marks S beats; 0.45 s
# after holds the QRS and the T wave (QT about 0.35-0.45 s at ordinary rates), whose
# width and polarity separate V and F beats from N. 0.7 s in all: at high rates it shows a
# piece of the neighbouring beats, which the RR features describe anyway.
WINDOW_BEFORE_S = 0.25
WINDOW_AFTER_S = 0.45
BEFORE = round(WINDOW_BEFORE_S * FS_MODEL)  # 90 samples
AFTER = round(WINDOW_AFTER_S * FS_MODEL)  # 162 samples
WINDOW = BEFORE + AFTER  # 252 samples; the R peak is at index BEFORE

# Local average over the previous 10 RRs, long-run average over the previous 5 minutes:
# de Chazal's "local" and "average" RR, the latter made causal so a live stream has it.
LOCAL_N = 10
RECORD_WINDOW_S = 300.0

RR_NAMES: tuple[str, ...] = ("pre_rr", "post_rr", "local_rr", "avg_rr")
RR_NORM_NAMES: tuple[str, ...] = ("pre_rr_norm", "post_rr_norm", "local_rr_norm")
# The columns of ``beat_rr_features``: the 4 intervals in seconds, then the first 3 divided
# by the long-run average.
RR_FEATURES: tuple[str, ...] = RR_NAMES + RR_NORM_NAMES


def rr_features(
    r_samples: np.ndarray,
    fs: float,
    local_n: int = LOCAL_N,
    record_window_s: float = RECORD_WINDOW_S,
) -> np.ndarray:
    """``(n, 4)`` float64 RR features in seconds for beats at ``r_samples``: ``RR_NAMES``.

    - ``pre_rr``: from the previous beat to this one;
    - ``post_rr``: from this beat to the next (the one non-causal feature);
    - ``local_rr``: mean of the last ``local_n`` pre-RRs up to and including this beat's;
    - ``avg_rr``: mean of the pre-RRs of the beats in the last ``record_window_s`` seconds
      up to and including this one (a causal stand-in for de Chazal's whole-record mean).

    Beat ``i``'s features depend only on beats ``0..i+1``. Undefined values take their
    nearest causal estimate: the first beat's ``pre_rr``, ``local_rr`` and ``avg_rr`` are
    its ``post_rr``; the last beat's ``post_rr`` is its ``pre_rr`` (a regular rhythm is
    assumed). With fewer than 2 beats there is no interval at all and every value is NaN.
    """
    r = np.asarray(r_samples, dtype=np.int64)
    if r.ndim != 1:
        raise ValueError(f"r_samples must be 1-D, not shape {r.shape}")
    if fs <= 0:
        raise ValueError(f"fs must be positive, not {fs}")
    if local_n < 1:
        raise ValueError(f"local_n must be at least 1, not {local_n}")
    n = r.size
    out = np.full((n, 4), np.nan)
    if n < 2:
        return out
    d = np.diff(r) / fs  # d[j] = RR from beat j to beat j+1
    if np.any(d <= 0):
        raise ValueError("r_samples must be strictly increasing")
    pre = np.concatenate([d[:1], d])  # beat 0 borrows its post-RR
    post = np.concatenate([d, d[-1:]])  # the last beat repeats its pre-RR
    # Pre-RR of beat i is d[i-1]; csum[k] = sum of d[:k], so sums over d[a:b] are O(1).
    csum = np.concatenate([[0.0], np.cumsum(d)])
    i = np.arange(n)
    lo = np.maximum(i - local_n, 0)
    count = i - lo
    with np.errstate(invalid="ignore", divide="ignore"):
        local = (csum[i] - csum[lo]) / count
        # Beats j with r[j] > r[i] - window contribute their pre-RR d[j-1] (j >= 1).
        first = np.searchsorted(r, r - record_window_s * fs, side="right")
        first = np.maximum(first, 1)
        n_avg = i - first + 1
        avg = (csum[i] - csum[first - 1]) / n_avg
    local[0] = pre[0]
    avg[n_avg < 1] = pre[n_avg < 1]  # only beat 0 (the window always holds beat i >= 1)
    out[:, 0], out[:, 1], out[:, 2], out[:, 3] = pre, post, local, avg
    return out


def normalise_rr(rr: np.ndarray) -> np.ndarray:
    """``(n, 3)``: pre, post and local RR divided by the long-run average (``RR_NORM_NAMES``).

    The ratios describe prematurity and compensatory pauses whatever the patient's own
    rate, which is what carries S and V beats across patients; the raw intervals alone
    confuse a fast normal rhythm with premature beats.
    """
    rr = np.asarray(rr, dtype=np.float64)
    return rr[:, :3] / rr[:, 3:4]


def beat_rr_features(
    r_samples: np.ndarray,
    fs: float,
    local_n: int = LOCAL_N,
    record_window_s: float = RECORD_WINDOW_S,
) -> np.ndarray:
    """``(n, 7)`` float32: ``rr_features`` then ``normalise_rr`` (columns ``RR_FEATURES``)."""
    rr = rr_features(r_samples, fs, local_n, record_window_s)
    return np.hstack([rr, normalise_rr(rr)]).astype(np.float32)


def beat_rr_row(
    r_samples: np.ndarray,
    fs: float,
    i: int,
    local_n: int = LOCAL_N,
    record_window_s: float = RECORD_WINDOW_S,
) -> np.ndarray:
    """``beat_rr_features(r_samples, fs, ...)[i]``, the same float32 values bit for bit, with
    only beat ``i``'s arithmetic: the live pipeline needs one row per beat, and the whole
    table of a 5-minute history cost it about 90 µs a beat."""
    r = np.asarray(r_samples, dtype=np.int64)
    n = r.size
    if n < 2:
        return np.full(len(RR_FEATURES), np.nan, np.float32)
    d = np.diff(r) / fs
    if np.any(d <= 0):
        raise ValueError("r_samples must be strictly increasing")
    pre = d[i - 1] if i >= 1 else d[0]
    post = d[i] if i < n - 1 else d[-1]
    # csum(k) = sum of d[:k], as rr_features' table (a running sum, so its first i values do
    # not depend on what follows).
    running = np.cumsum(d[:i])

    def csum(k: int) -> float:
        return running[k - 1] if k else 0.0

    local = pre
    avg = pre
    if i >= 1:
        lo = max(i - local_n, 0)
        local = (csum(i) - csum(lo)) / (i - lo)
        first = max(int(np.searchsorted(r, r[i] - record_window_s * fs, side="right")), 1)
        avg = (csum(i) - csum(first - 1)) / (i - first + 1)
    row = np.array([pre, post, local, avg])
    return np.concatenate([row, row[:3] / row[3]]).astype(np.float32)


def beat_window(
    signal: np.ndarray, r: int, before: int = BEFORE, after: int = AFTER
) -> np.ndarray | None:
    """``signal[r - before : r + after]`` (R at index ``before``), or None if it does not fit.

    No padding: a padded window is an input the models never saw in training (training
    drops such edge beats), and live the ring buffer only lacks samples at a stream's start.
    """
    r = int(r)
    if r - before < 0 or r + after > signal.shape[0]:
        return None
    return signal[r - before : r + after]


def beat_windows(
    signal: np.ndarray, r_samples: np.ndarray, before: int = BEFORE, after: int = AFTER
) -> tuple[np.ndarray, np.ndarray]:
    """The windows of many beats at once: ``(windows (m, before + after), fits (n,) bool)``.

    ``windows`` holds the beats for which ``fits`` is True, in order; the others reach past
    an end of ``signal`` and are left out, as ``beat_window`` returns None for them.
    """
    r = np.asarray(r_samples, dtype=np.int64)
    fits = (r - before >= 0) & (r + after <= signal.shape[0])
    index = r[fits, None] + np.arange(-before, after)
    return signal[index], fits


# --------------------------------------------------------------------------- patient-adaptive

# Inputs that adapt to the patient without labels, from the stream's own past only (and the
# next RR, as above): the RR intervals against the patient's recent rhythm, and the beat's QRS
# against the patient's running dominant-beat template (``beat_template.BeatTemplate``).
# A premature beat is short against the last ten beats whatever the patient's rate; a
# ventricular one is also unlike, wider than or taller than the patient's own usual beat
# whatever the lead and the electrode placement: what separates S and V from N across patients.
ADAPTIVE_FEATURES: tuple[str, ...] = (
    "pre_rr_local",  # pre-RR / local RR (last 10 beats)
    "post_pre_rr",  # post-RR / pre-RR: the compensatory pause
    "tpl_corr",  # best Pearson correlation of the QRS with the template (±30 ms)
    "tpl_diff",  # sqrt(1 - cos²): the part of the QRS the template cannot explain
    "tpl_width_ratio",  # QRS width / template's
    "tpl_amp_ratio",  # QRS peak-to-peak / template's
    "tpl_p_corr",  # correlation of the stretch before the QRS (P wave) with the template's
    "tpl_t_corr",  # correlation of the stretch after the QRS (ST-T) with the template's
    "rr_irregularity",  # mean |successive difference| of the previous beats' RRs / their mean
)
# What a beat takes before the template exists (its first beats) or when its complex cannot be
# measured: "like the template", the patient's usual beat, which the first beats mostly are.
_NEUTRAL = np.array([1.0, 0.0, 1.0, 1.0, 1.0, 1.0])
# The rhythm's irregularity before a beat: in atrial fibrillation every beat is "premature"
# against the last ten and none is S; in a regular rhythm a short RR is news. Over the
# previous LOCAL_N + 1 intervals (the beat's own pre-RR left out: it is what is judged).
# A beat joins the template when it is not premature against the last ten beats (an S or V
# beat comes early; a ventricular rhythm's beats do not, but do not match the template either)
# and, once the template exists, when it matches it.
LEARN_MIN_PRE_LOCAL = 0.9
LEARN_MIN_CORR = 0.8
# After this many beats in a row of a regular rhythm that do not match, the patient's dominant
# beat has changed (or the template was learnt from odd beats): start a new one.
RELEARN_AFTER = 8
# The second lead's QRS against its own running template (a template per lead, learnt from
# the same beats): a ventricular beat that the first lead shows much like the patient's usual
# beat is often plainly unlike it in a lead at right angles. NaN when the source has one lead.
TEMPLATE_COLUMNS = slice(2, 8)  # the tpl_* columns of ADAPTIVE_FEATURES
LEAD2_FEATURES: tuple[str, ...] = tuple(f"lead2_{n}" for n in ADAPTIVE_FEATURES[TEMPLATE_COLUMNS])
# Every feature: the RR ones, the adaptive ones, the second lead's; model cards name their inputs from this.
BEAT_FEATURES: tuple[str, ...] = RR_FEATURES + ADAPTIVE_FEATURES + LEAD2_FEATURES
FIRST_LEAD2 = len(RR_FEATURES) + len(ADAPTIVE_FEATURES)  # BEAT_FEATURES index of the first lead-2 column


class AdaptiveFeatures:
    """The patient-adaptive inputs of one stream's beats, one beat at a time and in order.

    ``step`` takes each detected beat's model-rate window (R at index ``before``, None when it
    could not be cut) and its ``beat_rr_features`` row, and returns ``ADAPTIVE_FEATURES``. The
    daemon calls it live as beats become due; ``adaptive_features`` calls it over a whole
    record for training, so the two cannot drift apart.
    """

    def __init__(self, before: int = BEFORE, fs: float = FS_MODEL) -> None:
        self.before = int(before)
        self.template = BeatTemplate(fs)
        # The whole window's template, learnt from the same beats: its P wave and ST-T, which
        # the QRS template leaves out (an S beat's P wave is early, odd or hidden; a V beat's
        # T wave is discordant).
        self._wave: np.ndarray | None = None
        self._misses = 0
        self._rrs: deque[float] = deque(maxlen=LOCAL_N + 1)

    def step(self, window: np.ndarray | None, rr: np.ndarray) -> np.ndarray:
        rr = np.asarray(rr, dtype=np.float64)
        pre, post, local = rr[0], rr[1], rr[2]
        out = np.empty(len(ADAPTIVE_FEATURES))
        ok = np.isfinite(rr[:3]).all() and pre > 0 and local > 0
        out[0] = pre / local if ok else 1.0
        out[1] = post / pre if ok else 1.0
        out[2:8] = _NEUTRAL
        out[8] = _irregularity(self._rrs)
        if np.isfinite(pre) and pre > 0:
            self._rrs.append(float(pre))
        got = None if window is None else self.template.measure(np.asarray(window), self.before)
        if got is None or not got[1].max() > got[1].min():
            return out  # cannot be cut, not finite, or a flat line: nothing to compare or learn
        m, complex_ = got
        w = np.asarray(window, dtype=np.float64)
        lo, hi = self.before - self.template.before, self.before + self.template.after
        if m.correlation is not None and self._wave is not None:
            measured = (
                m.correlation, m.difference, m.width_ratio, m.amplitude_ratio,
                _corr(w[:lo], self._wave[:lo]), _corr(w[hi:], self._wave[hi:]),
            )
            out[2:8] = [v if v is not None and math.isfinite(v) else d for v, d in zip(measured, _NEUTRAL)]
        regular = ok and out[0] >= LEARN_MIN_PRE_LOCAL and bool(np.isfinite(w).all())
        if regular:
            if m.correlation is None or m.correlation >= LEARN_MIN_CORR:
                alpha = learning_weight(self.template.learnt)
                self._wave = w.copy() if self._wave is None else self._wave + alpha * (w - self._wave)
                self.template.learn(complex_)
                self._misses = 0
            else:
                self._misses += 1
                if self._misses >= RELEARN_AFTER:
                    self.template.reset()
                    self._wave = None
                    self._misses = 0
        return out


def _irregularity(rrs: deque[float]) -> float:
    """Mean absolute successive difference of ``rrs`` over their mean; 0 with fewer than 2."""
    if len(rrs) < 2:
        return 0.0
    x = np.fromiter(rrs, np.float64)
    # Sums over counts: what .mean() computes, without its Python wrapper (once per beat).
    return float((np.abs(np.diff(x)).sum() / (x.size - 1)) / (x.sum() / x.size))


def _corr(a: np.ndarray, b: np.ndarray) -> float | None:
    """Pearson correlation, None when either side is flat or empty."""
    if a.size < 2:
        return None
    a, b = a - a.sum() / a.size, b - b.sum() / b.size  # the means, without .mean()'s wrapper
    den = float(np.sqrt((a @ a) * (b @ b)))
    return float(a @ b) / den if den > 0 else None


def adaptive_features(
    signal: np.ndarray, r_samples: np.ndarray, rr: np.ndarray, before: int = BEFORE, after: int = AFTER
) -> np.ndarray:
    """``(n, len(ADAPTIVE_FEATURES))`` float32 for every beat of a record, in order, as the live
    pipeline computes them: ``signal`` at ``FS_MODEL``, ``r_samples`` every detected (or
    annotated) beat at that rate, ``rr`` their ``beat_rr_features`` rows."""
    r = np.asarray(r_samples, dtype=np.int64)
    rr = np.asarray(rr)
    if r.ndim != 1 or rr.ndim != 2 or rr.shape[0] != r.size or rr.shape[1] < 3:
        raise ValueError(f"need one RR row (at least 3 columns) per beat: r {r.shape}, rr {rr.shape}")
    tracker = AdaptiveFeatures(before)
    out = np.empty((r.size, len(ADAPTIVE_FEATURES)), np.float32)
    for i in range(r.size):
        out[i] = tracker.step(beat_window(signal, r[i], before, after), rr[i])
    return out


def lead2_features(
    signal2: np.ndarray | None, r_samples: np.ndarray, rr: np.ndarray, before: int = BEFORE, after: int = AFTER
) -> np.ndarray:
    """``(n, len(LEAD2_FEATURES))`` float32: the template inputs of the second lead's
    ``signal2`` (at ``FS_MODEL``) at the first lead's beats, as live; NaN without a second lead."""
    r = np.asarray(r_samples, dtype=np.int64)
    if signal2 is None:
        return np.full((r.size, len(LEAD2_FEATURES)), np.nan, np.float32)
    return adaptive_features(signal2, r, rr, before, after)[:, TEMPLATE_COLUMNS]
