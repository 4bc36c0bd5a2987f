"""One-vs-rest ROC and precision-recall curves of a classifier's scores, with their areas,
in numpy (the definitions of scikit-learn's ``roc_curve`` / ``average_precision_score``)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


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
