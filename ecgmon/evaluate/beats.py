"""`ecgmon evaluate beats`: records replayed through the daemon's own pipeline (detector,
beat windows, beat model) and the classified beats scored against the reference labels in
the ANSI/AAMI EC57 manner: V and S detection statistics and the gross confusion matrix."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from wfdb.processing import compare_annotations

from ecgmon.config import Config
from ecgmon.models.aami import CLASSES, aami_class
from ecgmon.evaluate.fold_models import FoldModels, scoring_mode
from ecgmon.monitor.model_loader import LoadedModel
from ecgmon.evaluate.matching import MATCH_WINDOW_S
from ecgmon.evaluate.record_run import run_record
from ecgmon.monitor.sources.base import SourceError
from ecgmon.replay.records import RecordError, load_record
from ecgmon.replay.reference import reference_beats
from ecgmon.schema import BeatMessage

# Columns of the confusion matrix: the model's classes, then "-" (detected but left
# unclassified) and "O" (not detected). Rows: the reference classes, then "X" (a detection
# with no reference beat).
COLUMNS: tuple[str, ...] = CLASSES + ("-", "O")
ROWS: tuple[str, ...] = CLASSES + ("X",)
_ROW = {c: i for i, c in enumerate(ROWS)}
_COL = {c: i for i, c in enumerate(COLUMNS)}


@dataclass
class RecordBeats:
    record: str
    confusion: np.ndarray = field(repr=False)  # (len(ROWS), len(COLUMNS)) counts
    trained_on: bool = False
    model: str = ""  # the name of the model that classified it (a fold model in cross-validation)


def match_reference(
    ref_samples: np.ndarray, ref_labels: list[str], samples: np.ndarray, fs: float,
) -> tuple[list[str | None], list[str]]:
    """Each detection's matched reference class within 150 ms (None: no reference beat), and
    the classes of the reference beats no detection matched."""
    matched: list[str | None] = [None] * samples.size
    if not (ref_samples.size and samples.size):
        return matched, list(ref_labels)
    missed = []
    cmp = compare_annotations(ref_samples, samples, int(round(MATCH_WINDOW_S * fs)))
    for i, j in enumerate(cmp.matching_sample_nums):
        if j >= 0:
            matched[j] = ref_labels[i]
        else:
            missed.append(ref_labels[i])
    return matched, missed


def confusion_of(ref_samples: np.ndarray, ref_labels: list[str], beats: list[BeatMessage], fs: float) -> np.ndarray:
    """Counts of (reference class, assigned class) over beats matched within 150 ms."""
    m = np.zeros((len(ROWS), len(COLUMNS)), dtype=np.int64)
    matched, missed = match_reference(ref_samples, ref_labels, np.array([b.sample for b in beats], dtype=np.int64), fs)
    for label in missed:
        m[_ROW[label], _COL["O"]] += 1
    for b, ref in zip(beats, matched):
        m[_ROW[ref or "X"], _COL[b.label or "-"]] += 1
    return m


@dataclass
class ClassifiedRecord:
    """A record's classified beats beside the reference beats they are scored against."""

    fs: float
    ref_samples: np.ndarray
    ref_labels: list[str]
    beats: list[BeatMessage]


def classify_record(spec: str, config: Config, model: LoadedModel) -> ClassifiedRecord:
    """Replay ``spec`` through the pipeline with ``model``: its classified beats and the
    reference. Reference beats inside ventricular flutter/fibrillation episodes are left out, as
    EC57 leaves them out (and the beats detected there); beats whose symbol has no AAMI class
    (flutter waves) too.
    """
    try:
        record = load_record(spec, config.data)
    except RecordError as err:
        raise SourceError(str(err)) from None
    if record.ann_samples is None or record.ann_symbols is None:
        raise SourceError(f"{spec} has no reference beat annotations ('atr') to score against")
    ref = reference_beats(record.ann_samples, record.ann_symbols, record.n_samples)
    labels = [aami_class(s) for s in ref.symbols]
    keep = np.array([c is not None for c in labels], dtype=bool)
    # Nothing here depends on when results come back: let them come in big batches.
    msgs = run_record(spec, config, {"beat": model}, chunk_s=10.0, record=record, lag_s=300.0)
    beats = [m for m in msgs if isinstance(m, BeatMessage)]
    beats = [b for b, k in zip(beats, ref.keep(np.array([b.sample for b in beats], dtype=np.int64))) if k]
    return ClassifiedRecord(record.fs, ref.samples[keep], [c for c in labels if c is not None], beats)


