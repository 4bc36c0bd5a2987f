"""The MQTT source and the MQTT device simulator against a real mosquitto on loopback: same beats
as the in-process replay, nothing lost across a broker restart or a daemon away, malformed
payloads counted and harmless."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
import subprocess
import sys
import threading
import time

import aiomqtt
import numpy as np
import pytest
import zmq
import zmq.asyncio

from ecgmon.chunk import Chunk, SourceEvent
from ecgmon.config import Config
from ecgmon.monitor.daemon import Daemon
from ecgmon.monitor.pipeline import StreamPipeline
from ecgmon.monitor.publisher import Publisher
from ecgmon.monitor.sources.base import SourceError
from ecgmon.monitor.sources.factory import open_source, stream_id
from ecgmon.monitor.sources.event_throttle import EVENT_PERIOD_S
from ecgmon.monitor.sources.mqtt_source import MqttSource, StreamState
from ecgmon.monitor.sources.record import RecordSource
from ecgmon.payloads.mqtt import EcgPayload, encode_json
from ecgmon.replay.mqtt_emitter import emit_mqtt
from ecgmon.schema import BeatMessage, EventMessage, StatusMessage, parse_message

from mqtt_broker import Broker, mosquitto  # noqa: F401  (the fixture)

REPO = Path(__file__).resolve().parent.parent


def config(speed: float = 0.0) -> Config:
    c = Config()
    c.replay.speed = speed
    c.mqtt.reconnect_min_s = 0.1
    c.mqtt.reconnect_max_s = 0.5
    c.publisher.status_period_s = 0.2
    return c


class FirstChunks:
    """The first ``n`` chunks of a source: a record replay that ends early (and may pause after
    ``pause_after`` chunks until ``resume`` is set)."""

    def __init__(self, source, n: int, pause_after: int | None = None,
                 resume: asyncio.Event | None = None) -> None:
        self.source, self.n, self.spec, self.stream = source, n, source.spec, source.stream
        self.pause_after, self.resume = pause_after, resume
        self.sent = 0

    async def chunks(self):
        async for chunk in self.source.chunks():
            yield chunk
            self.sent += 1
            if self.sent >= self.n:
                return
            if self.sent == self.pause_after:
                await self.resume.wait()


def reference_beats(spec: str, n_chunks: int | None, cfg: Config) -> list[int]:
    """R-peak indices of the in-process replay: the record's chunks fed to a StreamPipeline."""
    src = RecordSource(spec, cfg)
    pipe = StreamPipeline("ref", src.fs, src.lead, cfg)
    x = src.record.signal[:, src.channel : src.channel + 1]  # the lead MQTT carries
    step = src.chunk_samples
    end = x.shape[0] if n_chunks is None else min(x.shape[0], n_chunks * step)
    beats = []
    for pos in range(0, end, step):
        chunk = Chunk("ref", src.fs, (src.lead,), pos, x[pos : min(pos + step, end)].copy())
        beats += [m.sample for m in pipe.feed(chunk) if isinstance(m, BeatMessage)]
    return beats


class Collector:
    """Runs an MqttSource, keeping its chunks and events, and feeds each stream's pipeline."""

    def __init__(self, source: MqttSource, cfg: Config, slow_s: float = 0.0) -> None:
        self.source, self.cfg, self.slow_s = source, cfg, slow_s
        self.chunks: dict[str, list[Chunk]] = {}
        self.events: list[SourceEvent] = []
        self.beats: dict[str, list[int]] = {}
        self.waits: dict[str, list[float]] = {}  # per stream: when each chunk was taken less its arrival
        self._pipes: dict[str, StreamPipeline] = {}
        self.task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        async for item in self.source.chunks():
            if isinstance(item, Chunk):
                self.waits.setdefault(item.stream, []).append(time.time() - item.received)
            if self.slow_s:  # a busy daemon: stopped here, it has not consumed the item
                await asyncio.sleep(self.slow_s)
            if isinstance(item, SourceEvent):
                self.events.append(item)
                continue
            self.chunks.setdefault(item.stream, []).append(item)
            pipe = self._pipes.get(item.stream)
            if pipe is None:
                pipe = self._pipes[item.stream] = StreamPipeline(item.stream, item.fs, item.channels[0], self.cfg)
            self.beats.setdefault(item.stream, []).extend(
                m.sample for m in pipe.feed(item) if isinstance(m, BeatMessage))

    def end(self, stream: str) -> int:
        """One past the last sample received (so a test waits for the end even after a loss)."""
        chunks = self.chunks.get(stream)
        return chunks[-1].end if chunks else 0

    def codes(self) -> list[str]:
        return [e.code for e in self.events]

    async def until(self, condition, timeout: float = 60.0) -> None:
        async def wait() -> None:
            while not condition():
                if self.task.done():
                    self.task.result()
                    raise AssertionError("the source ended")
                await asyncio.sleep(0.02)

        await asyncio.wait_for(wait(), timeout)

    async def stop(self) -> None:
        self.task.cancel()
        await asyncio.gather(self.task, return_exceptions=True)


