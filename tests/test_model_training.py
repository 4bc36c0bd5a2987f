"""The shared training loop: class weights, early stopping on held-out data, determinism."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from ecgmon.models.training import TrainSettings, _epoch_order, class_weights, fit, macro_f1, predict


def _data(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Three classes told apart by the sign pattern of two features; class 2 is rare."""
    rng = np.random.default_rng(seed)
    labels = rng.choice(3, size=n, p=[0.8, 0.17, 0.03])
    centres = np.array([[1.0, 1.0], [-1.0, 1.0], [1.0, -1.0]], dtype=np.float32)
    x = centres[labels] + 0.3 * rng.standard_normal((n, 2)).astype(np.float32)
    return x.astype(np.float32), labels.astype(np.int64)


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(2, 16), nn.ReLU(), nn.Linear(16, 3))


def test_class_weights_favour_rare_classes_and_skip_unlearnable_ones() -> None:
    labels = np.array([0] * 900 + [1] * 100 + [2] * 5)
    w = class_weights(labels, 3, TrainSettings())
    assert w[2] == 0  # 5 examples: too few to learn across patients
    assert torch.isclose(w[1] / w[0], torch.tensor(3.0))
    assert torch.isclose(w[:2].mean(), torch.tensor(1.0))
    # A quarter of the majority per epoch: balanced against the 225 it sees, not 900.
    w = class_weights(labels, 3, TrainSettings(majority_fraction=0.25, weight_power=1.0, min_class_count=100))
    assert torch.isclose(w[1] / w[0], torch.tensor(2.25)) and w[2] == 0
    assert class_weights(labels, 3, TrainSettings(min_class_count=101))[1] == 0


def test_macro_f1_punishes_calling_everything_the_majority_class() -> None:
    labels = np.array([0] * 95 + [1] * 5)
    assert macro_f1(labels, np.zeros(100, dtype=int), 2) < 0.5
    assert macro_f1(labels, labels, 2) == 1.0


def test_fit_learns_the_rare_class_and_is_deterministic() -> None:
    x, y = _data(4000, 1)
    vx, vy = _data(1000, 2)
    settings = TrainSettings(epochs=8, batch_size=128, lr=1e-2, patience=3, progress=False)
    results = []
    for _ in range(2):
        model = _model()
        result = fit(model, (x,), y, (vx,), vy, 3, settings)
        predicted = predict(model, (vx,)).argmax(axis=1)
        assert macro_f1(vy, predicted, 3) == result.best_score
        results.append((result.best_epoch, result.best_score))
    assert results[0] == results[1]
    assert results[0][1] > 0.9
    rare = vy == 2
    assert (predicted[rare] == 2).mean() > 0.9


def test_early_stopping_keeps_the_best_epoch() -> None:
    x, y = _data(500, 3)
    vx, vy = _data(300, 4)
    flipped = 2 - vy  # held-out labels that disagree with training: later epochs only get worse
    settings = TrainSettings(epochs=30, batch_size=64, lr=1e-2, patience=2, progress=False)
    model = _model()
    result = fit(model, (x,), y, (vx,), flipped, 3, settings)
    assert len(result.history) <= result.best_epoch + 2
    assert macro_f1(flipped, predict(model, (vx,)).argmax(axis=1), 3) == result.best_score


def test_fixed_epochs_run_them_all_and_keep_the_last_weights() -> None:
    x, y = _data(500, 3)
    vx, vy = _data(300, 4)
    settings = TrainSettings(epochs=4, batch_size=64, lr=1e-2, patience=None, progress=False)
    model = _model()
    result = fit(model, (x,), y, (vx,), 2 - vy, 3, settings)
    assert [h["epoch"] for h in result.history] == [1, 2, 3, 4] and result.best_epoch == 4
    # The last epoch's weights are kept even though the (flipped) held-out score prefers none.
    assert macro_f1(2 - vy, predict(model, (vx,)).argmax(axis=1), 3) == result.history[-1]["val_macro_f1"]
    unwatched = _model()
    assert fit(unwatched, (x,), y, None, None, 3, settings).history[-1].keys() == {"epoch", "loss"}
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), unwatched.state_dict().values()))


def test_an_epoch_draws_part_of_the_majority_afresh_and_every_minority_example() -> None:
    majority = torch.tensor([True] * 80 + [False] * 20)
    generator = torch.Generator().manual_seed(0)
    first, second = (_epoch_order(majority, 20, generator) for _ in range(2))
    for order in (first, second):
        assert len(order) == 40 and len(set(order.tolist())) == 40
        assert set(range(80, 100)) <= set(order.tolist())
    assert set(first.tolist()) != set(second.tolist())  # a new draw of N beats each epoch
    assert sorted(_epoch_order(majority, 80, generator).tolist()) == list(range(100))


def test_majority_fraction_still_learns_the_rare_class() -> None:
    x, y = _data(4000, 1)
    vx, vy = _data(1000, 2)
    settings = TrainSettings(epochs=8, batch_size=128, lr=1e-2, patience=None, progress=False,
                             majority_fraction=0.25)
    model = _model()
    fit(model, (x,), y, None, None, 3, settings)
    assert macro_f1(vy, predict(model, (vx,)).argmax(axis=1), 3) > 0.9
