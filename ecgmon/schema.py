"""The wire messages published over ZeroMQ: pydantic models, their topics and version.

Every message travels as a two-frame multipart message ``[topic, json]`` with topic
``<kind>.<stream>`` (``beat.bed3``, ``status.ecgmon``), so a subscriber filters by prefix.
``seq`` counts the messages of one topic from one publisher (``pub``) without gaps, so a
subscriber of any prefix can count what it missed; a new ``pub`` means the daemon restarted.
"""

from __future__ import annotations

from typing import Annotated, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter

SCHEMA_VERSION = 1
DAEMON_STREAM = "ecgmon"


class Message(BaseModel):
    model_config = ConfigDict(extra="forbid")

    v: int = SCHEMA_VERSION
    kind: str
    stream: str
    pub: str = ""
    seq: int = 0
    wall: float = Field(0.0, description="wall-clock time of publication, Unix seconds")

    @property
    def topic(self) -> str:
        return f"{self.kind}.{self.stream}"


class BeatMessage(Message):
    kind: Literal["beat"] = "beat"
    sample: int = Field(description="R-peak index in the raw signal, from the stream's start")
    time_s: float = Field(description="signal time of the R peak, sample / fs")
    fs: float
    delay_ms: float = Field(description="signal time from the R peak to its detection")
    rr_ms: float | None = Field(description="interval from the previous beat")
    amplitude_mv: float = Field(description="filtered R-peak amplitude")
    latency_ms: float | None = Field(
        None, description="wall time from the chunk holding the detection to publication"
    )


class VitalsMessage(Message):
    kind: Literal["vitals"] = "vitals"
    time_s: float
    hr_bpm: float | None = Field(description="heart rate, none until enough beats or after asystole")
    hr_method: str
    beats: int = Field(description="beats detected since the stream began")


class WaveMessage(Message):
    kind: Literal["wave"] = "wave"
    fs: float = Field(description="rate of the decimated samples")
    start: int = Field(description="index of the first sample at rate fs")
    time_s: float = Field(description="signal time of the first sample")
    lead: str
    samples_mv: list[float] = Field(description="filtered, decimated ECG in millivolts")


class StreamStatus(BaseModel):
    model_config = ConfigDict(extra="forbid")

    stream: str
    source: str
    fs: float
    lead: str
    state: Literal["starting", "running", "ended", "failed"]
    samples: int
    time_s: float
    beats: int
    hr_bpm: float | None
    faults: dict[str, int] = Field(
        default_factory=dict, description="cumulative fault counters of the stream's source"
    )


class StatusMessage(Message):
    kind: Literal["status"] = "status"
    stream: str = DAEMON_STREAM
    uptime_s: float
    streams: list[StreamStatus]
    dropped: int = Field(description="messages ZeroMQ could not queue for slow subscribers")
    sent: int


class EventMessage(Message):
    """A technical event of one stream: a fault, an end, a reconnect."""

    kind: Literal["event"] = "event"
    level: Literal["info", "warning", "error"]
    code: str = Field(description="machine-readable event name, e.g. source_ended, source_failed")
    text: str
    counts: dict[str, int] = Field(
        default_factory=dict, description="the stream's cumulative fault counters, if any"
    )


AnyMessage = Annotated[
    Union[BeatMessage, VitalsMessage, WaveMessage, StatusMessage, EventMessage],
    Field(discriminator="kind"),
]
_any_message = TypeAdapter(AnyMessage)


def parse_message(payload: bytes | str) -> Message:
    """Decode the JSON frame of a published message into its model."""
    return _any_message.validate_json(payload)