def assert_contiguous(chunks: list[Chunk], first: int = 0) -> None:
    starts = np.array([c.start for c in chunks])
    ends = np.array([c.end for c in chunks])
    assert starts[0] == first
    bad = np.nonzero(starts[1:] != ends[:-1])[0]
    assert bad.size == 0, f"discontinuities after chunks {bad[:5]}: {[(ends[i], starts[i + 1]) for i in bad[:5]]}"


async def subscribed(broker: Broker, cfg: Config, topic: str = "ward1/+/ecg", slow_s: float = 0.0) -> Collector:
    """A collector whose subscription exists at the broker (so its session keeps what comes)."""
    col = Collector(MqttSource(broker.url(topic), cfg, stream="ward1-ecg"), cfg, slow_s)
    # Subscribed once the broker counts the client as connected with its subscription: a probe
    # message on a matching topic comes back through it.
    async with aiomqtt.Client("127.0.0.1", broker.port) as probe:
        probe_topic = topic.replace("+", "probe").replace("#", "probe")
        while not any("probe" in s for s in col.chunks):
            await probe.publish(probe_topic, encode_json(0, 0, 360.0, "II", np.zeros(1)), qos=1)
            await asyncio.sleep(0.1)
            if col.task.done():
                col.task.result()
    return col


# --------------------------------------------------------------------------- stream continuity


def payload(seq: int, start: int, n: int = 10, fs: float = 100.0) -> EcgPayload:
    return EcgPayload(seq, start, fs, "II", np.arange(start, start + n, dtype=np.float32))


def test_continuity_gaps_duplicates_late_overlap_and_restart() -> None:
    st = StreamState("bed3")
    assert st.accept(payload(0, 0))[:2][0] == 0
    start, samples, notes = st.accept(payload(1, 10))
    assert (start, samples.size, notes) == (10, 10, [])
    # Two messages lost: the chunk comes with its true start, and the loss is reported.
    start, samples, notes = st.accept(payload(4, 40))
    assert (start, samples[0]) == (40, 40)
    assert [n[:2] for n in notes] == [("signal_loss", "warning")]
    assert "20 samples (0.20 s) lost before sample 40" in notes[0][2]
    # A QoS 1 redelivery of something already passed on: dropped.
    start, samples, notes = st.accept(payload(1, 10))
    assert samples is None and notes[0][0] == "duplicate_input"
    # A lost message arriving after all: late, dropped (the pipeline has moved on).
    assert st.accept(payload(2, 20))[1] is None
    # A payload overlapping the last one: only its new samples go on.
    start, samples, _ = st.accept(payload(5, 45))
    assert (start, samples.tolist()) == (50, [50, 51, 52, 53, 54])
    assert st.counts == {"gaps": 1, "lost_samples": 20, "duplicates": 2, "late": 1}
    # A device that restarts counts from 0 again: taken as a restart, not as old duplicates,
    # and the stream goes on from where it was (it never goes back in time).
    for seq in range(6, 200):
        st.accept(payload(seq, 55 + (seq - 6) * 10))
    assert st.next_start == 1995
    start, samples, notes = st.accept(payload(0, 0))
    assert (start, samples[0]) == (1995, 0)
    assert notes[0][0] == "stream_restarted"
    start, samples, notes = st.accept(payload(1, 10))
    assert (start, samples.size, notes) == (2005, 10, [])
    assert st.accept(payload(1, 10))[1] is None  # and its redelivery is a duplicate
    assert st.counts["restarts"] == 1


