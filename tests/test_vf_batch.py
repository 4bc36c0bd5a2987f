"""The daemon measures the VF analysis windows of all its streams together, in one call per
turn of the event loop (``Daemon._measure_windows``): each stream's alarms stay exactly those it
gets alone, and a window that trips a bug fails its own stream only. A stream's chunks that come
together (a backlog) are fed as one, with the same alarms."""

from __future__ import annotations

import asyncio
import dataclasses
from pathlib import Path
from typing import AsyncIterator

import numpy as np
import pytest
from zmq_helpers import collect_into, subscriber

from ecgmon.chunk import Chunk
from ecgmon.config import Config, DataConfig
from ecgmon.evaluate.record_run import run_record
from ecgmon.monitor.alarms import fibrillation
from ecgmon.monitor.alarms.engine import SIGNAL_KINDS
from ecgmon.monitor.daemon import Daemon
from ecgmon.monitor.model_loader import LoadedModel
from ecgmon.monitor.pipeline import StreamPipeline
from ecgmon.monitor.publisher import Publisher
from ecgmon.monitor.sources.record import RecordSource
from ecgmon.replay.records import Record, load_record
from ecgmon.schema import AlarmMessage, EventMessage, Message

# VF and flutter onsets at two sample rates: CUDB cu01 (250 Hz, VF from 214.2 s), MIT-BIH 207
# (360 Hz, V-tach at 38.5 s, flutter from 40.7 s) and CUDB cu13 (VF from 427.3 s).
SEGMENTS = {"bed1": ("cudb:cu01", 180, 260), "bed2": ("mitdb:207", 0, 80), "bed3": ("cudb:cu13", 400, 460)}


def _config() -> Config:
    config = Config()
    config.replay.speed = 0.0  # as fast as the CPU allows, yielding to the loop between chunks
    config.replay.chunk_s = 0.1  # live chunks: most carry no analysis window
    return config


def _segment(spec: str, a: float, b: float, data_dir: Path) -> Record:
    rec = load_record(spec, DataConfig(folder=str(data_dir), cache="/nonexistent"))
    return dataclasses.replace(rec, signal=rec.signal[round(a * rec.fs) : round(b * rec.fs)])


def _alarms(msgs: list[Message], stream: str | None = None) -> dict[str, list[dict]]:
    """The messages of each alarm kind decided on the signal's analysis windows (VF, asystole,
    the technical ones), in order, without what the wall clock, the publisher and the stream
    name (in the id) stamp. The beat kinds are left out: they clear when the beat model's
    answers allow, which come later in a daemon than in ``run_record``."""
    out: dict[str, list[dict]] = {}
    for m in msgs:
        if isinstance(m, AlarmMessage) and m.alarm in SIGNAL_KINDS and (stream is None or m.stream == stream):
            out.setdefault(m.alarm, []).append(m.model_dump(exclude={"pub", "seq", "wall", "raised_wall", "stream", "id"}))
    return out


class _Backlog:
    """A record source whose chunks come ``burst`` at a time within one turn of the event loop,
    as an MQTT client hands over the messages that queued while the daemon was busy."""

    def __init__(self, inner: RecordSource, burst: int) -> None:
        self.inner, self.burst = inner, burst
        self.stream, self.spec = inner.stream, inner.spec

    async def chunks(self) -> AsyncIterator[Chunk]:
        held: list[Chunk] = []
        async for chunk in self.inner.chunks():
            held.append(chunk)
            if len(held) == self.burst:
                for c in held:
                    yield c
                held = []
        for c in held:
            yield c


async def _run(
    config: Config, records: dict[str, tuple[str, Record]], models: dict[str, LoadedModel], endpoint: str,
    burst: int = 1,
) -> list[Message]:
    pub = Publisher(endpoint, 100_000)
    ctx, sub = await subscriber(endpoint, ("alarm.", "event."))
    msgs: list[Message] = []
    collector = asyncio.create_task(collect_into(sub, msgs))
    sources = [
        _Backlog(RecordSource(spec, config, stream=bed, record=rec), burst) for bed, (spec, rec) in records.items()
    ]
    try:
        await asyncio.wait_for(Daemon(config, sources, pub, models).run(), 120)
        await asyncio.sleep(0.3)
    finally:
        collector.cancel()
        sub.close()
        ctx.term()
    return msgs


