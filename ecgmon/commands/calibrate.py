"""``ecgmon calibrate pcg PATH... --out CAL.json``: where one stethoscope puts the cycle rule's
features and score (the daemon's default verdict, ``[models] pcg_cycles``) and the heart-sound
model's scores (``[models] pcg``), from that device's own recordings with no label read.

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
        "pcg", parents=[common], help="a stethoscope for the heart-sound verdict",
        description="Score the recordings (files or folders of *.wav/*.flac; any REFERENCE.csv is not read) "
                    "as the daemon does and write where this device puts the scores: for the cycle rule "
                    "([models] pcg_cycles, the daemon's verdict by default) each cycle feature's and the cycle "
                    "score's median and IQR with the rule's SHA-256; for the heart-sound model ([models] pcg) "
                    "the median and IQR of its recording scores (mean P(abnormal) of the windows of quality >= "
                    "[audio] min_quality) with the model's SHA-256. The daemon refuses a part fitted for "
                    "another file.",
    )
    c.add_argument("paths", nargs="+", metavar="DIR_OR_FILE", help="the device's recordings (at least 20)")
    c.add_argument("--out", required=True, metavar="CAL.json", help="the calibration file to write")
    c.add_argument("--model", help="a .pt/.pt2 heart-sound model (default: [models] pcg of the config); "
                                   "'none': no model part (the cycle rule alone)")
    c.add_argument("--name", default="", help="the device's name, kept in the file")
    c.add_argument("--device", default="auto", help="auto, cpu or cuda (where the model runs)")
    c.add_argument("--cycles", metavar="RULE.json",
                   help="the cycle rule to calibrate (per-feature and score median/IQR; default: [models] "
                        "pcg_cycles of the config, the shipped pcg-cycles.json unless changed); 'none': not")
    c.set_defaults(func=cmd_calibrate_pcg)


def cmd_calibrate_pcg(args: argparse.Namespace, config: Config) -> int:
    from ecgmon.evaluate.pcg import calibrate_pcg
    from ecgmon.models.pcg_data import PcgDataError
    from ecgmon.monitor.model_set import model_path

    # Each part is fitted for what is configured (or named here): the cycle rule gives the
    # daemon's verdict by default and needs no model; the model's part keeps the file usable
    # with [models] pcg_cycles = "".
    model_setting = _setting(args.model, config.models.pcg)
    cycles_setting = _setting(args.cycles, config.models.pcg_cycles)
    if model_setting is None and cycles_setting is None:
        raise CommandError("nothing to calibrate: set [models] pcg_cycles (the cycle rule) or [models] pcg, "
                           "or give --cycles RULE.json or --model FILE")
    try:
        cal = calibrate_pcg(args.paths, None if model_setting is None else model_path(model_setting), args.out,
                            print_warning, device=args.device, progress=sys.stderr.isatty(),
                            min_quality=config.audio.min_quality, envelope_fs=config.audio.envelope_fs,
                            name=args.name, cycles=None if cycles_setting is None else model_path(cycles_setting))
    except PcgDataError as err:
        raise CommandError(str(err)) from None
    parts = []
    if cal.cycles is not None:
        parts.append(f"cycle rule {cal.cycles['rule_name']}: {cal.cycles['recordings']} recordings with enough "
                     f"cycles, score median {cal.cycles['score_median']:.4g}, IQR {cal.cycles['score_iqr']:.4g}")
    if cal.has_model_part:
        median, iqr = cal.model_scale()
        parts.append(f"model {cal.model_name}: {cal.recordings} recordings, median score {median:.4g}, IQR {iqr:.4g}")
    log.info("wrote %s (%s); use it with [audio] calibration or ecgmon run --pcg-calibration", args.out,
             "; ".join(parts))
    print(f"wrote {args.out}: " + "; ".join(parts))
    return 0


def _setting(flag: str | None, configured: str) -> str | None:
    """A file named by a flag, else by the config; None for 'none' or an empty setting."""
    value = flag if flag is not None else configured
    return None if not value or value == "none" else value
