"""`ecgmon train beat|beat-spectrogram`: train a beat classifier on DS1 records, validate it on
whole records it never saw, and export it as TorchScript with its model card."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ecgmon.config import DataConfig
from ecgmon.models.aami import CLASSES
from ecgmon.models.datasets import BeatSet, assert_disjoint, leave_records_out, load_beats
from ecgmon.models.export import export_torchscript
from ecgmon.monitor.dsp.beat_features import RR_FEATURES
from ecgmon.models.metrics import class_report
from ecgmon.models.networks import BeatCNNBiLSTM, BeatSpectrogramCNN, card_template
from ecgmon.models.training import TrainSettings, fit, predict, set_seed

NETWORKS = {"beat": BeatCNNBiLSTM, "beat-spectrogram": BeatSpectrogramCNN}
NAMES = {"beat": "beat-cnn-bilstm", "beat-spectrogram": "beat-spectrogram-cnn"}


@dataclass
class BeatTraining:
    kind: str  # "beat" or "beat-spectrogram"
    train_records: list[str]
    val_records: list[str]
    out: Path
    command: str
    settings: TrainSettings
    channel: int | str = 0


def split_records(records: list[str], n_val: int, seed: int) -> tuple[list[str], list[str]]:
    train, val = leave_records_out(records, n_val, seed)
    assert_disjoint(train, val)
    return train, val


def train_beat_model(job: BeatTraining, data: DataConfig) -> dict:
    """Train, validate on the held-out records, export; returns the model card written."""
    assert_disjoint(job.train_records, job.val_records)
    beats = load_beats(job.train_records + job.val_records, data, channel=job.channel,
                       progress=job.settings.progress)
    train, val = beats.of_records(job.train_records), beats.of_records(job.val_records)
    set_seed(job.settings.seed)
    model = NETWORKS[job.kind](rr_features=len(RR_FEATURES), n_classes=len(CLASSES))
    model.rr.set_stats(np.nanmean(train.rr, axis=0), np.nanstd(train.rr, axis=0))
    result = fit(model, _inputs(train), train.labels, _inputs(val), val.labels, len(CLASSES), job.settings)
    probabilities = predict(model, _inputs(val))
    card = card_template(model, NAMES[job.kind], classes=CLASSES, rr_features=RR_FEATURES)
    card["training"] = {
        "command": job.command,
        "records": sorted(job.train_records),
        "validation_records": sorted(job.val_records),
        "seed": job.settings.seed,
        "epochs_run": len(result.history),
        "best_epoch": result.best_epoch,
        "class_counts": train.class_counts(),
        "history": result.history,
    }
    card["metrics"] = {
        "evaluation": "held-out whole records (leave-records-out within DS1), reference R peaks",
        "records": sorted(job.val_records),
        **class_report(val.labels, probabilities, CLASSES),
    }
    return export_torchscript(model, job.out, card)


def _inputs(beats: BeatSet) -> tuple[np.ndarray, np.ndarray]:
    return beats.windows, beats.rr
