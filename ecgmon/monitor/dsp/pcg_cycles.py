"""The cycle rule: a heart-sound verdict from the segmented cardiac cycle (issue 14, attempt I).

A rule file (``ecgmon/models/weights/pcg-cycles.json``, written by ``bench/pcg_cycles.py
--write-rule``; a fold's by ``--fold-rule``) holds the HSMM emission weights the segmenter
uses (``pcg_segment.Emission``), the features of ``pcg_segment.FEATURE_NAMES`` it keeps with
their signs (and weights, when the score is the mean over the feature families of each
family's signed mean: ``--family-mean``, docs/pcg-attempts.md pcg8, the shipped rule's), and
the decision constants (z-threshold and margin on the device-calibrated score, chosen on the
training databases only), beside the command that wrote it and its held-out figures, as a
model card does.

``CycleRule.features`` is what the daemon computes on the stream's last ``span_s`` seconds
every ``update_s`` (in the batcher's thread), what ``ecgmon evaluate pcg --cycles`` computes on
each recording's last ``span_s`` seconds and what ``ecgmon calibrate pcg`` fits a device's
per-feature median/IQR on; ``pcg_decision.decide_cycles`` turns them into the verdict. Pure
numpy on audio already received (segmentation of a block only looks back), no state.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ecgmon.model_card import file_sha256
from ecgmon.monitor.dsp import pcg_segment as P

RULE_FORMAT = "ecgmon-pcg-cycle-rule-1"
# The audio a verdict rests on: the last SPAN_S seconds (every pcg2016 recording of a, b, d and
# 98.6 % of e's are shorter, so the verdict at a recording's end is on all of it), recomputed
# every UPDATE_S (segmenting 60 s costs ~0.2 s of one core: 4 % per stream).
SPAN_S = 60.0
UPDATE_S = 5.0
# The features' output row: the 116 features, then the number of complete cycles found.
OUTPUT_LEN = len(P.FEATURE_NAMES) + 1


class CycleRuleError(ValueError):
    """A rule file that cannot be used (missing, not JSON, not a cycle rule, inconsistent)."""


@dataclass(frozen=True)
class CycleRule:
    """A cycle rule as loaded: emission, kept feature columns and signs, decision constants."""

    name: str
    sha256: str
    emission: P.Emission
    columns: np.ndarray  # indices into FEATURE_NAMES
    # +1: higher means abnormal, -1: lower does; times the feature's weight in the score (mean 1)
    # when the rule gives weights (pcg8's families' mean: each family of features weighs the same)
    signs: np.ndarray
    z_threshold: float
    z_margin: float
    span_s: float = SPAN_S
    update_s: float = UPDATE_S
    card: dict[str, Any] = field(default_factory=dict, compare=False)

    @classmethod
    def load(cls, path: str | Path) -> CycleRule:
        """Read and check ``path``; every way it can be unusable is one CycleRuleError line."""
        path = Path(path)
        try:
            card = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as err:
            raise CycleRuleError(f"{path}: cannot read the cycle rule ({err})") from None
        if not isinstance(card, dict) or card.get("format") != RULE_FORMAT:
            raise CycleRuleError(f"{path}: not a heart-sound cycle rule (format {RULE_FORMAT!r}): "
                                 "write one with bench/pcg_cycles.py --write-rule")
        try:
            weights = np.asarray(card["emission"], dtype=np.float64)
            feats = card["features"]
            columns = np.array([int(f["index"]) for f in feats], dtype=int)
            names = [str(f["name"]) for f in feats]
            signs = np.array([float(f["sign"]) for f in feats])
            weights_f = np.array([float(f.get("weight", 1.0)) for f in feats])
            z_threshold, z_margin = float(card["z_threshold"]), float(card["z_margin"])
            span_s, update_s = float(card.get("span_s", SPAN_S)), float(card.get("update_s", UPDATE_S))
        except (KeyError, TypeError, ValueError) as err:
            raise CycleRuleError(f"{path}: malformed cycle rule ({type(err).__name__}: {err})") from None
        if weights.shape != (9, 4) or not np.isfinite(weights).all():
            raise CycleRuleError(f"{path}: emission must be 9 x 4 finite numbers, got shape {weights.shape}")
        if not len(columns) or columns.min() < 0 or columns.max() >= len(P.FEATURE_NAMES):
            raise CycleRuleError(f"{path}: feature indices must be 0-{len(P.FEATURE_NAMES) - 1}, at least one")
        wrong = [n for c, n in zip(columns, names) if P.FEATURE_NAMES[c] != n]
        if wrong:  # a rule written for another feature list: its indices mean other things
            raise CycleRuleError(f"{path}: feature names do not match this segmenter's ({wrong[0]!r} ...)")
        if not set(signs.tolist()) <= {-1.0, 1.0}:
            raise CycleRuleError(f"{path}: feature signs must be +1 or -1")
        if not (np.isfinite(weights_f).all() and (weights_f > 0).all()):
            raise CycleRuleError(f"{path}: feature weights must be finite and > 0")
        signs = signs * weights_f / weights_f.mean()
        if not (np.isfinite([z_threshold, z_margin]).all() and z_margin >= 0):
            raise CycleRuleError(f"{path}: z_threshold must be finite and z_margin >= 0")
        if not (P.MIN_SECONDS <= span_s <= 600 and 0.5 <= update_s <= span_s):
            raise CycleRuleError(f"{path}: span_s {span_s:g} / update_s {update_s:g} out of range")
        return cls(str(card.get("name") or path.stem), file_sha256(path), P.Emission(weights), columns, signs,
                   z_threshold, z_margin, span_s, update_s, card)

    def features(self, audio: np.ndarray) -> tuple[np.ndarray, int]:
        """(the 116 features, complete cycles) of 2 kHz audio's last ``span_s`` seconds; NaN
        features when there are too few cycles, and no cycles either when the sounds do not
        stand out of the gaps (the HSMM finds 'cycles' in silence too)."""
        x = np.asarray(audio)[-int(round(self.span_s * P.FS)):]
        values, seg = P.recording_features(x, self.emission)
        return values, 0 if seg is None or seg.contrast < P.MIN_CONTRAST else len(seg.cycles())

    def output(self, audio: np.ndarray) -> np.ndarray:
        """``features`` as one row of OUTPUT_LEN (the cycles last): what the daemon's job returns."""
        values, cycles = self.features(audio)
        return np.r_[values, cycles]
