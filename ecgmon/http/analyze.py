"""The analyses behind ``POST /v1/analyze`` and ``POST /v1/analyze/pcg``, run in a worker (a
process or thread of the analysis pool), never on the live event loop.

An ECG upload goes through exactly what ``ecgmon evaluate`` drives a record through
(``evaluate.record_run.run_record``: the daemon's stream pipeline, its models, its alarm
engine), so the answer equals what ``ecgmon run --source FILE --speed 0`` publishes. A
heart-sound upload goes through the audio sources' chunker (channel choice, resampling to
2 kHz as a stream) and the daemon's heart-sound pipeline, as ``--pcg FILE`` does.

Each job returns the JSON body as bytes: serialising in the worker keeps the event loop's
share of a large answer to a copy.
"""

from __future__ import annotations

from dataclasses import dataclass, field
import logging
import os
import secrets
from typing import Any, Mapping

import numpy as np

from ecgmon.config import Config
from ecgmon.evaluate.record_run import run_jobs, run_record
from ecgmon.http.results import (
    AlarmOut, BeatOut, BeatSpectrogramOut, EcgAnalysis, EnvelopeSummary, EventOut, GradCamGrid, PcgAnalysis,
    PcgVerdict, RateOut, RecordInfo, SegmentOut,
)
from ecgmon.http.pictures import KEEP, BeatPicture, Explained, png_bytes
from ecgmon.http.uploads import Part, UploadError, read_audio, read_ecg
from ecgmon.monitor.sources.base import SourceError
from ecgmon.schema import (
    AlarmMessage, BeatMessage, EventMessage, PcgClassMessage, PcgMessage, SegmentMessage, VitalsMessage,
)

log = logging.getLogger("ecgmon.http")


# The beat model whose Grad-CAM ``?explain=true`` gives: the shipped STFT CNN (the daemon's
# beat model is TorchScript, whose layers cannot be hooked; this one has an eager twin).
EXPLAIN_BEAT_MODEL = "beat-spectrogram-cnn.pt"
# Which beats get a Grad-CAM map and picture: the first FIRST_EXPLAINED classified beats, then
# every beat that the daemon or the spectrogram model calls other than N, at most
# MAX_EXPLAINED in all (a map is 576 numbers: an hour of beats would be tens of MB of JSON).
FIRST_EXPLAINED = 20
MAX_EXPLAINED = 1000


@dataclass
class Context:
    """What a worker analyses with: the daemon's configuration and its loaded models."""

    config: Config
    models: Mapping[str, Any]
    model_errors: list[str] = field(default_factory=list)
    # EXPLAIN_BEAT_MODEL with its eager twin, or why it cannot be used; loaded at first need.
    _gradcam: Any = field(default=None, init=False, repr=False)

    def gradcam(self) -> Any:
        """The spectrogram model's SpectrogramGradCam, or a one-line reason it is not available."""
        if self._gradcam is None:
            from ecgmon.evaluate.gradcam import SpectrogramGradCam
            from ecgmon.monitor.model_loader import ModelError, load_model
            from ecgmon.monitor.model_set import model_path

            try:
                found = SpectrogramGradCam.of(load_model(model_path(EXPLAIN_BEAT_MODEL), self.config.models.device))
                self._gradcam = found or f"{EXPLAIN_BEAT_MODEL} is not a beat-spectrogram network"
            except (ModelError, RuntimeError) as err:
                self._gradcam = f"{EXPLAIN_BEAT_MODEL} could not be used: {str(err).splitlines()[0]}"
        return self._gradcam


# How much lower a worker process's CPU priority is than the daemon's.
WORKER_NICE = 10
# The context of a worker process, made once by ``init_process`` (a thread pool passes its own).
_PROCESS_CONTEXT: Context | None = None


