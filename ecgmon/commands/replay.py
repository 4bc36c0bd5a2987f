"""``ecgmon replay``: a record or the simulator sent as a device would send it, to an MQTT
topic or out of a serial port."""

from __future__ import annotations

import argparse

from ecgmon.commands.common import CommandError, channel_arg, override, replay_overrides, run_until_signal
from ecgmon.config import Config


def add_replay(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser(
        "replay", parents=[common], help="device simulator: push a record or the simulator to MQTT or serial",
        description="Replay a record (or the simulator) as a device would send it: to an MQTT "
                    "topic, or out of a serial port (a new pseudo-terminal whose path is printed, "
                    "or a given port).",
    )
    p.add_argument("spec", metavar="SOURCE", help="mitdb:100, path/to/rec.hea, sim, sim?hr=110")
    p.add_argument("--to", required=True, metavar="TARGET",
                   help="mqtt://HOST:PORT/TOPIC, serial (new pseudo-terminal) or serial:PORT")
    p.add_argument("--format", choices=["json", "binary", "ascii"],
                   help="wire format: MQTT json (default) or binary; serial ascii (default) or binary")
    p.add_argument("--speed", type=float, help="1 real time (default), N faster, 0 as fast as possible")
    p.add_argument("--chunk-s", type=float, help="seconds of signal per message or write")
    p.add_argument("--loop", action="store_true", default=None, help="start the record again at its end")
    p.add_argument("--channel", type=channel_arg, help="channel index or name (e.g. MLII)")
    p.set_defaults(func=cmd_replay)


def cmd_replay(args: argparse.Namespace, config: Config) -> int:
    from ecgmon.monitor.sources.factory import open_source

    config = override(config, replay_overrides(args))
    source = open_source(args.spec, config)
    target = args.to
    if target.startswith(("mqtt://", "mqtts://")):
        from ecgmon.replay.mqtt_emitter import emit_mqtt

        run = lambda: emit_mqtt(source, target, config, args.format or "json")  # noqa: E731
    elif target == "serial" or target.startswith("serial:"):
        from ecgmon.replay.serial_emitter import emit_serial

        run = lambda: emit_serial(source, target, config, args.format or "ascii")  # noqa: E731
    else:
        raise CommandError(f"unknown target '{target}': use mqtt://HOST:PORT/TOPIC, serial or serial:PORT")
    return run_until_signal(run)
