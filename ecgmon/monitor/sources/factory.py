"""Source specs from the command line or config.toml (``sim``, ``mitdb:100``, ``bed3=...``)
turned into Sources, with their stream ids checked before anything is opened."""

from __future__ import annotations

from pathlib import Path
import re

from ecgmon.config import Config
from ecgmon.monitor.sources.base import Source, SourceError
from ecgmon.monitor.sources.record import RecordSource
from ecgmon.monitor.sources.simulator import SimulatorSource, parse_sim_spec
from ecgmon.monitor.sources.ward_subjects import redact as redact_ward
from ecgmon.payloads.mqtt import redact
from ecgmon.replay.records import record_stream_id

SPEC_FORMS = (
    "sim, sim?hr=110&noise=0.05 (built-in simulator), DB:RECORD (mitdb:100), "
    "path/to/record.hea, serial:/dev/ttyUSB0?fs=250, mqtt://host:1883/ward1/+/ecg, "
    "nats://host:4222/ward (a worker of a ward served by several daemons), "
    "archive:DIR/STREAM (a stream of an ecgmon archive), "
    "or NAME=SPEC to name the stream (bed3=mitdb:100)"
)
# Stream ids become topic suffixes (beat.<stream>), so no dots or separators in them.
_NAME = re.compile(r"^[A-Za-z0-9_-]+$")
_DB_RECORD = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]*:[^:]+$")


def split_spec(spec: str) -> tuple[str | None, str]:
    """``bed3=mitdb:100`` → ``('bed3', 'mitdb:100')``; a spec without a name → ``(None, spec)``.

    Only a plain name before the first '=' counts, so ``sim?hr=110`` or a path holding '='
    is not mistaken for a named spec.
    """
    name, sep, rest = spec.partition("=")
    if sep and _NAME.match(name):
        if not rest.strip():
            raise SourceError(f"source '{spec}': nothing after '{name}='; use {SPEC_FORMS}")
        return name, rest.strip()
    return None, spec.strip()


def _kind(spec: str) -> str:
    if spec == "sim" or spec.startswith("sim?"):
        return "sim"
    if spec.startswith("serial:"):
        return "serial"
    if spec.startswith(("mqtt://", "mqtts://")):
        return "mqtt"
    if spec.startswith(("nats://", "tls://")):
        return "nats"
    if spec.startswith("archive:"):
        return "archive"
    if spec.endswith(".hea") or _DB_RECORD.match(spec):
        return "record"
    raise SourceError(f"unknown source '{spec}': use {SPEC_FORMS}")


def stream_id(spec: str) -> str:
    """The stream id ``spec`` will publish under, without opening anything."""
    name, inner = split_spec(spec)
    if name is not None:
        return name
    kind = _kind(inner)
    if kind == "sim":
        return "sim"
    if kind in ("serial", "mqtt", "nats"):
        # The port, the topic or the ward, made topic-safe: serial:/dev/ttyUSB0 → ttyUSB0,
        # mqtt://host:1883/ward1/+/ecg → ward1-ecg, nats://host:4222/ward → ward.
        path = inner.split("?", 1)[0]
        path = path.removeprefix("serial:") if kind == "serial" else path.split("://", 1)[1].partition("/")[2]
        return ("-".join(p for p in re.split(r"[^A-Za-z0-9_]+", path) if p and p != "dev")
                or ("ward" if kind == "nats" else kind))
    if kind == "archive":  # archive:DIR/bed3 replays as bed3
        return record_stream_id(Path(inner.removeprefix("archive:")).expanduser().name)
    return record_stream_id(inner)