def init_process(config_data: dict) -> None:
    """A worker process's start: a lower CPU priority and one torch thread (the machine's
    cores belong to the live daemon first), the configured models loaded once for every job
    it will run."""
    global _PROCESS_CONTEXT
    from ecgmon.monitor.model_set import load_models

    # Analyses yield the CPU to the live daemon: on a machine whose cores are busy, an upload
    # burst must not take the scheduler's time from live beats (bench/http_burst.py).
    os.nice(WORKER_NICE)

    config = Config.model_validate(config_data)
    models, errors = load_models(config.models)
    _PROCESS_CONTEXT = Context(config, models, errors)


def ping(ctx: Context | None = None) -> list[str]:
    """A no-op job: returns once the worker has its models (the pool's readiness check)."""
    ctx = ctx or _PROCESS_CONTEXT
    assert ctx is not None
    return sorted(ctx.models)


@dataclass
class Answer:
    """A job's JSON body and, for an explained analysis, what its PNG links draw from (kept
    by the server under ``key``)."""

    body: bytes
    key: str | None = None
    explained: Explained | None = None


@dataclass(frozen=True)
class EcgRequest:
    parts: list[Part]
    channel: int | str | None = None
    fs: float | None = None
    unit: str | None = None
    explain: bool = False
    max_bytes: int = 64 << 20
    max_duration_s: float = 3600.0


class _Recorder:
    """A model that keeps every output row it gives (the segment model's attention), in call
    order, which is the order its jobs finish in."""

    def __init__(self, model: Any) -> None:
        self._model = model
        self.rows: list[np.ndarray] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self._model, name)

    def __call__(self, *inputs: Any) -> Any:
        out = self._model(*inputs)
        if isinstance(out, (tuple, list)) and len(out) > 1:
            att = out[1].float().cpu().numpy()
            # Self-attention [B, steps, steps]: what each step receives, averaged over the
            # steps that attend (a weight per step, summing to 1) - the seeds' picture.
            if att.ndim == 3:
                att = att.mean(axis=1)
            self.rows.extend(att.reshape(att.shape[0], -1))
        return out


class _BeatInputs:
    """The daemon's beat model, keeping the inputs (window, features) of every beat it
    classifies, in call order, which is the order its beats are published in."""

    def __init__(self, model: Any) -> None:
        self.model = model
        self.windows: list[np.ndarray] = []
        self.features: list[np.ndarray] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self.model, name)

    def __call__(self, *inputs: Any) -> Any:
        self.windows.append(np.asarray(inputs[0], dtype=np.float32))
        self.features.append(np.asarray(inputs[1], dtype=np.float32))
        return self.model(*inputs)


