"""The numbers a classifier is scored by, in numpy: per-class Se, +P, F1 and the confusion
matrix (as EC57 reports them), one-vs-rest ROC and precision-recall curves (the definitions of
scikit-learn's ``roc_curve`` / ``average_precision_score``), and the recording-level scores of a
heart-sound classifier as PhysioNet/CinC 2016 counts them.

A leaf shared by training (validation and fold metrics for the model cards) and by
``ecgmon.evaluate`` (the reports), so that a card and a report cannot define a metric
differently. It imports nothing of ecgmon.

Heart sounds: a recording's probability of being abnormal is the mean of its windows'
probabilities; it is called abnormal at ``threshold``. Sensitivity is over the abnormal
recordings, specificity over the normal ones, MAcc their mean.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


def confusion(labels: np.ndarray, predicted: np.ndarray, n_classes: int) -> np.ndarray:
    """Rows: reference class; columns: predicted class."""
    return np.bincount(labels * n_classes + predicted, minlength=n_classes * n_classes).reshape(
        n_classes, n_classes
    )


def class_report(labels: np.ndarray, probabilities: np.ndarray, classes: Sequence[str]) -> dict:
    """Per-class sensitivity, positive predictivity and F1, macro-F1 over the classes present,
    accuracy and the confusion matrix."""
    n = len(classes)
    predicted = probabilities.argmax(axis=1) if len(labels) else np.zeros(0, dtype=int)
    cm = confusion(labels, predicted, n)
    per_class = {}
    f1s = []
    for c, name in enumerate(classes):
        tp, ref, pred = cm[c, c], cm[c].sum(), cm[:, c].sum()
        se = tp / ref if ref else None
        ppv = tp / pred if pred else None
        f1 = 2 * tp / (ref + pred) if ref + pred else None
        per_class[name] = {
            "n": int(ref),
            "se": None if se is None else round(float(se), 4),
            "ppv": None if ppv is None else round(float(ppv), 4),
            "f1": None if f1 is None else round(float(f1), 4),
        }
        if ref:
            f1s.append(f1)
    return {
        "n": int(len(labels)),
        "accuracy": round(float((predicted == labels).mean()), 4) if len(labels) else None,
        "macro_f1": round(float(np.mean(f1s)), 4) if f1s else None,
        "per_class": per_class,
        "confusion": {"classes": list(classes), "rows_reference_columns_predicted": cm.tolist()},
    }


@dataclass(frozen=True)
class Curve:
    """Points of a curve (``x`` rising) and the area that summarises it."""

    x: np.ndarray
    y: np.ndarray
    area: float


def _counts(positive: np.ndarray, score: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """True and false positives when thresholding at each distinct score, highest first."""
    order = np.argsort(-score, kind="stable")
    score, positive = score[order], positive[order]
    # The last item of each run of tied scores: a threshold takes all its ties at once.
    last = np.r_[np.flatnonzero(np.diff(score)), score.size - 1]
    tps = np.cumsum(positive)[last].astype(np.float64)
    fps = (last + 1) - tps
    return tps, fps


def roc(positive: np.ndarray, score: np.ndarray) -> Curve | None:
    """False-positive rate (x) against sensitivity (y) and the area under it (trapezoids);
    None when either side is missing (no positives or no negatives: no curve exists)."""
    positive = np.asarray(positive, bool)
    if positive.all() or not positive.any():
        return None
    tps, fps = _counts(positive, np.asarray(score, np.float64))
    tpr = np.r_[0.0, tps / tps[-1]]
    fpr = np.r_[0.0, fps / fps[-1]]
    # Trapezoids by hand: np.trapezoid is numpy 2 only, np.trapz deprecated there.
    return Curve(fpr, tpr, float(np.sum(np.diff(fpr) * (tpr[1:] + tpr[:-1]) / 2)))


def precision_recall(positive: np.ndarray, score: np.ndarray) -> Curve | None:
    """Recall (x) against precision (y) and the average precision, sum of
    ``(R_k - R_{k-1}) P_k`` over the thresholds (a step sum, not trapezoids, which would be
    optimistic); None when there is no positive."""
    positive = np.asarray(positive, bool)
    if not positive.any():
        return None
    tps, fps = _counts(positive, np.asarray(score, np.float64))
    precision = tps / (tps + fps)
    recall = tps / tps[-1]
    ap = float(np.sum(np.diff(np.r_[0.0, recall]) * precision))
    # The curve starts at recall 0 with the precision of the most confident threshold.
    return Curve(np.r_[0.0, recall], np.r_[precision[0], precision], ap)


def one_vs_rest(
    labels: np.ndarray, probabilities: np.ndarray, n_classes: int
) -> tuple[list[Curve | None], list[Curve | None]]:
    """ROC and PR curve of each class against all others, from its column of probabilities."""
    rocs, prs = [], []
    for c in range(n_classes):
        positive, score = labels == c, probabilities[:, c]
        rocs.append(roc(positive, score))
        prs.append(precision_recall(positive, score))
    return rocs, prs


AGGREGATION = "mean of the window probabilities of 'abnormal' over the recording's 5 s windows (50 % overlap)"
THRESHOLD = 0.5


def recording_scores(window_p: np.ndarray, rows: np.ndarray, n_recordings: int) -> np.ndarray:
    """Mean abnormal probability per recording (NaN for a recording with no window)."""
    sums = np.bincount(rows, weights=window_p, minlength=n_recordings)
    counts = np.bincount(rows, minlength=n_recordings)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(counts > 0, sums / np.maximum(counts, 1), np.nan)


def _ratio(a: int, b: int) -> float | None:
    return round(a / b, 4) if b else None


def auc(labels: np.ndarray, scores: np.ndarray) -> float | None:
    """Area under the recording-level ROC of 'abnormal' (None without both classes)."""
    curve = roc(np.asarray(labels) == 1, np.asarray(scores, dtype=np.float64))
    return None if curve is None else round(curve.area, 4)


def binary_report(labels: np.ndarray, scores: np.ndarray, threshold: float = THRESHOLD) -> dict:
    """Se, Sp, MAcc, AUC and the confusion matrix of recordings (labels 0 normal, 1 abnormal)."""
    labels = np.asarray(labels, dtype=np.int64)
    predicted = (np.asarray(scores) >= threshold).astype(np.int64)
    tp = int(np.sum((labels == 1) & (predicted == 1)))
    fn = int(np.sum((labels == 1) & (predicted == 0)))
    tn = int(np.sum((labels == 0) & (predicted == 0)))
    fp = int(np.sum((labels == 0) & (predicted == 1)))
    se, sp = _ratio(tp, tp + fn), _ratio(tn, tn + fp)
    return {
        "n": int(len(labels)),
        "abnormal": tp + fn,
        "normal": tn + fp,
        "se": se,
        "sp": sp,
        "macc": round((se + sp) / 2, 4) if se is not None and sp is not None else None,
        "auc": auc(labels, scores),
        "threshold": threshold,
        "confusion": {"classes": ["normal", "abnormal"], "rows_reference_columns_predicted": [[tn, fp], [fn, tp]]},
    }


UNCERTAIN_REASONS = ("quality", "device not calibrated", "near threshold", "windows disagree")


def verdict_report(labels: np.ndarray, verdicts: Sequence[str], reasons: Sequence[str | None],
                   means: np.ndarray, threshold: float) -> dict:
    """Recording-level figures of verdicts that may abstain: Se, Sp, MAcc and the confusion
    matrix on the recordings given a verdict ('normal'/'abnormal'), the share given one
    (coverage), the uncertain ones by reason, and the ROC AUC of the mean P(abnormal) over
    every recording (which does not depend on the threshold or on abstaining)."""
    labels = np.asarray(labels, dtype=np.int64)
    verdicts = np.asarray(verdicts, dtype=object)
    means = np.asarray(means, dtype=np.float64)
    called = verdicts != "uncertain"
    report = binary_report(labels[called], (verdicts[called] == "abnormal").astype(np.float64), 0.5)
    scored = np.isfinite(means)
    report["auc"] = auc(labels[scored], means[scored])
    report["threshold"] = threshold
    report["recordings"] = int(len(labels))
    report["coverage"] = round(float(called.mean()), 4) if len(labels) else None
    report["uncertain"] = {r: int(sum(x == r for x in reasons)) for r in UNCERTAIN_REASONS}
    return report
