"""The daemon's models: each `[models]` entry resolved (a bare file name is a shipped model),
loaded, checked against the key it was configured under; failures are collected as one-line
messages, so the daemon can go on without the model that failed."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

import torch

from ecgmon.config import ModelsConfig
from ecgmon.monitor.classification import check_beat_model
from ecgmon.monitor.model_loader import LoadedModel, ModelError, load_model

# The `[models]` keys that name a model file; each is the kind of model it must hold.
MODEL_KEYS: tuple[str, ...] = ("beat", "segment", "pcg")


def shipped_weights() -> Path:
    return Path(str(resources.files("ecgmon.models") / "weights"))


def model_path(setting: str) -> Path:
    """A bare file name is one of the shipped models; anything else is a path."""
    path = Path(setting).expanduser()
    return shipped_weights() / path if path.parent == Path(".") and not path.is_absolute() else path


def load_models(config: ModelsConfig) -> tuple[dict[str, LoadedModel], list[str]]:
    """The configured models by key, and one error line per model that could not be used."""
    # One thread for torch: the batcher runs beside the event loop on a 2-core machine, and
    # torch's thread pool collapses when it shares the cores (bench/inference.py measures it).
    torch.set_num_threads(1)
    models: dict[str, LoadedModel] = {}
    errors: list[str] = []
    for key in MODEL_KEYS:
        setting = getattr(config, key, "")
        if not setting:
            continue
        try:
            model = load_model(model_path(setting), config.device)
            if model.kind != key:
                raise ModelError(f"{model.path}: it is a {model.kind} model, not a {key} model")
            if key == "beat":
                check_beat_model(model)
        except (ModelError, ValueError) as err:
            errors.append(f"[models] {key} = {setting!r} not used: {err}")
            continue
        models[key] = model
    if config.pcg_cycles:
        # A rule file, not a network: loaded and checked here, run by the batcher like a model.
        from ecgmon.monitor.dsp.pcg_cycles import CycleRuleError
        from ecgmon.monitor.pcg_cycle_model import CycleModel

        try:
            models["pcg_cycles"] = CycleModel.load(model_path(config.pcg_cycles))
        except CycleRuleError as err:
            errors.append(f"[models] pcg_cycles = {config.pcg_cycles!r} not used: {err}")
    return models, errors
