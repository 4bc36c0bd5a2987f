"""The JSON bodies of the analysis endpoints, as pydantic models: they document the API at
``/docs`` and build every answer, so the two cannot differ."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field


class RecordInfo(BaseModel):
    name: str = Field(description="the record's name (the uploaded file's, without suffix)")
    fs: float = Field(description="sample rate, Hz")
    lead: str = Field(description="the analysed channel")
    channels: list[str] = Field(description="every channel of the upload")
    samples: int
    duration_s: float


class BeatSpectrogramOut(BaseModel):
    label: str = Field(description="the beat's AAMI class by the spectrogram model (gradcam_grid.model)")
    probability: float
    gradcam: list[list[float]] | None = Field(None, description="the Grad-CAM of that class, in [0, 1]: a row per "
                                                                "gradcam_grid.frequencies_hz, a column per "
                                                                "gradcam_grid.frames_ms; null for a beat not in the "
                                                                "explained selection")
    png: str | None = Field(None, description="a link to the beat's picture (window, spectrogram, Grad-CAM)")


class BeatOut(BaseModel):
    sample: int = Field(description="R-peak index from the recording's start")
    time_s: float
    label: str | None = Field(description="AAMI class N, S, V, F, Q; none without a beat model")
    probability: float | None
    rr_ms: float | None
    spectrogram: BeatSpectrogramOut | None = Field(None, description="with ?explain=true: the spectrogram model's "
                                                                    "class and Grad-CAM")


class SegmentOut(BaseModel):
    start: int
    time_s: float
    duration_s: float
    label: str
    probability: float
    probabilities: dict[str, float]
    attention: list[float] | None = Field(None, description="with ?explain=true: the segment model's attention over "
                                                            "the window, one weight per step of its last layer")
    png: str | None = Field(None, description="with ?explain=true: a link to the segment's picture (trace and "
                                              "attention)")


class GradCamGrid(BaseModel):
    """The axes of every beat's Grad-CAM map."""

    model: str = Field(description="the beat-spectrogram model explained")
    frequencies_hz: list[float] = Field(description="each map row's STFT frequency")
    frames_ms: list[float] = Field(description="each map column's STFT frame centre, ms from the R peak")
    explained: int = Field(description="beats given a map")
    limit: int = Field(description="the most beats an analysis gives maps for")


class RateOut(BaseModel):
    time_s: float
    hr_bpm: float | None


class AlarmOut(BaseModel):
    id: str
    alarm: str
    category: str
    priority: str
    state: Literal["raised", "updated", "cleared"]
    text: str
    onset_s: float
    raised_s: float
    cleared_s: float | None
    suppressed: bool
    annunciated_s: float | None
    value: float | None


class EventOut(BaseModel):
    level: str
    code: str
    text: str


class EcgAnalysis(BaseModel):
    """What the daemon would have published for this recording, replayed: its beats, the
    segment model's 10 s verdicts, the heart rate over time and the alarms' changes."""

    record: RecordInfo
    models: dict[str, str] = Field(description="the model file used for each kind")
    beats: list[BeatOut]
    segments: list[SegmentOut]
    heart_rate: list[RateOut]
    alarms: list[AlarmOut] = Field(description="every alarm change the daemon would have published, in order")
    events: list[EventOut] = Field(description="technical events (gaps, models unavailable)")
    hr_method: str | None
    explain: dict[str, str] | None = Field(None, description="with ?explain=true: what the arrays mean and "
                                                             "what could not be given")
    gradcam_grid: GradCamGrid | None = Field(None, description="with ?explain=true: the axes of the beats' Grad-CAM "
                                                               "maps")


class PcgVerdict(BaseModel):
    label: Literal["normal", "abnormal", "uncertain"]
    method: Literal["model", "cycles"] | None = Field(
        None, description="what gave the verdict, as pcg_class.method: model (windows) or cycles (the cycle rule: "
                          "p_abnormal is its score, windows the heart cycles); none when there was no verdict")
    reason: str | None = Field(description="why uncertain (quality, device not calibrated, near threshold, windows "
                                           "disagree, too short, no model)")
    probability: float | None
    p_abnormal: float | None
    threshold: float | None
    calibrated: bool
    windows: int = Field(description="windows of acceptable quality in the verdict (cycles: the heart cycles judged)")
    rejected: int = Field(description="windows below [audio] min_quality")


class EnvelopeSummary(BaseModel):
    fs: float
    samples: int
    mean: float | None
    max: float | None
    envelope: list[float] = Field(description="the decimated heart-sound envelope, as the daemon publishes it")


class PcgAnalysis(BaseModel):
    name: str
    input_fs: float
    duration_s: float
    envelope: EnvelopeSummary
    s1_s: list[float]
    s2_s: list[float]
    hr_bpm: float | None = Field(description="median of the rates over the recording")
    heart_rate: list[RateOut]
    quality: float | None = Field(description="median quality index of the updates, 0 (unusable) to 1")
    verdict: PcgVerdict
    events: list[EventOut]
    model: str | None = Field(description="the heart-sound model or cycle rule that gave the verdict")


class ErrorOut(BaseModel):
    error: str = Field(description="one line: what is wrong and what to do")
