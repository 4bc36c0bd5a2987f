"""A bug inside one stream's pipeline stays in that stream (issue 12): the stream restarts
afresh with an event, and after too many failures stops; its source's other streams and the
daemon go on. A real mosquitto, a real MQTT source carrying two streams, real records, a real
ZeroMQ subscriber; the bug is injected into one stream's pipeline by a monkeypatched method.
"""

from __future__ import annotations

import asyncio
import gc
from pathlib import Path
import time
import weakref

import aiomqtt
import numpy as np
import pytest

from ecgmon.chunk import Chunk
from ecgmon.config import Config
from ecgmon.monitor import daemon as daemon_module
from ecgmon.monitor.daemon import Daemon
from ecgmon.monitor.model_set import load_models
from ecgmon.monitor.pcg_pipeline import PcgPipeline
from ecgmon.monitor.pipeline import StreamPipeline
from ecgmon.monitor.publisher import Publisher
from ecgmon.monitor.sources.factory import open_pcg_sources
from ecgmon.monitor.sources.mqtt_source import MqttSource
from ecgmon.monitor.sources.record import RecordSource
from ecgmon.payloads.mqtt import encode_json
from ecgmon.replay.mqtt_emitter import emit_mqtt
from ecgmon.schema import AlarmMessage, BeatMessage, EventMessage, Message, StatusMessage
from mqtt_broker import Broker, mosquitto  # noqa: F401  (the fixture)
from zmq_helpers import collect_into, subscriber

CHUNKS = 400  # 0.1 s chunks: 40 s of each record
STEP = 36  # samples per chunk at 360 Hz


def config() -> Config:
    c = Config()
    c.replay.speed = 20.0
    c.mqtt.reconnect_min_s = 0.1
    c.mqtt.reconnect_max_s = 0.5
    c.publisher.status_period_s = 0.2
    return c


class FirstChunks:
    """The first ``n`` chunks of a record replay."""

    def __init__(self, source: RecordSource, n: int) -> None:
        self.source, self.n, self.spec, self.stream = source, n, source.spec, source.stream

    async def chunks(self):
        sent = 0
        async for chunk in self.source.chunks():
            yield chunk
            sent += 1
            if sent >= self.n:
                return


def reference_beats(spec: str, cfg: Config) -> list[int]:
    """R-peak samples of the record's first CHUNKS chunks through a pipeline of its own."""
    src = RecordSource(spec, cfg)
    pipe = StreamPipeline("ref", src.fs, src.lead, cfg)
    x = src.record.signal[: CHUNKS * STEP, src.channel : src.channel + 1]  # the lead a pipeline reads
    out = []
    for pos in range(0, x.shape[0], STEP):
        chunk = Chunk("ref", src.fs, (src.lead,), pos, x[pos : pos + STEP].copy())
        out += [m.sample for m in pipe.feed(chunk) if isinstance(m, BeatMessage)]
    return out


class Watch:
    """A daemon under test and everything a real subscriber received from it."""

    def __init__(self, daemon: Daemon, endpoint: str) -> None:
        self.daemon, self.endpoint = daemon, endpoint
        self.msgs: list[Message] = []

    async def start(self) -> None:
        self.ctx, self.sub = await subscriber(self.endpoint)
        self.collector = asyncio.create_task(collect_into(self.sub, self.msgs))
        self.task = asyncio.create_task(self.daemon.run())

    async def stop(self) -> None:
        self.task.cancel()
        await asyncio.gather(self.task, return_exceptions=True)
        self.collector.cancel()
        self.sub.close()
        self.ctx.term()

    def events(self, stream: str, *codes: str) -> list[EventMessage]:
        return [m for m in self.msgs if isinstance(m, EventMessage) and m.stream == stream and m.code in codes]

    def beats(self, stream: str) -> list[int]:
        return [m.sample for m in self.msgs if isinstance(m, BeatMessage) and m.stream == stream]

    def status(self, stream: str):
        statuses = [m for m in self.msgs if isinstance(m, StatusMessage)]
        found = [s for s in statuses[-1].streams if s.stream == stream] if statuses else []
        return found[0] if found else None

    async def until(self, condition, what: str, timeout: float = 90.0) -> None:
        t0 = time.monotonic()
        while not condition():
            if self.task.done():
                self.task.result()
                raise AssertionError(f"the daemon ended while waiting for {what}")
            assert time.monotonic() - t0 < timeout, f"timed out waiting for {what}"
            await asyncio.sleep(0.05)