def test_events_are_rate_limited_with_cumulative_counts() -> None:
    st = StreamState("bed3")
    st.count("malformed")
    first = st.event("corrupt_input", "warning", "one", now=100.0)
    assert first is not None and first.counts == {"malformed": 1}
    st.count("malformed")
    assert st.event("corrupt_input", "warning", "two", now=100.5) is None
    assert st.next_flush() == 100.0 + EVENT_PERIOD_S
    assert st.flush(100.9) == []
    (held,) = st.flush(101.0)
    assert (held.text, held.counts) == ("two", {"malformed": 2})
    assert st.next_flush() is None
    # Another code is limited on its own.
    assert st.event("signal_loss", "warning", "gap", now=101.1) is not None


def test_stream_limit_frees_the_places_of_idle_streams() -> None:
    """At ``[mqtt] max_streams`` a new topic is refused, unless a stream has been silent for
    ``[publisher] idle_stream_s`` (it has left the daemon too): its place goes to the new one."""
    cfg = Config()
    cfg.mqtt.max_streams = 2
    source = MqttSource("mqtt://h/ward1/+/ecg", cfg, stream="ward1-ecg")

    def chunks(bed: str) -> list[str]:
        items = source._handle(f"ward1/{bed}/ecg", encode_json(0, 0, 360.0, "II", np.zeros(3)))
        return [i.stream for i in items if isinstance(i, Chunk)]

    assert chunks("bed1") == ["bed1"] and chunks("bed2") == ["bed2"]
    assert chunks("bed3") == [] and source.counts == {"over_stream_limit": 1}
    source._streams["bed1"].last_valid -= cfg.publisher.idle_stream_s  # silent that long
    assert chunks("bed3") == ["bed3"]
    assert sorted(source._streams) == ["bed2", "bed3"]
    assert chunks("bed1") == []  # now bed1 is the one refused


def test_held_events_fall_due_in_order_whatever_streams_hold_them() -> None:
    """The next held event is looked for among the throttles that hold one (a ward of a
    thousand streams must not scan them all on every message): a corrupt payload on bed2 then
    bed1 and one on a topic that never sent a valid payload (the source's own), each the second
    within a second, come out in the source's order (its own, then its streams') once due, and
    nothing is held after."""
    cfg = Config()
    source = MqttSource("mqtt://h/ward1/+/ecg", cfg, stream="ward1-ecg")
    for bed in ("bed1", "bed2"):
        source._handle(f"ward1/{bed}/ecg", encode_json(0, 0, 360.0, "II", np.zeros(3)))
    assert source._next_flush() is None
    for _ in range(2):
        for topic in ("ward1/bed2/ecg", "ward1/bed1/ecg", "ward1/bed9/ecg"):
            source._handle(topic, b"junk")
    due = source._next_flush()
    assert due is not None and due > time.monotonic()
    assert source._flush(due - 0.5) == []
    flushed = source._flush(due + EVENT_PERIOD_S)
    assert [ev.stream for ev in flushed] == ["ward1-ecg", "bed1", "bed2"]
    assert source._next_flush() is None and source._holding == set()


# --------------------------------------------------------------------------- specs


def test_specs_and_client_ids(tmp_path: Path) -> None:
    cfg = Config()
    a = open_source("mqtt://127.0.0.1:1883/ward1/+/ecg", cfg)
    b = open_source("icu=mqtt://nurse:secret@127.0.0.1/icu/#?qos=0&keepalive_s=10", cfg)
    assert isinstance(a, MqttSource) and isinstance(b, MqttSource)
    assert (a.stream, a.client_id, a.options.qos) == ("ward1-ecg", "ecgmon-ward1-ecg", 1)
    assert (b.stream, b.client_id, b.options.qos, b.options.keepalive_s) == ("icu", "ecgmon-icu", 0, 10)
    assert (b.url.port, b.link.username, b.link._password) == (1883, "nurse", "secret")
    assert stream_id("mqtt://h/ward1/+/ecg?qos=1") == "ward1-ecg"
    assert not a.options.second_lead and MqttSource("mqtt://h/a?second_lead=true", cfg, stream="a").options.second_lead
    c = MqttSource("mqtt://h/a/b?client_id=gateway7", cfg, stream="a-b")
    assert c.client_id == "gateway7"
    assert MqttSource("mqtts://h/a", cfg, stream="a").link.tls is not None  # the system's trust store
    for spec, needle in [
        ("mqtt://h/a?color=red", "unknown MQTT parameter 'color'"),
        ("mqtt://h/a?qos=3", "bad value for 'qos'"),
        ("mqtt://h/a?keepalive_s=soon", "bad value for 'keepalive_s'"),
        ("mqtt://h/a?second_lead=maybe", "bad value for 'second_lead'"),
        ("mqtt://h/a?client_id=", "non-empty client_id"),
        ("mqtt://h/a/b+/c", "'+' must fill a whole level"),
        ("mqtt://h:70000/a", "bad broker address"),
        ("mqtt://h", "no topic"),
    ]:
        with pytest.raises(SourceError) as err:
            open_source(spec, cfg)
        assert needle in str(err.value), (spec, str(err.value))
    bad_ca = tmp_path / "ca.pem"
    bad_ca.write_text("not a certificate\n")
    for ca in (bad_ca, tmp_path / "missing.pem"):
        cfg.mqtt.ca_file = str(ca)
        with pytest.raises(SourceError, match="cannot use CA file"):
            open_source("mqtts://h/a", cfg)


