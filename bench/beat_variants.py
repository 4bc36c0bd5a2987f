"""Beat-model variants against the shipped one, leave-records-out (issue 13's V target): the
shipped fold models and variants trained by the shipped recipe on the same 5 folds of the same
100 records (DS1 + SVDB, `ecgmon/models/weights/beat-cnn-bilstm.json`'s command), each record's
beats classified by the model of the fold that held it out, at the reference R peaks.

Variants (the shipped file is the mean of `one` and `mlp`):
  one    the CNN-BiLSTM on the first lead's window and the 22 inputs (``--seeds`` for several)
  two    the same network reading both leads' windows (2 input channels; the 30 % of training
         records shown without their second lead get a zero second window, as the model sees
         a one-lead source)
  mlp    the feature MLP

Printed, as the README's table of attempts: pooled S and V Se / +P (plain, F called V counted
against V) per variant and for the means of ``--blend`` members, per database, and the P(V)
threshold curve (EC57: F called V not a V false positive), on which variants compare at equal +P;
then, per variant, the records with the most missed V beats and V false positives.

    ECGMON_DATA=../shared/data OMP_NUM_THREADS=2 nice -n 10 python bench/beat_variants.py \
        --cache beats2.npz --seeds 1 2 3 --blend one1+mlp one1+two+mlp one1+one2+one3+mlp+mlp+mlp

(A member named twice in a blend weighs twice: the last blend is the three seeds' mean averaged
with the MLP, as the shipped file averages its two members.) About 90 s to cut the beats (then cached), 40 s per CNN fold and 13 s per MLP fold on two cores.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import replace
from pathlib import Path
import sys
from typing import Callable

import numpy as np
from rich.console import Console
from rich.progress import Progress
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from ecgmon.config import DataConfig  # noqa: E402
from ecgmon.models import datasets  # noqa: E402
from ecgmon.models.aami import CLASSES  # noqa: E402
from ecgmon.models.augment import BeatAugment, centre_crop  # noqa: E402
from ecgmon.models.networks import BeatCNNBiLSTM, BeatFeatureMLP, _conv1d_block, _standardise  # noqa: E402
from ecgmon.models.trainer import MLP_SETTINGS  # noqa: E402
from ecgmon.models.training import TrainSettings, fit, predict, set_seed  # noqa: E402
from ecgmon.monitor.dsp.beat_features import AFTER, BEAT_FEATURES, BEFORE, LEAD2_FEATURES  # noqa: E402

WEIGHTS = Path(__file__).resolve().parent.parent / "ecgmon" / "models" / "weights"
CARD = json.loads((WEIGHTS / "beat-cnn-bilstm.json").read_text())["training"]
ARGS = CARD["command"].split()
RR = tuple(ARGS[ARGS.index("--rr-features") + 1 : ARGS.index("--jitter")])
MARGIN = CARD["augmentation"]["r_jitter_samples"]
NOISE = CARD["augmentation"]["noise_std_fraction"]
DROPOUT = CARD["augmentation"]["records_without_second_lead"]
S, V, F = (CLASSES.index(c) for c in "SVF")


def beats(cache: Path | None) -> dict[str, np.ndarray]:
    """Both leads' windows (``MARGIN`` wider per side), inputs, labels and records of every beat."""
    if cache and cache.exists():
        return dict(np.load(cache))
    parts = []
    for rid, rec in datasets._each_record(CARD["records"], DataConfig(), tuple(CARD["channel"]), None, "beats", True):
        rows = datasets._record_beats(rid, rec, MARGIN)
        w2 = np.full_like(rows.windows, np.nan)
        if rec.signal2 is not None:
            w2, fits = datasets.beat_windows(rec.signal2, rows.samples, BEFORE + MARGIN, AFTER + MARGIN)
            assert fits.all(), rid  # the first lead's windows fit, and both leads are as long
        parts.append({"w1": rows.windows, "w2": w2.astype(np.float32), "rr": rows.rr, "y": rows.labels, "r": rows.records})
    out = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
    if cache:
        np.savez(cache, **out)
    return out


