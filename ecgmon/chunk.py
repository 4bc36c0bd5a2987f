"""What sources produce: Chunks (blocks of samples of one stream) and SourceEvents
(technical events of a stream: corrupt input, signal loss, disconnects, reconnects)."""

from __future__ import annotations

from dataclasses import dataclass, field
import time
from typing import Literal

import numpy as np


@dataclass(frozen=True, slots=True)
class Chunk:
    """Samples ``[start, start + n)`` of one stream.

    ``samples`` is float32 of shape ``(n, len(channels))`` in millivolts (ECG) or full
    scale (audio). ``start`` is the index of the first sample since the stream began, so
    signal time is ``(start + i) / fs``. ``received`` is the wall-clock time (``time.time()``)
    the chunk arrived; it is used only to measure latency.
    """

    stream: str
    fs: float
    channels: tuple[str, ...]
    start: int
    samples: np.ndarray
    received: float = field(default_factory=time.time)

    def __post_init__(self) -> None:
        if self.samples.ndim != 2 or self.samples.shape[1] != len(self.channels):
            raise ValueError(
                f"chunk samples must have shape (n, {len(self.channels)}), got {self.samples.shape}"
            )

    @property
    def n(self) -> int:
        return int(self.samples.shape[0])

    @property
    def end(self) -> int:
        """Index one past the last sample."""
        return self.start + self.n


@dataclass(frozen=True, slots=True)
class SourceEvent:
    """A technical event of stream ``stream`` that a source reports between its chunks.

    ``code`` is machine-readable (``corrupt_input``, ``signal_loss``, ``disconnected``,
    ``reconnected``); ``counts`` holds the stream's cumulative fault counters at that moment
    (e.g. ``{"crc_errors": 3, "garbage_bytes": 120}``), which status messages then carry.
    """

    stream: str
    level: Literal["info", "warning", "error"]
    code: str
    text: str
    counts: dict[str, int] = field(default_factory=dict)
