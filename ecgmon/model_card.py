"""The model card: the one contract between training (``ecgmon.models.export`` writes it) and
the daemon (``ecgmon.monitor.model_loader`` checks it before it loads a model).

A leaf at the package root, as the payload formats are: it imports nothing of ecgmon, so
training need not import the daemon nor the daemon training.

The card of ``model.pt`` (or ``model.pt2``) is ``model.json`` beside it, a JSON object::

    name            str   e.g. "beat-cnn-bilstm"
    kind            "beat" | "segment" | "pcg"
    format          "torchscript" | "torch.export"          (set by export)
    input           {fs: Hz, window: samples, before: samples before the R peak (beats),
                     rr_features: [names of the RR inputs, in order] (beats),
                     preprocessing: "causal Butterworth bandpass 0.5-40 Hz order 2
                         (ecgmon.monitor.dsp.filters.ECGFilter)",
                     normalisation: text (what the model does to its input inside)}
    classes         [class names, in logit order]
    outputs         [names of the forward outputs; the first is the class logits]
    training        {command, records, seed, ...}             ({} if not given)
    metrics         {...held-out metrics...}                   ({} if not given)
    ecgmon_version  str                                        (set by export)
    sha256          hex digest of the model file               (set by export)

A heart-sound (``pcg``) card also gives ``input.hop`` (window hop, samples) and
``decision.threshold`` (the recording-level cut on 'abnormal').
"""

from __future__ import annotations

import hashlib
import math
from pathlib import Path
from typing import Any

KINDS = ("beat", "segment", "pcg")
FORMATS = {".pt": "torchscript", ".pt2": "torch.export"}
REQUIRED_FIELDS = ("name", "kind", "format", "input", "classes", "outputs", "sha256")

# torch 2.9+ marks torch.jit deprecated in favour of torch.export; TorchScript is still
# supported and is this project's primary format (the loader takes .pt2 as well), so the
# warning would only repeat itself at every start of the daemon.
TORCHSCRIPT_DEPRECATION = r"`torch\.jit\.\w+` is deprecated"


class ModelError(Exception):
    """A model file or its card cannot be used; the message says what and what to do."""


def retrain_hint(kind: Any) -> str:
    if kind == "segment":
        return "retrain or re-export it with `ecgmon train segment`"
    if kind == "beat":
        return "retrain or re-export it with `ecgmon train beat` (or `beat-spectrogram`)"
    if kind == "pcg":
        return "retrain or re-export it with `ecgmon train pcg`"
    return "retrain or re-export it with `ecgmon train beat|beat-spectrogram|segment|pcg`"


def card_path(model_path: str | Path) -> Path:
    """The card of ``model.pt`` (or ``model.pt2``) is ``model.json`` beside it."""
    return Path(model_path).with_suffix(".json")


def fold_folder(model_path: str | Path) -> Path:
    """The fold models of ``beat.pt`` (``train --folds``) are ``beat.folds/fold1.pt`` ..., each
    card's ``training.held_out_records`` naming the records that fold never saw."""
    path = Path(model_path)
    return path.with_name(f"{path.stem}.folds")


def file_sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def check_card(card: Any, where: str = "model card") -> None:
    """Raise ModelError unless ``card`` has every field the daemon needs, well typed.

    ``where`` names the card in messages (its path). Does not look at the model file.
    """
    if not isinstance(card, dict):
        raise ModelError(f"{where}: a model card must be a JSON object; {retrain_hint(None)}")
    kind = card.get("kind")
    missing = [name for name in REQUIRED_FIELDS if name not in card]
    if missing:
        raise ModelError(f"{where}: the card lacks {', '.join(missing)}; {retrain_hint(kind)}")
    if kind not in KINDS:
        raise ModelError(f"{where}: unknown model kind {kind!r} (expected 'beat', 'segment' or 'pcg'); {retrain_hint(None)}")
    if card["format"] not in FORMATS.values():
        raise ModelError(
            f"{where}: unknown format {card['format']!r} (expected 'torchscript' or 'torch.export'); {retrain_hint(kind)}"
        )
    classes = card["classes"]
    if (
        not isinstance(classes, list)
        or len(classes) < 2
        or not all(isinstance(c, str) and c for c in classes)
        or len(set(classes)) != len(classes)
    ):
        raise ModelError(f"{where}: 'classes' must list at least two distinct class names; {retrain_hint(kind)}")
    outputs = card["outputs"]
    if not isinstance(outputs, list) or not outputs or not all(isinstance(o, str) and o for o in outputs):
        raise ModelError(f"{where}: 'outputs' must list the names of the model's outputs; {retrain_hint(kind)}")
    sha = card["sha256"]
    if not isinstance(sha, str) or len(sha) != 64 or any(c not in "0123456789abcdef" for c in sha.lower()):
        raise ModelError(f"{where}: 'sha256' is not a SHA-256 hex digest; {retrain_hint(kind)}")
    inputs = card["input"]
    if not isinstance(inputs, dict):
        raise ModelError(f"{where}: 'input' must be an object (fs, window, ...); {retrain_hint(kind)}")
    need = ["fs", "window"] + (["before", "rr_features"] if kind == "beat" else [])
    missing = [f"input.{name}" for name in need if name not in inputs]
    if missing:
        raise ModelError(f"{where}: the card lacks {', '.join(missing)}; {retrain_hint(kind)}")
    fs = inputs["fs"]
    if isinstance(fs, bool) or not isinstance(fs, (int, float)) or not math.isfinite(fs) or fs <= 0:
        raise ModelError(f"{where}: input.fs must be a positive sample rate in Hz, got {fs!r}; {retrain_hint(kind)}")
    window = inputs["window"]
    if not _is_int(window) or window <= 0:
        raise ModelError(f"{where}: input.window must be a positive number of samples, got {window!r}; {retrain_hint(kind)}")
    if kind == "beat":
        before = inputs["before"]
        if not _is_int(before) or not 0 <= before < window:
            raise ModelError(
                f"{where}: input.before must be a sample count in 0..{window - 1}, got {before!r}; {retrain_hint(kind)}"
            )
        rr = inputs["rr_features"]
        if not isinstance(rr, list) or not rr or not all(isinstance(n, str) and n for n in rr):
            raise ModelError(f"{where}: input.rr_features must list the RR feature names; {retrain_hint(kind)}")
    if kind == "pcg":
        _check_pcg_card(card, where)


def _check_pcg_card(card: dict[str, Any], where: str) -> None:
    """A heart-sound card also gives the window hop and the recording-level decision rule."""
    hop = card["input"].get("hop")
    if not _is_int(hop) or not 0 < hop <= card["input"]["window"]:
        raise ModelError(f"{where}: input.hop must be a sample count in 1..input.window, got {hop!r}; {retrain_hint('pcg')}")
    decision = card.get("decision")
    threshold = decision.get("threshold") if isinstance(decision, dict) else None
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not 0 <= threshold <= 1:
        raise ModelError(
            f"{where}: decision.threshold must be a probability in 0..1 (the recording-level cut on "
            f"'abnormal'), got {threshold!r}; {retrain_hint('pcg')}"
        )