def _explain_beats(ctx: Context, record: str, beats: list[BeatOut], inputs: _BeatInputs,
                   key: str) -> tuple[str, GradCamGrid | None, list[BeatPicture]]:
    """Each classified beat's class by the spectrogram model, and the Grad-CAM map and picture
    link of the selected ones (FIRST_EXPLAINED, MAX_EXPLAINED); what ``explain`` says of them."""
    explainer = ctx.gradcam()
    if isinstance(explainer, str):
        return f"not available: {explainer}", None, []
    spec, served = explainer.model, inputs.model
    missing = [n for n in spec.rr_features if n not in served.rr_features]
    if (spec.fs, spec.window, spec.before) != (served.fs, served.window, served.before) or missing:
        return (f"not available: {spec.name} needs {spec.window}-sample windows at {spec.fs:g} Hz from "
                f"{spec.before} before the R peak and features {', '.join(spec.rr_features)}; the beat model "
                f"{served.name} gives other inputs"), None, []
    labelled = [b for b in beats if b.label is not None]
    if not labelled:
        return "not available: no classified beats", None, []
    windows = np.concatenate(inputs.windows)
    if len(labelled) != len(windows):  # never expected: each beat job is one published label
        return "not available: the beats and the beat model's calls do not pair up", None, []
    rr = np.concatenate(inputs.features)[:, [served.rr_features.index(n) for n in spec.rr_features]]
    probabilities = explainer.probabilities(windows, rr)
    classes = probabilities.argmax(axis=1)
    normal = spec.classes.index("N")
    chosen = [i for i, b in enumerate(labelled)
              if i < FIRST_EXPLAINED or b.label != "N" or classes[i] != normal][:MAX_EXPLAINED]
    if chosen and not explainer.reproduces(windows[chosen[:64]], rr[chosen[:64]]):
        chosen = []
        note = "the eager rebuild does not reproduce the model file's outputs, so no Grad-CAM is given"
    else:
        note = (f"Grad-CAM of its class for the first {FIRST_EXPLAINED} classified beats and every beat the daemon "
                f"or {spec.name} calls other than N, at most {MAX_EXPLAINED} ('gradcam' null for the others)")
    cams = explainer.explain(windows[chosen], rr[chosen], classes[chosen]) if chosen else []
    pictures = []
    for i, b in enumerate(labelled):
        b.spectrogram = BeatSpectrogramOut(label=spec.classes[classes[i]],
                                           probability=round(float(probabilities[i, classes[i]]), 5))
    for n, (i, cam) in enumerate(zip(chosen, cams)):
        b = labelled[i]
        b.spectrogram.gradcam = [[round(float(v), 3) for v in row] for row in cam]
        b.spectrogram.png = f"/v1/explain/{key}/beats/{n}.png"
        pictures.append(BeatPicture(f"{record} at {b.time_s:.2f} s (daemon: {b.label})", windows[i], rr[i],
                                    int(classes[i]), float(probabilities[i, classes[i]])))
    net = explainer.net
    grid = GradCamGrid(model=spec.name, frequencies_hz=[round(float(f), 4) for f in net.frequencies()],
                       frames_ms=[round(float(c - spec.before) / spec.fs * 1000, 3) for c in net.frame_centres()],
                       explained=len(chosen), limit=MAX_EXPLAINED)
    text = (f"each classified beat's class by {spec.name} (the STFT CNN shipped beside the daemon's beat model, on "
            f"the same {spec.window}-sample window and RR features), and its Grad-CAM: a map in [0, 1] with a row "
            f"per STFT frequency (gradcam_grid.frequencies_hz) and a column per STFT frame (gradcam_grid.frames_ms, "
            f"the frame's centre from the R peak); its time profile is the maximum over the rows. {note}; each "
            f"map's 'png' link draws the beat, its spectrogram and the map, kept for the last {KEEP} explained "
            f"analyses")
    return text, grid, pictures


def draw_beat(picture: BeatPicture, ctx: Context | None = None) -> bytes:
    """The PNG of one explained beat (a pool job): the picture ``ecgmon evaluate model`` draws
    in gradcam.png (the window, its STFT, the Grad-CAM of the spectrogram model's class)."""
    from ecgmon.evaluate import plots

    ctx = ctx or _PROCESS_CONTEXT
    assert ctx is not None, "worker started without its context"
    explainer = ctx.gradcam()
    spec = explainer.model
    example = plots.Example(picture.window, None, spec.classes[picture.target], picture.probability, picture.where)
    panels = explainer.panels([example], picture.window[None], picture.rr[None], [picture.target])
    return png_bytes(plots.gradcam_figure(panels, spec.fs, spec.before or 0,
                                          f"{spec.name}: Grad-CAM of its class"))


