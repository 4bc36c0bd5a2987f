"""`ecgmon evaluate pcg DIR`: score heart-sound recordings against their REFERENCE.csv with the
exported model, loaded the way the daemon loads it (``load_model``), so the figures are
those of the file the daemon runs.

Each recording is cut into the card's windows (5 s every 2.5 s), the model gives each a
probability of 'abnormal', and the daemon's decision rule (``monitor/dsp/pcg_decision``: the
mean over the windows of acceptable quality against the card's threshold, or 'uncertain'
within its margin, when the windows disagree or none is good enough) calls the recording.
Se, Sp and MAcc are on the recordings given a verdict, beside the coverage (their share);
the ROC AUC is of every recording's mean P(abnormal). A file that cannot be scored (corrupt, shorter than one window, no
label) is a one-line warning and the others are still scored.

A card that rules on the calibrated score (``z_threshold``) needs each device's calibration.
By default each database folder is taken as one device and calibrated on its own recordings'
scores, with no label read (what a user does with ``ecgmon calibrate pcg`` on a new
stethoscope); ``calibration`` gives one file for every folder instead, and ``"none"`` shows
what the daemon says without one (uncertain: device not calibrated).

``ecgmon calibrate pcg`` (``calibrate_pcg``) scores unlabelled recordings the same way and
writes the device's calibration.

``evaluate_cycles`` (``evaluate pcg --cycles RULE.json``) scores the cycle rule instead
(monitor/dsp/pcg_cycles.py, the daemon's verdict with ``[models] pcg_cycles``): each
recording's cycle features on its last ``span_s`` seconds (what the daemon computes when the
stream ends), each database standardised and calibrated on its own recordings (no label read),
judged by ``pcg_decision.decide_cycles``. The CNN is not run.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import torch
from rich.console import RenderableType
from rich.table import Table
from rich.text import Text

from ecgmon.evaluate import plots
from ecgmon.models.pcg_data import (
    CLASSES,
    PcgDataError,
    Warn,
    database_folders,
    folder_recordings,
    progress_bar,
    read_audio,
    windows,
)
from ecgmon.config import AudioConfig
from ecgmon.monitor.dsp.pcg_cycles import CycleRule, CycleRuleError
from ecgmon.monitor.dsp.pcg_segment import FS
from ecgmon.monitor.dsp.pcg_decision import (
    Calibration,
    CalibrationError,
    CycleCalibration,
    DeviceRule,
    Rule,
    decide,
    decide_cycles,
    device_rule,
    fit_calibration,
    fit_cycle_calibration,
    recording_score,
    window_qualities,
)
from ecgmon.monitor.model_loader import LoadedModel, ModelError, load_model
from ecgmon.scores import roc, verdict_report

BATCH = 128


@dataclass(frozen=True)
class Scored:
    database: str
    name: str
    label: int  # class index
    score: float  # mean P(abnormal) over every window (the ROC's score)
    windows: int
    verdict: str  # normal, abnormal or uncertain: the daemon's rule after the last window
    reason: str | None  # why uncertain
    p_abnormal: float | None  # mean P(abnormal) of the windows of acceptable quality
    good_windows: int  # windows of quality >= min_quality


def _model(path: Path, device: str) -> LoadedModel:
    try:
        model = load_model(path, device=device)
    except ModelError as err:
        raise PcgDataError(str(err)) from None
    if model.kind != "pcg":
        raise PcgDataError(f"{path}: a {model.kind!r} model, not a heart-sound ('pcg') model")
    if tuple(model.classes) != CLASSES:
        raise PcgDataError(f"{path}: classes {list(model.classes)}, expected {list(CLASSES)}")
    return model


def window_probabilities(model: LoadedModel, audio: np.ndarray, hop: int) -> np.ndarray:
    """P(abnormal) of each window of ``audio``, as the daemon's batcher would return them."""
    x = windows(audio, model.window, hop)
    out = []
    for i in range(0, len(x), BATCH):
        logits = model(torch.from_numpy(x[i : i + BATCH]))
        out.append(torch.softmax(logits.float(), dim=1)[:, 1].cpu().numpy())
    return np.concatenate(out) if out else np.zeros(0, np.float32)


@dataclass(frozen=True)
class Windows:
    """One recording's windows: P(abnormal) and quality index of each, as the daemon gets them."""

    database: str
    name: str
    label: int  # class index; -1 when unlabelled (calibration)
    p: np.ndarray
    q: np.ndarray


