"""`ecgmon train pcg`: leave-one-database-out folds, then the shipped model on every database.

Each fold trains on all databases but one and is scored on the held-out one; its figures
(Se, Sp, MAcc on the recordings given a verdict, coverage, AUC) are what the card reports,
because a database never seen is what the model is judged on. Nothing is chosen on the
held-out database: each fold's epoch count, threshold and abstention margin come from a rule
applied inside its training databases (leave one of them out in turn, score it at every
checkpoint: ``choose_rule``). The shipped model trains on every database with the rule
applied the same way to the outer folds (each database scored by a model that never saw it).
An earlier card took the median of the folds' best held-out epochs: that looked at them.

Beside the raw threshold the rule has a device rule (``pcg_decision.DeviceRule``): a threshold
and margin on the score standardised by each database's own median and IQR, chosen the same way
on the inner databases. Each held-out database is then scored as a user meets a new stethoscope:
its calibration is fitted on its own recordings' scores (no label read), and the card's headline
figures are those of the device rule; the raw rule's figures stay beside them ("uncalibrated").

The loop is its own rather than ``training.fit``: every epoch draws a fresh random 5 s crop
of every recording (the time-shift augmentation, and each recording counting once however
long it is), and the rule is chosen on recordings, not windows.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ecgmon.config import AudioConfig
from ecgmon.models.export import export_torchscript
from ecgmon.models.pcg_data import (
    FS,
    HOP,
    WINDOW,
    PcgSet,
    assert_disjoint,
    leave_one_database_out,
    progress_bar,
    windows,
)
from ecgmon.models.pcg_network import PcgMelCNN, pcg_card_template
from ecgmon.models.training import set_seed
from ecgmon.monitor.dsp.pcg_decision import (
    DeviceRule,
    Rule,
    decide,
    fit_calibration,
    recording_score,
    window_qualities,
)
from ecgmon.scores import AGGREGATION, THRESHOLD, auc, verdict_report

NAME = "pcg-mel-cnn"
# The daemon's defaults: quality is judged on the envelope at this rate, and windows below
# min_quality are left out of the verdict (the card's figures use them too).
ENVELOPE_FS = float(AudioConfig().envelope_fs)
DEFAULT_MIN_QUALITY = float(AudioConfig().min_quality)
log = logging.getLogger(__name__)


@dataclass
class PcgSettings:
    """Everything a PCG training run depends on besides the data (recorded in the card)."""

    epochs: int = 12  # the most epochs the epoch rule considers
    batch_size: int = 64
    lr: float = 2e-3
    weight_decay: float = 1e-3
    seed: int = 1
    progress: bool = True
    # Random gain of up to this many dB each way. The model divides by the RMS first, so the
    # gain is invisible to it (tests/test_pcg_model.py checks that); it stays because it is
    # part of the random stream that the card's command reproduces.
    gain_db: float = 12.0
    # White noise at a random SNR in [noise_snr_db, noise_snr_db + 30] dB on most crops:
    # stethoscopes and sites differ in their noise floor as much as in their frequency
    # response, and a noisy database must not read as an abnormal one.
    noise_snr_db: float = 5.0
    noise_share: float = 0.7
    # Crops drawn per epoch (with replacement, database-and-class balanced); an epoch is a
    # fixed amount of training whatever the fold's size, so epoch counts carry across folds.
    epoch_size: int = 1024
    # Band-limiting that imitates other stethoscopes: on this share of the crops, a random
    # low-pass (Butterworth, 4th order, cutoff 120-400 Hz) and/or high-pass (25-100 Hz). The
    # mel median removes a fixed frequency response, but not where a device has no signal at
    # all: there the bins hold only its noise.
    band_share: float = 0.0
    # Weight of the reversed gradient of a database classifier on the pooled features (0: none):
    # training that penalises recognising the database.
    adversary: float = 0.0
    # The epoch rule (see choose_rule): checkpoints every checkpoint_every epochs up to epochs,
    # each scored on at most curve_recordings recordings (curve_windows windows each) of the
    # database the model never saw.
    checkpoint_every: int = 2
    curve_recordings: int = 240
    curve_windows: int = 4
    # Abstention: the margin keeps a verdict on this share of every database of the rule, and a
    # verdict needs this share of the good windows on the mean's side of the threshold (fixed).
    coverage: float = 0.8
    min_agreement: float = 0.6
    # PcgMelCNN keyword arguments.
    network: dict = field(default_factory=dict)


@dataclass
class FoldResult:
    held_out: str
    train_databases: list[str]
    report: dict
    history: list[dict] = field(default_factory=list)
    rule: dict = field(default_factory=dict)


def sampling_weights(databases: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Probability of drawing each recording: every (database, class) cell equally likely.

    Database e alone holds two thirds of the normal recordings and database a most of the
    abnormal ones; drawn in proportion, a network learns which stethoscope it hears and
    calls it a class. With every cell equally likely, the only cue that pays off in every
    database is the heart.
    """
    cells = np.char.add(databases.astype(str), labels.astype(str))
    _, inverse, counts = np.unique(cells, return_inverse=True, return_counts=True)
    w = 1.0 / counts[inverse]
    return w / w.sum()


