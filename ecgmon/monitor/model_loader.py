"""Load a classifier file (TorchScript ``.pt`` or ``torch.export`` ``.pt2``) and its model card.

The daemon side of the models: it reads artifacts and never imports ``ecgmon.models``. Every
way a model file can be unusable is a :class:`ModelError` whose message is one line saying
what is wrong and what to do; the card schema is ``ecgmon.model_card``.
"""

from __future__ import annotations

import json
import warnings
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import torch

from ecgmon.model_card import (
    FORMATS, TORCHSCRIPT_DEPRECATION, ModelError, card_path, check_card, file_sha256, retrain_hint,
)
from ecgmon.replay.records import record_id

# The batch size of the dry run: 2, not 1, so that a model that squeezes its batch axis
# (and would break on a single beat or on a batch) is caught either way.
_DRY_RUN_BATCH = 2


def _first_line(exc: BaseException) -> str:
    """The first sentence of an exception: torch's messages go on for lines."""
    text = str(exc).strip()
    line = next((ln.strip() for ln in text.splitlines() if ln.strip()), "")
    line = line.split(". ")[0].rstrip(".") or type(exc).__name__
    return line if len(line) <= 160 else line[:157] + "..."


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """``auto`` is cuda when torch sees a GPU, else the CPU; a missing GPU is a ModelError."""
    if isinstance(device, torch.device):
        dev = device
    elif device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    else:
        try:
            dev = torch.device(device)
        except (RuntimeError, TypeError) as exc:
            raise ModelError(f"unknown device {device!r}: use 'auto', 'cpu' or 'cuda'") from exc
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ModelError(f"device {str(dev)!r} asked for but torch sees no GPU: use device 'auto' or 'cpu'")
    if dev.type not in ("cpu", "cuda"):
        raise ModelError(f"unsupported device {str(dev)!r}: use 'auto', 'cpu' or 'cuda'")
    return dev


def trained_records(card: dict[str, Any]) -> set[str]:
    """The ids of the records a model card says the model trained on."""
    return {record_id(str(r)) for r in (card.get("training") or {}).get("records") or []}


@dataclass(frozen=True)
class LoadedModel:
    """A checked, device-placed model with what its card says about its inputs and outputs.

    Call it with the inputs of its kind: ``(window [B, window], rr [B, len(rr_features)])``
    for a beat model, ``(segment [B, window],)`` for a segment model, ``(audio [B, window],)``
    for a pcg (heart-sound) model. The first output is the class logits ``[B, len(classes)]``;
    outputs stay on ``device``.
    """

    card: dict[str, Any]
    module: Any  # a torch.jit.ScriptModule or the torch.fx.GraphModule of an ExportedProgram
    device: torch.device
    kind: str
    classes: tuple[str, ...]
    fs: float
    window: int
    before: int | None
    path: Path | None = None
    rr_features: tuple[str, ...] = field(default_factory=tuple)

    @property
    def name(self) -> str:
        return str(self.card.get("name", ""))

    @property
    def output_names(self) -> tuple[str, ...]:
        return tuple(self.card["outputs"])

    def trained_on(self, spec: str) -> bool:
        """Whether the card lists record ``spec`` (``mitdb:101``, ``101``) among its training records."""
        return record_id(spec) in trained_records(self.card)

    def input_shapes(self, batch: int) -> list[tuple[int, ...]]:
        shapes: list[tuple[int, ...]] = [(batch, self.window)]
        if self.kind == "beat":
            shapes.append((batch, len(self.rr_features)))
        return shapes

    def __call__(self, *tensors: Any) -> Any:
        inputs = [torch.as_tensor(t, dtype=torch.float32, device=self.device) for t in tensors]
        with torch.inference_mode():
            return self.module(*inputs)

    def classify(self, *tensors: Any) -> tuple[torch.Tensor, torch.Tensor]:
        """Class index and its softmax probability per item, as CPU tensors."""
        out = self(*tensors)
        logits = out[0] if isinstance(out, (tuple, list)) else out
        with torch.inference_mode():
            prob, index = torch.softmax(logits.float(), dim=-1).max(dim=-1)
        return index.cpu(), prob.cpu()


