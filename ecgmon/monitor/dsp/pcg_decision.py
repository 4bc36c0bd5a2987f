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

Device calibration. Left out, four databases recorded with four stethoscopes showed that a
threshold on P(abnormal) does not carry over: each device shifts and stretches the scores. A
card with ``z_threshold`` therefore states its rule on the *standardised* score
``z = (mean P(abnormal) - median) / IQR``, where median and IQR are those of the recording
scores of one device's own unlabelled recordings (``Calibration``, written by
``ecgmon calibrate pcg``). With a calibration the rule becomes an ordinary ``Rule`` on that
device's P(abnormal) scale (``DeviceRule.rule``); without one the verdict is uncertain,
"device not calibrated": the raw threshold was measured to call nearly every recording of an
unseen device one class.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import json
from pathlib import Path

import numpy as np

from ecgmon.monitor.dsp.pcg_envelope import HomomorphicEnvelope, PcgBandpass
from ecgmon.monitor.dsp.pcg_quality import QUALITY_WINDOW_S, quality_index
from ecgmon.monitor.dsp.pcg_segment import FEATURE_NAMES

LABELS = ("normal", "abnormal", "uncertain")
# Card "decision" keys and their values for a card written before abstention existed: no
# margin and no agreement requirement, so such a model keeps its old verdicts (bar quality).
DEFAULT_MARGIN = 0.0
DEFAULT_MIN_AGREEMENT = 0.0
# A calibration needs at least this many recordings with a good window: a median and an IQR
# from fewer swing with whoever happened to be recorded.
MIN_CALIBRATION_RECORDINGS = 20
CALIBRATION_FORMAT = "ecgmon-pcg-calibration-1"
UNCALIBRATED = "device not calibrated"


@dataclass(frozen=True)
class Rule:
    """The decision constants: ``threshold``, ``margin`` and ``min_agreement`` from the model
    card (chosen on training databases), ``min_quality`` from the config ([audio])."""

    threshold: float = 0.5
    margin: float = DEFAULT_MARGIN
    min_agreement: float = DEFAULT_MIN_AGREEMENT
    min_quality: float = 0.0
    # True: the card's rule needs a device calibration and there is none (every verdict is
    # uncertain, "device not calibrated"; the mean P(abnormal) is still reported).
    uncalibrated: bool = False

    @classmethod
    def from_card(cls, decision: dict[str, Any], min_quality: float) -> Rule:
        return cls(
            threshold=float(decision.get("threshold", 0.5)),
            margin=float(decision.get("margin", DEFAULT_MARGIN)),
            min_agreement=float(decision.get("min_agreement", DEFAULT_MIN_AGREEMENT)),
            min_quality=float(min_quality),
        )


class CalibrationError(ValueError):
    """A calibration file that cannot be used with this model (another model, too few recordings)."""