async def _mqtt_daemon(broker: Broker, endpoint: str, cfg: Config, models=None) -> Watch:
    """A daemon on ward1/+/ecg, once its subscription is live; the caller stops it."""
    source = MqttSource(broker.url("ward1/+/ecg"), cfg, stream="ward1")
    watch = Watch(Daemon(cfg, [source], Publisher(endpoint, 100_000), models=models), endpoint)
    await watch.start()
    try:
        # The source is subscribed once a probe comes back through it as a stream of its own.
        async with aiomqtt.Client("127.0.0.1", broker.port) as probe:
            while watch.status("probe") is None:
                await probe.publish("ward1/probe/ecg", encode_json(0, 0, 360.0, "II", np.zeros(1)), qos=1)
                await asyncio.sleep(0.2)
                if watch.task.done():
                    watch.task.result()
    except BaseException:
        await watch.stop()
        raise
    return watch


async def _two_mqtt_streams(broker: Broker, endpoint: str, models=None) -> Watch:
    """A daemon on ward1/+/ecg; mitdb 100 replayed to bed3 and 119 to bed4, bed3 all in."""
    cfg = config()
    watch = await _mqtt_daemon(broker, endpoint, cfg, models)
    try:
        await asyncio.gather(
            emit_mqtt(FirstChunks(RecordSource("mitdb:100", cfg), CHUNKS), broker.url("ward1/bed3/ecg"), cfg, "binary"),
            emit_mqtt(FirstChunks(RecordSource("mitdb:119", cfg), CHUNKS), broker.url("ward1/bed4/ecg"), cfg, "binary"),
        )
        await watch.until(lambda: (watch.status("bed3") and watch.status("bed3").samples == CHUNKS * STEP),
                          "all of bed3")
    except BaseException:
        await watch.stop()
        raise
    return watch


