"""The daemon with models: classified beats on the ZeroMQ stream, in order and equal to the
offline run of the same pipeline; a missing, corrupt or mismatched model is one clear event
and beats go on unclassified."""

from __future__ import annotations

import dataclasses

import pytest

from ecgmon.config import Config
from ecgmon.monitor.daemon import Daemon
from ecgmon.monitor.model_set import load_models
from ecgmon.evaluate.record_run import run_record
from ecgmon.monitor.sources.record import RecordSource
from ecgmon.replay.records import load_record
from ecgmon.schema import BeatMessage, EventMessage, SegmentMessage, StatusMessage
from zmq_helpers import PREFIXES, daemon_messages

SECONDS = 120


@pytest.fixture
def record119(data_dir):
    rec = load_record("mitdb:119", Config().data)
    return dataclasses.replace(rec, signal=rec.signal[: int(SECONDS * rec.fs)], ann_samples=None, ann_symbols=None)


async def _run(endpoint: str, config: Config, record, models, errors) -> list:
    source = RecordSource("mitdb:119", config, stream="bed1", record=record)
    return await daemon_messages(endpoint, lambda pub: Daemon(config, [source], pub, models, errors),
                                 PREFIXES + ("segment.",), 120)


async def test_beats_on_the_stream_carry_the_offline_classes(endpoint: str, record119) -> None:
    config = Config()
    config.replay.speed = 0
    models, errors = load_models(config.models)
    msgs = await _run(endpoint, config, record119, models, errors)
    beats = [m for m in msgs if isinstance(m, BeatMessage)]
    offline = [m for m in run_record("mitdb:119", config, models, record=record119) if isinstance(m, BeatMessage)]
    assert [b.sample for b in beats] == [b.sample for b in offline]  # all, in order
    # Batches of other sizes may round differently, never enough to change more than a tie.
    differ = sum(a.label != b.label for a, b in zip(beats, offline))
    assert differ <= 1
    assert {b.label for b in beats} >= {"N", "V"}  # 119: ventricular bigeminy
    segments = [m for m in msgs if isinstance(m, SegmentMessage)]
    assert len(segments) == (SECONDS - 10) // 5 + 1
    status = [m for m in msgs if isinstance(m, StatusMessage)][-1]
    assert status.models["beat"]["items"] >= len(beats) - 1
    assert status.models["beat"]["failed_items"] == 0


@pytest.mark.parametrize("setting, needle", [
    ("corrupt", "not used"),
    ("segment-attention-cnn.pt", "segment model, not a beat model"),
    ("missing.pt", "not found"),
])
async def test_an_unusable_model_is_one_event_and_beats_go_on(endpoint, record119, tmp_path, setting, needle):
    config = Config()
    config.replay.speed = 0
    if setting == "corrupt":
        bad = tmp_path / "beat.pt"
        bad.write_bytes(b"\x00garbage")
        (tmp_path / "beat.json").write_text("{}")
        setting = str(bad)
    config.models.beat = setting
    config.models.segment = ""
    models, errors = load_models(config.models)
    assert "beat" not in models and len(errors) == 1
    msgs = await _run(endpoint, config, record119, models, errors)
    events = [m for m in msgs if isinstance(m, EventMessage) and m.code == "model_unavailable"]
    assert len(events) == 1 and needle in events[0].text and "[models] beat" in events[0].text
    beats = [m for m in msgs if isinstance(m, BeatMessage)]
    assert len(beats) > SECONDS  # detection goes on (119 runs near 70 bpm)
    assert all(b.label is None for b in beats)