def _audio_of(recordings: list[tuple[str, str, Path, int]], fs: int, warn: Warn, progress: bool,
              doing: str) -> Iterator[tuple[str, str, Path, int, np.ndarray]]:
    """``(database, name, file, label, audio at fs)`` of each readable recording, with a
    progress bar; an unreadable one is warned and skipped, the notes on a changed one warned."""
    with progress_bar(progress) as bar:
        task = bar.add_task(doing, total=len(recordings))
        for db, name, path, label in recordings:
            bar.update(task, description=f"{doing} {db}/{name}")
            bar.advance(task)
            try:
                audio, notes = read_audio(path, fs)
            except PcgDataError as err:
                warn(f"{err}; skipped")
                continue
            for note in notes:
                warn(f"{path}: {note}")
            yield db, name, path, label, audio


def score_windows(recordings: list[tuple[str, str, Path, int]], model: LoadedModel, warn: Warn,
                  progress: bool, envelope_fs: float) -> list[Windows]:
    """The windows of ``(database, name, file, label)`` recordings; unusable files are warned
    and skipped."""
    hop = int(model.card["input"]["hop"])
    scored = []
    for db, name, path, label, audio in _audio_of(recordings, int(model.fs), warn, progress, "scoring"):
        if len(audio) < model.window:
            warn(f"{path}: {len(audio) / model.fs:.1f} s, shorter than the model's "
                 f"{model.window / model.fs:g} s window; skipped")
            continue
        p = window_probabilities(model, audio, hop)
        q = window_qualities(audio, model.fs, model.window, hop, envelope_fs)
        scored.append(Windows(db, name, label, p, q))
    return scored


def verdicts(recordings: list[Windows], rule: Rule) -> list[Scored]:
    """The verdict the daemon would publish after each recording's last window (``pcg_decision``)."""
    out = []
    for r in recordings:
        v = decide(r.p, r.q, rule)
        out.append(Scored(r.database, r.name, r.label, float(r.p.mean()), len(r.p), v.label, v.reason,
                          None if v.p_abnormal is None else round(v.p_abnormal, 4), v.windows))
    return out


def score_recordings(recordings: list[tuple[str, str, Path, int]], model: LoadedModel, warn: Warn,
                     progress: bool, rule: Rule, envelope_fs: float) -> list[Scored]:
    """Score ``(database, name, file, label)`` recordings with one ``rule``; unusable files are
    warned and skipped."""
    return verdicts(score_windows(recordings, model, warn, progress, envelope_fs), rule)


def fit_device(recordings: list[Windows], model: LoadedModel, min_quality: float, device: str) -> Calibration:
    """The calibration of the device that recorded ``recordings`` (their labels are not read)."""
    return fit_calibration([recording_score(r.p, r.q, min_quality) for r in recordings],
                           model.card["sha256"], model.name, device, min_quality)


@dataclass(frozen=True)
class CycleFeatures:
    """One recording's cycle features as the daemon computes them at the stream's end."""

    database: str
    name: str
    label: int  # class index; -1 when unlabelled (calibration)
    features: np.ndarray  # FEATURE_NAMES' 116 values, NaN where too few cycles
    cycles: int


def _cycle_rule(path: str | Path) -> CycleRule:
    try:
        return CycleRule.load(path)
    except CycleRuleError as err:
        raise PcgDataError(str(err)) from None


def cycle_features(recordings: list[tuple[str, str, Path, int]], rule: CycleRule, warn: Warn,
                   progress: bool) -> list[CycleFeatures]:
    """``CycleRule.features`` of ``(database, name, file, label)`` recordings (the last
    ``span_s`` seconds of each); unreadable ones are warned and skipped."""
    out = []
    for db, name, _, label, audio in _audio_of(recordings, FS, warn, progress, "segmenting"):
        values, cycles = rule.features(audio)
        out.append(CycleFeatures(db, name, label, values, cycles))
    return out


def fit_cycle_device(recordings: list[CycleFeatures], rule: CycleRule) -> CycleCalibration:
    """The cycle calibration of the device that recorded ``recordings`` (labels not read)."""
    return fit_cycle_calibration(np.array([r.features for r in recordings]), rule.columns, rule.signs, rule.sha256,
                                 rule.name)


def cycle_verdicts(recordings: list[CycleFeatures], rule: CycleRule, cal: CycleCalibration | None) -> list[Scored]:
    """The verdict the daemon publishes at each recording's end (``pcg_decision.decide_cycles``);
    the ROC's score is the calibrated z (NaN without features or calibration)."""
    out = []
    for r in recordings:
        v = decide_cycles(r.features, r.cycles, rule.columns, rule.signs, rule.z_threshold, rule.z_margin, cal)
        out.append(Scored(r.database, r.name, r.label, np.nan if v.z is None else float(v.z), r.cycles, v.label,
                          v.reason, None if v.score is None else round(v.score, 4), r.cycles))
    return out


