"""The heart-sound verdict on a recording: normal, abnormal, or uncertain.

One pure function shared by the daemon (``monitor/pcg_pipeline.py``, after every window),
``ecgmon evaluate pcg`` (after the recording's last window) and training (which chooses the
card's constants on the training databases only), so all three say the same thing about the
same windows.

A recording of a stethoscope the model never heard shifts every probability at once, so
a bare "abnormal" at 0.55 means little. The verdict is therefore *uncertain* when

- no window has a quality index of at least ``min_quality`` (noise, a lifted stethoscope);
- the mean P(abnormal) of the good windows lies within ``margin`` of ``threshold``;
- fewer than ``min_agreement`` of the good windows fall on the same side of ``threshold`` as
  their mean (the recording's windows disagree).

Otherwise it is ``abnormal`` when the mean is at or above ``threshold``, else ``normal``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from ecgmon.monitor.dsp.pcg_envelope import HomomorphicEnvelope, PcgBandpass
from ecgmon.monitor.dsp.pcg_quality import QUALITY_WINDOW_S, quality_index

LABELS = ("normal", "abnormal", "uncertain")
# Card "decision" keys and their values for a card written before abstention existed: no
# margin and no agreement requirement, so such a model keeps its old verdicts (bar quality).
DEFAULT_MARGIN = 0.0
DEFAULT_MIN_AGREEMENT = 0.0


@dataclass(frozen=True)
class Rule:
    """The decision constants: ``threshold``, ``margin`` and ``min_agreement`` from the model
    card (chosen on training databases), ``min_quality`` from the config ([audio])."""

    threshold: float = 0.5
    margin: float = DEFAULT_MARGIN
    min_agreement: float = DEFAULT_MIN_AGREEMENT
    min_quality: float = 0.0

    @classmethod
    def from_card(cls, decision: dict[str, Any], min_quality: float) -> Rule:
        return cls(
            threshold=float(decision.get("threshold", 0.5)),
            margin=float(decision.get("margin", DEFAULT_MARGIN)),
            min_agreement=float(decision.get("min_agreement", DEFAULT_MIN_AGREEMENT)),
            min_quality=float(min_quality),
        )


@dataclass(frozen=True)
class Verdict:
    label: str  # one of LABELS
    reason: str | None  # why uncertain: "quality", "near threshold", "windows disagree"; None otherwise
    p_abnormal: float | None  # mean P(abnormal) of the good windows; None when there is none
    agreement: float | None  # share of the good windows on the mean's side of the threshold
    windows: int  # good windows aggregated
    rejected: int  # windows below min_quality


def decide(window_p: np.ndarray, window_q: np.ndarray | None, rule: Rule) -> Verdict:
    """The verdict on the windows so far: ``window_p`` P(abnormal) of each, ``window_q`` their
    quality index (None: every window counts as good)."""
    p = np.asarray(window_p, dtype=np.float64)
    good = np.ones(p.size, bool) if window_q is None else np.asarray(window_q) >= rule.min_quality
    used = p[good]
    rejected = int(p.size - used.size)
    if not used.size:
        return Verdict("uncertain", "quality", None, None, 0, rejected)
    mean = float(used.mean())
    abnormal = mean >= rule.threshold
    agreement = float(np.mean((used >= rule.threshold) == abnormal))
    if abs(mean - rule.threshold) < rule.margin:
        return Verdict("uncertain", "near threshold", mean, agreement, int(used.size), rejected)
    if agreement < rule.min_agreement:
        return Verdict("uncertain", "windows disagree", mean, agreement, int(used.size), rejected)
    return Verdict("abnormal" if abnormal else "normal", None, mean, agreement, int(used.size), rejected)


def window_qualities(audio: np.ndarray, fs: float, window: int, hop: int, envelope_fs: float) -> np.ndarray:
    """The quality index of each ``window``-sample window every ``hop`` samples of a whole
    recording, computed as the daemon's pipeline computes it when it cuts that window (the
    last 5 s of audio and of the causal envelope; both filters are chunk-invariant)."""
    span = int(QUALITY_WINDOW_S * fs)
    envelope = HomomorphicEnvelope(fs, float(envelope_fs))
    env = envelope(PcgBandpass(fs)(np.asarray(audio, dtype=np.float32)))
    dec = envelope.decimation
    ends = np.arange(window, len(audio) + 1, hop)
    out = np.zeros(len(ends))
    for k, end in enumerate(ends):
        lo = max(0, end - span)
        e = env[lo // dec : end // dec]
        out[k] = quality_index(audio[lo:end], e, envelope.fs) if e.size >= 2 else 0.0
    return out
