"""The training loop shared by every ecgmon network: class-weighted cross-entropy, early
stopping on held-out records or a fixed epoch count with cosine decay, optional batch
augmentation and N-beat subsampling, fixed seeds and a rich progress display."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
import copy
import random

import numpy as np
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
import torch
from torch import nn


# A class with fewer training examples than this (AAMI Q: 8 beats in DS1) cannot be learnt
# across patients; weighting it up only makes the model call other beats Q. The default of
# TrainSettings.min_class_count.
MIN_CLASS_COUNT = 50


@dataclass
class TrainSettings:
    epochs: int = 30
    batch_size: int = 256
    lr: float = 1e-3
    weight_decay: float = 1e-4
    # Epochs without a better held-out score before stopping; None trains every epoch and
    # keeps the last weights (the held-out score is then only watched, never chosen on).
    patience: int | None = 5
    seed: int = 1
    progress: bool = True
    weight_power: float = 0.5  # class weights ∝ count**-weight_power
    # Each epoch trains on this fraction of the most frequent class (a fresh random draw every
    # epoch) and on every example of the others: N beats are 90 % of DS1 and alike, so an
    # epoch of a quarter of them teaches nearly as much in a third of the time.
    majority_fraction: float = 1.0
    # Classes with fewer training examples than this are not learnt (weight 0, examples dropped).
    min_class_count: int = MIN_CLASS_COUNT


@dataclass
class FitResult:
    best_epoch: int
    best_score: float
    history: list[dict] = field(default_factory=list)


def set_seed(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def class_weights(labels: np.ndarray, n_classes: int, settings: TrainSettings) -> torch.Tensor:
    """Weights ∝ count**-``weight_power`` (mean 1 over the classes learnt; 0 for classes with
    fewer than ``min_class_count`` examples), from the counts an epoch sees (the majority
    class cut to ``majority_fraction``). The default 1/sqrt(count) makes rare classes such
    as S weigh far more than their share without the full inverse frequency (power 1)."""
    counts = np.bincount(labels, minlength=n_classes).astype(np.float64)
    used = counts >= settings.min_class_count
    seen = counts.copy()
    seen[counts.argmax()] *= settings.majority_fraction
    weights = np.zeros(n_classes)
    weights[used] = seen[used] ** -settings.weight_power
    weights *= used.sum() / weights.sum()
    return torch.tensor(weights, dtype=torch.float32)


def macro_f1(labels: np.ndarray, predicted: np.ndarray, n_classes: int) -> float:
    """Mean F1 over the classes present in ``labels``: the early-stopping score, because plain
    accuracy rewards a model that calls every beat N."""
    scores = []
    for c in range(n_classes):
        true, pred = labels == c, predicted == c
        if not true.any():
            continue
        tp = float(np.sum(true & pred))
        denom = true.sum() + pred.sum()
        scores.append(2 * tp / denom if denom else 0.0)
    return float(np.mean(scores)) if scores else 0.0


def _logits(model: nn.Module, batch: list[torch.Tensor]) -> torch.Tensor:
    out = model(*batch)
    return out[0] if isinstance(out, tuple) else out  # a segment model also returns attention


def predict(model: nn.Module, inputs: tuple[np.ndarray, ...], batch_size: int = 1024) -> np.ndarray:
    """Class probabilities for every item of ``inputs``, in eval mode."""
    model.eval()
    n = len(inputs[0])
    out = []
    with torch.inference_mode():
        for i in range(0, n, batch_size):
            batch = [torch.from_numpy(np.ascontiguousarray(x[i : i + batch_size])) for x in inputs]
            out.append(torch.softmax(_logits(model, batch), dim=1).numpy())
    return np.concatenate(out) if out else np.zeros((0, 0), dtype=np.float32)


def _epoch_order(majority: torch.Tensor, n_major: int, generator: torch.Generator) -> torch.Tensor:
    """Shuffled indices of one epoch: every minority example and ``n_major`` majority ones."""
    if n_major == int(majority.sum()):
        return torch.randperm(majority.numel(), generator=generator)
    major = majority.nonzero().squeeze(1)
    drawn = major[torch.randperm(major.numel(), generator=generator)[:n_major]]
    chosen = torch.cat([(~majority).nonzero().squeeze(1), drawn])
    return chosen[torch.randperm(chosen.numel(), generator=generator)]


# Changes a training batch (inputs in the order the model takes them) with a seeded generator.
Augment = Callable[[list[torch.Tensor], torch.Generator], list[torch.Tensor]]


def fit(
    model: nn.Module,
    train: tuple[np.ndarray, ...],
    train_labels: np.ndarray,
    val: tuple[np.ndarray, ...] | None,
    val_labels: np.ndarray | None,
    n_classes: int,
    settings: TrainSettings,
    augment: Augment | None = None,
) -> FitResult:
    """Train ``model`` in place on ``train``.

    With ``settings.patience`` set, keep the weights of the epoch with the best macro-F1 on
    ``val`` (records the model never trained on) and stop after ``patience`` epochs without
    a better one. With ``patience=None`` every epoch runs, the learning rate follows a
    cosine decay to 0 and the last weights are kept;
    ``val``, if given, is scored each epoch for the history only. ``augment`` changes each
    training batch (``ecgmon.models.augment``); it never touches ``val``.
    """
    select = settings.patience is not None
    if select and val is None:
        raise ValueError("early stopping needs held-out data (val) to choose the epoch on")
    set_seed(settings.seed)
    weights = class_weights(train_labels, n_classes, settings)
    # Examples of classes weighted 0 teach nothing; dropping them also keeps a batch from
    # holding only such examples (a 0/0 loss).
    keep = weights.numpy()[train_labels] > 0
    train, train_labels = tuple(x[keep] for x in train), train_labels[keep]
    loss_fn = nn.CrossEntropyLoss(weight=weights)
    optimiser = torch.optim.AdamW(model.parameters(), lr=settings.lr, weight_decay=settings.weight_decay)
    generator = torch.Generator().manual_seed(settings.seed)
    labels = torch.from_numpy(train_labels.astype(np.int64))
    tensors = [torch.from_numpy(np.ascontiguousarray(x)) for x in train]
    majority = torch.from_numpy(train_labels == np.bincount(train_labels).argmax())
    n_major = int(round(settings.majority_fraction * int(majority.sum())))
    n = len(train_labels) - int(majority.sum()) + n_major  # examples per epoch
    result = FitResult(best_epoch=-1, best_score=-1.0)
    best_state = copy.deepcopy(model.state_dict())
    batches = (n + settings.batch_size - 1) // settings.batch_size
    # A fixed epoch count keeps its last weights: the learning rate decays to 0 along a half
    # cosine (per batch), so they are settled ones rather than one noisy step's.
    schedule = (
        None if select else torch.optim.lr_scheduler.CosineAnnealingLR(optimiser, T_max=settings.epochs * batches)
    )
    columns = [TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn()]
    with Progress(*columns, disable=not settings.progress, transient=True) as progress:
        epochs = progress.add_task("epochs", total=settings.epochs)
        for epoch in range(settings.epochs):
            model.train()
            order = _epoch_order(majority, n_major, generator)
            task = progress.add_task(f"epoch {epoch + 1}", total=batches)
            total = 0.0
            for b in range(batches):
                idx = order[b * settings.batch_size : (b + 1) * settings.batch_size]
                batch = [t[idx] for t in tensors]
                if augment is not None:
                    batch = augment(batch, generator)
                optimiser.zero_grad()
                loss = loss_fn(_logits(model, batch), labels[idx])
                loss.backward()
                optimiser.step()
                if schedule is not None:
                    schedule.step()
                total += loss.item() * len(idx)
                progress.advance(task)
            progress.remove_task(task)
            entry: dict = {"epoch": epoch + 1, "loss": total / n}
            if val is not None and val_labels is not None:
                score = macro_f1(val_labels, predict(model, val).argmax(axis=1), n_classes)
                entry["val_macro_f1"] = score
            result.history.append(entry)
            if not select:
                progress.update(epochs, advance=1)
                continue
            if score > result.best_score:
                result.best_score, result.best_epoch = score, epoch + 1
                best_state = copy.deepcopy(model.state_dict())
            progress.update(epochs, advance=1, description=f"epochs (best macro-F1 {result.best_score:.3f})")
            if epoch + 1 - result.best_epoch >= settings.patience:
                break
    if select:
        model.load_state_dict(best_state)
    else:
        result.best_epoch = len(result.history)
        result.best_score = result.history[-1].get("val_macro_f1", float("nan")) if result.history else float("nan")
    model.eval()
    return result