async def test_streams_measured_together_keep_the_alarms_each_gets_alone(
    data_dir: Path, beat_model: dict[str, LoadedModel], endpoint: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = _config()
    records = {bed: (spec, _segment(spec, a, b, data_dir)) for bed, (spec, a, b) in SEGMENTS.items()}
    batches: list[int] = []
    measure = fibrillation.measure

    def counted(windows: np.ndarray) -> list[fibrillation.Measured]:
        batches.append(len(windows))
        return measure(windows)

    monkeypatch.setattr(fibrillation, "measure", counted)
    msgs = await _run(config, records, beat_model, endpoint)
    assert max(batches) == len(SEGMENTS)  # the streams' windows were measured together
    for bed, (spec, rec) in records.items():
        # With the beat model a stream's alarms do not depend on its chunking, so the daemon's live
        # 0.1 s chunks and run_record's 2 s ones must give the same.
        alone = _alarms(run_record(spec, config, beat_model, record=rec))
        assert any(a["state"] == "raised" for a in alone.get("vfib", [])), bed  # the test has VF to lose
        assert _alarms(msgs, bed) == alone, bed


async def test_a_backlog_is_fed_as_one_chunk_with_the_alarms_each_chunk_gives(
    data_dir: Path, beat_model: dict[str, LoadedModel], endpoint: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Ten chunks of each stream come at once: the daemon feeds them as one (its fixed cost per
    call paid once, as a daemon behind its sources needs), and each stream's alarms are those
    it gets chunk by chunk."""
    config = _config()
    records = {bed: (spec, _segment(spec, a, b, data_dir)) for bed, (spec, a, b) in SEGMENTS.items()}
    fed: list[int] = []
    feed_steps = StreamPipeline.feed_steps

    def counted(self: StreamPipeline, chunk: Chunk):
        fed.append(chunk.n)
        return feed_steps(self, chunk)

    monkeypatch.setattr(StreamPipeline, "feed_steps", counted)
    msgs = await _run(config, records, beat_model, endpoint, burst=10)
    chunks = sum(-(-rec.signal.shape[0] // round(config.replay.chunk_s * rec.fs)) for _, rec in records.values())
    assert sum(fed) == sum(rec.signal.shape[0] for _, rec in records.values())  # every sample, once
    assert len(fed) <= -(-chunks // 10) + len(records)  # fed ten chunks at a time
    for bed, (spec, rec) in records.items():
        alone = _alarms(run_record(spec, config, beat_model, record=rec))
        assert any(a["state"] == "raised" for a in alone.get("vfib", [])), bed
        assert _alarms(msgs, bed) == alone, bed


async def test_a_window_that_trips_a_bug_fails_its_own_stream_only(
    data_dir: Path, beat_model: dict[str, LoadedModel], endpoint: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """bed2's signal is scaled far beyond any ECG, and measuring such a window raises (an
    injected bug): bed2 restarts, and then stops, while bed1, measured in the same batches,
    gets all its alarms."""
    config = _config()
    spec, a, b = SEGMENTS["bed1"]
    bed1 = _segment(spec, a, b, data_dir)
    bed2 = dataclasses.replace(bed1, signal=bed1.signal * 1e4)
    measure = fibrillation.measure

    def buggy(windows: np.ndarray) -> list[fibrillation.Measured]:
        if np.abs(windows).max() > 1e3:
            raise RuntimeError("injected bug")
        return measure(windows)

    monkeypatch.setattr(fibrillation, "measure", buggy)
    msgs = await _run(config, {"bed1": (spec, bed1), "bed2": (spec, bed2)}, beat_model, endpoint)
    faults = [m for m in msgs if isinstance(m, EventMessage) and m.code in ("stream_reset", "stream_failed")]
    assert {m.stream for m in faults} == {"bed2"}
    assert "measuring a VF window: RuntimeError: injected bug" in faults[0].text
    monkeypatch.setattr(fibrillation, "measure", measure)
    alone = _alarms(run_record(spec, config, beat_model, record=bed1))
    assert "vfib" in alone and _alarms(msgs, "bed1") == alone
