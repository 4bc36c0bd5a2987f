"""The patient's own running dominant-beat template, and how a beat's QRS compares with it.

Pure numpy with explicit state, so the alarm engine (``monitor.alarms``), the live
beat classifier's patient-adaptive inputs (``beat_features.AdaptiveFeatures``) and training
(``models.datasets``, through the same class) measure beats one way. Ventricular beats are
wide and unlike the patient's supraventricular beats whatever the lead; comparing each beat
with a template of the patient's own dominant beats is a cue that does not depend on having
seen this patient in training.
"""

from __future__ import annotations

from dataclasses import dataclass
import functools

import numpy as np

from ecgmon.monitor.dsp.order_stats import median

# The QRS complex lies within about 0.1 s before and 0.15 s after the detected R peak even
# when wide (ventricular QRS 0.12-0.2 s); the T wave is left out on purpose: it follows the
# rate, not the origin of the beat.
BEFORE_S = 0.10
AFTER_S = 0.15
# The detector's R sample can sit on a different peak of an odd complex; the best match
# within this shift is taken.
MAX_SHIFT_S = 0.03
# Template update weight per learnt beat: about the last 20 beats count.
TEMPLATE_ALPHA = 0.05
# Beats learnt before the template is compared with anything.
MIN_LEARNT = 5
# Width is the time the rectified, baseline-removed complex stays above this fraction of its peak.
WIDTH_FRACTION = 0.3


@dataclass(frozen=True, slots=True)
class Morphology:
    """How one beat compares with the template (None before a template exists)."""

    correlation: float | None
    width_s: float
    width_ratio: float | None
    # The part of the complex the template cannot explain once its amplitude is matched:
    # sqrt(1 - cos²) of the baseline-removed complexes (0 the same shape, 1 orthogonal).
    # Unlike the width it has no threshold to flip over, and unlike Pearson's correlation
    # over the window it is not dominated by the one large deflection both complexes share.
    difference: float | None = None
    # Peak-to-peak amplitude of the (aligned) complex over the template's.
    amplitude_ratio: float | None = None


def qrs_width(w: np.ndarray, fs: float) -> float:
    """Seconds the rectified complex stays above ``WIDTH_FRACTION`` of its peak."""
    a = np.abs(w - median(w))
    peak = a.max()
    if peak <= 0:
        return 0.0
    above = np.flatnonzero(a >= WIDTH_FRACTION * peak)
    return float(above[-1] - above[0] + 1) / fs


def difference(w: np.ndarray, template: np.ndarray, template_median: float) -> float | None:
    """sqrt(1 - cos²) of the median-removed complexes; None if either is flat.
    ``template_median`` is ``median(template)``, which the template keeps as it learns."""
    a, b = w - median(w), template - template_median
    den = float(np.sqrt((a @ a) * (b @ b)))
    if den <= 0:
        return None
    cos = float(a @ b) / den
    return float(np.sqrt(max(0.0, 1.0 - cos * cos)))


def aligned_correlation(segment: np.ndarray, reference: np.ndarray) -> tuple[float, int]:
    """The best Pearson correlation of ``reference`` with the windows of its length in
    ``segment`` (all small shifts at once, cut by one index array), and the shift that gives it."""
    m = reference.size
    views = segment[_shifts(segment.size - m + 1, m)]
    # Sums over sizes rather than .mean(): the same floats (mean is that sum over the count)
    # without numpy's Python-level wrapper, as this runs for every beat of every stream.
    v = views - views.sum(axis=1, keepdims=True) / m
    t = reference - reference.sum() / m
    denom = np.sqrt((v * v).sum(axis=1) * (t * t).sum())
    corr = np.divide(v @ t, denom, out=np.zeros(denom.size), where=denom > 0)
    best = int(np.argmax(corr))
    return float(corr[best]), best


@functools.cache
def _shifts(k: int, m: int) -> np.ndarray:
    """Indices of the ``k`` windows of ``m`` samples that start at 0, 1, ... ``k - 1``
    (read-only: every call shares the cached array)."""
    idx = np.arange(k)[:, None] + np.arange(m)
    idx.setflags(write=False)
    return idx


def learning_weight(learnt: int) -> float:
    """The weight of the next beat folded into a template of ``learnt`` beats: a running mean
    at first, then an exponential one that follows slow changes."""
    return max(TEMPLATE_ALPHA, 1.0 / (learnt + 1))


class BeatTemplate:
    """Keeps a running template of chosen beats' QRS complexes and measures beats against it.

    Who chooses the beats it learns is the caller's business: the alarm engine teaches it the
    beats its classifier called normal; the classifier's adaptive inputs teach it the beats
    that are not premature and look like it (no labels, so training and serving agree).
    """

    def __init__(self, fs: float) -> None:
        self.fs = fs
        self.before = round(BEFORE_S * fs)
        self.after = round(AFTER_S * fs)
        self.shift = max(1, round(MAX_SHIFT_S * fs))
        self._template: np.ndarray | None = None
        self._template_width = 0.0
        self._template_ptp = 0.0
        self._template_median = 0.0
        self._normals = 0

    @property
    def span(self) -> tuple[int, int]:
        """Samples needed before and after R (including the alignment margin)."""
        return self.before + self.shift, self.after + self.shift

    @property
    def learnt(self) -> int:
        """Beats folded into the template so far."""
        return self._normals

    def reset(self) -> None:
        """Forget the template (the patient's dominant beat has changed)."""
        self._template = None
        self._template_width = self._template_ptp = self._template_median = 0.0
        self._normals = 0

    def measure(self, x: np.ndarray, r: int) -> tuple[Morphology, np.ndarray] | None:
        """Compare the complex at index ``r`` of ``x`` with the template; None if it does not fit."""
        lo, hi = r - self.before - self.shift, r + self.after + self.shift
        if lo < 0 or hi > x.size:
            return None
        seg = np.asarray(x[lo:hi], dtype=np.float64)
        if not np.isfinite(seg).all():
            return None
        n = self.before + self.after
        centre = seg[self.shift : self.shift + n]
        width = qrs_width(centre, self.fs)
        if self._template is None or self._normals < MIN_LEARNT:
            return Morphology(None, width, None, None), centre
        corr, best = aligned_correlation(seg, self._template)
        aligned = seg[best : best + n]
        ratio = width / self._template_width if self._template_width > 0 else None
        amp = float(aligned.max() - aligned.min()) / self._template_ptp if self._template_ptp > 0 else None
        diff = difference(aligned, self._template, self._template_median)
        return Morphology(corr, width, ratio, diff, amp), aligned

    def likeness(self, earlier: np.ndarray, later: np.ndarray) -> float:
        """How alike two beats' complexes are, each whole and finite as ``measure`` cuts
        them (with the alignment margin): the best correlation of the earlier one's centre
        with the later one."""
        return aligned_correlation(later, earlier[self.shift : earlier.size - self.shift])[0]

    def learn(self, complex_: np.ndarray) -> None:
        """Fold a chosen beat's complex into the template."""
        if self._template is None:
            self._template = complex_.astype(np.float64).copy()
        else:
            self._template += learning_weight(self._normals) * (complex_ - self._template)
        self._template_width = qrs_width(self._template, self.fs)
        self._template_ptp = float(np.ptp(self._template))
        self._template_median = median(self._template)
        self._normals += 1