@dataclass(frozen=True)
class Calibration:
    """Where one device puts the model's recording scores: their median and interquartile
    range over ``recordings`` unlabelled recordings (no label is read), for the model file
    whose SHA-256 is ``model_sha256`` (another model's scores lie elsewhere). A device
    calibrated for the cycle rule alone (no heart-sound model configured) has no model part:
    ``median`` and ``iqr`` None, ``model_sha256`` empty."""

    median: float | None
    iqr: float | None
    recordings: int
    model_sha256: str
    model_name: str = ""
    device: str = ""
    min_quality: float = 0.0  # the quality floor the recording scores were computed with
    # The same device's calibration for the cycle rule (CycleCalibration.to_json), if fitted.
    cycles: dict[str, Any] | None = None

    @property
    def has_model_part(self) -> bool:
        return bool(self.model_sha256)

    def model_scale(self) -> tuple[float, float]:
        """(median, IQR) of the model's recording scores; Calibration.load with the model's
        SHA-256 has refused a file without them."""
        if self.median is None or self.iqr is None:
            raise CalibrationError("this calibration has no part for the heart-sound model")
        return self.median, self.iqr

    def z(self, score: float) -> float:
        median, iqr = self.model_scale()
        return (score - median) / iqr

    def check_quality(self, min_quality: float) -> Calibration:
        """Refuse to serve a quality floor other than the one the scores were computed with
        (another floor averages other windows: another scale)."""
        if abs(self.min_quality - float(min_quality)) > 1e-9:
            raise CalibrationError(f"fitted with [audio] min_quality {self.min_quality:g}, the daemon uses "
                                   f"{float(min_quality):g}: calibrate again with this setting")
        return self

    def to_json(self) -> dict[str, Any]:
        out = {"format": CALIBRATION_FORMAT, **self.__dict__}
        if out["cycles"] is None:
            del out["cycles"]  # a file without the cycle rule's part reads as before
        return out

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_json(), indent=2) + "\n", encoding="utf-8")

    @classmethod
    def load(cls, path: str | Path, model_sha256: str | None = None) -> Calibration:
        """Read ``path``; refuse it if it was fitted for another model file than ``model_sha256``."""
        try:
            data = json.loads(Path(path).read_text(encoding="utf-8"))
        except (OSError, ValueError) as err:
            raise CalibrationError(f"{path}: cannot read the calibration ({err})") from None
        if not isinstance(data, dict) or data.get("format") != CALIBRATION_FORMAT:
            raise CalibrationError(f"{path}: not a heart-sound calibration (format {CALIBRATION_FORMAT!r})")
        try:
            cal = cls(**{k: v for k, v in data.items() if k != "format"})
        except TypeError as err:
            raise CalibrationError(f"{path}: {err}") from None
        if model_sha256 is not None and not cal.has_model_part:
            raise CalibrationError(f"{path}: fitted for the cycle rule only, it has no part for the heart-sound model: "
                                   "run ecgmon calibrate pcg again with [models] pcg set")
        if model_sha256 is not None and cal.model_sha256.lower() != model_sha256.lower():
            raise CalibrationError(
                f"{path}: fitted for model {cal.model_name or '?'} sha256 {cal.model_sha256[:12]}, not this model "
                f"(sha256 {model_sha256[:12]}): run ecgmon calibrate pcg again with this model")
        if cal.has_model_part and not (cal.iqr is not None and cal.iqr > 0 and cal.median is not None
                                       and np.isfinite(cal.median) and cal.recordings >= 2):
            raise CalibrationError(f"{path}: unusable (iqr {cal.iqr}, {cal.recordings} recordings)")
        if not cal.has_model_part and cal.cycles is None:
            raise CalibrationError(f"{path}: holds neither a model part nor a cycle rule part")
        return cal


def fit_calibration(scores: np.ndarray, model_sha256: str, model_name: str = "", device: str = "",
                    min_quality: float = 0.0, min_recordings: int = MIN_CALIBRATION_RECORDINGS) -> Calibration:
    """The calibration of one device from its recordings' scores (``recording_score`` of each;
    None/NaN for a recording with no good window is left out). ``min_recordings`` is lowered
    only by training, whose held-out databases are whole databases (and tiny in tests)."""
    s = np.asarray([np.nan if v is None else v for v in scores], dtype=np.float64)
    s = s[np.isfinite(s)]
    if s.size < max(2, min_recordings):
        raise CalibrationError(f"{s.size} recordings with a window of acceptable quality; a calibration "
                               f"needs at least {max(2, min_recordings)}")
    q25, median, q75 = np.percentile(s, [25, 50, 75])
    iqr = float(q75 - q25)
    if not iqr > 1e-6:
        raise CalibrationError("every recording got the same score: nothing to calibrate on")
    return Calibration(round(float(median), 6), round(iqr, 6), int(s.size), model_sha256.lower(), model_name,
                       device, float(min_quality))


def recording_score(window_p: np.ndarray, window_q: np.ndarray | None, min_quality: float) -> float | None:
    """The score a calibration is fitted on: the mean P(abnormal) of the windows of quality
    >= ``min_quality`` (what ``decide`` compares with the threshold); None if there is none."""
    p = np.asarray(window_p, dtype=np.float64)
    if window_q is not None:
        p = p[np.asarray(window_q) >= min_quality]
    return float(p.mean()) if p.size else None


@dataclass(frozen=True)
class DeviceRule:
    """A card's rule on the standardised score: abnormal when z >= ``z_threshold``, uncertain
    within ``z_margin`` of it (and when the windows disagree, as in ``Rule``)."""

    z_threshold: float
    z_margin: float
    min_agreement: float = DEFAULT_MIN_AGREEMENT

    @classmethod
    def from_card(cls, decision: dict[str, Any]) -> DeviceRule | None:
        """The card's device rule, or None for a card without one (it keeps its raw rule)."""
        if decision.get("z_threshold") is None:
            return None
        return cls(float(decision["z_threshold"]), float(decision.get("z_margin", 0.0)),
                   float(decision.get("min_agreement", DEFAULT_MIN_AGREEMENT)))

    def rule(self, calibration: Calibration, min_quality: float) -> Rule:
        """The same rule on this device's P(abnormal) scale."""
        median, iqr = calibration.model_scale()
        return Rule(median + self.z_threshold * iqr, self.z_margin * iqr,
                    self.min_agreement, float(min_quality))