def evaluate_record(spec: str, config: Config, model: LoadedModel) -> RecordBeats:
    """Replay ``spec`` through the pipeline with ``model`` and count its beats' classes
    (``classify_record``)."""
    r = classify_record(spec, config, model)
    confusion = confusion_of(r.ref_samples, r.ref_labels, r.beats, r.fs)
    return RecordBeats(spec, confusion, model.trained_on(spec), model.name)


def detection_stats(confusion: np.ndarray, cls: str) -> dict:
    """EC57-style Se, +P and false-positive rate of one ectopic class (V or S).

    TP: reference ``cls`` beats given ``cls``; FN: the other reference ``cls`` beats (other
    class, unclassified or missed); FP: other reference beats and unmatched detections given
    ``cls``; TN: other matched reference beats not given ``cls``. Following EC57 and de Chazal
    et al., reference Q beats are left out of both, and fusion beats called V are not V
    false positives.
    """
    c = _COL[cls]
    own = confusion[_ROW[cls]]
    tp = int(own[c])
    fn = int(own.sum() - tp)
    others = [r for r in ROWS if r not in (cls, "Q") and not (cls == "V" and r == "F")]
    fp = int(sum(confusion[_ROW[r], c] for r in others))
    tn = int(sum(confusion[_ROW[r], : _COL["-"]].sum() - confusion[_ROW[r], c] for r in others if r != "X"))
    ratio = lambda a, b: a / b if b else float("nan")  # noqa: E731
    return {"tp": tp, "fn": fn, "fp": fp, "tn": tn, "se": ratio(tp, tp + fn), "ppv": ratio(tp, tp + fp),
            "fpr": ratio(fp, fp + tn)}


def summary(results: list[RecordBeats], model: LoadedModel, folds: FoldModels | None = None) -> dict:
    def block(rs: list[RecordBeats]) -> dict:
        total = sum((r.confusion for r in rs), np.zeros((len(ROWS), len(COLUMNS)), dtype=np.int64))
        return {
            "records": [r.record for r in rs],
            "confusion": {"rows": list(ROWS), "columns": list(COLUMNS), "counts": total.tolist()},
            "V": detection_stats(total, "V"),
            "S": detection_stats(total, "S"),
        }

    held_out = [r for r in results if not r.trained_on]
    return {
        "standard": "ANSI/AAMI EC57 beat classification through the streaming pipeline, 150 ms match "
                    "window, VF/flutter episodes excluded, Q beats left out of V and S statistics",
        "model": {"name": model.name, "path": str(model.path), "sha256": model.card.get("sha256")},
        **scoring_mode(folds),
        "per_record": [
            {"record": r.record, "trained_on": r.trained_on, "model": r.model, "V": detection_stats(r.confusion, "V"),
             "S": detection_stats(r.confusion, "S")} for r in results
        ],
        "held_out": block(held_out),
        "all": block(results),
    }


def render(result: dict) -> list:
    """The report as Rich renderables: per-record V/S table and the gross confusion matrices."""
    from rich.table import Table

    def pct(x: float) -> str:
        return "–" if x != x else f"{100 * x:.1f}"

    per = Table(title=result["standard"], caption=f"classified by: {result['mode']}")
    for col in ("Record", "V Se %", "V +P %", "V FPR %", "S Se %", "S +P %", "S FPR %"):
        per.add_column(col, justify="left" if col == "Record" else "right")
    for r in result["per_record"]:
        name = r["record"] + (" (trained on)" if r["trained_on"] else "")
        v, s = r["V"], r["S"]
        per.add_row(name, pct(v["se"]), pct(v["ppv"]), pct(v["fpr"]), pct(s["se"]), pct(s["ppv"]), pct(s["fpr"]))
    out: list = [per]
    for key, title in (("held_out", "records the model never trained on"), ("all", "all records")):
        block = result[key]
        if not block["records"]:
            out.append(f"Gross over {title}: none")
            continue
        conf = Table(title=f"Gross confusion over {title} ({len(block['records'])}): reference rows, "
                           "assigned columns (- unclassified, O missed, X no reference beat)")
        conf.add_column("ref \\ ecgmon")
        for c in block["confusion"]["columns"]:
            conf.add_column(c, justify="right")
        for name, row in zip(block["confusion"]["rows"], block["confusion"]["counts"]):
            conf.add_row(name, *map(str, row))
        out.append(conf)
        v, s = block["V"], block["S"]
        out.append(
            f"Gross over {title}: V Se {pct(v['se'])} %, +P {pct(v['ppv'])} %, FPR {pct(v['fpr'])} %; "
            f"S Se {pct(s['se'])} %, +P {pct(s['ppv'])} %, FPR {pct(s['fpr'])} %"
        )
    return out
