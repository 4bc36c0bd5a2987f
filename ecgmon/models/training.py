"""The training loop shared by every ecgmon network: class-weighted cross-entropy, early
stopping on held-out records, fixed seeds and a rich progress display."""

from __future__ import annotations

from dataclasses import dataclass, field
import copy
import random

import numpy as np
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
import torch
from torch import nn


@dataclass
class TrainSettings:
    epochs: int = 30
    batch_size: int = 256
    lr: float = 1e-3
    weight_decay: float = 1e-4
    patience: int = 5  # epochs without a better held-out score before stopping
    seed: int = 1
    progress: bool = True


@dataclass
class FitResult:
    best_epoch: int
    best_score: float
    history: list[dict] = field(default_factory=list)


def set_seed(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


# A class with fewer training examples than this (AAMI Q: 8 beats in DS1) cannot be learnt
# across patients; weighting it up only makes the model call other beats Q.
MIN_CLASS_COUNT = 50


def class_weights(labels: np.ndarray, n_classes: int) -> torch.Tensor:
    """Weights ∝ 1/sqrt(count) (mean 1 over the classes used; 0 for classes with fewer than
    MIN_CLASS_COUNT examples), so rare classes such as S weigh far more than their share
    without the full inverse frequency that makes a model shout the rarest class."""
    counts = np.bincount(labels, minlength=n_classes).astype(np.float64)
    used = counts >= MIN_CLASS_COUNT
    weights = np.zeros(n_classes)
    weights[used] = 1.0 / np.sqrt(counts[used])
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


def fit(
    model: nn.Module,
    train: tuple[np.ndarray, ...],
    train_labels: np.ndarray,
    val: tuple[np.ndarray, ...],
    val_labels: np.ndarray,
    n_classes: int,
    settings: TrainSettings,
) -> FitResult:
    """Train ``model`` in place on ``train`` and keep the weights of the epoch with the best
    macro-F1 on ``val`` (records the model never trained on)."""
    set_seed(settings.seed)
    weights = class_weights(train_labels, n_classes)
    # Examples of classes weighted 0 teach nothing; dropping them also keeps a batch from
    # holding only such examples (a 0/0 loss).
    keep = weights.numpy()[train_labels] > 0
    train, train_labels = tuple(x[keep] for x in train), train_labels[keep]
    loss_fn = nn.CrossEntropyLoss(weight=weights)
    optimiser = torch.optim.AdamW(model.parameters(), lr=settings.lr, weight_decay=settings.weight_decay)
    generator = torch.Generator().manual_seed(settings.seed)
    n = len(train_labels)
    labels = torch.from_numpy(train_labels.astype(np.int64))
    tensors = [torch.from_numpy(np.ascontiguousarray(x)) for x in train]
    result = FitResult(best_epoch=-1, best_score=-1.0)
    best_state = copy.deepcopy(model.state_dict())
    batches = (n + settings.batch_size - 1) // settings.batch_size
    columns = [TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn()]
    with Progress(*columns, disable=not settings.progress, transient=True) as progress:
        epochs = progress.add_task("epochs", total=settings.epochs)
        for epoch in range(settings.epochs):
            model.train()
            order = torch.randperm(n, generator=generator)
            task = progress.add_task(f"epoch {epoch + 1}", total=batches)
            total = 0.0
            for b in range(batches):
                idx = order[b * settings.batch_size : (b + 1) * settings.batch_size]
                optimiser.zero_grad()
                loss = loss_fn(_logits(model, [t[idx] for t in tensors]), labels[idx])
                loss.backward()
                optimiser.step()
                total += loss.item() * len(idx)
                progress.advance(task)
            progress.remove_task(task)
            score = macro_f1(val_labels, predict(model, val).argmax(axis=1), n_classes)
            result.history.append({"epoch": epoch + 1, "loss": total / n, "val_macro_f1": score})
            if score > result.best_score:
                result.best_score, result.best_epoch = score, epoch + 1
                best_state = copy.deepcopy(model.state_dict())
            progress.update(epochs, advance=1, description=f"epochs (best macro-F1 {result.best_score:.3f})")
            if epoch + 1 - result.best_epoch >= settings.patience:
                break
    model.load_state_dict(best_state)
    model.eval()
    return result