def device_rule(decision: dict[str, Any], calibration: Calibration | None, min_quality: float) -> Rule:
    """The rule the daemon and evaluate apply for one device: a card without a device rule keeps
    its threshold and margin (a calibration is then refused); a card with one needs the
    device's calibration, and without it every verdict is uncertain, "device not calibrated"."""
    zrule = DeviceRule.from_card(decision)
    if zrule is None:
        if calibration is not None:
            raise CalibrationError("this model's card has no rule on the calibrated score (z_threshold): "
                                   "a calibration would not be used")
        return Rule.from_card(decision, min_quality)
    if calibration is None:
        raw = Rule.from_card(decision, min_quality)
        return Rule(raw.threshold, raw.margin, raw.min_agreement, raw.min_quality, uncalibrated=True)
    return zrule.rule(calibration, min_quality)


@dataclass(frozen=True)
class Verdict:
    label: str  # one of LABELS
    reason: str | None  # why uncertain: "quality", "device not calibrated", "near threshold", "windows disagree"
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
    if rule.uncalibrated:
        return Verdict("uncertain", UNCALIBRATED, mean, None, int(used.size), rejected)
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


# -- the cycle rule (monitor/dsp/pcg_cycles.py): the verdict from the segmented cardiac cycle -----

# A device's standardised feature is clipped here: one recording's odd value (a cough in a
# cell of the cycle) must not carry the mean of all the kept features by itself.
FEATURE_CLIP = 5.0


@dataclass(frozen=True)
class CycleCalibration:
    """Where one device puts the cycle features and the cycle score, from its own unlabelled
    recordings: each feature's median and IQR over them (the standardisation that makes a
    feature mean the same on every stethoscope), then the median and IQR of the resulting
    scores, for the rule file whose SHA-256 is ``rule_sha256`` (its emission and kept features
    decide what the numbers are)."""

    feature_median: tuple[float, ...]
    feature_iqr: tuple[float, ...]
    score_median: float
    score_iqr: float
    recordings: int
    rule_sha256: str
    rule_name: str = ""

    def standardised(self, features: np.ndarray) -> np.ndarray:
        med, iqr = np.asarray(self.feature_median), np.asarray(self.feature_iqr)
        return np.clip((np.asarray(features, dtype=np.float64) - med) / np.maximum(iqr, 1e-9), -FEATURE_CLIP, FEATURE_CLIP)

    def to_json(self) -> dict[str, Any]:
        return {**self.__dict__, "feature_median": list(self.feature_median), "feature_iqr": list(self.feature_iqr)}

    @classmethod
    def from_calibration(cls, cal: Calibration | None, path: str | Path, rule_sha256: str) -> CycleCalibration | None:
        """The cycle part of a device's calibration; None when the file has none (the verdict
        is then 'device not calibrated'); refused when fitted for another rule file."""
        if cal is None or cal.cycles is None:
            return None
        data = cal.cycles
        try:
            out = cls(tuple(float(v) for v in data["feature_median"]), tuple(float(v) for v in data["feature_iqr"]),
                      float(data["score_median"]), float(data["score_iqr"]), int(data["recordings"]),
                      str(data["rule_sha256"]), str(data.get("rule_name", "")))
        except (KeyError, TypeError, ValueError) as err:
            raise CalibrationError(f"{path}: malformed cycle calibration ({type(err).__name__}: {err})") from None
        n = len(FEATURE_NAMES)
        if len(out.feature_median) != n or len(out.feature_iqr) != n:
            raise CalibrationError(f"{path}: cycle calibration has {len(out.feature_median)} medians and "
                                   f"{len(out.feature_iqr)} IQRs, not one per cycle feature ({n})")
        # A NaN here would make every score NaN, and a NaN score compares as "normal".
        if not (np.isfinite(out.feature_median).all() and np.isfinite(out.feature_iqr).all()):
            raise CalibrationError(f"{path}: cycle calibration holds a feature median or IQR that is not a number")
        if out.rule_sha256.lower() != rule_sha256.lower():
            raise CalibrationError(
                f"{path}: cycle part fitted for rule {out.rule_name or '?'} sha256 {out.rule_sha256[:12]}, not this "
                f"rule (sha256 {rule_sha256[:12]}): run ecgmon calibrate pcg again with this rule")
        if not (out.score_iqr > 0 and np.isfinite(out.score_median)) or out.recordings < 2:
            raise CalibrationError(f"{path}: cycle calibration unusable (score iqr {out.score_iqr}, "
                                   f"{out.recordings} recordings)")
        return out


