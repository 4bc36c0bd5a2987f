"""`ecgmon evaluate model`: score a model file, loaded the way the daemon loads it, on whole
records it never trained on, and write the numbers (metrics.json) beside PNG plots."""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from rich.console import Console, RenderableType
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table
from rich.text import Text

from ecgmon.config import DataConfig
from ecgmon.evaluate import plots
from ecgmon.models.aami import CLASSES
from ecgmon.models.datasets import SEGMENT, SEGMENT_CLASSES, load_beats, load_segments, record_id
from ecgmon.evaluate.gradcam import SpectrogramGradCam
from ecgmon.monitor.dsp.beat_features import BEFORE, FS_MODEL, RR_FEATURES, WINDOW
from ecgmon.monitor.model_loader import LoadedModel, ModelError, load_model, trained_records
from ecgmon.replay.records import RecordError
from ecgmon.scores import Curve, class_report, one_vs_rest

BATCH = 512
GRADCAM_ROWS = 4  # classes shown in gradcam.png: more rows would make each map too small to read


class EvaluationError(Exception):
    """The model, its card or the records cannot be evaluated; the message says what to do."""


@dataclass(frozen=True)
class EvalSet:
    """The model's inputs for every labelled item of the chosen records, one row each."""

    inputs: tuple[np.ndarray, ...]
    labels: np.ndarray
    records: np.ndarray
    samples: np.ndarray  # at FS_MODEL: the R peak of a beat, the first sample of a segment
    rhythms: np.ndarray | None = None  # segments: the rhythm annotation at the centre ("(AFIB")


# --------------------------------------------------------------------------- records


def choose_records(card: dict[str, Any], records: Sequence[str] | None, allow_train: bool) -> list[str]:
    """The records to evaluate on: ``records`` or the card's validation records; records the
    model trained on only with ``allow_train`` (its metrics there would flatter it)."""
    training = card.get("training") or {}
    name = card.get("name", "the model")
    chosen = list(records or training.get("validation_records") or [])
    if not chosen:
        raise EvaluationError(f"the card of {name} names no validation records (it trained on every record it "
                              "lists): name records it never trained on with --records, e.g. DS2 records")
    trained = trained_records(card)
    seen = [r for r in chosen if record_id(r) in trained]
    if seen and not allow_train:
        raise EvaluationError(f"record(s) {' '.join(seen)} were in the training records of {name}: metrics on "
                              "them would not be honest; choose held-out records or pass --allow-train-records")
    return chosen


def trained_channel(card: dict[str, Any]) -> int | str:
    """The channel the card's training command used (0 if it does not say)."""
    match = re.search(r"--channel\s+(\S+)", (card.get("training") or {}).get("command", ""))
    if match is None:
        return 0
    value = match.group(1)
    return int(value) if value.isdigit() else value


# --------------------------------------------------------------------------- data and inference


def _require(ok: bool, message: str) -> None:
    if not ok:
        raise EvaluationError(message)


def build_set(
    model: LoadedModel, records: Sequence[str], data: DataConfig, channel: int | str, progress: bool
) -> EvalSet:
    """The labelled beats (at the reference R peaks) or 10 s segments of ``records``, cut as
    the card describes the model's input."""
    where = f"{model.path}: its card"
    _require(model.kind in ("beat", "segment"),
             f"{model.path}: a {model.kind} model; `ecgmon evaluate model` scores ECG beat and segment models")
    _require(model.fs == FS_MODEL, f"{where} says {model.fs:g} Hz; the evaluation sets are at {FS_MODEL:g} Hz")
    expected = CLASSES if model.kind == "beat" else SEGMENT_CLASSES
    _require(model.classes == expected, f"{where} lists classes {'/'.join(model.classes)}; "
                                        f"{model.kind} sets are labelled {'/'.join(expected)}")
    try:
        if model.kind == "beat":
            _require((model.window, model.before) == (WINDOW, BEFORE),
                     f"{where} asks for {model.window}-sample windows with {model.before} before the R peak; "
                     f"the beat sets have {WINDOW} with {BEFORE}")
            unknown = [n for n in model.rr_features if n not in RR_FEATURES]
            _require(not unknown, f"{where} names RR features {', '.join(unknown)} that "
                                  f"the beat sets do not have ({', '.join(RR_FEATURES)})")
            beats = load_beats(records, data, channel=channel, progress=progress)
            columns = [RR_FEATURES.index(n) for n in model.rr_features]
            found = EvalSet((beats.windows, beats.rr[:, columns]), beats.labels, beats.records, beats.samples)
        else:
            _require(model.window == SEGMENT, f"{where} asks for {model.window}-sample segments; "
                                              f"the segment sets have {SEGMENT}")
            segments = load_segments(records, data, channel=channel, progress=progress)
            found = EvalSet((segments.windows,), segments.labels, segments.records, segments.starts,
                            segments.rhythms)
    except (RecordError, ValueError) as err:
        raise EvaluationError(str(err)) from None
    _require(len(found.labels) > 0, f"no labelled {model.kind}s in records {' '.join(records)}")
    return found


