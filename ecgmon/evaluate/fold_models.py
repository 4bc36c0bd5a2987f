"""Cross-validated scoring: every record classified by a model that never saw it.

``ecgmon train ... --folds k`` exports its k fold models beside the shipped model
(``beat-cnn-bilstm.folds/fold1.pt`` ...), each card naming the records that fold held out.
A record the shipped model trained on is classified by the fold model that held it out; a
record the shipped model never trained on (mitdb 100, another database) by the shipped model
itself. So the scores of ``evaluate beats|alarms --cross-validated`` on the training records
are honest estimates, as the cards' fold metrics are.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import torch

from ecgmon.model_card import ModelError, fold_folder
from ecgmon.monitor.model_loader import LoadedModel, load_model
from ecgmon.replay.records import record_id


def _fold_number(path: Path) -> int:
    m = re.fullmatch(r"fold(\d+)", path.stem)
    return int(m[1]) if m else 0


@dataclass(frozen=True)
class FoldModels:
    """The shipped model and its fold models, and which of them may classify a record."""

    shipped: LoadedModel
    folds: tuple[LoadedModel, ...]

    def for_record(self, spec: str) -> LoadedModel:
        """The model that never saw ``spec``: the fold model that held it out, else the
        shipped model when it never trained on it. ModelError if every model saw it."""
        rid = record_id(spec)
        for model in self.folds:
            if rid in {record_id(str(r)) for r in model.card["training"].get("held_out_records", [])}:
                return model
        if not self.shipped.trained_on(spec):
            return self.shipped
        raise ModelError(f"{spec}: {self.shipped.name} trained on it and no fold model held it out")

    def describe(self) -> list[dict]:
        return [
            {"name": m.name, "path": str(m.path), "sha256": m.card.get("sha256"),
             "held_out_records": m.card["training"].get("held_out_records", [])}
            for m in self.folds
        ]


def load_fold_models(shipped: LoadedModel, device: str | torch.device = "auto") -> FoldModels:
    """The fold models of ``shipped``, each checked to come from the same training command
    (fold models of an older training would score records the shipped model never used)."""
    if shipped.path is None:
        raise ModelError(f"{shipped.name}: no file, so no fold models beside it")
    folder = fold_folder(shipped.path)
    paths = sorted((p for p in folder.glob("fold*.pt*") if _fold_number(p)), key=_fold_number)
    if not paths:
        raise ModelError(
            f"{shipped.path}: no fold models in {folder}: train it with --folds (ecgmon train ... --folds 5) "
            "to score records by the models that never saw them"
        )
    command = (shipped.card.get("training") or {}).get("command")
    folds = []
    for path in paths:
        model = load_model(path, device)
        training = model.card.get("training") or {}
        if not command or training.get("command") != command:
            raise ModelError(f"{path}: a fold of another training than {shipped.path}'s; retrain with --folds")
        if not isinstance(training.get("held_out_records"), list):
            raise ModelError(f"{path}: its card does not name the records it held out; retrain with --folds")
        folds.append(model)
    return FoldModels(shipped, tuple(folds))


def scoring_mode(folds: FoldModels | None) -> dict:
    """A report's account of how its records were classified: by the one model, or each by a
    model that never saw it (with the fold models)."""
    if folds is None:
        return {"mode": "shipped model (records it trained on flatter it)"}
    return {"mode": "cross-validated (each record classified by a model that never trained on it)",
            "fold_models": folds.describe()}