def analyze_ecg(req: EcgRequest, ctx: Context | None = None) -> Answer:
    """The JSON answer for an ECG upload; UploadError (4xx) for an upload that cannot be analysed."""
    ctx = ctx or _PROCESS_CONTEXT
    assert ctx is not None, "worker started without its context"
    record = read_ecg(req.parts, req.max_bytes, req.max_duration_s, req.fs, req.unit)
    config = ctx.config.model_copy(deep=True)
    if req.channel is not None:
        config.replay.channel = req.channel
    models = dict(ctx.models)
    recorder = beat_inputs = None
    if req.explain and "segment" in models and len(models["segment"].output_names) > 1:
        recorder = models["segment"] = _Recorder(models["segment"])
    if req.explain and "beat" in models:
        beat_inputs = models["beat"] = _BeatInputs(models["beat"])
    try:
        msgs = run_record(record.name, config, models, record=record)
    except SourceError as err:  # a channel it does not have, a rate the detector refuses
        raise UploadError(422, str(err)) from None
    except ValueError as err:  # the pipeline refusing its input (e.g. the beat model's inputs)
        raise UploadError(422, f"{record.name}: {err}") from None
    lead_index = record.channel_index(config.replay.channel)
    segments = [m for m in msgs if isinstance(m, SegmentMessage)]
    seg_out = [SegmentOut(start=m.start, time_s=m.time_s, duration_s=m.duration_s, label=m.label,
                          probability=m.probability, probabilities=m.probabilities) for m in segments]
    vitals = [m for m in msgs if isinstance(m, VitalsMessage)]
    beats = [BeatOut(sample=m.sample, time_s=m.time_s, label=m.label, probability=m.probability, rr_ms=m.rr_ms)
             for m in msgs if isinstance(m, BeatMessage)]
    explain = None
    grid: GradCamGrid | None = None
    key: str | None = None
    explained: Explained | None = None
    if req.explain:
        key = secrets.token_urlsafe(9)
        explained = Explained(record.name, record.fs, record.signal[:, lead_index].astype(np.float32), [])
        explain = {"segments.attention": "the segment model's self-attention over each 10 s window, as the weight "
                                         "each step receives averaged over the steps attending (sums to 1; step "
                                         "k covers the window's k-th equal slice)"}
        if recorder is not None and len(recorder.rows) == len(seg_out):
            n = [round(m.duration_s * record.fs) for m in segments]
            explained.segments = [(m.start, k, m.label, m.probability, np.asarray(row, dtype=np.float64))
                                  for m, k, row in zip(segments, n, recorder.rows)]
            for i, (s, row) in enumerate(zip(seg_out, recorder.rows)):
                s.attention = [round(float(v), 6) for v in row]
                s.png = f"/v1/explain/{key}/segments/{i}.png"
            explain["segments.png"] = (f"each segment's trace with its attention: its 'png' link, kept for the last "
                                       f"{KEEP} explained analyses")
        else:
            explain["segments.attention"] = "not available: the segment model gives no attention output"
        explain["beats.spectrogram"] = "not available: no beat model"
        if beat_inputs is not None:
            explain["beats.spectrogram"], grid, explained.beats = _explain_beats(
                ctx, record.name, beats, beat_inputs, key)
        if not explained.segments and not explained.beats:
            key = explained = None
    answer = EcgAnalysis(
        record=RecordInfo(name=record.name, fs=record.fs, lead=record.channels[lead_index],
                          channels=list(record.channels), samples=record.n_samples,
                          duration_s=record.n_samples / record.fs),
        models={k: str(getattr(m, "name", k)) for k, m in ctx.models.items() if k in ("beat", "segment")},
        beats=beats,
        segments=seg_out,
        heart_rate=[RateOut(time_s=m.time_s, hr_bpm=m.hr_bpm) for m in vitals],
        alarms=[AlarmOut(**m.model_dump(include=set(AlarmOut.model_fields))) for m in msgs
                if isinstance(m, AlarmMessage)],
        events=[EventOut(level=m.level, code=m.code, text=m.text) for m in msgs if isinstance(m, EventMessage)]
        + [EventOut(level="error", code="model_unavailable", text=e) for e in ctx.model_errors],
        hr_method=vitals[-1].hr_method if vitals else None,
        explain=explain,
        gradcam_grid=grid,
    )
    return Answer(answer.model_dump_json().encode(), key, explained)


@dataclass(frozen=True)
class PcgRequest:
    part: Part
    max_duration_s: float = 3600.0