def evaluate_cycles(root: str | Path, rule_path: str | Path, out: str | Path | None, warn: Warn,
                    progress: bool = True, calibration: str | Path | None = None) -> dict[str, Any]:
    """``evaluate pcg DIR --cycles RULE.json``: as ``evaluate_pcg`` for the cycle rule. Each
    database folder is one device, calibrated on its own recordings' features (no label
    read); ``calibration`` gives one file (its cycle part) for all, ``"none"`` none."""
    root, rule_path = Path(root), Path(rule_path)
    rule = _cycle_rule(rule_path)
    fixed_cal = None
    if calibration is not None and str(calibration) != "none":
        try:
            fixed_cal = CycleCalibration.from_calibration(Calibration.load(calibration), calibration, rule.sha256)
        except CalibrationError as err:
            raise PcgDataError(str(err)) from None
    feats = cycle_features(_labelled(root, warn), rule, warn, progress)
    results: list[Scored] = []
    calibrations: dict[str, Any] = {}
    for db in sorted({r.database for r in feats}):
        mine = [r for r in feats if r.database == db]
        cal = fixed_cal
        if calibration is None:
            try:
                cal = fit_cycle_device(mine, rule)
            except CalibrationError as err:
                warn(f"{db}: not calibrated ({err}): its recordings are 'device not calibrated'")
        calibrations[db] = None if cal is None else {"score_median": cal.score_median, "score_iqr": cal.score_iqr,
                                                     "recordings": cal.recordings}
        results += cycle_verdicts(mine, rule, cal)
    return _write_result(results, rule.name, root, out, rule.z_threshold, set(rule.card.get("trained_on") or []),
                         lambda out_dir: {
        "model": {"path": str(rule_path), "name": rule.name, "sha256": rule.sha256},
        "command": f"ecgmon evaluate pcg {root} --cycles {rule_path} --out {out_dir}"
                   + (f" --calibration {calibration}" if calibration is not None else ""),
        "calibration": ("each database its own, from its recordings' cycle features (no label read)"
                        if calibration is None else "none: every verdict 'device not calibrated'"
                        if str(calibration) == "none" else f"{calibration} for every database"),
        "calibrations": calibrations,
        "decision": {"z_threshold": rule.z_threshold, "z_margin": rule.z_margin, "features": len(rule.columns),
                     "aggregation": f"the cycle score of the last {rule.span_s:g} s"},
        "min_quality": None,
    })


def _report(results: list[Scored], threshold: float) -> dict[str, Any]:
    return verdict_report(np.array([r.label for r in results]), [r.verdict for r in results],
                          [r.reason for r in results], np.array([r.score for r in results]), threshold)


def _roc_png(results: list[Scored], out: Path, title: str) -> Path | None:
    labels = np.array([r.label for r in results])
    scores = np.array([r.score for r in results])
    curve = roc(labels == 1, scores)
    if curve is None:
        return None
    return plots.roc_png([curve], ["abnormal"], out / "roc.png", title)


def _labelled(root: Path, warn: Warn) -> list[tuple[str, str, Path, int]]:
    """``(database, name, file, label)`` of every recording under ``root`` with a label."""
    recordings = []
    for folder in database_folders(root):
        try:
            recordings += [(folder.name, *rec) for rec in folder_recordings(folder, warn)]
        except PcgDataError as err:  # e.g. an unreadable REFERENCE.csv: the other folders still count
            warn(f"{err}; folder skipped")
    return recordings


def _write_result(results: list[Scored], name: str, root: Path, out: str | Path | None, threshold: float,
                  trained: set[str], head: Callable[[Path], dict[str, Any]]) -> dict[str, Any]:
    """The figures per database and overall, roc.png, confusion.png and metrics.json in ``out``
    (default ``eval/<name>-<folder name>``); ``head(out_dir)`` gives what the scorer says of
    itself (model, command, calibration, decision)."""
    if not results:
        raise PcgDataError(f"{root}: no recording could be scored (see the warnings above)")
    dbs = np.array([r.database for r in results])
    out_dir = Path(out) if out else Path("eval") / f"{name}-{root.name}"
    out_dir.mkdir(parents=True, exist_ok=True)
    title = f"{name} on {root.name}"
    overall = _report(results, threshold)
    written = [
        _roc_png([r for r in results if np.isfinite(r.score)], out_dir, f"{title}: recording-level ROC"),
        plots.confusion_png(np.array(overall["confusion"]["rows_reference_columns_predicted"]), CLASSES,
                            out_dir / "confusion.png", f"{title}: recordings given a verdict"),
    ]
    result = {
        **head(out_dir),
        "overall": overall,
        # A database the model trained on flatters it: only the others measure generalisation.
        "trained_on": sorted(set(dbs.tolist()) & trained),
        "databases": {db: _report([r for r in results if r.database == db], threshold)
                      for db in sorted(set(dbs.tolist()))},
        "recordings": [{**r.__dict__, "score": r.score if np.isfinite(r.score) else None} for r in results],
        "out": str(out_dir),
        "plots": [p.name for p in written if p is not None],
    }
    (out_dir / "metrics.json").write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    return result


