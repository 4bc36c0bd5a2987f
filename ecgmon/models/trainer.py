"""`ecgmon train beat|beat-spectrogram|segment`: train a classifier on DS1 records, measure it
on whole records it never saw, and export it as TorchScript with its model card.

Two ways to measure, both leave-records-out:

- held-out records (``val_records``): early stopping on them, their scores in the card;
- ``folds`` k-fold by record: k models each train a fixed number of epochs on the other
  folds' records and classify their own fold's records; the pooled predictions give the
  card's metrics. The shipped model then trains the same fixed epochs on every record, so
  the estimate is of exactly the procedure that made it. The k fold models are exported too,
  into ``<out stem>.folds/`` beside the model (``fold_folder``), each card naming the records
  it held out: ``ecgmon evaluate beats|alarms --cross-validated`` classifies every record with
  the fold model that never saw it.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
from torch import nn

from ecgmon.config import DataConfig
from ecgmon.models.aami import CLASSES
from ecgmon.models.augment import BeatAugment, centre_crop
from ecgmon.models.datasets import (
    SEGMENT_CLASSES,
    BeatSet,
    SegmentSet,
    assert_disjoint,
    leave_records_out,
    load_beats,
    load_segments,
    record_folds,
)
from ecgmon.model_card import fold_folder
from ecgmon.models.export import export_torchscript
from ecgmon.scores import class_report
from ecgmon.models.networks import (
    BeatCNNBiLSTM, BeatEnsemble, BeatFeatureMLP, BeatSpectrogramCNN, SegmentAttentionCNN, card_template,
)
from ecgmon.models.training import FitResult, TrainSettings, fit, predict, set_seed
from ecgmon.models.databases import cross_database, per_database
from ecgmon.monitor.dsp.beat_features import BEAT_FEATURES, LEAD2_FEATURES, RR_FEATURES

NAMES = {"beat": "beat-cnn-bilstm", "beat-spectrogram": "beat-spectrogram-cnn", "segment": "segment-attention-cnn"}
# How the beat feature MLP trains beside the CNN-BiLSTM (``feature_mlp``): every N beat every
# epoch (its class weights alone balance the classes) for 6 epochs of 512; the rest as the job's.
MLP_SETTINGS = {"epochs": 6, "batch_size": 512, "majority_fraction": 1.0}


@dataclass
class TrainingJob:
    kind: str  # "beat", "beat-spectrogram" or "segment"
    train_records: list[str]
    val_records: list[str]  # empty with folds: the final model trains on every record
    out: Path
    command: str
    settings: TrainSettings
    channel: int | str | tuple[int | str, ...] = 0  # several: preferences, the first a record has
    folds: int = 0  # k-fold by record over train_records (0: measure on val_records)
    rr_features: tuple[str, ...] = RR_FEATURES  # beat models: RR and adaptive inputs by name (BEAT_FEATURES), in order
    jitter: int = 0  # beat models: random R shift in training, up to this many samples each way
    noise: float = 0.0  # beat models: white noise in training, times the window's std
    feature_mlp: bool = False  # beat: ship the CNN-BiLSTM and a BeatFeatureMLP averaged (BeatEnsemble)
    lead2_dropout: float = 0.0  # beat models: share of training records shown without their second lead

    @property
    def classes(self) -> tuple[str, ...]:
        return SEGMENT_CLASSES if self.kind == "segment" else CLASSES


def split_records(records: list[str], n_val: int, seed: int) -> tuple[list[str], list[str]]:
    train, val = leave_records_out(records, n_val, seed)
    assert_disjoint(train, val)
    return train, val


def load_data(job: TrainingJob, records: list[str], data: DataConfig) -> BeatSet | SegmentSet:
    """Every record's labelled rows, beat windows ``job.jitter`` samples wider per side."""
    progress = job.settings.progress
    if job.kind == "segment":
        return load_segments(records, data, channel=job.channel, progress=progress)
    return load_beats(records, data, channel=job.channel, progress=progress, margin=job.jitter)


def _inputs(job: TrainingJob, rows: BeatSet | SegmentSet, training: bool) -> tuple[np.ndarray, ...]:
    """The model's inputs for ``rows``: wide windows to train on (augmentation cuts them),
    centred ones to classify; the job's RR columns."""
    if isinstance(rows, SegmentSet):
        return (rows.windows,)
    windows = rows.windows if training else centre_crop(rows.windows, job.jitter)
    columns = [BEAT_FEATURES.index(name) for name in job.rr_features]
    rr = np.ascontiguousarray(rows.rr[:, columns])
    lead2 = [i for i, name in enumerate(job.rr_features) if name in LEAD2_FEATURES]
    if training and lead2 and job.lead2_dropout > 0:
        # Whole patients without their second lead, as a one-lead source gives them: the
        # model must stay right with one lead, not lean on a second it may not get.
        rng = np.random.default_rng(job.settings.seed)
        records = np.unique(rows.records)
        dropped = records[rng.random(records.size) < job.lead2_dropout]
        rr[np.ix_(np.isin(rows.records, dropped), lead2)] = np.nan
    return windows, rr