def open_source(spec: str, config: Config) -> Source:
    """Open one source; SourceError with a clear message for a bad or unavailable spec."""
    name, inner = split_spec(spec)
    kind = _kind(inner)
    if kind == "sim":
        sim = parse_sim_spec(inner, config.simulator)
        return SimulatorSource(sim, config.replay, stream=name or "sim", spec=inner)
    if kind == "serial":
        from ecgmon.monitor.sources.serial_source import SerialSource

        return SerialSource(inner, config, stream=name or stream_id(inner))
    if kind == "mqtt":
        from ecgmon.monitor.sources.mqtt_source import MqttSource

        return MqttSource(inner, config, stream=name or stream_id(inner))
    if kind == "nats":
        from ecgmon.monitor.sources.nats_source import NatsWardSource

        return NatsWardSource(inner, config, stream=name or stream_id(inner))
    if kind == "archive":
        # An archived stream is a WFDB multi-segment record: replayed like any record.
        from ecgmon.archive.reader import open_layout

        folder = Path(inner.removeprefix("archive:")).expanduser()
        try:
            header = open_layout(folder).header_path
        except (OSError, ValueError, IndexError) as err:
            raise SourceError(f"source '{inner}': no readable ecgmon archive in {folder} ({err}); "
                              f"give archive:DIR/STREAM, the stream's folder in the archive") from None
        return RecordSource(str(header), config, stream=name or stream_id(inner))
    return RecordSource(inner, config, stream=name)


def check_unique(specs: list[str]) -> None:
    """SourceError if two specs would publish under the same stream id."""
    seen: dict[str, str] = {}
    for spec in specs:
        sid = stream_id(spec)
        if sid in seen:
            # An MQTT or NATS URL may carry a password.
            first, second = redact_ward(redact(seen[sid])), redact_ward(redact(spec))
            raise SourceError(
                f"sources '{first}' and '{second}' would both publish as stream '{sid}'; "
                f"name them apart, e.g. a={split_spec(first)[1]} b={split_spec(second)[1]}"
            )
        seen[sid] = spec


def open_sources(specs: list[str], config: Config) -> list[Source]:
    """Open every spec after checking the stream ids are unique (before any download)."""
    if not specs:
        raise SourceError(f"no source given; use {SPEC_FORMS}")
    check_unique(specs)
    return [open_source(spec, config) for spec in specs]


# -- heart sounds (--pcg) ----------------------------------------------------------------

PCG_SPEC_FORMS = (
    "mic (default input), mic:DEVICE (index or part of its name; `ecgmon devices` lists them), "
    "FILE.wav or FILE.flac, or NAME=SPEC to name the stream (bed3=mic)"
)


def pcg_stream_id(spec: str) -> str:
    """The stream id a ``--pcg`` spec publishes under, without opening anything."""
    from ecgmon.monitor.sources.audio_file import audio_file_stream_id, is_audio_file_spec
    from ecgmon.monitor.sources.audio_mic import is_mic_spec, mic_stream_id

    name, inner = split_spec(spec)
    if name is not None:
        return name
    if is_mic_spec(inner):
        return mic_stream_id(inner)
    if is_audio_file_spec(inner):
        return audio_file_stream_id(inner)
    raise SourceError(f"unknown heart-sound source '{spec}': use {PCG_SPEC_FORMS}")


def open_pcg_sources(specs: list[str], config: Config) -> list[Source]:
    """Open every ``--pcg`` spec; their stream ids must differ from each other (not from the
    ECG sources': an ECG and a PCG stream of one patient share an id)."""
    from ecgmon.monitor.sources.audio_file import AudioFileSource
    from ecgmon.monitor.sources.audio_mic import MicSource, is_mic_spec

    seen: dict[str, str] = {}
    for spec in specs:
        sid = pcg_stream_id(spec)
        if sid in seen:
            raise SourceError(f"heart-sound sources '{seen[sid]}' and '{spec}' would both publish as "
                              f"stream '{sid}'; name them apart with NAME=SPEC")
        seen[sid] = spec
    sources: list[Source] = []
    for spec in specs:
        name, inner = split_spec(spec)
        cls = MicSource if is_mic_spec(inner) else AudioFileSource
        sources.append(cls(inner, config, stream=name))
    return sources