def evaluate_pcg(root: str | Path, model_path: str | Path, out: str | Path | None, warn: Warn,
                 device: str = "auto", progress: bool = True, min_quality: float | None = None,
                 envelope_fs: float | None = None, calibration: str | Path | None = None) -> dict[str, Any]:
    """Score every labelled recording under ``root``; write metrics.json, roc.png and
    confusion.png into ``out`` (default ``eval/<model name>-<folder name>``). ``min_quality``
    and ``envelope_fs`` are the daemon's ([audio]; default: the config's defaults).
    ``calibration``: None, each database folder calibrated on its own recordings (labels not
    read); a file, that device's calibration for all; "none", no calibration (the daemon's
    verdict on a device not calibrated). Used only when the card rules on the calibrated score."""
    defaults = AudioConfig()
    min_quality = defaults.min_quality if min_quality is None else min_quality
    envelope_fs = defaults.envelope_fs if envelope_fs is None else envelope_fs
    root, model_path = Path(root), Path(model_path)
    model = _model(model_path, device)
    decision = model.card["decision"]
    calibrated = DeviceRule.from_card(decision) is not None
    if calibration is not None and str(calibration) != "none" and not calibrated:
        raise PcgDataError(f"{model_path}: its card has no rule on the calibrated score; --calibration is not used")
    fixed_cal = None
    if calibrated and calibration is not None and str(calibration) != "none":
        try:
            fixed_cal = Calibration.load(calibration, model.card["sha256"]).check_quality(min_quality)
        except CalibrationError as err:
            raise PcgDataError(str(err)) from None
    threshold = float(decision.get("threshold", 0.5))
    scored = score_windows(_labelled(root, warn), model, warn, progress, float(envelope_fs))
    results: list[Scored] = []
    calibrations: dict[str, Any] = {}
    for db in sorted({r.database for r in scored}):
        mine = [r for r in scored if r.database == db]
        cal = fixed_cal
        if calibrated and calibration is None:
            try:
                cal = fit_device(mine, model, min_quality, db)
            except CalibrationError as err:
                warn(f"{db}: not calibrated ({err}): its recordings are 'device not calibrated'")
        if calibrated:
            calibrations[db] = None if cal is None else {"median": cal.median, "iqr": cal.iqr,
                                                         "recordings": cal.recordings}
        results += verdicts(mine, device_rule(decision, cal, min_quality))
    return _write_result(results, model.name, root, out, threshold,
                         set((model.card.get("training") or {}).get("databases") or []), lambda out_dir: {
        "model": {"path": str(model_path), "name": model.name, "sha256": model.card["sha256"].lower()},
        "command": f"ecgmon evaluate pcg {root} --model {model_path} --out {out_dir}"
                   + (f" --calibration {calibration}" if calibration is not None else ""),
        "calibration": (None if not calibrated else
                        "each database its own, from its recordings' scores (no label read)" if calibration is None
                        else "none: every verdict 'device not calibrated'" if str(calibration) == "none"
                        else f"{calibration} for every database"),
        "calibrations": calibrations,
        "decision": {k: v for k, v in model.card["decision"].items() if k != "chosen_on"},
        "min_quality": min_quality,
    })


def _num(value: float | None) -> str:
    return "–" if value is None else f"{value:.3f}"