async def test_broker_down_at_start_is_an_event_then_it_connects(tmp_path: Path) -> None:
    from conftest import free_tcp_port

    cfg = config()
    broker = Broker(tmp_path / "late", free_tcp_port())
    col = Collector(MqttSource(broker.url("ward1/+/ecg"), cfg, stream="ward1-ecg"), cfg)
    try:
        await col.until(lambda: "disconnected" in col.codes())
        ev = col.events[0]
        assert (ev.stream, ev.level, ev.counts) == ("ward1-ecg", "error", {"disconnects": 1})
        assert f"cannot connect to mqtt://127.0.0.1:{broker.port} (" in ev.text
        broker.start()
        await col.until(lambda: "reconnected" in col.codes())
        assert col.codes() == ["disconnected", "reconnected"]  # one event per outage, not per retry
    finally:
        await col.stop()
        broker.stop()


# --------------------------------------------------------------------------- end to end


async def test_replay_to_broker_to_source_gives_the_same_beats(mosquitto: Broker) -> None:
    cfg = config(speed=0)
    n = 1200  # two minutes of record 100
    col = await subscribed(mosquitto, cfg)
    try:
        record = FirstChunks(RecordSource("mitdb:100", cfg), n)
        await emit_mqtt(record, mosquitto.url("ward1/bed3/ecg"), cfg, "binary")
        await col.until(lambda: col.end("bed3") == n * 36)
    finally:
        await col.stop()
    assert_contiguous(col.chunks["bed3"])
    assert col.chunks["bed3"][0].fs == 360.0 and col.chunks["bed3"][0].channels == ("MLII",)
    assert col.beats["bed3"] == reference_beats("mitdb:100", n, cfg)
    assert len(col.beats["bed3"]) > 120
    assert [e.code for e in col.events] == []


async def test_broker_restart_mid_stream_loses_nothing(mosquitto: Broker) -> None:
    cfg = config(speed=30)
    n = 1500  # 150 s of record in about 5 s
    col = await subscribed(mosquitto, cfg)
    try:
        record = FirstChunks(RecordSource("mitdb:100", cfg), n)
        emitter = asyncio.create_task(emit_mqtt(record, mosquitto.url("ward1/bed3/ecg"), cfg, "json"))
        await col.until(lambda: len(col.chunks.get("bed3", [])) >= 200)
        await asyncio.to_thread(mosquitto.stop)  # SIGTERM: the broker saves sessions and queues
        await col.until(lambda: "disconnected" in col.codes())
        sent_while_down = record.sent
        await asyncio.sleep(1.0)  # the replay goes on, into the emitter's outbox
        assert record.sent > sent_while_down
        await asyncio.to_thread(mosquitto.start)
        await asyncio.wait_for(emitter, 60)
        await col.until(lambda: col.end("bed3") == n * 36)
    finally:
        await col.stop()
    # Repeats (a message in flight at the stop, sent again) may be reported; losses may not.
    assert [c for c in col.codes() if c != "duplicate_input"] == ["disconnected", "reconnected"]
    assert_contiguous(col.chunks["bed3"])
    assert col.beats["bed3"] == reference_beats("mitdb:100", n, cfg)


