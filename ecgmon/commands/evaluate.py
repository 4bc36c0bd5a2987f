"""``ecgmon evaluate qrs|beats|alarms|model|pcg``: ecgmon scored against reference
annotations, record by record under a progress bar.

One convention for every report: its tables on stdout (as wide as they need when stdout is
not a terminal), ``--json FILE`` also writes its JSON to FILE, ``--json -`` prints the JSON
on stdout instead of the tables. A record that cannot be read is one red line; the others are
still scored, the JSON names it under ``failed_records``, and the exit code is 2.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
import sys
from typing import Callable, Iterable

from rich.console import Console
from rich.text import Text

from ecgmon.commands.common import (
    EXIT_USAGE, CommandError, channel_arg, override, print_error, print_warning, stderr_console, stdout_console,
)
from ecgmon.config import Config
from ecgmon.model_card import ModelError
from ecgmon.monitor.sources.base import SourceError


def _record_arguments(p: argparse.ArgumentParser) -> None:
    """The records an evaluation replays (see ``_evaluation_specs``) and their channel."""
    p.add_argument("records", nargs="*", metavar="RECORD",
                   help="mitdb:100, a path to a .hea, or with --db a bare record name")
    p.add_argument("--db", help="a PhysioNet database: all its records (from its local RECORDS "
                                "file, else PhysioNet's list)")
    p.add_argument("--channel", type=channel_arg, help="channel index or name (default from config)")


def _cross_validated_argument(p: argparse.ArgumentParser) -> None:
    p.add_argument("--cross-validated", action="store_true",
                   help="classify each record with the fold model that never saw it (the fold models "
                        "`ecgmon train --folds` writes beside the beat model): honest figures on the "
                        "records the shipped model trained on")


def _fold_models(model, config: Config, wanted: bool):
    """The beat model's fold models when ``wanted`` (CommandError if it has none), else None."""
    if not wanted:
        return None
    from ecgmon.evaluate.fold_models import load_fold_models

    if model is None:
        raise CommandError("--cross-validated needs a beat model: set [models] beat in the config")
    try:
        return load_fold_models(model, config.models.device)
    except ModelError as err:
        raise CommandError(str(err)) from None


def _json_argument(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", metavar="FILE", help="also write the results as JSON to FILE; "
                                                  "'-' prints them on stdout instead of the tables")