def _signed_mean(z: np.ndarray, columns: np.ndarray, signs: np.ndarray) -> np.ndarray:
    """Attempt I's score: the mean of the kept standardised features, each with its sign (times
    its weight when the rule gives weights: pcg8's families' mean, CycleRule.load)."""
    return (np.atleast_2d(z)[:, columns] * signs).mean(1)


def fit_cycle_calibration(features: np.ndarray, columns: np.ndarray, signs: np.ndarray, rule_sha256: str,
                          rule_name: str = "", min_recordings: int = MIN_CALIBRATION_RECORDINGS) -> CycleCalibration:
    """A device's cycle calibration from its recordings' features ([recordings, 116], NaN where a
    recording had too few cycles; no label is read): per-feature median/IQR over the recordings,
    then the median/IQR of their scores (recordings with every kept feature)."""
    X = np.atleast_2d(np.asarray(features, dtype=np.float64))
    ok = np.isfinite(X[:, columns]).all(1)
    if ok.sum() < max(2, min_recordings):
        raise CalibrationError(f"{int(ok.sum())} recordings with enough heart cycles; a calibration needs at least "
                               f"{max(2, min_recordings)}")
    med = np.nanmedian(X, 0)
    q75, q25 = np.nanpercentile(X, [75, 25], 0)
    # a feature no recording had (NaN everywhere) gets 0 / 1: never kept by a rule that works
    med, iqr = np.where(np.isfinite(med), med, 0.0), np.where(np.isfinite(q75 - q25), q75 - q25, 1.0)
    part = CycleCalibration(tuple(med.tolist()), tuple(iqr.tolist()), 0.0, 1.0, int(ok.sum()), rule_sha256.lower(),
                            rule_name)
    s = _signed_mean(part.standardised(X[ok]), columns, signs)
    s25, s50, s75 = np.percentile(s, [25, 50, 75])
    if not s75 - s25 > 1e-9:
        raise CalibrationError("every recording got the same cycle score: nothing to calibrate on")
    return CycleCalibration(part.feature_median, part.feature_iqr, float(s50), float(s75 - s25), int(ok.sum()),
                            rule_sha256.lower(), rule_name)


@dataclass(frozen=True)
class CycleVerdict:
    label: str  # one of LABELS
    reason: str | None  # why uncertain: "quality" (too few cycles), "device not calibrated", "near threshold"
    score: float | None  # the signed mean of the device-standardised kept features; None without one
    threshold: float | None  # z_threshold on the score's scale for this device (median + z * IQR)
    z: float | None  # (score - median) / IQR of this device's recordings
    cycles: int  # complete cycles in the audio analysed


def decide_cycles(features: np.ndarray, cycles: int, columns: np.ndarray, signs: np.ndarray, z_threshold: float,
                  z_margin: float, calibration: CycleCalibration | None) -> CycleVerdict:
    """The cycle rule's verdict (the daemon after each update, ``evaluate pcg --cycles`` after a
    recording's end): uncertain when a kept feature is missing (fewer than 3 cycles, no
    contrast between the sounds and the gaps), when the device is not calibrated, or when z is
    within ``z_margin`` of ``z_threshold``; else abnormal at or above it, normal below."""
    f = np.asarray(features, dtype=np.float64)
    if f.shape[-1] <= int(np.max(columns)) or not np.isfinite(f[columns]).all():
        return CycleVerdict("uncertain", "quality", None, None, None, int(cycles))
    if calibration is None:
        return CycleVerdict("uncertain", UNCALIBRATED, None, None, None, int(cycles))
    score = float(_signed_mean(calibration.standardised(f), columns, signs)[0])
    z = (score - calibration.score_median) / calibration.score_iqr
    threshold = calibration.score_median + z_threshold * calibration.score_iqr
    if abs(z - z_threshold) < z_margin:
        return CycleVerdict("uncertain", "near threshold", score, threshold, z, int(cycles))
    return CycleVerdict("abnormal" if z >= z_threshold else "normal", None, score, threshold, z, int(cycles))