async def test_a_bug_in_one_streams_pipeline_restarts_it_and_spares_the_others(
    mosquitto: Broker, endpoint: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """bed4's pipeline raises on its chunk at 10 s (once), then on every chunk from 30 s: it
    restarts afresh three times and then stops; bed3, on the same MQTT source, loses nothing."""
    real_feed = StreamPipeline.feed_steps  # the daemon feeds in steps (its VF windows measured together)

    def buggy_feed(self: StreamPipeline, chunk: Chunk):
        if self.stream == "bed4" and (chunk.start == 100 * STEP or chunk.start >= 300 * STEP):
            raise RuntimeError("injected bug")
        return (yield from real_feed(self, chunk))

    monkeypatch.setattr(StreamPipeline, "feed_steps", buggy_feed)
    watch = await _two_mqtt_streams(mosquitto, endpoint)
    try:
        await watch.until(lambda: watch.events("bed4", "stream_failed"), "bed4 to stop")
        await watch.until(lambda: watch.status("bed4").state == "failed", "bed4's status")
        assert not watch.task.done()  # the daemon runs on
    finally:
        await watch.stop()
    faults = watch.events("bed4", "stream_reset", "stream_failed")
    assert [m.code for m in faults] == ["stream_reset"] * 3 + ["stream_failed"]
    assert all(m.level == "error" and "RuntimeError: injected bug" in m.text for m in faults)
    assert "starts afresh with its next chunk" in faults[0].text and "stays stopped" in faults[-1].text
    assert [m.counts["pipeline_errors"] for m in faults] == [1, 2, 3, 4]
    # Restarted after the first failure: bed4 went on detecting beats between 10 s and 30 s.
    assert any(100 * STEP < s < 300 * STEP for s in watch.beats("bed4"))
    assert watch.beats("bed3") == reference_beats("mitdb:100", config())
    assert watch.status("bed3").state == "running" and watch.status("bed4").faults["pipeline_errors"] == 4
    assert not watch.events("ward1", "source_failed") and not watch.events("bed3", "stream_reset", "stream_failed")


async def test_a_bug_finishing_a_model_job_restarts_only_its_stream(
    mosquitto: Broker, endpoint: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With the shipped beat model, bed4's classified beat at about 10 s raises in its job's
    finish (the alarm side of the pipeline): bed4 restarts, bed3 is classified throughout."""
    models, errors = load_models(Config().models.model_copy(update={"segment": "", "pcg": ""}))
    assert errors == []
    real_done = StreamPipeline.beat_done
    raised: list[int] = []

    def buggy_done(self: StreamPipeline, msg: BeatMessage):
        if self.stream == "bed4" and msg.sample > 100 * STEP and not raised:
            raised.append(msg.sample)
            raise RuntimeError("injected bug in beat_done")
        return real_done(self, msg)

    monkeypatch.setattr(StreamPipeline, "beat_done", buggy_done)
    watch = await _two_mqtt_streams(mosquitto, endpoint, models)
    try:
        await watch.until(lambda: any(s > 300 * STEP for s in watch.beats("bed4")), "bed4 going on")
    finally:
        await watch.stop()
    faults = watch.events("bed4", "stream_reset", "stream_failed")
    assert [m.code for m in faults] == ["stream_reset"]
    assert "finishing a model job: RuntimeError: injected bug in beat_done" in faults[0].text
    bed3 = [m for m in watch.msgs if isinstance(m, BeatMessage) and m.stream == "bed3"]
    # The last beat may still wait for its successor; every other one is there and classified.
    ref = reference_beats("mitdb:100", config())
    assert [m.sample for m in bed3] == ref[: len(bed3)] and len(bed3) >= len(ref) - 1
    assert sum(m.label is None for m in bed3) <= 1  # the first beat's window starts before the record


async def test_a_bug_in_a_heart_sound_pipeline_stops_only_that_stream(
    data_dir: Path, endpoint: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A heart-sound pipeline that always raises restarts three times, then its stream stops;
    the ECG stream of the same patient runs to its end, and so does the daemon."""

    def buggy_feed(self: PcgPipeline, chunk: Chunk):
        raise ValueError("injected bug")

    monkeypatch.setattr(PcgPipeline, "feed", buggy_feed)
    cfg = config()
    cfg.replay.speed = 0
    heart_sounds = data_dir / "pcg2016" / "training-a" / "a0001.flac"
    sources = [FirstChunks(RecordSource("mitdb:100", cfg, stream="bed1"), 200),
               *open_pcg_sources([f"bed1={heart_sounds}"], cfg)]
    pub = Publisher(endpoint, 100_000)
    ctx, sub = await subscriber(endpoint)
    msgs: list[Message] = []
    collector = asyncio.create_task(collect_into(sub, msgs))
    try:
        await asyncio.wait_for(Daemon(cfg, sources, pub).run(), 120)  # returns: both sources ended
        await asyncio.sleep(0.3)
    finally:
        collector.cancel()
        sub.close()
        ctx.term()
    faults = [m.code for m in msgs if isinstance(m, EventMessage) and m.code in ("stream_reset", "stream_failed")]
    assert faults == ["stream_reset"] * daemon_module.RESTART_LIMIT + ["stream_failed"]
    assert len([m for m in msgs if isinstance(m, BeatMessage) and m.stream == "bed1"]) > 15
    final = [m for m in msgs if isinstance(m, StatusMessage)][-1]
    states = {(s.stream, s.source.startswith("mitdb")): s.state for s in final.streams}
    assert states == {("bed1", True): "ended", ("bed1", False): "failed"}


class BeatsThenPause:
    """Spikes every 0.8 s for 8 s, then a pause: only noise (20 uV) for the rest of 40 s."""

    def __init__(self) -> None:
        self.stream, self.spec, self.fs, self.lead = "bed1", "test:bed1", 360.0, "II"

    async def chunks(self):
        n = int(40 * self.fs)
        t = np.arange(n) / self.fs
        x = np.where(((t % 0.8) < 0.02) & (t < 8), 1.5, 0.0) + np.random.default_rng(0).normal(0, 0.02, n)
        for start in range(0, n, STEP):
            yield Chunk(self.stream, self.fs, (self.lead,), start, x[start : start + STEP, None].astype(np.float32))
            await asyncio.sleep(0)


async def test_a_restarted_pipeline_keeps_the_alarms_of_the_one_before(
    endpoint: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Asystole is raised in the pause; then a bug restarts the stream's pipeline. The alarm
    must not vanish unannounced (a dashboard would show it for ever, nobody could acknowledge
    it) and no later alarm may come under its id: it goes on in the new pipeline."""
    feed = StreamPipeline.feed_steps
    failed: list[int] = []

    def buggy_feed(self: StreamPipeline, chunk: Chunk):
        if chunk.start >= 20 * 360 and not failed:
            failed.append(chunk.start)
            raise RuntimeError("injected bug")
        return (yield from feed(self, chunk))

    monkeypatch.setattr(StreamPipeline, "feed_steps", buggy_feed)
    pub = Publisher(endpoint, 100_000)
    ctx, sub = await subscriber(endpoint, ("alarm.", "event."))
    msgs: list[Message] = []
    collector = asyncio.create_task(collect_into(sub, msgs))
    daemon = Daemon(config(), [BeatsThenPause()], pub)
    try:
        await asyncio.wait_for(daemon.run(), 60)
        await asyncio.sleep(0.3)
    finally:
        collector.cancel()
        sub.close()
        ctx.term()
    reset = next(i for i, m in enumerate(msgs) if isinstance(m, EventMessage) and m.code == "stream_reset")
    alarms = [(i, m) for i, m in enumerate(msgs) if isinstance(m, AlarmMessage)]
    raised = [m.id for _, m in alarms if m.state == "raised"]
    assert len(raised) == len(set(raised)), raised
    asystole = next(m.id for i, m in alarms if m.alarm == "asystole" and i < reset)
    after = [m for i, m in alarms if i > reset and m.id == asystole]
    assert after, "the asystole alarm vanished with the pipeline that raised it"
    assert after[-1].state == "updated" and after[-1].latched and after[-1].acknowledged_by is None
    # The new pipeline sees the pause go on (it has no beat to date it from: the signal's start).
    assert "ended" not in after[-1].text, after[-1].text
    # Still there to be acknowledged, in the new pipeline.
    engine = daemon._streams[next(iter(daemon._streams))].pipeline.alarms
    assert engine.acknowledge(asystole, "nurse").acknowledged_by == "nurse"


# -- idle streams ----------------------------------------------------------------------------------


class Shifted:
    """A replay's chunks placed ``by`` samples later on the stream clock (a device back later)."""

    def __init__(self, source: FirstChunks, by: int) -> None:
        self.source, self.by, self.spec, self.stream = source, by, source.spec, source.stream

    async def chunks(self):
        async for c in self.source.chunks():
            yield Chunk(c.stream, c.fs, c.channels, c.start + self.by, c.samples)


async def test_an_idle_stream_leaves_and_starts_afresh_when_data_returns(mosquitto: Broker, endpoint: str) -> None:
    """Issue 12, reproduction 7 (the daemon's side): an MQTT topic silent for idle_stream_s
    leaves the status and its pipeline is freed; data again makes it a new stream, with events."""
    cfg = config()
    cfg.publisher.idle_stream_s = 1.0
    watch = await _mqtt_daemon(mosquitto, endpoint, cfg)
    url = mosquitto.url("ward1/bed3/ecg")
    try:
        await emit_mqtt(FirstChunks(RecordSource("mitdb:100", cfg), 100), url, cfg, "binary")
        await watch.until(lambda: watch.status("bed3") and watch.status("bed3").samples == 100 * STEP, "bed3's data")
        pipeline = weakref.ref(next(s.pipeline for s in watch.daemon.streams if s.stream == "bed3"))
        await watch.until(lambda: watch.events("bed3", "stream_idle"), "bed3 to be idle")
        await watch.until(lambda: watch.status("bed3") is None, "a status without bed3")
        assert watch.status("ward1") is not None  # the source itself stays
        assert "bed3" not in {s.stream for s in watch.daemon.streams}
        gc.collect()
        assert pipeline() is None  # its memory is freed
        # The device comes back (its sample clock went on meanwhile): a new stream from there.
        later = 10 * 60 * 360
        await emit_mqtt(Shifted(FirstChunks(RecordSource("mitdb:100", cfg), 100), later), url, cfg, "binary")
        await watch.until(lambda: watch.status("bed3") and watch.status("bed3").samples == later + 100 * STEP,
                          "bed3 back")
    finally:
        await watch.stop()
    codes = [m.code for m in watch.events("bed3", "stream_started", "stream_idle")]
    assert codes[:3] == ["stream_started", "stream_idle", "stream_started"]  # (idle again since, maybe)
    assert watch.events("bed3", "stream_idle")[0].level == "warning"
    back = [m for m in watch.msgs if isinstance(m, BeatMessage) and m.stream == "bed3" and m.sample >= later]
    assert back and back[0].rr_ms is None  # afresh: nothing carried over the silence
    assert [m.sample - later for m in back] == reference_beats("mitdb:100", cfg)[: len(back)]