def render(result: dict[str, Any]) -> list[RenderableType]:
    """Per-database table with an overall row, then the overall confusion matrix."""
    d = result["decision"]
    if d.get("z_threshold") is not None:
        band = f" ± {d['z_margin']:g}" if d.get("z_margin") else ""
        rule = f"z-threshold {d['z_threshold']:g}{band} on the calibrated score (calibration: {result['calibration']})"
    else:
        band = f" ± {d['margin']:g}" if d.get("margin") else ""
        rule = f"threshold {d['threshold']:g}{band}"
    table = Table(title=f"{result['model']['name']}: recording-level, {rule} on "
                        f"{d['aggregation']}; Se/Sp/MAcc on the recordings given a verdict")
    for col in ("database", "recordings", "abnormal", "normal", "coverage", "Se", "Sp", "MAcc", "ROC AUC"):
        table.add_column(col, justify="left" if col == "database" else "right")
    rows = list(result["databases"].items()) + [("all", result["overall"])]
    for name, r in rows:
        table.add_row(name, str(r["recordings"]), str(r["abnormal"]), str(r["normal"]), _num(r["coverage"]),
                      _num(r["se"]), _num(r["sp"]), _num(r["macc"]), _num(r["auc"]),
                      style="bold" if name == "all" else None)
    cm = Table(title="confusion (recordings given a verdict)")
    cm.add_column("ref \\ pred")
    for name in CLASSES:
        cm.add_column(name, justify="right")
    for name, row in zip(CLASSES, result["overall"]["confusion"]["rows_reference_columns_predicted"]):
        cm.add_row(name, *(str(v) for v in row))
    uncertain = result["overall"]["uncertain"]
    parts: list[RenderableType] = [table, cm, Text(
        "uncertain (no verdict): " + ", ".join(f"{reason} {n}" for reason, n in uncertain.items())
        + ("" if result["min_quality"] is None else f"  (quality floor [audio] min_quality {result['min_quality']:g})"))]
    if result["trained_on"]:
        parts.append(Text(f"the model trained on {', '.join(result['trained_on'])} (same folder names): "
                          "those figures flatter it; a database it never saw is what counts", style="yellow"))
    return parts + [Text(f"wrote {result['out']}: metrics.json {' '.join(result['plots'])}")]


def calibrate_pcg(paths: list[str | Path], model_path: str | Path | None, out: str | Path, warn: Warn,
                  device: str = "auto", progress: bool = True, min_quality: float | None = None,
                  envelope_fs: float | None = None, name: str = "", cycles: str | Path | None = None) -> Calibration:
    """``ecgmon calibrate pcg``: score the recordings of one device (files, or folders of
    *.wav/*.flac; no label is read) with the model and write the location and scale of their
    scores to ``out``. Refused for a model whose card has no rule on the calibrated score.
    With ``cycles`` (a cycle rule file) the file also holds the device's cycle calibration:
    each feature's median/IQR over the recordings and the median/IQR of their cycle scores.
    Without a model (``model_path`` None) the file holds the cycle part alone."""
    if model_path is None and cycles is None:
        raise PcgDataError("nothing to calibrate: neither a heart-sound model nor a cycle rule")
    defaults = AudioConfig()
    min_quality = defaults.min_quality if min_quality is None else min_quality
    envelope_fs = defaults.envelope_fs if envelope_fs is None else envelope_fs
    model = None if model_path is None else _model(Path(model_path), device)
    if model is not None and DeviceRule.from_card(model.card["decision"]) is None:
        raise PcgDataError(f"{model_path}: its card has no rule on the calibrated score (z_threshold): "
                           "a calibration would not be used")
    rule = None if cycles is None else _cycle_rule(cycles)  # a broken rule file fails before any scoring
    files: list[Path] = []
    for item in map(Path, paths):
        if item.is_dir():
            files += sorted(f for f in item.rglob("*") if f.suffix.lower() in (".wav", ".flac"))
        elif item.is_file():
            files.append(item)
        else:
            warn(f"{item}: no such file or folder; skipped")
    if not files:
        raise PcgDataError("no *.wav or *.flac recording to calibrate on")
    recordings = [("device", f.stem, f, -1) for f in files]
    device_name = name or ",".join(str(p) for p in paths)
    # The cycle rule alone: no model part (see Calibration).
    cal = Calibration(None, None, 0, "", "", device_name, float(min_quality))
    try:
        if model is not None:
            scored = score_windows(recordings, model, warn, progress, float(envelope_fs))
            try:
                cal = fit_device(scored, model, float(min_quality), device_name)
            except CalibrationError as err:
                if rule is None:
                    raise
                # The rule (the default verdict) may still be calibrated: a file for it alone.
                warn(f"no part for the heart-sound model {model.name} ({err}); the file serves the cycle rule only")
        if rule is not None:
            feats = cycle_features(recordings, rule, warn, progress)
            cal = replace(cal, cycles=fit_cycle_device(feats, rule).to_json())
    except CalibrationError as err:
        raise PcgDataError(f"cannot calibrate: {err}") from None
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    cal.save(out)
    return cal
