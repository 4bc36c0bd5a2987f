"""Export a trained network as TorchScript (``.pt``) or ``torch.export`` (``.pt2``) with its model card.

The card (its fields: ``ecgmon.model_card``) is ``path.with_suffix(".json")`` beside the model
file; this module sets ``format``, ``ecgmon_version`` and ``sha256``, and checks the card
with the same ``check_card`` the daemon's loader uses. ``ecgmon.models.networks.card_template``
fills name, kind, input, classes and outputs for the project's networks. Every export is read
back with torch before it is kept; ``ecgmon train`` then loads what it wrote with the daemon's
own loader, so a file it ships is one the daemon accepts.
"""

from __future__ import annotations

import copy
import json
import os
import warnings
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from torch import nn

from ecgmon import __version__
from ecgmon.model_card import TORCHSCRIPT_DEPRECATION, card_path, check_card, file_sha256

# torch.export warns that nn.LSTM's cached _flat_weights are "assigned during export"; they
# are views of the registered parameters, and the exported program reproduces the eager
# outputs (tests/test_model_networks.py), so the warning is noise for these networks.
_EXPORT_NOISE = r"The tensor attributes self\..*_flat_weights"


def _json_default(value: Any) -> Any:
    # Metrics computed with numpy arrive as numpy scalars and arrays.
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serialisable in a model card: {type(value).__name__}")


def _tmp_name(path: Path) -> Path:
    # Same folder (os.replace is atomic only within a file system), same suffix (torch
    # checks it), hidden: a daemon globbing for models never picks up a half-written file.
    return path.with_name(f".{path.stem}.tmp{path.suffix}")


def _write_atomic(path: Path, data: bytes) -> None:
    tmp = _tmp_name(path)
    tmp.write_bytes(data)
    os.replace(tmp, path)


def _finish(model_file: Path, tmp_file: Path, card: dict[str, Any], fmt: str) -> dict[str, Any]:
    """Complete and check the card, put the model and card in place, load them back."""
    full = copy.deepcopy(card)
    full["format"] = fmt
    full.setdefault("training", {})
    full.setdefault("metrics", {})
    full["ecgmon_version"] = __version__
    full["sha256"] = file_sha256(tmp_file)
    try:
        check_card(full, f"card for {model_file.name}")
        text = json.dumps(full, indent=2, default=_json_default) + "\n"
    except BaseException:
        tmp_file.unlink(missing_ok=True)
        raise
    # Model first, then card: a daemon reading in between sees a sha mismatch, a clear
    # error, never a card that vouches for a half-written file.
    os.replace(tmp_file, model_file)
    cpath = card_path(model_file)
    _write_atomic(cpath, text.encode("utf-8"))
    try:
        _read_back(model_file, fmt)
    except BaseException:
        model_file.unlink(missing_ok=True)
        cpath.unlink(missing_ok=True)
        raise
    return full


def _read_back(model_file: Path, fmt: str) -> None:
    """Load the written file with torch: one torch cannot read is never left in place."""
    if fmt == "torch.export":
        torch.export.load(str(model_file))
        return
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=TORCHSCRIPT_DEPRECATION, category=DeprecationWarning)
        torch.jit.load(str(model_file), map_location="cpu")


def _check_path(path: str | Path, suffix: str) -> Path:
    path = Path(path)
    if path.suffix != suffix:
        raise ValueError(f"{path}: the file name must end in {suffix}")
    # model.pt and model.pt2 would share model.json: the second export would take the
    # first one's card away and the daemon would refuse the first file.
    other = path.with_suffix(".pt2" if suffix == ".pt" else ".pt")
    if other.exists():
        raise ValueError(f"{path}: {other.name} exists and would share the card {card_path(path).name}; use another name")
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


def export_torchscript(model: nn.Module, path: str | Path, card: dict[str, Any]) -> dict[str, Any]:
    """Script ``model`` (in eval mode) to ``path`` (.pt) and write its card; returns the card."""
    path = _check_path(path, ".pt")
    was_training = model.training
    model.eval()
    tmp = _tmp_name(path)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=TORCHSCRIPT_DEPRECATION, category=DeprecationWarning)
            scripted = torch.jit.script(model)
            torch.jit.save(scripted, str(tmp))
    finally:
        model.train(was_training)
    return _finish(path, tmp, card, "torchscript")


def export_pt2(
    model: nn.Module,
    example_inputs: Sequence[torch.Tensor],
    path: str | Path,
    card: dict[str, Any],
) -> dict[str, Any]:
    """``torch.export`` ``model`` (eval mode, batch axis dynamic) to ``path`` (.pt2) with its card."""
    path = _check_path(path, ".pt2")
    device = next(iter(model.parameters()), torch.empty(0)).device
    examples = []
    for x in example_inputs:
        x = torch.as_tensor(x, dtype=torch.float32).detach().to(device)
        # torch.export specialises a size-1 axis to the constant 1: give it two items.
        examples.append(x.repeat(2, *([1] * (x.dim() - 1))) if x.shape[0] == 1 else x)
    batch = torch.export.Dim("batch", min=1, max=65536)
    was_training = model.training
    model.eval()
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=_EXPORT_NOISE, category=UserWarning)
            program = torch.export.export(model, tuple(examples), dynamic_shapes=tuple({0: batch} for _ in examples))
    finally:
        model.train(was_training)
    tmp = _tmp_name(path)
    torch.export.save(program, str(tmp))
    return _finish(path, tmp, card, "torch.export")