def _crops(data: PcgSet, index: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A random WINDOW-sample crop of each recording in ``index`` (zero-padded if shorter)."""
    out = np.zeros((len(index), WINDOW), dtype=np.float32)
    for row, i in enumerate(index):
        start, n = data.offsets[i], data.offsets[i + 1] - data.offsets[i]
        offset = int(rng.integers(0, n - WINDOW + 1)) if n > WINDOW else 0
        take = min(n, WINDOW)
        out[row, :take] = data.pcm[start + offset : start + offset + take] / 32768.0
    return out


def _augment(x: np.ndarray, settings: PcgSettings, rng: np.random.Generator) -> np.ndarray:
    n = len(x)
    gain = 10.0 ** (rng.uniform(-settings.gain_db, settings.gain_db, (n, 1)) / 20.0)
    x = x * gain
    rms = np.sqrt(np.mean(x * x, axis=1, keepdims=True)) + 1e-8
    snr = settings.noise_snr_db + 30.0 * rng.random((n, 1))
    noisy = rng.random((n, 1)) < settings.noise_share
    x = x + noisy * rms * 10.0 ** (-snr / 20.0) * rng.standard_normal(x.shape)
    if settings.band_share > 0:
        x = _band_limit(x, settings.band_share, rng)
    return x.astype(np.float32)


def _band_limit(x: np.ndarray, share: float, rng: np.random.Generator) -> np.ndarray:
    """Random low-/high-pass filtering of ``share`` of the rows (another stethoscope's band)."""
    from scipy import signal

    x = x.copy()
    for row in np.flatnonzero(rng.random(len(x)) < share):
        kind = rng.integers(0, 3)  # 0 low-pass, 1 high-pass, 2 both
        if kind in (0, 2):
            sos = signal.butter(4, rng.uniform(120.0, 400.0), btype="lowpass", fs=FS, output="sos")
            x[row] = signal.sosfilt(sos, x[row])
        if kind in (1, 2):
            sos = signal.butter(2, rng.uniform(25.0, 100.0), btype="highpass", fs=FS, output="sos")
            x[row] = signal.sosfilt(sos, x[row])
    return x


def predict_windows(model: nn.Module, windows: np.ndarray, batch_size: int = 256) -> np.ndarray:
    """P(abnormal) of each window, in eval mode."""
    model.eval()
    out = []
    with torch.inference_mode():
        for i in range(0, len(windows), batch_size):
            logits = model(torch.from_numpy(windows[i : i + batch_size]))
            out.append(torch.softmax(logits, dim=1)[:, 1].numpy())
    return np.concatenate(out) if out else np.zeros(0, dtype=np.float32)


def recording_windows(audio: np.ndarray, limit: int | None = None) -> np.ndarray:
    """The recording's windows as the daemon cuts them; with ``limit``, at most that many,
    evenly spaced (the quick checkpoint scores of the epoch rule)."""
    w = windows(audio)
    if limit is not None and len(w) > limit:
        w = w[np.linspace(0, len(w) - 1, limit).round().astype(int)]
    return w


def score_windows(model: nn.Module, data: PcgSet, index: np.ndarray, limit: int | None = None
                  ) -> list[np.ndarray]:
    """P(abnormal) of the windows of each recording in ``index`` (an empty array if it is
    shorter than one window)."""
    parts = [recording_windows(data.audio(i), limit) for i in index]
    flat = predict_windows(model, np.concatenate(parts)) if parts else np.zeros(0, np.float32)
    bounds = np.cumsum([0] + [len(p) for p in parts])
    return [flat[bounds[k] : bounds[k + 1]] for k in range(len(parts))]


def decision_report(labels: np.ndarray, window_p: list[np.ndarray], window_q: list[np.ndarray] | None,
                    rule: Rule) -> dict:
    """Recording-level figures of ``rule`` (``scores.verdict_report``): Se, Sp, MAcc on the
    recordings given a verdict, coverage, and the AUC of every recording's mean P(abnormal)."""
    verdicts = [decide(p, None if window_q is None else window_q[k], rule) for k, p in enumerate(window_p)]
    means = np.array([float(np.mean(p)) if len(p) else np.nan for p in window_p])
    return verdict_report(labels, [v.label for v in verdicts], [v.reason for v in verdicts], means, rule.threshold)


def held_out_reports(model: nn.Module, data: PcgSet, rule: Rule, zrule: DeviceRule, min_quality: float
                     ) -> tuple[dict, dict, dict]:
    """``data`` (one database the model never saw) scored as a user meets a new device: its
    calibration fitted on its own recordings' scores (labels not read), the device rule on it;
    and the raw ``rule`` for comparison. Returns (calibrated report, raw report, calibration)."""
    index = np.arange(len(data))
    window_p = score_windows(model, data, index)
    window_q = [window_qualities(data.audio(i), FS, WINDOW, HOP, ENVELOPE_FS) for i in index]
    cal = fit_calibration([recording_score(p, q, min_quality) for p, q in zip(window_p, window_q)],
                          "fold", device=str(data.databases[0]), min_quality=min_quality, min_recordings=2)
    calibrated = decision_report(data.labels, window_p, window_q, zrule.rule(cal, min_quality))
    raw = decision_report(data.labels, window_p, window_q, rule)
    return calibrated, raw, {"median": cal.median, "iqr": cal.iqr, "recordings": cal.recordings}


def evaluate_set(model: nn.Module, data: PcgSet, rule: Rule | None = None) -> dict:
    """Recording-level report of ``model`` on ``data`` with ``rule`` (every window of every
    recording, quality judged as the daemon judges it)."""
    rule = rule or Rule()
    index = np.arange(len(data))
    window_p = score_windows(model, data, index)
    window_q = [window_qualities(data.audio(i), FS, WINDOW, HOP, ENVELOPE_FS) for i in index]
    return decision_report(data.labels, window_p, window_q, rule)


Checkpoint = Callable[[int, nn.Module], None]


class _GradReverse(torch.autograd.Function):
    """Identity forward; the gradient times ``-weight`` backward (Ganin & Lempitsky 2015)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: float) -> torch.Tensor:  # type: ignore[override]
        ctx.weight = weight
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):  # type: ignore[override]
        return -ctx.weight * grad, None


def _adversary(model: nn.Module, n_databases: int) -> nn.Module:
    """A small database classifier on the model's pooled features (training only, never exported)."""
    width = model.head[-1].in_features
    return nn.Sequential(nn.Linear(width, 32), nn.ReLU(), nn.Linear(32, n_databases))


def train_pcg(model: nn.Module, train: PcgSet, settings: PcgSettings, desc: str = "training",
              epochs: int | None = None, checkpoint: Checkpoint | None = None) -> list[dict]:
    """Train ``model`` in place for ``epochs`` (default ``settings.epochs``) epochs of
    ``settings.epoch_size`` crops, calling ``checkpoint(epoch, model)`` after every
    ``settings.checkpoint_every``-th; the loss of each epoch."""
    epochs = settings.epochs if epochs is None else epochs
    set_seed(settings.seed)
    rng = np.random.default_rng(settings.seed)
    loss_fn = nn.CrossEntropyLoss()
    draw = sampling_weights(train.databases, train.labels)
    db_names = sorted(set(train.databases.tolist()))
    adversary = _adversary(model, len(db_names)) if settings.adversary > 0 and len(db_names) > 1 else None
    params = list(model.parameters()) + ([] if adversary is None else list(adversary.parameters()))
    optimiser = torch.optim.AdamW(params, lr=settings.lr, weight_decay=settings.weight_decay)
    labels = torch.from_numpy(train.labels)
    db_index = torch.from_numpy(np.searchsorted(db_names, train.databases))
    n = settings.epoch_size
    batches = (n + settings.batch_size - 1) // settings.batch_size
    history: list[dict] = []
    with progress_bar(settings.progress) as bar:
        task_epochs = bar.add_task(desc, total=epochs)
        for epoch in range(1, epochs + 1):
            model.train()
            order = rng.choice(len(train), size=n, p=draw)
            task = bar.add_task(f"epoch {epoch}", total=batches)
            total = 0.0
            for b in range(batches):
                idx = order[b * settings.batch_size : (b + 1) * settings.batch_size]
                x = torch.from_numpy(_augment(_crops(train, idx, rng), settings, rng))
                optimiser.zero_grad()
                if adversary is None:
                    loss = loss_fn(model(x), labels[idx])
                else:
                    # The features must serve the class and hide the database: the adversary
                    # learns to name the database, the reversed gradient unlearns it in them.
                    features = model.embed(x)
                    loss = loss_fn(model.head(features), labels[idx]) + loss_fn(
                        adversary(_GradReverse.apply(features, settings.adversary)), db_index[idx])
                loss.backward()
                optimiser.step()
                total += loss.item() * len(idx)
                bar.advance(task)
            bar.remove_task(task)
            entry = {"epoch": epoch, "loss": round(total / n, 5)}
            history.append(entry)
            log.info("%s: %s", desc, entry)  # a line per epoch where no progress bar shows (logs, pipes)
            if checkpoint is not None and epoch in checkpoint_epochs(settings):
                checkpoint(epoch, model)
                model.train()
            bar.advance(task_epochs)
    model.eval()
    return history


def checkpoint_epochs(settings: PcgSettings) -> list[int]:
    """The epoch counts the epoch rule chooses among."""
    every = max(1, settings.checkpoint_every)
    return sorted({*range(every, settings.epochs + 1, every), settings.epochs})


@dataclass
class Curve:
    """A model trained on some databases and scored on one it never saw, at every checkpoint:
    ``window_p[epoch]`` the P(abnormal) of (at most ``settings.curve_windows``) windows of each
    recording of ``index`` (at most ``settings.curve_recordings``, drawn per class)."""

    held_out: str
    labels: np.ndarray
    index: np.ndarray
    window_p: dict[int, list[np.ndarray]] = field(default_factory=dict)
    states: dict[int, dict] = field(default_factory=dict)
    history: list[dict] = field(default_factory=list)

    def auc(self, epoch: int) -> float | None:
        means = np.array([float(np.mean(p)) for p in self.window_p[epoch]])
        return auc(self.labels, means)


def _curve_subset(held: PcgSet, settings: PcgSettings) -> np.ndarray:
    """At most ``curve_recordings`` recordings of ``held`` long enough for a window, the same
    share of each class, drawn with a fixed seed (the checkpoints' quick scores)."""
    rng = np.random.default_rng(settings.seed)
    usable = np.flatnonzero(held.lengths() >= WINDOW)
    if len(usable) <= settings.curve_recordings:
        return usable
    share = settings.curve_recordings / len(usable)
    keep = [rng.choice(cls, size=max(1, int(round(share * len(cls)))), replace=False)
            for cls in (usable[held.labels[usable] == k] for k in (0, 1)) if len(cls)]
    return np.sort(np.concatenate(keep))


def train_curve(data: PcgSet, train_dbs: list[str], held_out: str, settings: PcgSettings, desc: str) -> Curve:
    """Train a fresh model on ``train_dbs`` for ``settings.epochs`` epochs, scoring ``held_out``
    (never used for anything else here) at every checkpoint and keeping the weights there."""
    train, held = data.of_databases(train_dbs), data.of_databases([held_out])
    assert_disjoint(train, held)
    index = _curve_subset(held, settings)
    curve = Curve(held_out, held.labels[index], index)

    def checkpoint(epoch: int, model: nn.Module) -> None:
        curve.window_p[epoch] = score_windows(model, held, index, settings.curve_windows)
        curve.states[epoch] = {k: v.detach().clone() for k, v in model.state_dict().items()}
        log.info("%s: epoch %d, %s AUC %s", desc, epoch, held_out, curve.auc(epoch))

    set_seed(settings.seed)
    curve.history = train_pcg(PcgMelCNN(**settings.network), train, settings, desc=desc, checkpoint=checkpoint)
    return curve


Z_GRID = np.round(np.arange(-2.0, 2.001, 0.02), 2)
Z_MARGINS = np.round(np.arange(0.0, 1.001, 0.02), 2)


def standardised(window_p: list[np.ndarray]) -> list[np.ndarray]:
    """Window scores of one database divided into its own recording scores' location and
    scale, (p - median) / IQR, as a calibration from its unlabelled recordings does."""
    means = np.array([float(np.mean(p)) for p in window_p if len(p)])
    q25, median, q75 = np.percentile(means, [25, 50, 75])
    iqr = max(float(q75 - q25), 1e-6)
    return [(np.asarray(p, np.float64) - median) / iqr for p in window_p]


def choose_device_rule(curves: list[Curve], epochs: int, settings: PcgSettings) -> tuple[DeviceRule, dict]:
    """The device rule from the same held-out-inside-training scores as the raw rule, each
    database standardised by its own scores: z-threshold with the highest mean MAcc (of equals
    the nearest 0), z-margin the widest keeping ``settings.coverage`` of every database."""
    zs = [(c.labels, standardised(c.window_p[epochs])) for c in curves]

    def report(rule: Rule) -> list[dict]:
        return [decision_report(labels, zp, None, rule) for labels, zp in zs]

    scores = [float(np.mean([r["macc"] or 0.0 for r in report(Rule(t))])) for t in Z_GRID]
    top = [t for t, v in zip(Z_GRID, scores) if v >= max(scores) - 1e-9]
    z_threshold = float(min(top, key=lambda t: (abs(t), t)))
    z_margin = 0.0
    for m in Z_MARGINS:
        if min(r["coverage"] for r in report(Rule(z_threshold, float(m), settings.min_agreement))) < settings.coverage:
            break
        z_margin = float(m)
    zrule = DeviceRule(z_threshold, z_margin, settings.min_agreement)
    chosen = {c.held_out: {k: v for k, v in r.items() if k in ("se", "sp", "macc", "coverage", "recordings")}
              for c, r in zip(curves, report(Rule(z_threshold, z_margin, settings.min_agreement)))}
    return zrule, {"mean_macc_at_z_threshold": round(max(scores), 4), "held_out": chosen}


def choose_rule(curves: list[Curve], settings: PcgSettings, min_quality: float
                ) -> tuple[int, Rule, DeviceRule, dict]:
    """The epoch count, threshold and margin from models scored on databases they never saw
    (each database counts once, whatever its size):

    - epochs: the checkpoint with the highest mean ROC AUC (the earliest of equals);
    - threshold: the one with the highest mean MAcc there (every recording called);
    - margin: the widest that still gives a verdict on ``settings.coverage`` of the
      recordings of every one of those databases, with the fixed ``min_agreement``.
    """
    epochs_all = checkpoint_epochs(settings)
    if not curves:  # one training database: nothing to hold out inside it
        return settings.epochs, Rule(THRESHOLD, 0.0, settings.min_agreement, min_quality), DeviceRule(
            0.0, 0.0, settings.min_agreement), {
            "rule": "one training database: nothing to choose on, every setting at its default"}
    mean_auc = {e: float(np.mean([c.auc(e) or 0.5 for c in curves])) for e in epochs_all}
    best = max(mean_auc.values())
    epochs = min(e for e in epochs_all if mean_auc[e] >= best - 1e-9)

    def macc(threshold: float) -> float:
        values = []
        for c in curves:
            r = decision_report(c.labels, c.window_p[epochs], None, Rule(threshold))
            values.append(r["macc"] if r["macc"] is not None else 0.0)
        return float(np.mean(values))

    grid = np.round(np.arange(0.05, 0.951, 0.01), 2)
    scores = [macc(t) for t in grid]
    # Of equally good thresholds, the one nearest 0.5 (a plateau's edge is an accident of the sample).
    top = [t for t, v in zip(grid, scores) if v >= max(scores) - 1e-9]
    threshold = float(min(top, key=lambda t: (abs(t - 0.5), t)))
    margin = 0.0
    for m in np.round(np.arange(0.0, 0.301, 0.005), 3):
        rule = Rule(threshold, float(m), settings.min_agreement)
        cover = min(decision_report(c.labels, c.window_p[epochs], None, rule)["coverage"] for c in curves)
        if cover < settings.coverage:
            break
        margin = float(m)
    rule = Rule(threshold, margin, settings.min_agreement, min_quality)
    chosen_on = {
        c.held_out: {
            "auc_by_epoch": {str(e): c.auc(e) for e in epochs_all},
            **{k: v for k, v in decision_report(c.labels, c.window_p[epochs], None, rule).items()
               if k in ("se", "sp", "macc", "auc", "coverage", "recordings")},
        }
        for c in curves
    }
    zrule, zchosen = choose_device_rule(curves, epochs, settings)
    return epochs, rule, zrule, {"mean_auc_by_epoch": {str(e): round(v, 4) for e, v in mean_auc.items()},
                                 "mean_macc_at_threshold": round(max(scores), 4), "held_out": chosen_on,
                                 "device_rule": zchosen}


def nested_rule(data: PcgSet, train_dbs: list[str], settings: PcgSettings, min_quality: float,
                desc: str) -> tuple[int, Rule, DeviceRule, dict]:
    """The rule for a model trained on ``train_dbs``, chosen by leaving each of them out in turn
    (never looking at any other database)."""
    curves = [train_curve(data, [d for d in train_dbs if d != t], t, settings, f"{desc}, inner: {t} held out")
              for t in train_dbs] if len(train_dbs) > 1 else []
    return choose_rule(curves, settings, min_quality)


def run_fold(data: PcgSet, held_out: str, settings: PcgSettings, min_quality: float) -> tuple[FoldResult, Curve]:
    """Choose the rule on the training databases (inner folds), train on all of them, score
    ``held_out`` with that rule; the curve of held_out at every checkpoint is kept for the
    shipped model's rule."""
    train_dbs = sorted(set(data.databases.tolist()) - {held_out})
    epochs, rule, zrule, chosen = nested_rule(data, train_dbs, settings, min_quality, f"fold {held_out}")
    curve = train_curve(data, train_dbs, held_out, settings, f"fold: {held_out} held out")
    model = PcgMelCNN(**settings.network)
    model.load_state_dict(curve.states[epochs])
    report, raw, calibration = held_out_reports(model.eval(), data.of_databases([held_out]), rule, zrule, min_quality)
    figures = ("se", "sp", "macc", "auc", "coverage")
    log.info("fold %s: epochs %d, %s, %s, calibration %s: %s (uncalibrated %s)", held_out, epochs, zrule, rule,
             calibration, {k: report[k] for k in figures}, {k: raw[k] for k in figures})
    result = FoldResult(held_out, train_dbs, report, curve.history[:epochs])
    result.rule = {"epochs": epochs, **{k: v for k, v in asdict(rule).items() if k != "uncalibrated"},
                   "z_threshold": zrule.z_threshold, "z_margin": zrule.z_margin,
                   "calibration": calibration, "uncalibrated": {k: raw[k] for k in figures}, "chosen_on": chosen}
    return result, curve


def fold_summary(folds: list[FoldResult]) -> dict:
    """Per-fold figures and their unweighted means (each database counts once)."""
    per = {
        f.held_out: {"train_databases": f.train_databases, **f.report, "rule": f.rule, "history": f.history}
        for f in folds
    }
    figures = ("se", "sp", "macc", "auc", "coverage")
    mean = {k: round(float(np.mean([f.report[k] for f in folds if f.report[k] is not None])), 4)
            for k in figures if any(f.report[k] is not None for f in folds)}
    raw = [f.rule["uncalibrated"] for f in folds if "uncalibrated" in f.rule]
    uncalibrated = {k: round(float(np.mean([r[k] for r in raw if r[k] is not None])), 4)
                    for k in figures if any(r[k] is not None for r in raw)}
    return {"folds": per, "mean": mean, "mean_uncalibrated": uncalibrated}


RULE_TEXT = (
    "epochs, threshold and margin chosen by leave-one-training-database-out inside the training "
    "databases (nested): a model trained on all but one of them is scored on that one at every "
    "checkpoint; epochs = the checkpoint with the highest mean ROC AUC over those databases, "
    "threshold = the highest mean MAcc there, margin = the widest keeping a verdict on {coverage:.0%} "
    "of every one of them (windows must agree {agreement:.0%}); the held-out database is never looked at. "
    "The shipped model's rule is chosen the same way on the outer folds' curves (each database "
    "scored by a model that never saw it). The device rule (z_threshold, z_margin) is chosen the same way "
    "on those scores standardised per database by the database's own median and IQR."
)


def train_and_export(data: PcgSet, out: Path, command: str, settings: PcgSettings,
                     min_quality: float | None = None) -> dict:
    """Leave-one-database-out folds (each with its nested rule), then the model on every
    database with the rule chosen on the folds, exported with its card."""
    min_quality = DEFAULT_MIN_QUALITY if min_quality is None else min_quality
    folds, curves = [], []
    for _, held in leave_one_database_out(data.databases.tolist()):
        fold, curve = run_fold(data, held, settings, min_quality)
        folds.append(fold)
        curves.append(curve)
    summary = fold_summary(folds)
    epochs, rule, zrule, chosen = choose_rule(curves, settings, min_quality)
    set_seed(settings.seed)
    model = PcgMelCNN(**settings.network)
    history = train_pcg(model, data, settings, desc="final model: every database", epochs=epochs)
    card = pcg_card_template(model, NAME, AGGREGATION, rule.threshold)
    card["decision"].update({
        "margin": rule.margin,
        "min_agreement": rule.min_agreement,
        "z_threshold": zrule.z_threshold,
        "z_margin": zrule.z_margin,
        "calibration": (
            "the verdict uses z = (mean P(abnormal) of the good windows - median) / IQR, median and IQR of "
            "the device's own unlabelled recordings (ecgmon calibrate pcg): abnormal when z >= z_threshold, "
            "uncertain within z_margin of it; without a calibration for the device every verdict is uncertain "
            "('device not calibrated'): threshold and margin are the raw rule, measured not to carry over"
        ),
        "uncertain": (
            "uncertain when no window has quality >= [audio] min_quality, when the mean is within margin of "
            "the threshold, or when fewer than min_agreement of the good windows are on the mean's side"
        ),
        "rule": RULE_TEXT.format(coverage=settings.coverage, agreement=settings.min_agreement),
        "chosen_on": chosen,
    })
    card["training"] = {
        "command": command,
        "databases": sorted(set(data.databases.tolist())),
        "recordings": data.counts(),
        "seed": settings.seed,
        "epochs": epochs,
        "epochs_rule": RULE_TEXT.format(coverage=settings.coverage, agreement=settings.min_agreement),
        "settings": {k: v for k, v in asdict(settings).items() if k != "progress"},
        "history": history,
    }
    card["metrics"] = {
        "evaluation": (
            "leave-one-database-out: each fold chooses its epochs, threshold, margin and device rule on its "
            "training databases only (nested), trains a fresh model on them, and is scored on every window of every "
            f"held-out recording with quality judged as the daemon does ([audio] min_quality {min_quality:g}); "
            "Se, Sp and MAcc are on the recordings given a verdict, coverage is their share, AUC is over every "
            "recording's mean P(abnormal). The held-out database is calibrated as a new device is: median and IQR "
            "of its own recordings' scores, no label read, and judged by the device rule (z_threshold, z_margin); "
            "'uncalibrated' in each fold's rule is the raw threshold's figures. The shipped model is trained on "
            "all of them and has no held-out figure"
        ),
        "level": "recording",
        **summary,
    }
    return export_torchscript(model, out, card)