def _new_model(job: TrainingJob, train_rr: np.ndarray | None) -> nn.Module:
    if job.kind == "segment":
        set_seed(job.settings.seed)
        return SegmentAttentionCNN(n_classes=len(SEGMENT_CLASSES))
    return _beat_network(job, BeatCNNBiLSTM if job.kind == "beat" else BeatSpectrogramCNN, train_rr)


def _beat_network(job: TrainingJob, network: type[nn.Module], train_rr: np.ndarray) -> nn.Module:
    set_seed(job.settings.seed)
    model = network(rr_features=len(job.rr_features), n_classes=len(CLASSES))
    model.rr.set_stats(np.nanmean(train_rr, axis=0), np.nanstd(train_rr, axis=0))
    return model


def _fit_on(
    job: TrainingJob, rows: BeatSet | SegmentSet, train_records: list[str], val_records: list[str],
    settings: TrainSettings | None = None,
) -> tuple[nn.Module, FitResult]:
    """A fresh model trained on ``train_records``' rows; ``val_records`` (may be empty) are
    scored every epoch, and chosen on only when the settings stop early."""
    settings = settings or job.settings
    train = rows.of_records(train_records)
    train_x = _inputs(job, train, training=True)
    model = _new_model(job, train_x[1] if len(train_x) > 1 else None)
    val_x = val_y = None
    if val_records:
        val = rows.of_records(val_records)
        val_x, val_y = _inputs(job, val, training=False), val.labels
    augment = BeatAugment(job.jitter, job.noise) if job.kind != "segment" and (job.jitter or job.noise) else None
    result = fit(model, train_x, train.labels, val_x, val_y, len(job.classes), settings, augment)
    if job.feature_mlp:
        mlp = _beat_network(job, BeatFeatureMLP, train_x[1])
        fit(mlp, train_x, train.labels, None, None, len(job.classes),
            replace(settings, patience=None, **MLP_SETTINGS), augment)
        model = BeatEnsemble([model, mlp])
    return model, result


@dataclass
class CrossValidation:
    """Pooled and per-fold reports of a k-fold by record, each fold's history, and the fold
    models with the records each trained on and held out."""

    pooled: dict
    folds: list[dict] = field(default_factory=list)
    models: list[tuple[nn.Module, list[str], list[str]]] = field(default_factory=list)
    per_database: dict[str, dict] = field(default_factory=dict)  # the pooled report per database


def cross_validate(job: TrainingJob, rows: BeatSet | SegmentSet, records: list[str]) -> CrossValidation:
    """k models, each trained a fixed ``settings.epochs`` on the other folds' records and
    run on its own fold's; metrics per fold and over all folds' predictions pooled."""
    settings = replace(job.settings, patience=None)
    labels, probabilities, folds, models, held_records = [], [], [], [], []
    for i, (train, val) in enumerate(record_folds(records, job.folds, job.settings.seed)):
        assert_disjoint(train, val)
        model, result = _fit_on(job, rows, train, val, settings)
        held = rows.of_records(val)
        p = predict(model, _inputs(job, held, training=False))
        labels.append(held.labels)
        probabilities.append(p)
        held_records.append(held.records)
        report = class_report(held.labels, p, job.classes)
        folds.append({"fold": i + 1, "records": val, **_summary(report), "history": result.history})
        models.append((model, train, val))
    labels_all, probabilities_all = np.concatenate(labels), np.concatenate(probabilities)
    pooled = class_report(labels_all, probabilities_all, job.classes)
    by_db = per_database(labels_all, probabilities_all, np.concatenate(held_records), job.classes)
    return CrossValidation(pooled, folds, models, by_db if len(by_db) > 1 else {})


def across_databases(job: TrainingJob, rows: BeatSet | SegmentSet, records: list[str]) -> dict[str, dict]:
    """With records of two or more databases: each database scored by a model trained the same
    fixed epochs on every record of the others (a new ward is a new database)."""
    settings = replace(job.settings, patience=None)

    def fit(train: list[str], test: list[str]) -> tuple[np.ndarray, np.ndarray]:
        assert_disjoint(train, test)
        model, _ = _fit_on(job, rows, train, [], settings)
        held = rows.of_records(test)
        return held.labels, predict(model, _inputs(job, held, training=False))

    return cross_database(records, job.classes, fit)


