"""The stream's beats grouped online by QRS shape, and the beat model's P(V) pooled within a group.

A patient's ventricular beats of one focus look alike, and so do the patient's normal and
supraventricular beats, while a beat model that never met this patient is unsure of some of
them one at a time: it calls a few of a patient's normal beats V (multiform complexes,
noise, an odd axis) and misses a few of the patient's unifocal V beats. Holter analysis has
long classified clusters of beats rather than single beats; this does it causally. Each beat's
QRS (0.10 s before to 0.15 s after R, mean removed, unit norm; with the second lead's beside
it where the stream has one, each lead counting half) joins the most similar earlier
group when its correlation with that group's running template is at least ``MIN_CORRELATION``,
else starts a group; the beat's P(V) is then averaged with the mean P(V) the model gave that
group's earlier beats, the group counting for up to ``MAX_VOTES`` beats (a stream's first
``WARM_UP_BEATS`` are left alone). Only V is pooled:
S differs from N by timing, not shape, so a shape group says nothing about it.

Measured on held-out patients (each record classified by the fold model that never saw it,
at the daemon's own R peaks): see README "Classifiers". Pure numpy with explicit state, one
instance per stream, fed in the stream's beat order, so live and evaluation agree exactly.
"""

from __future__ import annotations

import numpy as np

QRS_BEFORE_S = 0.10
QRS_AFTER_S = 0.15
# A beat joins a group whose template it matches at least this well; chosen on MIT-BIH DS1
# (0.90 and 0.95 were tried; 0.90 groups a patient's beats of one focus despite noise).
MIN_CORRELATION = 0.90
# The group's mean counts as this many beats at most, so the model's own call of a beat
# still moves the result when the group's history is long (chosen on MIT-BIH DS1 among 10, 30).
MAX_VOTES = 30
# Running mean of the group's P(V): no faster than this per beat, so the group follows a
# change in the model's view of it (after the first 1 / MEAN_ALPHA beats, a plain mean).
MEAN_ALPHA = 0.1
# Template update weight per member beat (about the last 20 beats count).
TEMPLATE_ALPHA = 0.05
# Groups kept; a new shape replaces the group least recently joined.
MAX_GROUPS = 12
# A V label the model alone did not give needs the pooled P(V) above this: the group may take
# a V call away or confirm one, but a doubtful V (argmax of five classes at P <= 0.5) made by
# the group alone filled a run of mitdb 208's fusion and normal beats into a false V-tach, and
# such calls are more often wrong than right (held out: 180 of them, 74 true V; pooled V Se / +P
# 87.1 / 86.5 with them, 86.6 / 87.0 without).
NEW_V_MIN = 0.5
# The model calls a stream's first beats without the patient's template (the adaptive inputs
# learn it from the first regular beats) and calls premature V beats S there: those calls
# neither vote nor are voted on, or a V group would start from them and hold its first
# confident V calls down (mitdb 119's bigeminy).
WARM_UP_BEATS = 20


class MorphologyVote:
    """One stream's shape groups. ``__call__(window, probabilities, window2)`` returns the
    beat's probabilities with P(V) pooled over its group (the others rescaled to keep the sum).

    ``window2`` is the second lead's window, None where the stream has none: a beat with it
    and a beat without it never share a group (their correlation is at most 0.71), so a
    stream whose second lead comes and goes keeps separate groups for each case.
    """

    def __init__(self, before: int, fs: float, classes: tuple[str, ...]) -> None:
        self._lo = max(0, before - round(QRS_BEFORE_S * fs))
        self._hi = before + round(QRS_AFTER_S * fs)
        self._v = classes.index("V") if "V" in classes else None
        n = self._hi - self._lo
        self._templates = np.zeros((0, 2 * n))
        self._count = np.zeros(0)
        self._mean_v = np.zeros(0)
        self._last = np.zeros(0)
        self._beats = 0

    def __call__(self, window: np.ndarray | None, p: np.ndarray, window2: np.ndarray | None = None) -> np.ndarray:
        if self._v is None:
            return p
        x1 = self._qrs(window)
        if x1 is None:
            return p
        x2 = self._qrs(window2)
        x = np.concatenate([x1, x2]) / np.sqrt(2.0) if x2 is not None else np.concatenate([x1, np.zeros_like(x1)])
        self._beats += 1
        if self._beats <= WARM_UP_BEATS:
            return p
        k = self._group(x)
        pv = float(p[self._v])
        if k is None:
            self._new_group(x, pv)
            return p
        votes = min(self._count[k], MAX_VOTES)
        pooled = (pv + votes * self._mean_v[k]) / (1.0 + votes)
        out = p.astype(np.float64, copy=True)
        rest = 1.0 - pv
        out[self._v] = pooled
        others = np.arange(out.size) != self._v
        out[others] = out[others] * ((1.0 - pooled) / rest) if rest > 0 else (1.0 - pooled) / others.sum()
        self._join(k, x, pv)
        if out.argmax() == self._v and p.argmax() != self._v and pooled <= NEW_V_MIN:
            return p  # see NEW_V_MIN
        return out

    def _qrs(self, window: np.ndarray | None) -> np.ndarray | None:
        """The QRS of ``window``, mean removed, unit norm; None when unusable."""
        if window is None or window.shape[-1] < self._hi:
            return None
        x = np.asarray(window[self._lo : self._hi], dtype=np.float64)
        if not np.isfinite(x).all():
            return None
        x = x - x.mean()
        norm = np.linalg.norm(x)
        return x / norm if norm > 0 else None

    def _group(self, x: np.ndarray) -> int | None:
        if not self._count.size:
            return None
        r = self._templates @ x
        k = int(r.argmax())
        return k if r[k] >= MIN_CORRELATION else None

    def _new_group(self, x: np.ndarray, pv: float) -> None:
        if self._count.size >= MAX_GROUPS:
            k = int(self._last.argmin())
            self._templates[k], self._count[k], self._mean_v[k], self._last[k] = x, 1, pv, self._beats
            return
        self._templates = np.vstack([self._templates, x])
        self._count = np.append(self._count, 1.0)
        self._mean_v = np.append(self._mean_v, pv)
        self._last = np.append(self._last, self._beats)

    def _join(self, k: int, x: np.ndarray, pv: float) -> None:
        t = (1.0 - TEMPLATE_ALPHA) * self._templates[k] + TEMPLATE_ALPHA * x
        self._templates[k] = t / np.linalg.norm(t)
        self._count[k] += 1
        a = max(MEAN_ALPHA, 1.0 / self._count[k])
        self._mean_v[k] = (1.0 - a) * self._mean_v[k] + a * pv
        self._last[k] = self._beats
