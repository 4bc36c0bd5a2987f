"""``ecgmon train beat|beat-spectrogram|segment|pcg``: train a classifier on whole records
(or whole heart-sound databases), measure it on data it never saw, export it with its card."""

from __future__ import annotations

import argparse
import os
from pathlib import Path
import sys

from ecgmon.commands.common import CommandError, channel_arg, log
from ecgmon.config import Config


def add_train(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    from ecgmon.monitor.dsp.beat_features import BEAT_FEATURES, RR_FEATURES

    p = sub.add_parser(
        "train", parents=[common], help="train a classifier on DS1 records and export it",
        description="Train a beat or 10 s segment classifier on whole records (inter-patient), "
                    "measure it on records it never saw (held-out records with early stopping, or "
                    "--folds k-fold by record), export TorchScript with its model card.",
    )
    p.add_argument("model", choices=["beat", "beat-spectrogram", "segment", "pcg"], help="which network")
    add_train_pcg_options(p)
    p.add_argument("--records", nargs="+", metavar="REC",
                   help="training records, MIT-BIH names or DB:RECORD specs (default: the records of --db)")
    p.add_argument("--db", nargs="+", default=["mitdb"], metavar="DB",
                   help="without --records: train on these databases, mitdb's de Chazal DS1 records "
                        "and every record of the others (e.g. --db mitdb svdb); with --folds the "
                        "card reports each database and, for two or more, across databases "
                        "(trained on the others, scored on one)")
    p.add_argument("--val-records", nargs="+", metavar="REC",
                   help="held-out records for early stopping (default: --n-val drawn from --records)")
    p.add_argument("--n-val", type=int, default=4, help="records held out when --val-records is not given")
    p.add_argument("--folds", type=int, default=0, metavar="K",
                   help="k-fold by record over --records for the card's metrics (K models of --epochs "
                        "each), then the shipped model on every record for the same fixed --epochs; "
                        "no held-out records, no early stopping")
    p.add_argument("--epochs", type=int, default=30)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--patience", type=int, default=5,
                   help="held-out records: epochs without improvement before stopping (not with --folds or pcg)")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--channel", type=channel_arg, nargs="+", default=[0], metavar="CHANNEL",
                   help="channel index or name; several are preferences, the first a record has wins "
                        "(--channel MLII 0: MLII where there is one, else the first channel, as for svdb)")
    p.add_argument("--class-weight-power", type=float, default=0.5,
                   help="class weights ∝ count^-power (0.5: 1/sqrt(count); 1: inverse frequency)")
    p.add_argument("--majority-fraction", type=float, default=1.0, metavar="F",
                   help="each epoch trains on a fresh random fraction F of the commonest class (N)")
    p.add_argument("--min-class-count", type=int, default=50, metavar="N",
                   help="classes with fewer training examples are not learnt (weight 0)")
    p.add_argument("--rr-features", nargs="+", choices=BEAT_FEATURES, default=list(RR_FEATURES), metavar="NAME",
                   help=f"beat models: RR and patient-adaptive inputs, in order (of {', '.join(BEAT_FEATURES)})")
    p.add_argument("--jitter", type=int, default=0, metavar="SAMPLES",
                   help="beat models: random R shift of up to this many samples each way in training")
    p.add_argument("--noise", type=float, default=0.0,
                   help="beat models: white noise in training, this fraction of each window's std")
    p.add_argument("--feature-mlp", action="store_true",
                   help="beat: ship the CNN-BiLSTM averaged with an MLP on the RR/adaptive inputs and the "
                        "window's coarse shape (one TorchScript file)")
    p.add_argument("--lead2-dropout", type=float, default=0.0, metavar="SHARE",
                   help="beat models: share of training records shown without their second lead "
                        "(lead2_* inputs), so the model stays right on one-lead sources")
    p.add_argument("--out", required=True, metavar="FILE.pt", help="where to write the model (card beside it)")
    p.set_defaults(func=cmd_train)