def _export_folds(job: TrainingJob, cv: CrossValidation, card_training: dict) -> None:
    """Each fold model with a card that names the records it trained on and held out; the
    folder's old fold files go first (a stale fold would score records it trained on)."""
    folder = fold_folder(job.out)
    folder.mkdir(parents=True, exist_ok=True)
    for old in [*folder.glob("fold*.pt"), *folder.glob("fold*.json")]:
        old.unlink()
    extra = {} if job.kind == "segment" else {"rr_features": job.rr_features}
    for i, ((model, train, val), report) in enumerate(zip(cv.models, cv.folds), start=1):
        card = card_template(model, f"{NAMES[job.kind]}-fold{i}", classes=job.classes, **extra)
        card["training"] = {**card_training, "records": sorted(train), "held_out_records": sorted(val),
                            "fold": i, "folds": job.folds, "history": report["history"]}
        card["metrics"] = {"evaluation": "its own fold's held-out records, reference R peaks and labels",
                           **{k: v for k, v in report.items() if k != "history"}}
        export_torchscript(model, folder / f"fold{i}.pt", card)


def _summary(report: dict) -> dict:
    """A fold's report without its confusion matrix (the pooled one carries that)."""
    return {k: v for k, v in report.items() if k != "confusion"}


def train_model(job: TrainingJob, data: DataConfig) -> dict:
    """Measure (held-out records or k-fold), train the model to ship, export; returns the card."""
    assert_disjoint(job.train_records, job.val_records)
    records = job.train_records + job.val_records
    rows = load_data(job, records, data)
    card_training: dict = {
        "command": job.command,
        "records": sorted(job.train_records),
        "validation_records": sorted(job.val_records),
        "seed": job.settings.seed,
        "channel": job.channel,
        **({"augmentation": {"r_jitter_samples": job.jitter, "noise_std_fraction": job.noise,
                             "records_without_second_lead": job.lead2_dropout}}
           if job.kind != "segment" else {}),
        **({"ensemble": {"members": ["BeatCNNBiLSTM (the settings above)",
                                     f"BeatFeatureMLP ({', '.join(f'{k} {v}' for k, v in MLP_SETTINGS.items())})"],
                         "combination": "mean of the members' probabilities"}}
           if job.feature_mlp else {}),
        "class_weight_power": job.settings.weight_power,
        "majority_fraction": job.settings.majority_fraction,
        "min_class_count": job.settings.min_class_count,
    }
    if job.folds:
        if job.val_records:
            raise ValueError("k-fold measures on the training records themselves: give no validation records")
        cv = cross_validate(job, rows, job.train_records)
        metrics = {
            "evaluation": (
                f"leave-records-out {job.folds}-fold cross-validation over the training records "
                f"(each fold's records classified by a model trained on the other folds' records "
                f"only, {job.settings.epochs} epochs each; predictions of all folds pooled), "
                f"reference R peaks and labels"
            ),
            "records": sorted(job.train_records),
            **cv.pooled,
            "folds": cv.folds,
        }
        if cv.per_database:
            metrics["per_database"] = cv.per_database
            metrics["cross_database"] = across_databases(job, rows, job.train_records)
        _export_folds(job, cv, card_training)
        settings = replace(job.settings, patience=None)
        model, result = _fit_on(job, rows, job.train_records, [], settings)
        card_training["final_model"] = (
            f"trained on all {len(job.train_records)} records for a fixed {job.settings.epochs} epochs "
            f"(cosine learning-rate decay), as each fold's model was: no early stopping"
        )
    else:
        model, result = _fit_on(job, rows, job.train_records, job.val_records)
        val = rows.of_records(job.val_records)
        metrics = {
            "evaluation": "held-out whole records (leave-records-out within DS1), reference annotations",
            "records": sorted(job.val_records),
            **class_report(val.labels, predict(model, _inputs(job, val, training=False)), job.classes),
        }
        card_training["best_epoch"] = result.best_epoch
    train_labels = rows.of_records(job.train_records).labels
    counts = np.bincount(train_labels, minlength=len(job.classes))
    card_training.update({
        "epochs_run": len(result.history),
        "class_counts": {c: int(n) for c, n in zip(job.classes, counts)},
        "history": result.history,
    })
    extra = {} if job.kind == "segment" else {"rr_features": job.rr_features}
    card = card_template(model, NAMES[job.kind], classes=job.classes, **extra)
    card["training"] = card_training
    card["metrics"] = metrics
    return export_torchscript(model, job.out, card)