class TwoLeadCNNBiLSTM(BeatCNNBiLSTM):
    """``forward(windows [B, 2 * L], rr)``: the two leads' windows side by side, each
    standardised on its own, as two input channels of the first convolution."""

    def __init__(self, **kw) -> None:
        super().__init__(**kw)
        self.conv[0] = _conv1d_block(2, self.conv[0][0].out_channels, 7, 2)

    def forward(self, window: torch.Tensor, rr: torch.Tensor) -> torch.Tensor:
        x = self.conv(_standardise(window.reshape(window.shape[0], 2, -1)))
        seq, _ = self.lstm(x.transpose(1, 2))
        pooled = torch.cat([seq.mean(dim=1), seq.amax(dim=1)], dim=1)
        return self.head(torch.cat([pooled, self.rr(rr)], dim=1))


def held_out(variant: str, seed: int, data: dict[str, np.ndarray], advance: Callable[[], None],
             epochs: int | None = None) -> np.ndarray:
    """Every beat's class probabilities by the ``variant`` model of the fold that held its record out."""
    rr_all = np.ascontiguousarray(data["rr"][:, [BEAT_FEATURES.index(n) for n in RR]])
    lead2 = [i for i, n in enumerate(RR) if n in LEAD2_FEATURES]
    settings = TrainSettings(
        epochs=epochs or int(ARGS[ARGS.index("--epochs") + 1]), batch_size=int(ARGS[ARGS.index("--batch-size") + 1]),
        lr=float(ARGS[ARGS.index("--lr") + 1]), seed=seed, patience=None, weight_power=CARD["class_weight_power"],
        majority_fraction=CARD["majority_fraction"], min_class_count=CARD["min_class_count"], progress=False,
    )
    p = np.zeros((len(data["y"]), len(CLASSES)), np.float32)
    for k, (train, test) in enumerate(datasets.record_folds(CARD["records"], 5, CARD["seed"]), start=1):
        tr, te = np.isin(data["r"], train), np.isin(data["r"], test)
        w1_te = centre_crop(data["w1"][te], MARGIN)
        if variant == "shipped":
            p[te] = predict(torch.jit.load(WEIGHTS / "beat-cnn-bilstm.folds" / f"fold{k}.pt"), (w1_te, rr_all[te]))
            advance()
            continue
        rr = rr_all[tr].copy()
        # The trainer's lead-2 dropout: the same whole records shown without their second lead.
        records = np.unique(data["r"][tr])
        dropped = np.isin(data["r"][tr], records[np.random.default_rng(CARD["seed"]).random(records.size) < DROPOUT])
        rr[np.ix_(dropped, lead2)] = np.nan
        set_seed(seed)
        if variant == "two":
            w2 = np.nan_to_num(data["w2"][tr])
            w2[dropped] = 0.0
            model, x, x_te = TwoLeadCNNBiLSTM(rr_features=len(RR), n_classes=len(CLASSES)), np.hstack(
                [data["w1"][tr], w2]), np.hstack([w1_te, np.nan_to_num(centre_crop(data["w2"][te], MARGIN))])
        else:
            network = BeatFeatureMLP if variant == "mlp" else BeatCNNBiLSTM
            model, x, x_te = network(rr_features=len(RR), n_classes=len(CLASSES)), data["w1"][tr], w1_te
        model.rr.set_stats(np.nanmean(rr, axis=0), np.nanstd(rr, axis=0))
        fit(model, (x, rr), data["y"][tr], None, None, len(CLASSES),
            replace(settings, **MLP_SETTINGS) if variant == "mlp" else settings,
            BeatAugment(MARGIN, NOISE, leads=2 if variant == "two" else 1))
        p[te] = predict(model, (x_te, rr_all[te]))
        advance()
    return p