def _progress(enabled: bool) -> Progress:
    return Progress(
        TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
        console=Console(stderr=True), transient=True, disable=not enabled,
    )


def _logits(out: Any) -> torch.Tensor:
    return out[0] if isinstance(out, (tuple, list)) else out


def predict(model: LoadedModel, inputs: tuple[np.ndarray, ...], progress: bool) -> np.ndarray:
    """Softmax probabilities ``[n, classes]`` of the loaded model, in batches."""
    n = len(inputs[0])
    out = []
    with _progress(progress) as bar:
        task = bar.add_task(f"inference ({model.kind}s)", total=n)
        for i in range(0, n, BATCH):
            batch = [x[i : i + BATCH] for x in inputs]
            out.append(torch.softmax(_logits(model(*batch)).float(), dim=-1).cpu().numpy())
            bar.advance(task, len(batch[0]))
    return np.concatenate(out)


# --------------------------------------------------------------------------- scores


def score(
    labels: np.ndarray, probabilities: np.ndarray, classes: Sequence[str]
) -> tuple[dict[str, Any], list[Curve | None], list[Curve | None]]:
    """``class_report`` with each class's one-vs-rest ROC AUC and average precision added."""
    report = class_report(labels, probabilities, classes)
    rocs, prs = one_vs_rest(labels, probabilities, len(classes))
    for name, r, p in zip(classes, rocs, prs):
        report["per_class"][name]["auc"] = None if r is None else round(r.area, 4)
        report["per_class"][name]["average_precision"] = None if p is None else round(p.area, 4)
    return report, rocs, prs


def pick_examples(labels: np.ndarray, probabilities: np.ndarray) -> list[int]:
    """One item per reference class present: the most confident correct call (the model's
    clearest picture of the class), else the item it gave that class the most probability."""
    predicted = probabilities.argmax(axis=1)
    picked = []
    for c in range(probabilities.shape[1]):
        idx = np.flatnonzero(labels == c)
        if idx.size:
            pool = idx[predicted[idx] == c] if np.any(predicted[idx] == c) else idx
            picked.append(int(pool[np.argmax(probabilities[pool, c])]))
    return picked


def _clock(sample: int) -> str:
    seconds = sample / FS_MODEL
    return f"{int(seconds // 60)}:{seconds % 60:04.1f}"


def _examples(
    model: LoadedModel, data: EvalSet, probabilities: np.ndarray, picked: list[int]
) -> list[plots.Example]:
    return [
        plots.Example(
            signal=data.inputs[0][i], reference=model.classes[data.labels[i]],
            predicted=model.classes[int(probabilities[i].argmax())], probability=float(probabilities[i].max()),
            where=f"record {data.records[i]} at {_clock(int(data.samples[i]))}"
                  + (f", rhythm {data.rhythms[i]}" if data.rhythms is not None and data.rhythms[i] else ""),
        )
        for i in picked
    ]


# --------------------------------------------------------------------------- explanation plots


def _attention_png(model: LoadedModel, data: EvalSet, probabilities: np.ndarray, path: Path) -> Path | str:
    """attention.png, or why it cannot be drawn."""
    if "attention" not in model.output_names[1:]:
        return "no attention.png: the card names no 'attention' output"
    picked = pick_examples(data.labels, probabilities)
    out = model(data.inputs[0][picked])
    # [k, T, T] query x key, averaged over heads: how much attention each step receives.
    received = out[model.output_names.index("attention")].float().mean(dim=1).cpu().numpy()
    return plots.attention_png(_examples(model, data, probabilities, picked), received, model.fs, path,
                               f"{model.name}: attention over one 10 s segment per class")


def _gradcam_png(model: LoadedModel, data: EvalSet, probabilities: np.ndarray, path: Path) -> Path | str | None:
    """gradcam.png for a beat-spectrogram model, or why it cannot be drawn (None: the model
    is another beat network)."""
    try:
        explainer = SpectrogramGradCam.of(model)
    except RuntimeError as err:
        return f"no gradcam.png: the file's weights do not fit BeatSpectrogramCNN ({str(err).splitlines()[0]})"
    if explainer is None:
        return None
    picked = pick_examples(data.labels, probabilities)[:GRADCAM_ROWS]
    windows, rr = (x[picked] for x in data.inputs)
    if not explainer.reproduces(windows, rr):
        return "no gradcam.png: the eager rebuild does not reproduce the file's outputs"
    examples = _examples(model, data, probabilities, picked)
    panels = explainer.panels(examples, windows, rr, [model.classes.index(ex.predicted) for ex in examples])
    return plots.gradcam_png(panels, model.fs, model.before or 0, path,
                             f"{model.name}: Grad-CAM of the predicted class, one beat per reference class")


# --------------------------------------------------------------------------- the command


def _reproduces_card(card: dict[str, Any], records: list[str], report: dict[str, Any]) -> bool | None:
    """Whether the card's held-out confusion matrix comes out again (None: the card has none
    for these records, e.g. other records or cross-validation metrics)."""
    metrics = card.get("metrics") or {}
    held_out = (card.get("training") or {}).get("validation_records") or []
    if not held_out or not sorted(metrics.get("records") or []) == sorted(held_out) == sorted(records):
        return None
    return (metrics.get("confusion") or {}).get("rows_reference_columns_predicted") == \
        report["confusion"]["rows_reference_columns_predicted"]


