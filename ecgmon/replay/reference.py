"""Reference beat annotations for evaluation: which annotations are beats, and which
stretches the ANSI/AAMI EC57 convention leaves out (ventricular flutter/fibrillation).

Only evaluators use this; the detector never sees annotations.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from wfdb.io.annotation import ann_label_table, is_qrs

_CODE_OF_SYMBOL = dict(zip(ann_label_table["symbol"], ann_label_table["label_store"]))


def is_beat_symbol(symbol: str) -> bool:
    """True for the WFDB annotation codes that mark a QRS complex (N, V, /, !, …)."""
    code = _CODE_OF_SYMBOL.get(symbol)
    return code is not None and bool(is_qrs[code])


@dataclass(frozen=True)
class ReferenceBeats:
    """Beat annotations of one record at its sample rate, and the excluded intervals."""

    samples: np.ndarray
    symbols: list[str]
    excluded: list[tuple[int, int]]

    def keep(self, samples: np.ndarray) -> np.ndarray:
        """Mask of the given sample indices that lie outside every excluded interval."""
        mask = np.ones(len(samples), dtype=bool)
        for start, end in self.excluded:
            mask &= ~((samples >= start) & (samples <= end))
        return mask


def vf_episodes(samples: np.ndarray, symbols: list[str], n_samples: int) -> list[tuple[int, int]]:
    """Intervals between ``[`` and ``]`` annotations; an episode left open runs to the end."""
    episodes = []
    start = None
    for sample, symbol in zip(samples, symbols):
        if symbol == "[" and start is None:
            start = int(sample)
        elif symbol == "]" and start is not None:
            episodes.append((start, int(sample)))
            start = None
    if start is not None:
        episodes.append((start, n_samples))
    return episodes


def reference_beats(samples: np.ndarray, symbols: list[str], n_samples: int) -> ReferenceBeats:
    """Beats outside ventricular flutter/fibrillation episodes, as EC57 scores QRS detection."""
    samples = np.asarray(samples, dtype=np.int64)
    excluded = vf_episodes(samples, symbols, n_samples)
    is_beat = np.array([is_beat_symbol(s) for s in symbols], dtype=bool)
    ref = ReferenceBeats(samples[is_beat], [s for s, b in zip(symbols, is_beat) if b], excluded)
    keep = ref.keep(ref.samples)
    return ReferenceBeats(
        ref.samples[keep], [s for s, k in zip(ref.symbols, keep) if k], excluded
    )