def se_ppv(pred: np.ndarray, y: np.ndarray, c: int, sep: str = " / ") -> str:
    tp, fp, fn = ((pred == c) & (y == c)).sum(), ((pred == c) & (y != c)).sum(), ((pred != c) & (y == c)).sum()
    return f"{tp / (tp + fn):.2f}{sep}{tp / (tp + fp):.2f}"


def report(name: str, p: np.ndarray, y: np.ndarray, mitdb: np.ndarray) -> str:
    pred = p.argmax(axis=1)
    curve = []
    for t in (0.3, 0.4, 0.5, 0.6, 0.7):
        called, is_v = p[:, V] >= t, y == V
        tp, fp = (called & is_v).sum(), (called & ~is_v & (y != F)).sum()
        curve.append(f"{100 * tp / is_v.sum():.1f}/{100 * tp / (tp + fp):.1f}")
    per_db = [f"{se_ppv(pred[m], y[m], S, '/')}, {se_ppv(pred[m], y[m], V, '/')}" for m in (mitdb, ~mitdb)]
    return f"| {name} | {se_ppv(pred, y, S)} | {se_ppv(pred, y, V)} | {per_db[0]} | {per_db[1]} | {' '.join(curve)} |"


def worst(name: str, p: np.ndarray, y: np.ndarray, records: np.ndarray) -> str:
    """The records with the most missed V beats and with the most V false positives."""
    pred = p.argmax(axis=1)
    rows = [(r, int(((pred != V) & (y == V) & (records == r)).sum()), int(((pred == V) & (y != V) & (records == r)).sum()))
            for r in np.unique(records)]
    missed = ", ".join(f"{r} {fn}" for r, fn, _ in sorted(rows, key=lambda t: -t[1])[:5])
    false = ", ".join(f"{r} {fp}" for r, _, fp in sorted(rows, key=lambda t: -t[2])[:5])
    return f"  {name}: most V missed: {missed}; most V false positives: {false}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cache", type=Path, help="npz of the cut beats (made if missing)")
    ap.add_argument("--variants", nargs="+", default=["shipped", "one", "two", "mlp"])
    ap.add_argument("--seeds", type=int, nargs="+", default=[1], help="seeds of the `one` variant")
    ap.add_argument("--blend", nargs="*", default=[], help="means of variants, e.g. one1+two+mlp")
    ap.add_argument("--epochs", type=int, help="epochs of the CNN-BiLSTM variants (default: the shipped recipe's; the MLP keeps its 6)")
    args = ap.parse_args()
    torch.set_num_threads(2)
    data = beats(args.cache)
    y, mitdb = data["y"], np.char.find(data["r"].astype(str), "svdb") < 0
    print(f"{len(y)} beats of {len(np.unique(data['r']))} records, each by the fold model that never saw it")
    print("| variant | S Se / +P | V Se / +P | mitdb S, V | svdb S, V | V Se/+P at P(V) >= 0.3 0.4 0.5 0.6 0.7 (EC57) |")
    print("|---|---|---|---|---|---|")
    probs: dict[str, np.ndarray] = {}
    runs = [(v, seed) for v in args.variants for seed in (args.seeds if v == "one" else [CARD["seed"]])]
    with Progress(console=Console(stderr=True), transient=True) as progress:
        task = progress.add_task("folds", total=5 * len(runs))
        for variant, seed in runs:
            name = f"one{seed}" if variant == "one" else variant
            progress.update(task, description=name)
            probs[name] = held_out(variant, seed, data, lambda: progress.advance(task), args.epochs)
            print(report(name, probs[name], y, mitdb), flush=True)
    for blend in args.blend:
        probs[blend] = np.mean([probs[m] for m in blend.split("+")], axis=0)
        print(report(blend, probs[blend], y, mitdb))
    for name, p in probs.items():
        print(worst(name, p, y, data["r"]))


if __name__ == "__main__":
    main()