def add_evaluate(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser("evaluate", parents=[common], help="score ecgmon against reference annotations")
    kinds = p.add_subparsers(dest="what", metavar="WHAT", required=True)
    q = kinds.add_parser(
        "qrs", parents=[common], help="EC57 beat detection statistics (Se, +P, delay)",
        description="Replay records through the streaming pipeline at --speed 0 and score the "
                    "detected beats against the reference 'atr' annotations (ANSI/AAMI EC57: "
                    "150 ms match window, ventricular flutter/fibrillation episodes excluded).",
    )
    _record_arguments(q)
    q.add_argument("--chunk-s", type=float, default=10.0,
                   help="chunk length of the replay (results do not depend on it; default 10)")
    _json_argument(q)
    q.set_defaults(func=cmd_evaluate_qrs)
    add_evaluate_beats(kinds, common)
    add_evaluate_model(kinds, common)
    add_evaluate_pcg(kinds, common)
    add_evaluate_alarms(kinds, common)


def _report(result: dict, render: Callable[[dict], Iterable[object]], json_to: str | None) -> Console | None:
    """The report of ``result``: ``render(result)`` on stdout, its JSON written to ``json_to``
    as well, or with ``json_to`` '-' the JSON alone on stdout. The console, for lines that
    follow the tables (None when stdout holds the JSON)."""
    text = json.dumps(result, indent=2)
    if json_to == "-":
        print(text)
        return None
    if json_to:
        try:
            Path(json_to).write_text(text + "\n", encoding="utf-8")
        except OSError as err:
            raise CommandError(f"cannot write {json_to} ({err.strerror or err})") from None
    console = stdout_console()
    for part in render(result):
        console.print(part)
    return console


def _database_records(db: str, config: Config) -> list[str]:
    from ecgmon.replay.records import RecordError, database_record_names

    try:
        return [f"{db}:{name}" for name in database_record_names(db, config.data)]
    except RecordError as err:
        raise CommandError(str(err)) from None


def _each_record(specs: list[str], verb: str, evaluate: Callable[[str], object]) -> tuple[list, list[dict]]:
    """``evaluate(spec)`` for every record under a progress bar: the results, and the records
    that failed with why (each failure one red line, the others still evaluated). CommandError
    if none could be evaluated."""
    from rich.progress import Progress

    results, failed = [], []
    with Progress(console=stderr_console(), transient=True) as progress:
        task = progress.add_task("evaluating", total=len(specs))
        for spec in specs:
            progress.update(task, description=f"{verb} {spec}")
            try:
                results.append(evaluate(spec))
            except (SourceError, ModelError) as err:  # ModelError: no model may classify this record
                failed.append({"record": spec, "error": str(err)})
                progress.console.print(Text(f"error: {err}", style="bold red"), soft_wrap=True)
            progress.advance(task)
    if not results:
        raise CommandError(f"no record could be evaluated ({len(failed)} failed)")
    return results, failed


def _exit_code(failed: list[dict], total: int) -> int:
    """0, or EXIT_USAGE after one line that sums up the records that failed."""
    if not failed:
        return 0
    names = " ".join(f["record"] for f in failed)
    print_error(f"{len(failed)} of {total} records could not be evaluated: {names}")
    return EXIT_USAGE


def cmd_evaluate_qrs(args: argparse.Namespace, config: Config) -> int:
    from ecgmon.evaluate.qrs import evaluate_record, render, summary

    config = override(config, [
        ("--speed", "replay", "speed", 0.0),
        ("--chunk-s", "replay", "chunk_s", args.chunk_s),
        ("--loop", "replay", "loop", False),
        ("--channel", "replay", "channel", args.channel),
    ])
    specs = _evaluation_specs(args, config)
    results, failed = _each_record(specs, "evaluating", lambda spec: evaluate_record(spec, config))
    result = summary(results)
    result["failed_records"] = failed
    _report(result, render, args.json)
    return _exit_code(failed, len(specs))


def _evaluation_specs(args: argparse.Namespace, config: Config) -> list[str]:
    specs = [r if (":" in r or r.endswith(".hea") or not args.db) else f"{args.db}:{r}" for r in args.records]
    if args.db and not args.records:
        specs = _database_records(args.db, config)
    if not specs:
        raise CommandError("name the records to evaluate, or a database with --db (e.g. --db mitdb)")
    return specs


def add_evaluate_beats(kinds: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    b = kinds.add_parser(
        "beats", parents=[common], help="EC57 V and S statistics of the live beat classes",
        description="Replay records through the streaming pipeline with the beat model (detector, "
                    "live windows and RR features, classifier) and score the classified beats against "
                    "the reference: EC57 V and S Se, +P, false-positive rate, and the gross N/S/V/F/Q "
                    "confusion, separately over the records the model never trained on. The paced "
                    "records (102 104 107 217) are left out of --db, as EC57 leaves them out.",
    )
    _record_arguments(b)
    b.add_argument("--model", help="beat model file (default: [models] beat of the config)")
    _cross_validated_argument(b)
    _json_argument(b)
    b.set_defaults(func=cmd_evaluate_beats)


def cmd_evaluate_beats(args: argparse.Namespace, config: Config) -> int:
    from ecgmon.models.aami import PACED
    from ecgmon.evaluate.beats import evaluate_record, render, summary
    from ecgmon.monitor.model_loader import ModelError, load_model
    from ecgmon.monitor.model_set import model_path
    from ecgmon.replay.records import record_id

    config = override(config, [("--channel", "replay", "channel", args.channel)])
    specs = _evaluation_specs(args, config)
    if args.db and not args.records:
        specs = [s for s in specs if record_id(s) not in PACED]
    setting = args.model or config.models.beat
    if not setting:
        raise CommandError("no beat model: give --model FILE or set [models] beat in the config")
    try:
        model = load_model(model_path(setting), config.models.device)
    except ModelError as err:
        raise CommandError(str(err)) from None
    if model.kind != "beat":
        raise CommandError(f"{setting}: a {model.kind} model; evaluate beats needs a beat model")
    folds = _fold_models(model, config, args.cross_validated)

    def classify(spec: str):
        return evaluate_record(spec, config, folds.for_record(spec) if folds else model)

    results, failed = _each_record(specs, "classifying", classify)
    result = summary(results, model, folds)
    result["failed_records"] = failed
    _report(result, render, args.json)
    return _exit_code(failed, len(specs))


def add_evaluate_alarms(kinds: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    a = kinds.add_parser(
        "alarms", parents=[common], help="alarm episode sensitivity, false alarms per hour, delays",
        description="Replay records through the whole pipeline with the configured models and score "
                    "the alarms (without latching) against the reference: V-tach ((VT of >= 5 beats), "
                    "VF/flutter, A-fib episodes, and asystole/extreme brady/tachy from the reference "
                    "beats: per kind episode sensitivity, false alarms per hour, onset-to-alarm delays, "
                    "over all records and over those the beat model never trained on. With --noise, "
                    "nstdb noise is added the nst way (2 min on/off after 5 min).",
    )
    _record_arguments(a)
    a.add_argument("--noise", choices=["em", "ma", "bw"], help="add this nstdb noise record")
    a.add_argument("--snr", type=float, default=6.0, help="SNR of the added noise, dB (default 6)")
    a.add_argument("--out", default="eval/alarms", metavar="DIR",
                   help="where metrics.json and alarms.png go (default eval/alarms)")
    _cross_validated_argument(a)
    _json_argument(a)
    a.set_defaults(func=cmd_evaluate_alarms)


def cmd_evaluate_alarms(args: argparse.Namespace, config: Config) -> int:
    from ecgmon.evaluate.alarms import evaluate_record, summary
    from ecgmon.evaluate.alarm_report import plot, render
    from ecgmon.monitor.model_set import load_models
    from ecgmon.evaluate.noise_stress import NoiseStress

    config = override(config, [("--channel", "replay", "channel", args.channel)])
    specs = _evaluation_specs(args, config)
    models, errors = load_models(config.models)
    for error in errors:
        print_warning(error)
    noise = NoiseStress(args.noise, args.snr) if args.noise else None
    folds = _fold_models(models.get("beat"), config, args.cross_validated)

    def alarms_of(spec: str):
        record_models = {**models, "beat": folds.for_record(spec)} if folds else models
        return evaluate_record(spec, config, record_models, noise=noise)

    results, failed = _each_record(specs, "alarms of", alarms_of)
    result = summary(results, models, noise, folds)
    result["failed_records"] = failed
    result["command"] = {"records": specs, "channel": config.replay.channel, "out": args.out,
                         "noise": args.noise, "snr_db": args.snr if args.noise else None,
                         "cross_validated": args.cross_validated}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "metrics.json").write_text(json.dumps(result, indent=2))
    plot(result, out / "alarms.png")
    console = _report(result, render, args.json)
    if console:
        console.print(f"wrote {out / 'metrics.json'} and {out / 'alarms.png'}")
    return _exit_code(failed, len(specs))


def add_evaluate_model(kinds: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    m = kinds.add_parser(
        "model", parents=[common], help="per-class Se/+P/F1, confusion, ROC/PR plots of a model file",
        description="Load a model file as the daemon does and score it on whole records it never "
                    "trained on (by default its card's validation records): per-class Se, +P, F1, "
                    "confusion matrix; metrics.json and PNG plots in --out.",
    )
    m.add_argument("model", metavar="MODEL", help="a .pt (TorchScript) or .pt2 (torch.export) file, its card beside it")
    m.add_argument("--records", nargs="+", metavar="REC", help="records to score on (default: the card's "
                                                               "validation records)")
    m.add_argument("--allow-train-records", action="store_true",
                   help="accept records the model trained on (its scores there flatter it)")
    m.add_argument("--channel", type=channel_arg, help="channel index or name (default: the one it trained on)")
    m.add_argument("--device", default="auto", help="auto, cpu or cuda")
    m.add_argument("--out", metavar="DIR", help="where to write metrics.json and the plots "
                                                "(default: eval/<model name>)")
    _json_argument(m)
    m.set_defaults(func=cmd_evaluate_model)


def cmd_evaluate_model(args: argparse.Namespace, config: Config) -> int:
    from ecgmon.evaluate.models import EvaluationError, evaluate_model, render

    try:
        result = evaluate_model(args.model, config.data, records=args.records, out=args.out,
                                channel=args.channel, allow_train_records=args.allow_train_records,
                                device=args.device, progress=sys.stderr.isatty())
    except EvaluationError as err:
        raise CommandError(str(err)) from None
    _report(result, render, args.json)
    return 0


def add_evaluate_pcg(kinds: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    e = kinds.add_parser(
        "pcg", parents=[common], help="heart-sound model: Se, Sp, MAcc per database, confusion, ROC",
        description="Score the recordings of DIR (a folder of *.flac/*.wav with a REFERENCE.csv, or a "
                    "folder of such folders) with a heart-sound model file loaded as the daemon loads "
                    "it: recording-level Se, Sp, MAcc per database, confusion matrix; metrics.json, "
                    "roc.png and confusion.png in --out.",
    )
    e.add_argument("dir", metavar="DIR", help="recordings with REFERENCE.csv (1 abnormal, -1 normal)")
    e.add_argument("--model", help="a .pt/.pt2 heart-sound model (default: [models] pcg of the config)")
    e.add_argument("--cycles", metavar="RULE.json",
                   help="score the cycle rule (a rule file, e.g. pcg-cycles.json or a fold's) instead of the model: "
                        "the daemon's verdict with [models] pcg_cycles; the model is not run")
    e.add_argument("--device", default="auto", help="auto, cpu or cuda")
    e.add_argument("--calibration", metavar="CAL.json|none",
                   help="for a card ruling on the calibrated score: one device's calibration for every "
                        "database, or 'none' (the daemon's verdict without one: device not calibrated); "
                        "default: each database folder calibrated on its own recordings, no label read")
    e.add_argument("--out", metavar="DIR", help="where to write metrics.json and the plots "
                                                "(default: eval/<model name>-<DIR name>)")
    _json_argument(e)
    e.set_defaults(func=cmd_evaluate_pcg)


def cmd_evaluate_pcg(args: argparse.Namespace, config: Config) -> int:
    from ecgmon.models.pcg_data import PcgDataError
    from ecgmon.evaluate.pcg import evaluate_cycles, evaluate_pcg, render
    from ecgmon.monitor.model_set import model_path

    if args.cycles:
        try:
            result = evaluate_cycles(args.dir, model_path(args.cycles), args.out, print_warning,
                                     progress=sys.stderr.isatty(), calibration=args.calibration)
        except PcgDataError as err:
            raise CommandError(str(err)) from None
        _report(result, render, args.json)
        return 0
    if not (args.model or config.models.pcg):
        raise CommandError("no heart-sound model: give --model FILE or set [models] pcg in the config")
    model = Path(args.model) if args.model else model_path(config.models.pcg)
    warned: list[str] = []

    def warn(text: str) -> None:
        warned.append(text)
        print_warning(text)

    try:
        result = evaluate_pcg(args.dir, model, args.out, warn, device=args.device, progress=sys.stderr.isatty(),
                              min_quality=config.audio.min_quality, envelope_fs=config.audio.envelope_fs,
                              calibration=args.calibration)
    except PcgDataError as err:
        raise CommandError(str(err)) from None
    _report(result, render, args.json)
    if warned:
        print_warning(f"{len(warned)} warning(s): files skipped or changed are listed above")
    return 0