class CuttableLink:
    """A TCP relay to the broker that can swallow what the client sends (as a dead network
    does) and then cut the connection: publishes in that window are never acknowledged."""

    def __init__(self, broker_port: int) -> None:
        self.broker_port = broker_port
        self.swallow = False
        self._conns: list[asyncio.StreamWriter] = []

    async def start(self) -> int:
        self._server = await asyncio.start_server(self._relay, "127.0.0.1", 0)
        return self._server.sockets[0].getsockname()[1]

    async def _relay(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.broker_port)
        self._conns += [writer, up_writer]

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter, upstream: bool) -> None:
            while data := await src.read(65536):
                if not (upstream and self.swallow):
                    dst.write(data)
                    await dst.drain()
            dst.close()

        await asyncio.gather(pipe(reader, up_writer, True), pipe(up_reader, writer, False),
                             return_exceptions=True)

    def cut(self) -> None:
        for w in self._conns:
            w.transport.abort()
        self._conns.clear()
        self.swallow = False

    async def close(self) -> None:
        self.cut()
        self._server.close()
        await self._server.wait_closed()


async def test_publishes_lost_on_a_dead_link_are_sent_again(mosquitto: Broker) -> None:
    cfg = config(speed=30)
    n = 600
    link = CuttableLink(mosquitto.port)
    port = await link.start()
    col = await subscribed(mosquitto, cfg)
    try:
        record = FirstChunks(RecordSource("mitdb:100", cfg), n)
        emitter = asyncio.create_task(emit_mqtt(record, f"mqtt://127.0.0.1:{port}/ward1/bed3/ecg", cfg, "json"))
        await col.until(lambda: len(col.chunks.get("bed3", [])) >= 100)
        link.swallow = True
        swallowed_from = record.sent
        await asyncio.sleep(0.5)
        assert record.sent > swallowed_from + 5  # these were sent into the void, unacknowledged
        link.cut()
        await asyncio.wait_for(emitter, 60)
        await col.until(lambda: col.end("bed3") == n * 36)
    finally:
        await col.stop()
        await link.close()
    assert "signal_loss" not in col.codes()
    assert_contiguous(col.chunks["bed3"])