def cmd_train(args: argparse.Namespace, config: Config) -> int:
    if args.model == "pcg":
        return cmd_train_pcg(args, config)
    from ecgmon.models.aami import DS1
    from ecgmon.models.datasets import record_id
    from ecgmon.replay.records import database_record_names
    from ecgmon.models.trainer import TrainingJob, split_records, train_model
    from ecgmon.models.training import TrainSettings
    from ecgmon.replay.records import RecordError

    if args.records:
        records = [record_id(r) for r in args.records]
    else:
        records = []
        for db in dict.fromkeys(args.db):
            try:
                names = list(DS1) if db == "mitdb" else database_record_names(db, config.data)
            except RecordError as err:
                raise CommandError(str(err)) from None
            records += [record_id(n if db == "mitdb" else f"{db}:{n}") for n in names]
    if args.folds:
        if args.val_records:
            raise CommandError("--folds holds records out itself: give no --val-records")
        if not 2 <= args.folds <= len(records):
            raise CommandError(f"--folds must be between 2 and {len(records)} for {len(records)} records")
        train, val = records, []
    elif args.val_records:
        val = [record_id(r) for r in args.val_records]
        train = [r for r in records if r not in val]
        if not train:
            raise CommandError("every training record is also a --val-records record: the held-out "
                               "records must be patients the model does not train on")
    else:
        if len(records) <= args.n_val:
            raise CommandError(f"--n-val {args.n_val} leaves no training record out of {len(records)}")
        train, val = split_records(records, args.n_val, args.seed)
    settings = TrainSettings(epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
                             patience=None if args.folds else args.patience, seed=args.seed,
                             progress=sys.stderr.isatty(), weight_power=args.class_weight_power,
                             majority_fraction=args.majority_fraction, min_class_count=args.min_class_count)
    # The card records the command that reproduces this model, with every choice spelled out.
    held = f"--folds {args.folds}" if args.folds else f"--val-records {' '.join(val)} --patience {args.patience}"
    command = (f"ecgmon train {args.model} --records {' '.join(train)} {held} "
               f"--epochs {args.epochs} --batch-size {args.batch_size} --lr {args.lr:g} "
               f"--seed {args.seed} --channel {' '.join(map(str, args.channel))} --class-weight-power {args.class_weight_power:g} "
               f"--majority-fraction {args.majority_fraction:g} --min-class-count {args.min_class_count}")
    if args.model != "segment":
        command += (f" --rr-features {' '.join(args.rr_features)} --jitter {args.jitter} "
                    f"--noise {args.noise:g} --lead2-dropout {args.lead2_dropout:g}")
        if args.feature_mlp:
            command += " --feature-mlp"
    command += f" --out {args.out}"
    channel = args.channel[0] if len(args.channel) == 1 else tuple(args.channel)
    job = TrainingJob(args.model, train, val, Path(args.out), command, settings, channel,
                      folds=args.folds, rr_features=tuple(args.rr_features), jitter=args.jitter,
                      noise=args.noise, feature_mlp=args.feature_mlp, lead2_dropout=args.lead2_dropout)
    try:
        card = train_model(job, config.data)
    except (RecordError, ValueError) as err:
        raise CommandError(str(err)) from None
    _check_daemon_loads(Path(args.out))
    m = card["metrics"]
    per = ", ".join(f"{c} Se {v['se']} +P {v['ppv']}" for c, v in m["per_class"].items() if v["n"])
    where = f"{args.folds}-fold by record, pooled" if args.folds else f"held-out records {' '.join(val)}"
    log.info("wrote %s: %s: macro-F1 %s; %s", args.out, where, m["macro_f1"], per)
    if m.get("per_database"):
        from ecgmon.models.databases import describe

        for db, report in m["per_database"].items():
            log.info("  %s (%d records, in the pooled folds): %s", db, report["records"], describe(report))
        for db, report in m.get("cross_database", {}).items():
            log.info("  %s scored by a model trained on %s only: %s", db, "+".join(report["trained_on"]),
                     describe(report))
    return 0


