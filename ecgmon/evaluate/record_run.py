"""A record driven through a stream pipeline and its models as fast as the CPU allows, with
no sockets or event loop: what the evaluators use to score the daemon's own outputs."""

from __future__ import annotations

from collections import defaultdict
from typing import Any, Iterable, Mapping

import numpy as np
import torch

from ecgmon.chunk import Chunk
from ecgmon.config import Config
from ecgmon.monitor.inference_job import InferenceJob
from ecgmon.monitor.model_loader import LoadedModel
from ecgmon.monitor.pipeline import StreamPipeline
from ecgmon.monitor.sources.record import RecordSource
from ecgmon.replay.records import Record
from ecgmon.schema import Message

# Two-second chunks, and model results at most LAG_S of signal after the beat: big enough
# batches to keep the per-call cost low, yet results reach beat_done about as soon after
# their signal as in a daemon replaying at full speed.
CHUNK_S = 2.0
LAG_S = 10.0
BATCH = 512


def _rows(out: Any, n: int) -> list[Any]:
    if isinstance(out, torch.Tensor):
        arr = out.float().cpu().numpy()
        return [arr[i] for i in range(n)]
    arrs = [o.float().cpu().numpy() for o in out]
    return [tuple(a[i] for a in arrs) for i in range(n)]


def run_jobs(jobs: Iterable[InferenceJob], models: Mapping[str, LoadedModel]) -> list[Message]:
    """Compute the jobs' models in batches, then finish them in order: their messages."""
    jobs = list(jobs)
    results: list[Any] = [None] * len(jobs)
    by_model: dict[str, list[int]] = defaultdict(list)
    for i, job in enumerate(jobs):
        if job.inputs is not None and job.model in models:
            by_model[job.model].append(i)
    for name, index in by_model.items():
        for lo in range(0, len(index), BATCH):
            part = index[lo : lo + BATCH]
            columns = [np.stack(c) for c in zip(*(jobs[i].inputs for i in part))]
            for i, row in zip(part, _rows(models[name](*columns), len(part))):
                results[i] = row
    out: list[Message] = []
    for job, result in zip(jobs, results):
        out.extend(job.finish(result))
    return out


def run_record(
    spec: str,
    config: Config,
    models: Mapping[str, LoadedModel],
    chunk_s: float = CHUNK_S,
    record: Record | None = None,
    lag_s: float = LAG_S,
) -> list[Message]:
    """Every message the daemon would publish for record ``spec`` (channel
    ``config.replay.channel``) with ``models`` ("beat", "segment"); model results come
    ``lag_s`` of signal late at most, as from a daemon's batcher.

    Raises SourceError when the record cannot be read.
    """
    source = RecordSource(spec, config, record=record)
    pipeline = StreamPipeline(
        source.stream, source.fs, source.lead, config, models.get("beat"), models.get("segment")
    )
    signal = source.record.signal[:, source.columns]
    step = max(1, round(chunk_s * source.fs))
    every = max(1, round(lag_s / chunk_s))
    out: list[Message] = []
    jobs: list[InferenceJob] = []
    for n, pos in enumerate(range(0, signal.shape[0], step), 1):
        chunk = Chunk(source.stream, source.fs, source.channels, pos, signal[pos : pos + step].copy())
        out.extend(pipeline.feed(chunk))
        jobs.extend(pipeline.take_jobs())
        if n % every == 0:
            out.extend(run_jobs(jobs, models))
            jobs = []
    out.extend(run_jobs(jobs + pipeline.finish(), models))
    return out
