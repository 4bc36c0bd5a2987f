"""Online, causal R-peak detector (work in progress: interface fixed, algorithm landing)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ecgmon.config import DetectorConfig


@dataclass(frozen=True, slots=True)
class Beat:
    """One detected heartbeat.

    ``sample`` is the R-peak index in the raw input signal (from the stream's start);
    ``detected_at`` is the index of the last input sample the decision needed, so the
    detection delay is ``(detected_at - sample) / fs`` whatever the chunking.
    """

    sample: int
    detected_at: int
    amplitude: float


class QRSDetector:
    """Feed raw single-lead ECG (mV) chunk by chunk; get the beats decided in each chunk."""

    def __init__(self, fs: float, config: DetectorConfig | None = None) -> None:
        self.fs = fs
        self.config = config or DetectorConfig()

    def process(self, x: np.ndarray) -> list[Beat]:
        raise NotImplementedError