def _check_daemon_loads(path: Path) -> None:
    """Load a model just written with the daemon's own loader (card against model, dry run):
    a file the daemon would refuse is removed, with its card, and the command fails."""
    from ecgmon.model_card import ModelError, card_path
    from ecgmon.monitor.model_loader import load_model

    try:
        load_model(path, device="cpu")
    except ModelError as err:
        path.unlink(missing_ok=True)
        card_path(path).unlink(missing_ok=True)
        raise CommandError(f"the daemon would refuse the model just trained, not kept: {err}") from None


def add_train_pcg_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", metavar="DIR",
                   help="pcg: folder of database folders (each *.flac/*.wav + REFERENCE.csv; "
                        "default: pcg2016 under $ECGMON_DATA or [data] folder)")
    p.add_argument("--databases", nargs="+", metavar="NAME",
                   help="pcg: database folders under --data to use (default: all); one is held out per fold")
    p.add_argument("--band-share", type=float, default=0.0, metavar="SHARE",
                   help="pcg: share of training crops randomly low-/high-pass filtered (other stethoscopes' band)")
    p.add_argument("--adversary", type=float, default=0.0, metavar="WEIGHT",
                   help="pcg: weight of the reversed gradient of a database classifier on the features (0: none)")


def _pcg_root(args: argparse.Namespace, config: Config):
    if args.data:
        return Path(args.data)
    for base in (os.environ.get("ECGMON_DATA"), config.data.folder):
        if base and (Path(base).expanduser() / "pcg2016").is_dir():
            return Path(base).expanduser() / "pcg2016"
    raise CommandError("no pcg2016 folder under $ECGMON_DATA or [data] folder: give --data DIR")


def cmd_train_pcg(args: argparse.Namespace, config: Config) -> int:
    import torch

    from ecgmon.models.pcg_data import PcgDataError, database_folders, load_pcg
    from ecgmon.models.pcg_training import PcgSettings, train_and_export

    torch.set_num_threads(1)  # the machine is shared; one thread trains this small model well
    root = _pcg_root(args, config)
    try:
        folders = database_folders(root)
        if args.databases:
            unknown = sorted(set(args.databases) - {f.name for f in folders})
            if unknown:
                raise CommandError(f"no database {', '.join(unknown)} in {root} "
                                   f"(found {', '.join(f.name for f in folders)})")
            folders = [f for f in folders if f.name in args.databases]
        data = load_pcg(folders, lambda text: log.warning("%s", text), progress=sys.stderr.isatty())
        settings = PcgSettings(epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
                               seed=args.seed, progress=sys.stderr.isatty(), band_share=args.band_share,
                               adversary=args.adversary)
        command = ("ecgmon train pcg" + (f" --data {args.data}" if args.data else "")
                   + f" --databases {' '.join(f.name for f in folders)} "
                   f"--epochs {args.epochs} --batch-size {args.batch_size} --lr {args.lr:g} "
                   f"--band-share {args.band_share:g} --adversary {args.adversary:g} "
                   f"--seed {args.seed} --out {args.out}")
        card = train_and_export(data, Path(args.out), command, settings, min_quality=config.audio.min_quality)
    except (PcgDataError, ValueError) as err:
        raise CommandError(str(err)) from None
    _check_daemon_loads(Path(args.out))
    m = card["metrics"]
    folds = ", ".join(f"{db} MAcc {f['macc']} (Se {f['se']} Sp {f['sp']}, coverage {f['coverage']})"
                      for db, f in m["folds"].items())
    log.info("wrote %s: leave-one-database-out %s; mean MAcc %s", args.out, folds, m["mean"]["macc"])
    return 0
