"""`ecgmon train beat|beat-spectrogram|segment`: train a classifier on DS1 records, validate it
on whole records it never saw, and export it as TorchScript with its model card."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from torch import nn

from ecgmon.config import DataConfig
from ecgmon.models.aami import CLASSES
from ecgmon.models.datasets import (
    SEGMENT_CLASSES,
    assert_disjoint,
    leave_records_out,
    load_beats,
    load_segments,
)
from ecgmon.models.export import export_torchscript
from ecgmon.models.metrics import class_report
from ecgmon.models.networks import BeatCNNBiLSTM, BeatSpectrogramCNN, SegmentAttentionCNN, card_template
from ecgmon.models.training import TrainSettings, fit, predict, set_seed
from ecgmon.monitor.dsp.beat_features import RR_FEATURES

NAMES = {"beat": "beat-cnn-bilstm", "beat-spectrogram": "beat-spectrogram-cnn", "segment": "segment-attention-cnn"}


@dataclass
class TrainingJob:
    kind: str  # "beat", "beat-spectrogram" or "segment"
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


def _data_and_model(job: TrainingJob, data: DataConfig):
    """The training and held-out sets as (inputs, labels), the class names and a fresh network."""
    records = job.train_records + job.val_records
    progress = job.settings.progress
    set_seed(job.settings.seed)
    if job.kind == "segment":
        segments = load_segments(records, data, channel=job.channel, progress=progress)
        train, val = segments.of_records(job.train_records), segments.of_records(job.val_records)
        model: nn.Module = SegmentAttentionCNN(n_classes=len(SEGMENT_CLASSES))
        sets = ((train.windows,), train.labels), ((val.windows,), val.labels)
        return sets, SEGMENT_CLASSES, model, {}
    beats = load_beats(records, data, channel=job.channel, progress=progress)
    train, val = beats.of_records(job.train_records), beats.of_records(job.val_records)
    network = BeatCNNBiLSTM if job.kind == "beat" else BeatSpectrogramCNN
    model = network(rr_features=len(RR_FEATURES), n_classes=len(CLASSES))
    model.rr.set_stats(np.nanmean(train.rr, axis=0), np.nanstd(train.rr, axis=0))
    sets = ((train.windows, train.rr), train.labels), ((val.windows, val.rr), val.labels)
    return sets, CLASSES, model, {"rr_features": RR_FEATURES}


def train_model(job: TrainingJob, data: DataConfig) -> dict:
    """Train, validate on the held-out records, export; returns the model card written."""
    assert_disjoint(job.train_records, job.val_records)
    ((train_x, train_y), (val_x, val_y)), classes, model, card_extra = _data_and_model(job, data)
    result = fit(model, train_x, train_y, val_x, val_y, len(classes), job.settings)
    card = card_template(model, NAMES[job.kind], classes=classes, **card_extra)
    card["training"] = {
        "command": job.command,
        "records": sorted(job.train_records),
        "validation_records": sorted(job.val_records),
        "seed": job.settings.seed,
        "epochs_run": len(result.history),
        "best_epoch": result.best_epoch,
        "class_counts": {c: int(n) for c, n in zip(classes, np.bincount(train_y, minlength=len(classes)))},
        "history": result.history,
    }
    card["metrics"] = {
        "evaluation": "held-out whole records (leave-records-out within DS1), reference annotations",
        "records": sorted(job.val_records),
        **class_report(val_y, predict(model, val_x), classes),
    }
    return export_torchscript(model, job.out, card)
