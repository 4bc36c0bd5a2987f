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

    v: int = Field(SCHEMA_VERSION, description="schema version")
    kind: str = Field(description="message kind, the topic's first part")
    stream: str = Field(description="stream id, the topic's second part (ecgmon for the daemon)")
    pub: str = Field("", description="random id of this publisher run; a new one means a restart")
    seq: int = Field(0, description="count of this topic's messages from this publisher, from 0, gapless")
    wall: float = Field(0.0, description="wall-clock time of publication, Unix seconds")

    @property
    def topic(self) -> str:
        return f"{self.kind}.{self.stream}"


class BeatMessage(Message):
    kind: Literal["beat"] = "beat"
    sample: int = Field(description="R-peak index in the raw signal, from the stream's start")
    time_s: float = Field(description="signal time of the R peak, sample / fs")
    fs: float = Field(description="the stream's sample rate, Hz")
    delay_ms: float = Field(description="signal time from the R peak to its detection")
    rr_ms: float | None = Field(description="interval from the previous beat; none for the first beat and after a splice")
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
    time_s: float = Field(description="signal time the figures are for")
    hr_bpm: float | None = Field(description="heart rate, none until enough beats or after asystole")
    hr_method: str = Field(description="one line naming the heart-rate method and its parameters")
    beats: int = Field(description="beats detected since the stream began")


class WaveMessage(Message):
    kind: Literal["wave"] = "wave"
    fs: float = Field(description="rate of the decimated samples")
    start: int = Field(description="index of the first sample at rate fs")
    time_s: float = Field(description="signal time of the first sample")
    lead: str = Field(description="the lead's name as the source gives it")
    samples_mv: list[float] = Field(description="filtered, decimated ECG in millivolts")


class SegmentMessage(Message):
    """The segment (rhythm) model's verdict on one 10-second window of a stream."""

    kind: Literal["segment"] = "segment"
    start: int = Field(description="index of the window's first sample at the stream's rate")
    time_s: float = Field(description="signal time of the window's start")
    duration_s: float = Field(description="window length")
    label: str = Field(description="class from the model's card, e.g. normal or abnormal")
    probability: float = Field(description="the model's softmax probability of label")
    probabilities: dict[str, float] = Field(default_factory=dict, description="every class's probability")


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
    priority: Literal["high", "medium", "low"] = Field(description="fixed per alarm kind (IEC 60601-2-27)")
    state: Literal["raised", "updated", "cleared"] = Field(
        description="raised first, updated on every change, cleared last"
    )
    text: str = Field(description="one line for people, e.g. 'V-tach 152 bpm, 9 beats'")
    onset_s: float = Field(description="signal time the condition began")
    raised_s: float = Field(description="signal time the alarm was raised")
    raised_wall: float = Field(description="wall-clock time the alarm was raised, Unix seconds")
    cleared_s: float | None = Field(None, description="signal time the alarm was cleared; none until then")
    latched: bool = Field(False, description="stays raised after the condition ends until acknowledged")
    acknowledged_by: str | None = Field(None, description="who acknowledged it; the first acknowledgement stands")
    acknowledged_wall: float | None = Field(None, description="wall-clock time of the acknowledgement, Unix seconds")
    silenced_until_wall: float | None = Field(None, description="audible alarm silenced until then")
    silenced_by: str | None = Field(None, description="who silenced it last (silence is not an acknowledgement)")
    suppressed: bool = Field(
        False, description="a technical condition suppresses this physiological alarm, or (a beat alarm) "
        "V-fib found within clear_s of it, whose alarm it is part of"
    )
    annunciated_s: float | None = Field(
        None, description="signal time the alarm was first annunciated: raised_s, or for one raised suppressed "
        "the time the suppression lifted; none while it has only been suppressed"
    )
    value: float | None = Field(None, description="the measured value behind it (bpm, beats, s)")


class PcgMessage(Message):
    """Heart-sound analysis of one stretch of stethoscope audio."""

    kind: Literal["pcg"] = "pcg"
    fs: float = Field(description="rate of the decimated envelope")
    start: int = Field(description="index of the first envelope sample at rate fs")
    time_s: float = Field(description="signal time of the first envelope sample")
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
    method: Literal["model", "cycles"] = Field(
        "model", description="what gave the verdict: model, the heart-sound model ([models] pcg) on 5 s windows; "
                             "cycles, the cycle rule ([models] pcg_cycles, the default) on the segmented heart cycles "
                             "(then p_abnormal is a score, windows counts cycles)"
    )
    time_s: float = Field(description="signal time of the window's end")
    label: Literal["normal", "abnormal", "uncertain"] = Field(
        description="the verdict on the recording so far; uncertain: neither, the model cannot tell (see reason)"
    )
    reason: Literal["quality", "device not calibrated", "near threshold", "windows disagree"] | None = Field(
        None, description="why the verdict is uncertain; none for normal and abnormal"
    )
    calibrated: bool = Field(
        False, description="the verdict is on the device's calibrated score ([audio] calibration); threshold "
                           "is then the card's z_threshold carried to this device's P(abnormal) scale (or cycle "
                           "score scale), and probability is none (a raw P(abnormal) is no probability on that "
                           "device)"
    )
    probability: float | None = Field(
        description="the model's probability of label (mean over the aggregated windows); none when uncertain"
    )
    p_abnormal: float | None = Field(
        None, description="mean P(abnormal) of the aggregated windows; none while no window is aggregated; with "
                          "[models] pcg_cycles the cycle score (no probability), none without cycles or calibration"
    )
    threshold: float = Field(0.5, description="the model card's threshold on p_abnormal")
    window_probability: float = Field(description="probability of abnormal in the latest window (with [models] "
                                                  "pcg_cycles: the cycle score again, 0 when there is none)")
    windows: int = Field(description="windows aggregated: those of quality >= [audio] min_quality (with [models] "
                                     "pcg_cycles: the complete heart cycles in the audio judged)")
    window_quality: float | None = Field(None, description="signal-quality index of the latest window")
    rejected: int = Field(0, description="windows below [audio] min_quality, left out of the verdict")


class StreamStatus(BaseModel):
    model_config = ConfigDict(extra="forbid")

    stream: str
    source: str = Field(description="the spec of the source that feeds it")
    fs: float = Field(description="sample rate, Hz; 0 before the first data of a source that does not know it")
    lead: str = Field(description="lead name, pcg for heart sounds")
    state: Literal["starting", "running", "ended", "failed"]
    samples: int = Field(description="index of the next sample expected")
    time_s: float = Field(description="signal time reached, samples / fs")
    beats: int = Field(description="beats detected (heart sounds for a heart-sound stream)")
    hr_bpm: float | None = Field(description="latest heart rate; none when there is none")
    faults: dict[str, int] = Field(
        default_factory=dict, description="cumulative fault counters of the stream's source"
    )


class StatusMessage(Message):
    kind: Literal["status"] = "status"
    stream: str = DAEMON_STREAM
    uptime_s: float = Field(description="seconds since the daemon started")
    streams: list[StreamStatus]
    dropped: int = Field(
        description="messages the publisher could not queue (0 with a PUB socket: it drops per subscriber)"
    )
    sent: int = Field(description="messages published since the start")
    models: dict[str, dict] = Field(
        default_factory=dict, description="per loaded model: its inference batcher's counters"
    )


class EventMessage(Message):
    """A technical event of one stream: a fault, an end, a reconnect."""

    kind: Literal["event"] = "event"
    level: Literal["info", "warning", "error"]
    code: str = Field(description="machine-readable event name; README.md lists every code")
    text: str = Field(description="one line for people")
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
