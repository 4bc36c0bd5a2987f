"""The ``ecgmon`` command: its parser, built from the subcommands in ``ecgmon.commands``,
and ``main``, which turns a user-fixable error into one red line and exit 2, and any other
exception into one "internal error" line and exit 1 (the traceback only with ``-v``)."""

from __future__ import annotations

import argparse
import os
import sys
import traceback

from ecgmon.commands.archive import add_archive
from ecgmon.commands.calibrate import add_calibrate
from ecgmon.commands.common import EXIT_INTERNAL, EXIT_SIGINT, EXIT_USAGE, CommandError, print_error, setup_logging
from ecgmon.commands.devices import add_devices
from ecgmon.commands.evaluate import add_evaluate
from ecgmon.commands.keys import add_keys
from ecgmon.commands.replay import add_replay
from ecgmon.commands.run import add_run
from ecgmon.commands.serve import add_serve
from ecgmon.commands.train import add_train
from ecgmon.commands.ward import add_ward
from ecgmon.commands.watch import add_dashboard, add_subscribe
from ecgmon.config import ConfigError, load_config
from ecgmon.curve import CurveError
from ecgmon.monitor.publisher import PublisherError
from ecgmon.monitor.sources.base import SourceError


def _global_options(parser: argparse.ArgumentParser, default_config, default_verbose) -> None:
    parser.add_argument("--config", metavar="FILE", default=default_config,
                        help="config file (default: $ECGMON_CONFIG, ./config.toml, built-in)")
    parser.add_argument("-v", "--verbose", action="count", default=default_verbose,
                        help="more log detail (debug)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ecgmon",
        description="Real-time ECG monitoring daemon: streaming ECG, online R-peaks, ZeroMQ out.",
    )
    _global_options(parser, None, 0)
    # Global options are accepted after the subcommand too (ecgmon run -v); SUPPRESS keeps
    # a subcommand from resetting what was given before it.
    common = argparse.ArgumentParser(add_help=False)
    _global_options(common, argparse.SUPPRESS, argparse.SUPPRESS)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    add_run(sub, common)
    add_serve(sub, common)
    add_subscribe(sub, common)
    add_devices(sub, common)
    add_dashboard(sub, common)
    add_keys(sub, common)
    add_replay(sub, common)
    add_evaluate(sub, common)
    add_train(sub, common)
    add_calibrate(sub, common)
    add_archive(sub, common)
    add_ward(sub, common)
    return parser


def main(argv: list[str] | None = None) -> int:
    verbose = 0
    try:
        args = build_parser().parse_args(argv)
        verbose = args.verbose
        setup_logging(args.verbose)
        config = load_config(args.config)
        return args.func(args, config)
    except (ConfigError, SourceError, PublisherError, CommandError, CurveError) as err:
        print_error(str(err))
        return EXIT_USAGE
    except KeyboardInterrupt:
        return EXIT_SIGINT
    except BrokenPipeError:
        # The reader went away (`| head`): stop quietly; stdout must not be flushed again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except Exception as err:  # a bug: one line for the user, the traceback for -v
        if verbose:
            traceback.print_exc()
        first = str(err).strip().splitlines()[0] if str(err).strip() else ""
        hint = "" if verbose else " (run with -v for the traceback)"
        print_error(f"internal error: {type(err).__name__}: {first}{hint}")
        return EXIT_INTERNAL


if __name__ == "__main__":
    sys.exit(main())