def evaluate_model(
    path: str | Path,
    data: DataConfig,
    records: Sequence[str] | None = None,
    out: str | Path | None = None,
    channel: int | str | None = None,
    allow_train_records: bool = False,
    device: str = "auto",
    progress: bool = True,
) -> dict[str, Any]:
    """Evaluate the model file at ``path``; write metrics.json and the plots into ``out``
    (default ``eval/<model name>``) and return what metrics.json holds."""
    try:
        model = load_model(path, device=device)
    except ModelError as err:
        raise EvaluationError(str(err)) from None
    chosen = choose_records(model.card, records, allow_train_records)
    channel = trained_channel(model.card) if channel is None else channel
    data_set = build_set(model, chosen, data, channel, progress)
    probabilities = predict(model, data_set.inputs, progress)
    report, rocs, prs = score(data_set.labels, probabilities, model.classes)

    out_dir = Path(out) if out else Path("eval") / model.name
    out_dir.mkdir(parents=True, exist_ok=True)
    ids = [record_id(r) for r in chosen]
    title = f"{model.name} on records {' '.join(ids)}"
    prevalence = np.bincount(data_set.labels, minlength=len(model.classes)) / len(data_set.labels)
    written: list[Path | str | None] = [
        plots.confusion_png(np.array(report["confusion"]["rows_reference_columns_predicted"]), model.classes,
                            out_dir / "confusion.png", title),
        plots.roc_png(rocs, model.classes, out_dir / "roc.png", f"{title}: ROC"),
        plots.pr_png(prs, model.classes, prevalence, out_dir / "pr.png", f"{title}: precision-recall"),
        _attention_png(model, data_set, probabilities, out_dir / "attention.png") if model.kind == "segment"
        else _gradcam_png(model, data_set, probabilities, out_dir / "gradcam.png"),
    ]
    trained = trained_records(model.card)
    result = {
        "model": {"path": str(path), "name": model.name, "kind": model.kind, "format": model.card["format"],
                  "sha256": model.card["sha256"].lower(), "classes": list(model.classes)},
        # Every choice spelled out, defaults resolved: the command reproduces this result.
        "command": " ".join(["ecgmon evaluate model", str(path), "--records", *chosen, "--channel", str(channel)]
                            + (["--allow-train-records"] if allow_train_records else [])
                            + ["--out", str(out_dir)]),
        "records": ids,
        "training_records_included": [r for r in ids if r in trained],
        "channel": channel,
        "evaluation": ("whole records, beats at the reference R peaks" if model.kind == "beat"
                       else "whole records, 10 s segments with 50 % overlap"),
        "n_per_record": {r: int(np.sum(data_set.records == r)) for r in ids},
        **report,
        "reproduces_card_metrics": _reproduces_card(model.card, ids, report),
        "notes": [w for w in written if isinstance(w, str)],
        "out": str(out_dir),
        "plots": [w.name for w in written if isinstance(w, Path)],
    }
    (out_dir / "metrics.json").write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    return result


def _num(value: float | None) -> str:
    return "–" if value is None else f"{value:.3f}"


def render(result: dict[str, Any]) -> list[RenderableType]:
    """The rich tables of a result: per-class scores, then the confusion matrix."""
    m = result["model"]
    classes = m["classes"]
    header = Text(f"{m['name']} ({m['kind']}, {m['format']}) on records {' '.join(result['records'])}: "
                  f"{result['n']} {m['kind']}s", style="bold")
    per = Table()
    for col in ("class", "n", "Se", "+P", "F1", "ROC AUC", "AP"):
        per.add_column(col, justify="left" if col == "class" else "right")
    for name in classes:
        c = result["per_class"][name]
        per.add_row(name, str(c["n"]), _num(c["se"]), _num(c["ppv"]), _num(c["f1"]),
                    _num(c["auc"]), _num(c["average_precision"]))
    summary = Text(f"macro-F1 {_num(result['macro_f1'])} (over the classes present)   "
                   f"accuracy {_num(result['accuracy'])}", style="bold")
    cm = Table()
    cm.add_column("ref \\ pred")
    for name in classes:
        cm.add_column(name, justify="right")
    for name, row in zip(classes, result["confusion"]["rows_reference_columns_predicted"]):
        cm.add_row(name, *(str(v) for v in row))
    parts: list[RenderableType] = [header, per, summary, cm]
    if result["reproduces_card_metrics"] is not None:
        same = "reproduces" if result["reproduces_card_metrics"] else "does NOT reproduce"
        parts.append(Text(f"{same} the held-out confusion matrix in the model card",
                          style="green" if result["reproduces_card_metrics"] else "bold yellow"))
    parts += [Text(note, style="yellow") for note in result["notes"]]
    parts.append(Text(f"wrote {result['out']}: metrics.json {' '.join(result['plots'])}"))
    return parts
