"""Recording-level scores of a heart-sound classifier, as PhysioNet/CinC 2016 counts them.

A recording's probability of being abnormal is the mean of its windows' probabilities;
it is called abnormal at ``threshold``. Sensitivity is over the abnormal recordings,
specificity over the normal ones, MAcc their mean.
"""

from __future__ import annotations

import numpy as np

from ecgmon.models.curves import roc

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