def analyze_pcg(req: PcgRequest, ctx: Context | None = None) -> bytes:
    """The JSON answer for a heart-sound upload, as the daemon's ``--pcg FILE`` stream gives it."""
    from ecgmon.monitor.pcg_pipeline import PcgPipeline
    from ecgmon.monitor.sources.audio_blocks import PCG_FS, AudioChunker
    from ecgmon.chunk import Chunk

    ctx = ctx or _PROCESS_CONTEXT
    assert ctx is not None, "worker started without its context"
    audio = read_audio(req.part, req.max_duration_s)
    config = ctx.config
    model = ctx.models.get("pcg")
    cycles = ctx.models.get("pcg_cycles")
    try:
        chunker = AudioChunker("upload", audio.fs, audio.samples.shape[1], config.audio, req.part.name)
        pipeline = PcgPipeline("upload", PCG_FS, config, model, cycles)
    except SourceError as err:  # a rate too low for heart sounds
        raise UploadError(422, str(err)) from None
    except ValueError as err:  # a calibration that does not fit the model
        raise UploadError(422, f"{req.part.name}: {err}") from None
    # Blocks of [replay] chunk_s, as the file source reads them.
    step = max(1, round(config.replay.chunk_s * audio.fs))
    msgs: list[Any] = []
    jobs = []
    events: list[EventOut] = []

    def take(items) -> None:
        for item in items:
            if isinstance(item, Chunk):
                msgs.extend(pipeline.feed(item))
                jobs.extend(pipeline.take_jobs())
            else:  # a SourceEvent: silence, clipping
                events.append(EventOut(level=item.level, code=item.code, text=item.text))

    take(chunker.take_events())
    for pos in range(0, audio.samples.shape[0], step):
        take(chunker.process(audio.samples[pos : pos + step]))
    take(chunker.process(np.zeros((0, audio.samples.shape[1]), dtype=np.float32), last=True))
    msgs.extend(run_jobs(jobs + pipeline.finish(), {k: m for k, m in (("pcg", model), ("pcg_cycles", cycles))
                                                    if m is not None}))
    updates = [m for m in msgs if isinstance(m, PcgMessage)]
    verdicts = [m for m in msgs if isinstance(m, PcgClassMessage)]
    env = np.concatenate([np.asarray(m.envelope, dtype=np.float64) for m in updates]) if updates else np.zeros(0)
    rates = [m.hr_bpm for m in updates if m.hr_bpm is not None]
    qualities = [m.quality for m in updates if m.quality is not None]
    if verdicts:
        v = verdicts[-1]
        verdict = PcgVerdict(label=v.label, method=v.method, reason=v.reason, probability=v.probability,
                             p_abnormal=v.p_abnormal,
                             threshold=v.threshold, calibrated=v.calibrated, windows=v.windows, rejected=v.rejected)
    else:
        why = "no model" if model is None and cycles is None else "too short"
        verdict = PcgVerdict(label="uncertain", reason=why, probability=None, p_abnormal=None, threshold=None,
                             calibrated=False, windows=0, rejected=0)
    answer = PcgAnalysis(
        name=audio.name, input_fs=audio.fs, duration_s=audio.samples.shape[0] / audio.fs,
        envelope=EnvelopeSummary(fs=pipeline.env_fs, samples=int(env.size),
                                 mean=float(env.mean()) if env.size else None,
                                 max=float(env.max()) if env.size else None, envelope=env.tolist()),
        s1_s=[t for m in updates for t in m.s1_s], s2_s=[t for m in updates for t in m.s2_s],
        hr_bpm=float(np.median(rates)) if rates else None,
        heart_rate=[RateOut(time_s=m.time_s, hr_bpm=m.hr_bpm) for m in updates],
        quality=float(np.median(qualities)) if qualities else None,
        verdict=verdict,
        events=events + [EventOut(level=m.level, code=m.code, text=m.text) for m in msgs
                         if isinstance(m, EventMessage)],
        model=getattr(cycles or model, "name", None),  # the pipeline's verdict is the rule's when there is one
    )
    return answer.model_dump_json().encode()