def _read_card(path: Path, cpath: Path) -> dict[str, Any]:
    if not cpath.is_file():
        raise ModelError(
            f"{path}: its model card {cpath.name} is missing beside it; "
            "copy the card exported with the model or re-export it (ecgmon.models.export)"
        )
    try:
        card = json.loads(cpath.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelError(f"{cpath}: not a readable JSON model card ({_first_line(exc)}); {retrain_hint(None)}") from exc
    check_card(card, str(cpath))
    return card


def _check_archive(path: Path, fmt: str, kind: str) -> None:
    """Both formats are zip archives; look inside before torch does, for a precise message.

    (torch's own errors for these cases are paragraphs, and torch.export.load also logs a
    traceback before raising.)
    """
    what = "TorchScript (.pt)" if fmt == "torchscript" else "torch.export (.pt2)"
    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
    except (zipfile.BadZipFile, OSError, ValueError) as exc:
        raise ModelError(
            f"{path}: not a {what} model file: corrupt or truncated (not a readable zip archive); {retrain_hint(kind)}"
        ) from exc
    torchscript = any(n.endswith("/constants.pkl") for n in names) and any("/code/" in n for n in names)
    exported = any(n.endswith("archive_format") for n in names)
    if fmt == "torchscript" and not torchscript:
        if exported:
            raise ModelError(f"{path}: a torch.export file, not TorchScript: name it .pt2 with a 'torch.export' card")
    elif fmt == "torch.export" and not exported:
        if torchscript:
            raise ModelError(f"{path}: a TorchScript file, not torch.export: name it .pt with a 'torchscript' card")
    else:
        return
    other = "torch.save checkpoint or state_dict" if any(n.endswith("/data.pkl") for n in names) else "zip archive"
    raise ModelError(f"{path}: a {other}, not a {what} export; {retrain_hint(kind)}")


def _load_module(path: Path, fmt: str, device: torch.device, kind: str) -> Any:
    _check_archive(path, fmt, kind)
    try:
        if fmt == "torchscript":
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", message=TORCHSCRIPT_DEPRECATION, category=DeprecationWarning)
                module = torch.jit.load(str(path), map_location=device)
            module.eval()
            return module
        # Exported programs are traced in eval mode and cannot be switched afterwards.
        return torch.export.load(str(path)).module().to(device)
    except Exception as exc:  # torch raises RuntimeError, ValueError, zip and pickle errors
        what = "TorchScript (.pt)" if fmt == "torchscript" else "torch.export (.pt2)"
        raise ModelError(f"{path}: not a loadable {what} model file ({_first_line(exc)}); {retrain_hint(kind)}") from exc


def _dry_run(model: LoadedModel, path: Path) -> None:
    """One forward on zeros of the card's input shapes; the outputs must match the card."""
    shapes = model.input_shapes(_DRY_RUN_BATCH)
    shape_text = ", ".join(str(list(s)) for s in shapes)
    try:
        out = model(*[torch.zeros(s) for s in shapes])
    except Exception as exc:
        raise ModelError(
            f"{path}: the model does not accept the inputs its card describes ({shape_text}: "
            f"{_first_line(exc)}); is the card for another model? {retrain_hint(model.kind)}"
        ) from exc
    names = model.output_names
    outs = list(out) if isinstance(out, (tuple, list)) else [out]
    if len(outs) != len(names) or not all(isinstance(o, torch.Tensor) for o in outs):
        raise ModelError(
            f"{path}: the card names {len(names)} output(s) ({', '.join(names)}) but the model returns "
            f"{len(outs)}; is the card for another model? {retrain_hint(model.kind)}"
        )
    logits = outs[0]
    n = len(model.classes)
    if logits.dim() == 2 and logits.shape[0] == _DRY_RUN_BATCH and logits.shape[1] != n:
        raise ModelError(
            f"{path}: the card says {n} classes but the model outputs {logits.shape[1]}; {retrain_hint(model.kind)}"
        )
    if tuple(logits.shape) != (_DRY_RUN_BATCH, n):
        raise ModelError(
            f"{path}: the model's first output has shape {list(logits.shape)}, expected "
            f"[{_DRY_RUN_BATCH}, {n}] for inputs {shape_text}; {retrain_hint(model.kind)}"
        )
    if not bool(torch.isfinite(logits).all()):
        raise ModelError(f"{path}: the model outputs NaN or inf on a flat input; {retrain_hint(model.kind)}")


def load_model(path: str | Path, device: str | torch.device = "auto") -> LoadedModel:
    """Load, check and place a model file with its card; one ModelError line if unusable."""
    path = Path(path)
    fmt = FORMATS.get(path.suffix)
    if fmt is None:
        raise ModelError(f"{path}: not a model file name (expected .pt for TorchScript or .pt2 for torch.export)")
    if not path.is_file():
        raise ModelError(f"{path}: model file not found; check the [models] paths in the config or train one")
    dev = resolve_device(device)
    card = _read_card(path, card_path(path))
    kind = card["kind"]
    if card["format"] != fmt:
        raise ModelError(
            f"{path}: the card says format {card['format']!r} but the file name says {fmt!r}; "
            "keep the card of each export beside its own file"
        )
    try:
        sha = file_sha256(path)
    except OSError as exc:
        raise ModelError(f"{path}: cannot read the model file ({_first_line(exc)})") from exc
    if sha != card["sha256"].lower():
        raise ModelError(
            f"{path}: the file does not match its card (sha256 {sha[:12]}... != {card['sha256'][:12]}...): "
            f"it was changed, truncated or replaced after export; {retrain_hint(kind)}"
        )
    module = _load_module(path, fmt, dev, kind)
    inputs = card["input"]
    model = LoadedModel(
        card=card,
        module=module,
        device=dev,
        kind=kind,
        classes=tuple(card["classes"]),
        fs=float(inputs["fs"]),
        window=int(inputs["window"]),
        before=int(inputs["before"]) if kind == "beat" else None,
        path=path,
        rr_features=tuple(inputs.get("rr_features", ())) if kind == "beat" else (),
    )
    _dry_run(model, path)
    return model


def describe(model: LoadedModel) -> str:
    """One line for logs: name, kind, classes, rate, window, device."""
    return (
        f"{model.name} ({model.kind}, {model.card.get('format')}): classes {'/'.join(model.classes)}, "
        f"{model.window} samples at {model.fs:g} Hz on {model.device}"
    )


__all__: Sequence[str] = (
    "LoadedModel",
    "ModelError",
    "describe",
    "load_model",
    "resolve_device",
)
