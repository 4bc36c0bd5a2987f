"""``ecgmon devices``: the audio input devices PortAudio sees, for ``--pcg mic:DEVICE``."""

from __future__ import annotations

import argparse

from ecgmon.commands.common import stderr_console
from ecgmon.config import Config


def add_devices(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser("devices", parents=[common], help="list audio input devices for --pcg mic:DEVICE",
                       description="List PortAudio's audio input devices (stethoscopes, microphones).")
    p.set_defaults(func=cmd_devices)


def cmd_devices(args: argparse.Namespace, config: Config) -> int:
    from ecgmon.monitor.sources.audio_mic import import_sounddevice, input_devices

    sd = import_sounddevice()
    devices = input_devices(sd)
    if not devices:
        stderr_console().print("no audio input device found")
        return 1
    default = sd.default.device[0]
    for d in devices:
        mark = "*" if d["index"] == default else " "
        api = sd.query_hostapis(d["hostapi"])["name"]
        print(f"{mark} {d['index']:3d}  {d['name']}  ({api}, {d['max_input_channels']} in, "
              f"{d['default_samplerate']:g} Hz)")
    return 0
