"""``ecgmon calibrate pcg PATH... --out CAL.json``: where one stethoscope puts the heart-sound
model's scores, from that device's own recordings with no label read.

Left out, each database of PhysioNet 2016 (each its own stethoscope and site) shifted and
stretched every P(abnormal) so that no fixed threshold carried over; the shipped card's rule
is therefore on the score standardised by the device's median and IQR. Record at least
``MIN_CALIBRATION_RECORDINGS`` patients (a mix of whoever the device will meet, not only the
healthy or only the ill) with the device, run this once, and give the file to the daemon:
``[audio] calibration = "CAL.json"`` or ``ecgmon run --pcg-calibration CAL.json``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ecgmon.commands.common import CommandError, log, print_warning
from ecgmon.config import Config


def add_calibrate(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser("calibrate", parents=[common], help="calibrate a device for a model (heart sounds)",
                       description="Fit a device's calibration from its unlabelled recordings.")
    kinds = p.add_subparsers(dest="kind", metavar="KIND", required=True)
    c = kinds.add_parser(
        "pcg", parents=[common], help="a stethoscope for the heart-sound model",
        description="Score the recordings (files or folders of *.wav/*.flac; any REFERENCE.csv is not read) "
                    "with the heart-sound model as the daemon does, and write the median and IQR of their "
                    "recording scores (mean P(abnormal) of the windows of quality >= [audio] min_quality) "
                    "with the model's SHA-256: the daemon refuses the file for any other model.",
    )
    c.add_argument("paths", nargs="+", metavar="DIR_OR_FILE", help="the device's recordings (at least 20)")
    c.add_argument("--out", required=True, metavar="CAL.json", help="the calibration file to write")
    c.add_argument("--model", help="a .pt/.pt2 heart-sound model (default: [models] pcg of the config)")
    c.add_argument("--name", default="", help="the device's name, kept in the file")
    c.add_argument("--device", default="auto", help="auto, cpu or cuda (where the model runs)")
    c.add_argument("--cycles", metavar="RULE.json",
                   help="also calibrate the cycle rule (per-feature and score median/IQR; default: [models] "
                        "pcg_cycles of the config, if set); 'none': not")
    c.set_defaults(func=cmd_calibrate_pcg)


def cmd_calibrate_pcg(args: argparse.Namespace, config: Config) -> int:
    from ecgmon.evaluate.pcg import calibrate_pcg
    from ecgmon.models.pcg_data import PcgDataError
    from ecgmon.monitor.model_set import model_path

    if not (args.model or config.models.pcg):
        raise CommandError("no heart-sound model: give --model FILE or set [models] pcg in the config")
    model = Path(args.model) if args.model else model_path(config.models.pcg)
    cycles = args.cycles or config.models.pcg_cycles or None
    try:
        cal = calibrate_pcg(args.paths, model, args.out, print_warning, device=args.device,
                            progress=sys.stderr.isatty(), min_quality=config.audio.min_quality,
                            envelope_fs=config.audio.envelope_fs, name=args.name,
                            cycles=None if cycles in (None, "none") else model_path(cycles))
    except PcgDataError as err:
        raise CommandError(str(err)) from None
    log.info("wrote %s: %d recordings, median %.4g, IQR %.4g (model %s); use it with [audio] calibration "
             "or ecgmon run --pcg-calibration", args.out, cal.recordings, cal.median, cal.iqr, cal.model_name)
    print(f"wrote {args.out}: {cal.recordings} recordings, median score {cal.median:.4g}, IQR {cal.iqr:.4g}"
          + ("" if cal.cycles is None else f"; cycle rule {cal.cycles['rule_name']}: {cal.cycles['recordings']} "
             f"recordings with enough cycles, score median {cal.cycles['score_median']:.4g}"))
    return 0
