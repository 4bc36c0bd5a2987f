"""The cycle rule as the daemon runs it: a "model" for the inference batcher, so that the
segmentation of a stream's last minute of audio (~0.2 s of one core) runs in the batcher's
thread, off the event loop, exactly as the heart-sound CNN's windows do.

An item is the stream's last ``span_s`` seconds of audio, zero-padded to ``span_s``, and its
length in samples; the output row is ``CycleRule.output`` (116 features, then the cycles).
``[models] pcg_cycles`` names the rule file (a bare name is a shipped one).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from ecgmon.monitor.dsp.pcg_cycles import OUTPUT_LEN, CycleRule
from ecgmon.monitor.dsp.pcg_segment import FS


class CycleModel:
    """Callable on a batch ``(audio [B, span], length [B, 1])``, returning ``[B, OUTPUT_LEN]``;
    the attributes the daemon's batcher and loaders read of a LoadedModel."""

    kind = "pcg_cycles"

    def __init__(self, rule: CycleRule, path: Path | None = None) -> None:
        self.rule = rule
        self.path = path
        self.card: dict[str, Any] = {**rule.card, "name": rule.name, "sha256": rule.sha256}
        self.device = torch.device("cpu")
        self.fs = float(FS)
        self.span = int(round(rule.span_s * FS))

    @classmethod
    def load(cls, path: str | Path) -> CycleModel:
        return cls(CycleRule.load(path), Path(path))

    @property
    def name(self) -> str:
        return self.rule.name

    def input_shapes(self, batch: int) -> list[tuple[int, ...]]:
        return [(batch, self.span), (batch, 1)]

    def item(self, audio: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The job inputs for ``audio`` (the last ``span`` samples of a stream so far)."""
        audio = np.asarray(audio, dtype=np.float32)[-self.span:]
        padded = np.zeros(self.span, dtype=np.float32)
        padded[: audio.size] = audio
        return padded, np.array([audio.size], dtype=np.float32)

    def __call__(self, audio: Any, length: Any) -> torch.Tensor:
        a, n = np.asarray(audio, dtype=np.float32), np.asarray(length).reshape(-1).astype(int)
        rows = [self.rule.output(a[i, : n[i]]) for i in range(len(a))]
        return torch.from_numpy(np.array(rows, dtype=np.float64).reshape(len(a), OUTPUT_LEN))
