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
    label: str | None = Field(
        None, description="AAMI class (N, S, V, F, Q) from the beat model; none without a model"
    )
    probability: float | None = Field(None, description="the model's softmax probability of label")


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


class SegmentMessage(Message):
    """The segment (rhythm) model's verdict on one 10-second window of a stream."""

    kind: Literal["segment"] = "segment"
    start: int = Field(description="index of the window's first sample at the stream's rate")
    time_s: float = Field(description="signal time of the window's start")
    duration_s: float
    label: str = Field(description="class from the model's card, e.g. normal or abnormal")
    probability: float
    probabilities: dict[str, float] = Field(default_factory=dict)


class AlarmMessage(Message):
    """One alarm's life: published when raised, on every change (update, acknowledge,
    silence, suppression) and when cleared. ``id`` is stable over the alarm's life."""

    kind: Literal["alarm"] = "alarm"
    id: str = Field(
        description="unique per alarm episode and daemon run, e.g. bed3-vtach-7-1a2b3c4d (stream, kind, "
        "count, run)"
    )
    alarm: str = Field(description="what it is about: asystole, vfib, vtach, brady, tachy, afib, ...")
    category: Literal["physiological", "technical"]
    priority: Literal["high", "medium", "low"]
    state: Literal["raised", "updated", "cleared"]
    text: str = Field(description="one line for people, e.g. 'V-tach 152 bpm, 9 beats'")
    onset_s: float = Field(description="signal time the condition began")
    raised_s: float = Field(description="signal time the alarm was raised")
    raised_wall: float = Field(description="wall-clock time the alarm was raised, Unix seconds")
    cleared_s: float | None = None
    latched: bool = Field(False, description="stays raised after the condition ends until acknowledged")
    acknowledged_by: str | None = None
    acknowledged_wall: float | None = None
    silenced_until_wall: float | None = Field(None, description="audible alarm silenced until then")
    silenced_by: str | None = Field(None, description="who silenced it last (silence is not an acknowledgement)")
    suppressed: bool = Field(
        False, description="a technical condition suppresses this physiological alarm"
    )
    value: float | None = Field(None, description="the measured value behind it (bpm, beats, s)")


class PcgMessage(Message):
    """Heart-sound analysis of one stretch of stethoscope audio."""

    kind: Literal["pcg"] = "pcg"
    fs: float = Field(description="rate of the decimated envelope")
    start: int = Field(description="index of the first envelope sample at rate fs")
    time_s: float
    envelope: list[float] = Field(description="heart-sound envelope, decimated for displays")
    s1_s: list[float] = Field(
        default_factory=list,
        description="signal times of the S1 sounds labelled since the previous message (a sound is "
        "labelled when the next one is found, so its time may precede this stretch)",
    )
    s2_s: list[float] = Field(default_factory=list, description="likewise for S2 sounds")
    hr_bpm: float | None = Field(None, description="heart rate from the heart sounds of the last 10 s")
    quality: float | None = Field(None, description="signal-quality index of the last 5 s, 0 (unusable) to 1")


class PcgClassMessage(Message):
    """The heart-sound model's verdict: one window, and the recording so far."""

    kind: Literal["pcg_class"] = "pcg_class"
    time_s: float = Field(description="signal time of the window's end")
    label: str = Field(description="normal or abnormal, for the recording so far")
    probability: float = Field(description="probability of label, aggregated over windows")
    window_probability: float = Field(description="probability of abnormal in the latest window")
    windows: int = Field(description="windows aggregated")
    window_quality: float | None = Field(None, description="signal-quality index of the latest window")
    rejected: int = Field(
        0, description="windows below [audio] min_quality, left out of the verdict (while every window "
        "is below it, all are aggregated and rejected equals windows)",
    )


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
    models: dict[str, dict] = Field(
        default_factory=dict, description="per loaded model: its inference batcher's counters"
    )


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
    Union[
        BeatMessage, VitalsMessage, WaveMessage, SegmentMessage, AlarmMessage, PcgMessage,
        PcgClassMessage, StatusMessage, EventMessage,
    ],
    Field(discriminator="kind"),
]
_any_message = TypeAdapter(AnyMessage)


def parse_message(payload: bytes | str) -> Message:
    """Decode the JSON frame of a published message into its model."""
    return _any_message.validate_json(payload)