async def test_daemon_away_gets_what_was_published_meanwhile(mosquitto: Broker) -> None:
    # Published as fast as possible to a daemon slower than that, so that messages are still
    # queued in its client when it stops; the second half only once it has gone.
    cfg = config(speed=0)
    n = 3000
    away = asyncio.Event()
    first = await subscribed(mosquitto, cfg, slow_s=0.002)
    record = FirstChunks(RecordSource("mitdb:100", cfg), n, pause_after=n // 2, resume=away)
    emitter = asyncio.create_task(emit_mqtt(record, mosquitto.url("ward1/bed3/ecg"), cfg, "json"))
    try:
        await first.until(lambda: len(first.chunks.get("bed3", [])) >= 150)
        await first.stop()  # the daemon goes away; its session stays at the broker
        assert len(first.chunks["bed3"]) < n // 2
        away.set()
        await asyncio.wait_for(emitter, 60)  # the rest is published while it is away
    finally:
        emitter.cancel()
        await first.stop()
    # The same spec and stream give the same client id: the session's queue is delivered.
    second = Collector(MqttSource(mosquitto.url("ward1/+/ecg"), cfg, stream="ward1-ecg"), cfg)
    try:
        await second.until(lambda: second.end("bed3") == n * 36)
    finally:
        await second.stop()
    # Nothing lost, nothing twice: every message was acknowledged only once consumed.
    assert_contiguous(first.chunks["bed3"] + second.chunks["bed3"])
    assert second.codes() == []


async def test_a_chunk_arrives_when_its_message_comes_not_when_it_is_taken(mosquitto: Broker) -> None:
    """Messages waiting in the client for a busy daemon have arrived all the same: a chunk's
    ``received`` (the start of every latency the daemon reports) is when paho read its message,
    so the wait shows in the beats' latency instead of vanishing from it."""
    cfg = config()
    col = await subscribed(mosquitto, cfg, slow_s=0.05)
    n = 30
    try:
        async with aiomqtt.Client("127.0.0.1", mosquitto.port) as device:
            for seq in range(n):
                await device.publish("ward1/bed3/ecg", encode_json(seq, 3 * seq, 360.0, "II", np.zeros(3)), qos=1)
        await col.until(lambda: len(col.chunks.get("bed3", [])) == n)
    finally:
        await col.stop()
    waits = col.waits["bed3"]
    # mosquitto has up to 20 messages in flight to the client: the last of them waited for the
    # ~19 before it, 0.05 s each.
    assert min(waits) >= 0 and max(waits) > 0.5
    assert [c.start for c in col.chunks["bed3"]] == [3 * seq for seq in range(n)]


async def test_malformed_payloads_are_counted_and_harmless(mosquitto: Broker, endpoint: str) -> None:
    cfg = config(speed=10)
    n = 600
    garbage = [b"", b"hello", b'{"v": 1, "seq": "x"}', b"ECG1\x01", b'{"v":1,"seq":0,"start":0,"fs":360,"samples":[NaN]}']
    source = MqttSource(mosquitto.url("ward1/+/ecg"), cfg, stream="ward1-ecg")
    publisher = Publisher(endpoint, 100_000)
    ctx = zmq.asyncio.Context()
    sub = ctx.socket(zmq.SUB)
    sub.setsockopt(zmq.LINGER, 0)
    sub.setsockopt(zmq.RCVHWM, 0)
    for prefix in ("beat.", "event.", "status."):
        sub.setsockopt_string(zmq.SUBSCRIBE, prefix)
    sub.connect(endpoint)
    daemon = asyncio.create_task(Daemon(cfg, [source], publisher).run())
    msgs: list = []

    async def receive_until(condition, timeout: float = 60.0) -> None:
        async def loop() -> None:
            while not condition():
                if daemon.done():
                    daemon.result()
                if await sub.poll(100):
                    msgs.append(parse_message((await sub.recv_multipart())[1]))

        await asyncio.wait_for(loop(), timeout)

    def status(stream: str):
        statuses = [m for m in msgs if isinstance(m, StatusMessage)]
        found = [s for s in statuses[-1].streams if s.stream == stream] if statuses else []
        return found[0] if found else None

    def malformed() -> int:
        return max([m.counts.get("malformed", 0) for m in msgs
                    if isinstance(m, EventMessage) and m.stream == "bed3" and m.code == "corrupt_input"],
                   default=0)

    async def vandal() -> int:
        # Junk on a live stream is that stream's fault count (junk on a topic that never sent
        # a valid payload is the source's: test_ingest_regressions).
        while "bed3" not in source._streams:
            await asyncio.sleep(0.01)
        sent = 0
        async with aiomqtt.Client("127.0.0.1", mosquitto.port) as client:
            for _ in range(20):
                for junk in garbage:
                    await client.publish("ward1/bed3/ecg", junk, qos=1)
                    sent += 1
                await asyncio.sleep(0.05)
        return sent

    try:
        await receive_until(lambda: status("ward1-ecg") is not None)  # ZeroMQ and daemon up
        await asyncio.sleep(0.5)  # the source's subscription is in place
        bed3 = FirstChunks(RecordSource("mitdb:100", cfg), n)
        bed4 = FirstChunks(RecordSource("mitdb:119", cfg), n)
        _, _, n_junk = await asyncio.gather(
            emit_mqtt(bed3, mosquitto.url("ward1/bed3/ecg"), cfg, "json"),
            emit_mqtt(bed4, mosquitto.url("ward1/bed4/ecg"), cfg, "binary"),
            vandal(),
        )
        await receive_until(lambda: all(status(s) and status(s).samples == n * 36 for s in ("bed3", "bed4"))
                            and malformed() == n_junk)
    finally:
        daemon.cancel()
        await asyncio.gather(daemon, return_exceptions=True)
        sub.close()
        ctx.term()
    beats = {s: [m.sample for m in msgs if isinstance(m, BeatMessage) and m.stream == s] for s in ("bed3", "bed4")}
    assert beats["bed3"] == reference_beats("mitdb:100", n, cfg)
    assert beats["bed4"] == reference_beats("mitdb:119", n, cfg)
    corrupt = [m for m in msgs if isinstance(m, EventMessage) and m.code == "corrupt_input"]
    assert {m.stream for m in corrupt} == {"bed3"} and corrupt[0].level == "warning"
    # Rate-limited: far fewer events than bad payloads, the last one with the full count.
    assert len(corrupt) < n_junk / 4
    assert "malformed payload on ward1/bed3/ecg" in corrupt[0].text
    assert status("bed3").faults == {"malformed": n_junk}
    assert status("bed4").faults == {} and status("bed3").state == "running"


# --------------------------------------------------------------------------- the commands


def _ecgmon(*args: str) -> list[str]:
    return [sys.executable, "-m", "ecgmon.cli", *args]


def test_cli_replay_to_mqtt_and_run_from_mqtt(mosquitto: Broker, free_port: int, tmp_path: Path) -> None:
    """``ecgmon replay ... --to mqtt://`` and ``ecgmon run --source mqtt://`` as a user runs them:
    the daemon's beats on ZeroMQ equal those of the in-process replay of the whole record."""
    env = {k: v for k, v in os.environ.items() if k != "ECGMON_CONFIG"}
    env["PYTHONPATH"] = str(REPO)
    endpoint = f"tcp://127.0.0.1:{free_port}"
    daemon = subprocess.Popen(
        _ecgmon("run", "--source", mosquitto.url("ward1/+/ecg"), "--headless", "--endpoint", endpoint),
        env=env, cwd=tmp_path, stderr=subprocess.PIPE, text=True)
    log: list[str] = []
    subscribed = threading.Event()

    def read_log() -> None:
        for line in daemon.stderr:
            log.append(line)
            if "subscribed to ward1/+/ecg" in line:
                subscribed.set()

    threading.Thread(target=read_log, daemon=True).start()
    ctx = zmq.Context()
    sub = ctx.socket(zmq.SUB)
    sub.setsockopt(zmq.LINGER, 0)
    sub.setsockopt(zmq.RCVHWM, 0)
    sub.setsockopt_string(zmq.SUBSCRIBE, "beat.bed3")
    sub.setsockopt_string(zmq.SUBSCRIBE, "status.")
    sub.connect(endpoint)
    try:
        assert subscribed.wait(30), "".join(log)
        assert sub.poll(30_000), "no status from the daemon"  # our subscription is live
        replay = subprocess.run(
            _ecgmon("replay", "mitdb:100", "--to", mosquitto.url("ward1/bed3/ecg"), "--speed", "0",
                    "--chunk-s", "1", "--format", "binary"),
            env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300)
        assert replay.returncode == 0, replay.stderr
        assert "published 1806 payloads" in replay.stderr
        expected = reference_beats("mitdb:100", None, config())
        beats: list[int] = []
        samples = 0
        # The last beat has no successor: the daemon classifies it once the stream has been
        # quiet for a while, so wait a few status periods past the last sample for it.
        statuses_after_end = 0
        while samples < 650_000 or (len(beats) < len(expected) and statuses_after_end < 30):
            assert sub.poll(60_000), f"stalled at {samples} samples: {''.join(log)}"
            msg = parse_message(sub.recv_multipart()[1])
            if isinstance(msg, BeatMessage):
                beats.append(msg.sample)
            elif isinstance(msg, StatusMessage):
                samples = max([s.samples for s in msg.streams if s.stream == "bed3"], default=0)
                statuses_after_end += samples >= 650_000
    finally:
        sub.close()
        ctx.term()
        daemon.terminate()
        daemon.wait(30)
    assert daemon.returncode == 0, "".join(log)
    assert "Traceback" not in "".join(log)
    assert beats == expected
    assert len(beats) > 2000


@pytest.mark.parametrize("args, needle", [
    (["--to", "mqtt://127.0.0.1:1883/ward1/+/ecg"], "has a wildcard"),
    (["--to", "mqtt://127.0.0.1:1883"], "no topic"),
    (["--to", "mqtt://127.0.0.1:1883/a?qos=0"], "unknown parameter 'qos'"),
    (["--to", "mqtt://127.0.0.1:1883/a", "--format", "ascii"], "json or binary"),
])
def test_cli_replay_bad_mqtt_target_is_one_line(args: list[str], needle: str, tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "ECGMON_CONFIG"}
    env["PYTHONPATH"] = str(REPO)
    proc = subprocess.run(_ecgmon("replay", "mitdb:100", *args), env=env, cwd=tmp_path,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and needle in lines[0], proc.stderr
