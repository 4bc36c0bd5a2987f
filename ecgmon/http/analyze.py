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
    AlarmOut, BeatOut, EcgAnalysis, EnvelopeSummary, EventOut, PcgAnalysis, PcgVerdict, RateOut, RecordInfo,
    SegmentOut,
)
from ecgmon.http.pictures import KEEP, Explained
from ecgmon.http.uploads import Part, UploadError, read_audio, read_ecg
from ecgmon.monitor.sources.base import SourceError
from ecgmon.schema import (
    AlarmMessage, BeatMessage, EventMessage, PcgClassMessage, PcgMessage, SegmentMessage, VitalsMessage,
)

log = logging.getLogger("ecgmon.http")


@dataclass
class Context:
    """What a worker analyses with: the daemon's configuration and its loaded models."""

    config: Config
    models: Mapping[str, Any]
    model_errors: list[str] = field(default_factory=list)


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


class _Saliency(_Recorder):
    """A beat model that also keeps, for every beat it classifies, the gradient-times-input
    saliency of its window for the class it chose (|dlogit/dx * x|, summing to 1): where in
    the beat the model looked. (Grad-CAM needs the model's inner layers, which a TorchScript
    file does not expose by name; the input gradient needs none.)"""

    def __call__(self, *inputs: Any) -> Any:
        import torch

        out = self._model(*inputs)
        model = self._model
        window = torch.as_tensor(np.asarray(inputs[0]), dtype=torch.float32, device=model.device).requires_grad_(True)
        rest = [torch.as_tensor(np.asarray(t), dtype=torch.float32, device=model.device) for t in inputs[1:]]
        with torch.enable_grad():
            res = model.module(window, *rest)
            logits = res[0] if isinstance(res, (tuple, list)) else res
            logits.max(dim=1).values.sum().backward()
        s = (window.grad * window).abs().detach().cpu().numpy().astype(np.float64)
        s /= s.sum(axis=1, keepdims=True) + 1e-12
        self.rows.extend(s)
        return out


def analyze_ecg(req: EcgRequest, ctx: Context | None = None) -> Answer:
    """The JSON answer for an ECG upload; UploadError (4xx) for an upload that cannot be analysed."""
    ctx = ctx or _PROCESS_CONTEXT
    assert ctx is not None, "worker started without its context"
    record = read_ecg(req.parts, req.max_bytes, req.max_duration_s, req.fs, req.unit)
    config = ctx.config.model_copy(deep=True)
    if req.channel is not None:
        config.replay.channel = req.channel
    models = dict(ctx.models)
    recorder = saliency = None
    if req.explain and "segment" in models and len(models["segment"].output_names) > 1:
        recorder = models["segment"] = _Recorder(models["segment"])
    if req.explain and "beat" in models:
        saliency = models["beat"] = _Saliency(models["beat"])
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
    explain = None
    key: str | None = None
    explained: Explained | None = None
    if req.explain:
        explain = {"segments.attention": "the segment model's self-attention over each 10 s window, as the weight "
                                         "each step receives averaged over the steps attending (sums to 1; step "
                                         "k covers the window's k-th equal slice)"}
        if recorder is not None and len(recorder.rows) == len(seg_out):
            key = secrets.token_urlsafe(9)
            n = [round(m.duration_s * record.fs) for m in segments]
            explained = Explained(record.name, record.fs, record.signal[:, lead_index].astype(np.float32),
                                  [(m.start, k, m.label, m.probability, np.asarray(row, dtype=np.float64))
                                   for m, k, row in zip(segments, n, recorder.rows)])
            for i, (s, row) in enumerate(zip(seg_out, recorder.rows)):
                s.attention = [round(float(v), 6) for v in row]
                s.png = f"/v1/explain/{key}/segments/{i}.png"
            explain["segments.png"] = (f"each segment's trace with its attention: its 'png' link, kept for the last "
                                       f"{KEEP} explained analyses")
        else:
            explain["segments.attention"] = "not available: the segment model gives no attention output"
        explain["beats.saliency"] = "not available: no beat model"
        if saliency is not None:
            beat_model = ctx.models["beat"]
            explain["beats.saliency"] = (
                f"gradient x input of the beat model's chosen class over each classified beat's window "
                f"({beat_model.window} samples at {beat_model.fs:g} Hz from {beat_model.before} before the R "
                f"peak), |.| summing to 1; Grad-CAM is not given (a TorchScript model does not expose its "
                f"layers), nor a picture of it")
    vitals = [m for m in msgs if isinstance(m, VitalsMessage)]
    beats = [BeatOut(sample=m.sample, time_s=m.time_s, label=m.label, probability=m.probability, rr_ms=m.rr_ms)
             for m in msgs if isinstance(m, BeatMessage)]
    if saliency is not None:
        # One row per computed beat job, in the order their beats finished: the labelled beats.
        labelled = [b for b in beats if b.label is not None]
        if len(labelled) == len(saliency.rows):
            for b, row in zip(labelled, saliency.rows):
                b.saliency = [round(float(v), 5) for v in row]
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
    try:
        chunker = AudioChunker("upload", audio.fs, audio.samples.shape[1], config.audio, req.part.name)
        pipeline = PcgPipeline("upload", PCG_FS, config, model)
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
    msgs.extend(run_jobs(jobs + pipeline.finish(), {"pcg": model} if model is not None else {}))
    updates = [m for m in msgs if isinstance(m, PcgMessage)]
    verdicts = [m for m in msgs if isinstance(m, PcgClassMessage)]
    env = np.concatenate([np.asarray(m.envelope, dtype=np.float64) for m in updates]) if updates else np.zeros(0)
    rates = [m.hr_bpm for m in updates if m.hr_bpm is not None]
    qualities = [m.quality for m in updates if m.quality is not None]
    if verdicts:
        v = verdicts[-1]
        verdict = PcgVerdict(label=v.label, reason=v.reason, probability=v.probability, p_abnormal=v.p_abnormal,
                             threshold=v.threshold, calibrated=v.calibrated, windows=v.windows, rejected=v.rejected)
    else:
        why = "no model" if model is None else "too short"
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
        model=getattr(model, "name", None),
    )
    return answer.model_dump_json().encode()
