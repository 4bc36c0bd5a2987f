"""EC57-style scoring of detected beats against reference beats (150 ms match window)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from wfdb.processing import compare_annotations

from ecgmon.replay.reference import ReferenceBeats

MATCH_WINDOW_S = 0.15


@dataclass(frozen=True)
class QRSScore:
    tp: int
    fp: int
    fn: int

    @property
    def se(self) -> float:
        """Sensitivity, TP / (TP + FN)."""
        return self.tp / (self.tp + self.fn) if self.tp + self.fn else float("nan")

    @property
    def ppv(self) -> float:
        """Positive predictivity (+P), TP / (TP + FP)."""
        return self.tp / (self.tp + self.fp) if self.tp + self.fp else float("nan")

    def __add__(self, other: "QRSScore") -> "QRSScore":
        return QRSScore(self.tp + other.tp, self.fp + other.fp, self.fn + other.fn)


def score_beats(
    ref: ReferenceBeats, detected: np.ndarray, fs: float, window_s: float = MATCH_WINDOW_S
) -> QRSScore:
    """Match detections to reference beats with ``wfdb.processing.compare_annotations``.

    Detections inside the reference's excluded intervals (ventricular flutter/fibrillation)
    are dropped first, as EC57 leaves those episodes out of QRS detection statistics.
    """
    detected = np.sort(np.asarray(detected, dtype=np.int64))
    detected = detected[ref.keep(detected)]
    if ref.samples.size == 0 or detected.size == 0:
        return QRSScore(0, int(detected.size), int(ref.samples.size))
    cmp = compare_annotations(ref.samples, detected, int(round(window_s * fs)))
    return QRSScore(int(cmp.tp), int(cmp.fp), int(cmp.fn))
