"""`ecgmon evaluate pcg DIR`: score heart-sound recordings against their REFERENCE.csv with the
exported model, loaded the way the daemon loads it (``load_model``), so the figures are
those of the file the daemon runs.

Each recording is cut into the card's windows (5 s every 2.5 s), the model gives each a
probability of 'abnormal', and the card's decision rule (mean over the windows, threshold)
calls the recording. A file that cannot be scored (corrupt, shorter than one window, no
label) is a one-line warning and the others are still scored.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

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
from ecgmon.monitor.model_loader import LoadedModel, ModelError, load_model
from ecgmon.scores import binary_report, roc

BATCH = 128


@dataclass(frozen=True)
class Scored:
    database: str
    name: str
    label: int  # class index
    score: float  # mean P(abnormal) over the windows
    windows: int


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


def score_recordings(recordings: list[tuple[str, str, Path, int]], model: LoadedModel, warn: Warn,
                     progress: bool) -> list[Scored]:
    """Score ``(database, name, file, label)`` recordings; unusable files are warned and skipped."""
    hop = int(model.card["input"]["hop"])
    scored = []
    with progress_bar(progress) as bar:
        task = bar.add_task("scoring", total=len(recordings))
        for db, name, path, label in recordings:
            bar.update(task, description=f"scoring {db}/{name}")
            bar.advance(task)
            try:
                audio, notes = read_audio(path, int(model.fs))
            except PcgDataError as err:
                warn(f"{err}; skipped")
                continue
            for note in notes:
                warn(f"{path}: {note}")
            if len(audio) < model.window:
                warn(f"{path}: {len(audio) / model.fs:.1f} s, shorter than the model's "
                     f"{model.window / model.fs:g} s window; skipped")
                continue
            p = window_probabilities(model, audio, hop)
            scored.append(Scored(db, name, label, float(p.mean()), len(p)))
    return scored


def _roc_png(results: list[Scored], out: Path, title: str) -> Path | None:
    labels = np.array([r.label for r in results])
    scores = np.array([r.score for r in results])
    curve = roc(labels == 1, scores)
    if curve is None:
        return None
    return plots.roc_png([curve], ["abnormal"], out / "roc.png", title)


def evaluate_pcg(root: str | Path, model_path: str | Path, out: str | Path | None, warn: Warn,
                 device: str = "auto", progress: bool = True) -> dict[str, Any]:
    """Score every labelled recording under ``root``; write metrics.json, roc.png and
    confusion.png into ``out`` (default ``eval/<model name>-<folder name>``)."""
    root, model_path = Path(root), Path(model_path)
    model = _model(model_path, device)
    folders = database_folders(root)
    threshold = float(model.card["decision"]["threshold"])
    recordings = []
    for folder in folders:
        try:
            recordings += [(folder.name, *rec) for rec in folder_recordings(folder, warn)]
        except PcgDataError as err:  # e.g. an unreadable REFERENCE.csv: the other folders still count
            warn(f"{err}; folder skipped")
    results = score_recordings(recordings, model, warn, progress)
    if not results:
        raise PcgDataError(f"{root}: no recording could be scored (see the warnings above)")
    labels = np.array([r.label for r in results])
    scores = np.array([r.score for r in results])
    dbs = np.array([r.database for r in results])
    out_dir = Path(out) if out else Path("eval") / f"{model.name}-{root.name}"
    out_dir.mkdir(parents=True, exist_ok=True)
    title = f"{model.name} on {root.name}"
    overall = binary_report(labels, scores, threshold)
    written = [
        _roc_png(results, out_dir, f"{title}: recording-level ROC"),
        plots.confusion_png(np.array(overall["confusion"]["rows_reference_columns_predicted"]), CLASSES,
                            out_dir / "confusion.png", f"{title}: recordings"),
    ]
    result = {
        "model": {"path": str(model_path), "name": model.name, "sha256": model.card["sha256"].lower()},
        "command": f"ecgmon evaluate pcg {root} --model {model_path} --out {out_dir}",
        "decision": model.card["decision"],
        "overall": overall,
        # A database the model trained on flatters it: only the others measure generalisation.
        "trained_on": sorted(set(dbs.tolist()) & set((model.card.get("training") or {}).get("databases") or [])),
        "databases": {db: binary_report(labels[dbs == db], scores[dbs == db], threshold)
                      for db in sorted(set(dbs.tolist()))},
        "recordings": [r.__dict__ for r in results],
        "out": str(out_dir),
        "plots": [p.name for p in written if p is not None],
    }
    (out_dir / "metrics.json").write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    return result


def _num(value: float | None) -> str:
    return "–" if value is None else f"{value:.3f}"


def render(result: dict[str, Any]) -> list[RenderableType]:
    """Per-database table with an overall row, then the overall confusion matrix."""
    table = Table(title=f"{result['model']['name']}: recording-level, threshold "
                        f"{result['decision']['threshold']:g} on {result['decision']['aggregation']}")
    for col in ("database", "recordings", "abnormal", "normal", "Se", "Sp", "MAcc", "ROC AUC"):
        table.add_column(col, justify="left" if col == "database" else "right")
    rows = list(result["databases"].items()) + [("all", result["overall"])]
    for name, r in rows:
        table.add_row(name, str(r["n"]), str(r["abnormal"]), str(r["normal"]), _num(r["se"]), _num(r["sp"]),
                      _num(r["macc"]), _num(r["auc"]), style="bold" if name == "all" else None)
    cm = Table(title="confusion (recordings)")
    cm.add_column("ref \\ pred")
    for name in CLASSES:
        cm.add_column(name, justify="right")
    for name, row in zip(CLASSES, result["overall"]["confusion"]["rows_reference_columns_predicted"]):
        cm.add_row(name, *(str(v) for v in row))
    parts: list[RenderableType] = [table, cm]
    if result["trained_on"]:
        parts.append(Text(f"the model trained on {', '.join(result['trained_on'])} (same folder names): "
                          "those figures flatter it; a database it never saw is what counts", style="yellow"))
    return parts + [Text(f"wrote {result['out']}: metrics.json {' '.join(result['plots'])}")]
