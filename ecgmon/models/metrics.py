"""Classification metrics of the ECG models, per class as EC57 reports them (Se, +P, F1) with
the confusion matrix, from reference labels and predicted probabilities."""

from __future__ import annotations

from collections.abc import Sequence

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
