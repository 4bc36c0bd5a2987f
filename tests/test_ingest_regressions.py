"""Issue 12's ingest reproductions as named regression tests, against a real mosquitto, real
ZeroMQ and the real daemon: a poison MQTT message (ragged samples), rates outside the
detector's range, the MQTT password in status, events and logs, and junk topics growing the
daemon's state."""

from __future__ import annotations

import asyncio
import logging
import math
import os
from pathlib import Path
import subprocess
import sys
import threading

import aiomqtt
import numpy as np
import pytest
import zmq
import zmq.asyncio

from ecgmon.chunk import SourceEvent
from ecgmon.config import Config, ConfigError, SerialConfig, SimulatorConfig, parse_config
from ecgmon.monitor.daemon import Daemon
from ecgmon.monitor.publisher import Publisher
from ecgmon.monitor.sources import mqtt_source
from ecgmon.monitor.sources.base import SourceError
from ecgmon.monitor.sources.factory import open_source, open_sources
from ecgmon.monitor.sources.mqtt_source import MqttSource
from ecgmon.monitor.sources.record import RecordSource
from ecgmon.monitor.sources.serial_source import parse_serial_spec
from ecgmon.monitor.sources.simulator import parse_sim_spec
from ecgmon.payloads.mqtt import HEADER, PayloadError, decode, encode_binary, encode_json
from ecgmon.replay.mqtt_emitter import emit_mqtt
from ecgmon.schema import BeatMessage, EventMessage, StatusMessage, parse_message

from mqtt_broker import Broker, mosquitto  # noqa: F401  (the fixture)
from test_mqtt_source import FirstChunks, reference_beats

REPO = Path(__file__).resolve().parent.parent
BAD_RATES = [1, 1e-9, 50, 80, 100, 1e5, math.nan, math.inf]
RAGGED = [[[1, 2], [3]], [1, [2]]]


def config() -> Config:
    c = Config()
    c.replay.speed = 0.0
    c.mqtt.reconnect_min_s = 0.1
    c.mqtt.reconnect_max_s = 0.5
    c.publisher.status_period_s = 0.2
    return c


def json_payload(seq: int = 0, start: int = 0, fs: float = 360.0, samples: object = (0.1, 0.2)) -> bytes:
    import json

    body = {"v": 1, "seq": seq, "start": start, "fs": fs, "samples": list(samples) if isinstance(samples, tuple) else samples}
    return json.dumps(body, allow_nan=True).encode()


class Monitor:
    """A Daemon with MQTT sources publishing on ZeroMQ, and a subscriber keeping every message.
    ``published`` holds every message the daemon published, as sent (JSON), including those
    sent before the subscriber had joined (``source_started``)."""

    def __init__(self, cfg: Config, sources: list, endpoint: str) -> None:
        self.ctx = zmq.asyncio.Context()
        self.sub = self.ctx.socket(zmq.SUB)
        self.sub.setsockopt(zmq.LINGER, 0)
        self.sub.setsockopt(zmq.RCVHWM, 0)
        for prefix in ("beat.", "event.", "status."):
            self.sub.setsockopt_string(zmq.SUBSCRIBE, prefix)
        self.sub.connect(endpoint)
        publisher = Publisher(endpoint, 100_000)
        self.published: list[str] = []
        send = publisher.publish

        def publish_and_keep(msg) -> bool:
            sent = send(msg)
            self.published.append(msg.model_dump_json())
            return sent

        publisher.publish = publish_and_keep  # type: ignore[method-assign]
        self.daemon = asyncio.create_task(Daemon(cfg, sources, publisher).run())
        self.msgs: list = []

    async def until(self, condition, timeout: float = 60.0) -> None:
        async def loop() -> None:
            while not condition():
                if self.daemon.done():
                    self.daemon.result()
                    raise AssertionError("the daemon ended")
                if await self.sub.poll(100):
                    self.msgs.append(parse_message((await self.sub.recv_multipart())[1]))

        await asyncio.wait_for(loop(), timeout)

    def status(self) -> StatusMessage | None:
        statuses = [m for m in self.msgs if isinstance(m, StatusMessage)]
        return statuses[-1] if statuses else None

    def faults(self, name: str) -> dict[str, int]:
        st = self.stream(name)
        return st.faults if st else {}

    def stream(self, name: str):
        st = self.status()
        found = [s for s in st.streams if s.stream == name] if st else []
        return found[0] if found else None

    def events(self, code: str | None = None) -> list[EventMessage]:
        return [m for m in self.msgs if isinstance(m, EventMessage) and code in (None, m.code)]

    def beats(self, stream: str) -> list[int]:
        return [m.sample for m in self.msgs if isinstance(m, BeatMessage) and m.stream == stream]

    async def stop(self) -> None:
        self.daemon.cancel()
        await asyncio.gather(self.daemon, return_exceptions=True)
        self.sub.close()
        self.ctx.term()


async def subscribed(mon: Monitor, caplog: pytest.LogCaptureFixture, times: int = 1) -> None:
    """Until the source has logged its subscription (granted by the broker) ``times`` times:
    from then on the broker keeps what is published for it."""
    caplog.set_level(logging.INFO, logger="ecgmon.mqtt")
    await mon.until(lambda: mon.status() is not None and caplog.text.count("subscribed to") >= times)


async def publish(broker: Broker, items: list[tuple[str, bytes]]) -> None:
    async with aiomqtt.Client("127.0.0.1", broker.port) as client:
        for topic, payload in items:
            await client.publish(topic, payload, qos=1)


# --------------------------------------------------------------------------- reproduction 1


@pytest.mark.parametrize("samples", RAGGED, ids=["[[1,2],[3]]", "[1,[2]]"])
def test_repro1_ragged_samples_are_a_payload_error(samples: list) -> None:
    with pytest.raises(PayloadError, match="flat list of numbers"):
        decode(json_payload(samples=samples))


async def test_repro1_poison_message_neither_stops_the_ward_nor_comes_back(mosquitto: Broker, endpoint: str,
                                                                          caplog) -> None:
    """A stream sending ragged samples next to a healthy one: the healthy one's beats are all
    published, and a daemon restarted with the same client id stays up (the poison message was
    acknowledged, so the broker does not deliver it again)."""
    cfg = config()
    n = 300  # 30 s of record 100
    spec = mosquitto.url("ward1/+/ecg")
    mon = Monitor(cfg, [MqttSource(spec, cfg, stream="ward1-ecg")], endpoint)
    try:
        await subscribed(mon, caplog)
        poison = [("ward1/bed9/ecg", json_payload(seq, 10 * seq, samples=RAGGED[seq % 2])) for seq in range(6)]
        bed3 = FirstChunks(RecordSource("mitdb:100", cfg), n)
        await asyncio.gather(emit_mqtt(bed3, mosquitto.url("ward1/bed3/ecg"), cfg, "binary"), publish(mosquitto, poison))
        await mon.until(lambda: mon.stream("bed3") is not None and mon.stream("bed3").samples == n * 36
                        and mon.faults("ward1-ecg").get("malformed") == len(poison))
        # The last beat waits for a successor; the ones before it are all out.
        await mon.until(lambda: len(mon.beats("bed3")) >= len(reference_beats("mitdb:100", n, cfg)) - 1)
    finally:
        await mon.stop()
    assert mon.events("source_failed") == []
    assert mon.beats("bed3") == reference_beats("mitdb:100", n, cfg)[: len(mon.beats("bed3"))]
    assert mon.stream("bed3").state == "running"
    assert mon.stream("bed9") is None  # it never sent a valid payload

    # Restarted with the same client id: the persistent session holds nothing to deliver again.
    again = Monitor(cfg, [MqttSource(spec, cfg, stream="ward1-ecg")], endpoint)
    try:
        await subscribed(again, caplog, times=2)
        await publish(mosquitto, [("ward1/bed3/ecg", encode_binary(n, n * 36, 360.0, "MLII", np.zeros(36)))])
        await again.until(lambda: again.stream("bed3") is not None and again.stream("bed3").samples == (n + 1) * 36)
        await again.until(lambda: sum(1 for m in again.msgs if isinstance(m, StatusMessage)) >= 5)
    finally:
        await again.stop()
    assert again.events("source_failed") == [] and again.events("corrupt_input") == []
    assert again.stream("ward1-ecg").state == "running"


async def test_repro1_an_unforeseen_failure_costs_one_message(mosquitto: Broker, monkeypatch) -> None:
    """Any exception while handling one message (here injected into the decoder for one topic)
    is counted and reported on the source's id; the message is acknowledged and the other
    streams go on."""
    real_decode = mqtt_source.decode

    def decode_or_fail(payload: bytes):
        if payload == b"boom":
            raise ZeroDivisionError("injected")
        return real_decode(payload)

    monkeypatch.setattr(mqtt_source, "decode", decode_or_fail)
    cfg = config()
    spec = mosquitto.url("ward1/+/ecg")
    items: list = []

    async def consume(source: MqttSource) -> None:
        async for item in source.chunks():
            items.append(item)

    async def until(condition) -> None:
        async def loop() -> None:
            while not condition():
                assert not task.done(), task.result()
                await asyncio.sleep(0.02)
        await asyncio.wait_for(loop(), 30)

    task = asyncio.create_task(consume(MqttSource(spec, cfg, stream="ward1-ecg")))
    try:
        # Publish only once subscribed: a valid probe comes through.
        async with aiomqtt.Client("127.0.0.1", mosquitto.port) as client:
            while not any(getattr(i, "stream", "") == "probe" for i in items if not isinstance(i, SourceEvent)):
                await client.publish("ward1/probe/ecg", encode_json(0, 0, 360.0, "II", np.zeros(1)), qos=1)
                await asyncio.sleep(0.1)
            for seq in range(3):
                await client.publish("ward1/bed5/ecg", b"boom", qos=1)
                await client.publish("ward1/bed3/ecg", encode_json(seq, 10 * seq, 360.0, "II", np.ones(10)), qos=1)
        await until(lambda: sum(1 for i in items if getattr(i, "stream", "") == "bed3" and not isinstance(i, SourceEvent)) == 3)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    failures = [i for i in items if isinstance(i, SourceEvent) and i.code == "internal_error"]
    assert failures and failures[0].stream == "ward1-ecg" and failures[0].level == "error"
    assert "ZeroDivisionError: injected" in failures[0].text
    # The failed messages were acknowledged: a new connection with the same session gets none.
    monkeypatch.setattr(mqtt_source, "decode", real_decode)
    items.clear()
    task = asyncio.create_task(consume(MqttSource(spec, cfg, stream="ward1-ecg")))
    try:
        async with aiomqtt.Client("127.0.0.1", mosquitto.port) as client:
            await client.publish("ward1/bed3/ecg", encode_json(3, 30, 360.0, "II", np.ones(10)), qos=1)
        await until(lambda: any(getattr(i, "stream", "") == "bed3" for i in items))
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    assert [i for i in items if isinstance(i, SourceEvent)] == []


# --------------------------------------------------------------------------- reproduction 2


@pytest.mark.parametrize("fs", BAD_RATES, ids=str)
@pytest.mark.parametrize("form", ["json", "binary"])
def test_repro2_payload_rate_outside_the_detector_range_is_malformed(fs: float, form: str) -> None:
    if form == "json":
        payload = json_payload(fs=fs)
    else:
        payload = HEADER.pack(b"ECG1", 1, 0, 1, 0, 0, fs, 0.001) + b"\x01\x00"
    with pytest.raises(PayloadError, match=r"outside the detector's range \(125-1000 Hz\)"):
        decode(payload)


# (NaN and inf are refused by every config section as not finite.)
@pytest.mark.parametrize("fs", [fs for fs in BAD_RATES if math.isfinite(fs)], ids=str)
def test_repro2_spec_and_config_rates_outside_the_detector_range_are_refused(fs: float) -> None:
    for parse, spec in [(lambda s: parse_serial_spec(s, SerialConfig()), f"serial:/dev/ttyUSB0?fs={fs!r}"),
                        (lambda s: parse_sim_spec(s, SimulatorConfig()), f"sim?fs={fs!r}")]:
        with pytest.raises(SourceError, match=r"parameter 'fs': sample rate .* outside the detector's range "
                                              r"\(125-1000 Hz\)") as err:
            parse(spec)
        assert "\n" not in str(err.value)
    for section in ("serial", "simulator"):
        with pytest.raises(ConfigError, match=rf"'{section}.fs': sample rate .* \(125-1000 Hz\)"):
            parse_config({section: {"fs": fs}})


def _ecgmon(*args: str) -> list[str]:
    return [sys.executable, "-m", "ecgmon.cli", *args]


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "ECGMON_CONFIG"}
    env["PYTHONPATH"] = str(REPO)
    return env


@pytest.mark.parametrize("args, config_text, needle", [
    (["--source", "serial:/dev/ttyECGmissing?fs=50"], None, "serial parameter 'fs'"),
    ([], "[run]\nsources = ['sim']\n[simulator]\nfs = 80.0\n", "'simulator.fs'"),
    (["--source", "serial:/dev/ttyECGmissing"], "[serial]\nfs = 2000.0\n", "'serial.fs'"),
], ids=["spec", "simulator-config", "serial-config"])
def test_repro2_run_refuses_a_rate_outside_the_range_at_start(args: list[str], config_text: str | None, needle: str,
                                                              tmp_path: Path, free_port: int) -> None:
    extra = []
    if config_text is not None:
        (tmp_path / "c.toml").write_text(config_text)
        extra = ["--config", str(tmp_path / "c.toml")]
    try:
        proc = subprocess.run(_ecgmon("run", *extra, *args, "--headless", "--endpoint", f"tcp://127.0.0.1:{free_port}"),
                              env=_env(), cwd=tmp_path, capture_output=True, text=True, timeout=90)
    except subprocess.TimeoutExpired as err:
        raise AssertionError("the daemon started instead of refusing the rate") from err
    assert proc.returncode == 2, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    assert needle in lines[0] and "125-1000 Hz" in lines[0], lines[0]


async def test_repro2_bad_payload_rates_are_counted_not_a_failed_stream(mosquitto: Broker, endpoint: str,
                                                                       caplog) -> None:
    cfg = config()
    mon = Monitor(cfg, [MqttSource(mosquitto.url("ward1/+/ecg"), cfg, stream="ward1-ecg")], endpoint)
    try:
        await subscribed(mon, caplog)
        # Each bad rate on a topic of its own, and after a valid start on bed3 too.
        items = [(f"ward1/rate{i}/ecg", json_payload(fs=fs)) for i, fs in enumerate(BAD_RATES)]
        items += [("ward1/bed3/ecg", json_payload(0, 0))]
        items += [("ward1/bed3/ecg", json_payload(1 + i, 2 + 2 * i, fs=fs)) for i, fs in enumerate(BAD_RATES)]
        items += [("ward1/bed3/ecg", json_payload(9, 2))]
        await publish(mosquitto, items)
        await mon.until(lambda: mon.stream("bed3") is not None and mon.stream("bed3").samples == 4
                        and mon.faults("bed3").get("malformed") == len(BAD_RATES)
                        and mon.faults("ward1-ecg").get("malformed") == len(BAD_RATES))
    finally:
        await mon.stop()
    assert mon.events("source_failed") == []
    assert {s.stream for s in mon.status().streams} == {"ward1-ecg", "bed3"}
    assert mon.stream("bed3").state == "running"
    assert "outside the detector's range" in mon.events("corrupt_input")[-1].text


# --------------------------------------------------------------------------- reproduction 5

SECRET_URL_PART = "nurse:s%40cret@"
SECRETS = ("s%40cret", "s@cret")


def assert_no_secret(text: str) -> None:
    for secret in SECRETS:
        assert secret not in text, f"{secret!r} in: ...{text[max(0, text.find(secret) - 80):text.find(secret) + 40]}..."


async def test_repro5_mqtt_password_never_in_status_events_or_logs(mosquitto: Broker, endpoint: str, caplog) -> None:
    caplog.set_level(logging.DEBUG)
    cfg = config()
    spec = f"mqtt://{SECRET_URL_PART}127.0.0.1:{mosquitto.port}/ward1/+/ecg"
    source = open_source(spec, cfg)
    assert source.spec == f"mqtt://nurse:***@127.0.0.1:{mosquitto.port}/ward1/+/ecg"
    mon = Monitor(cfg, [source], endpoint)
    try:
        await subscribed(mon, caplog)
        await publish(mosquitto, [("ward1/bed3/ecg", json_payload(0, 0)), ("ward1/bed3/ecg", b"junk")])
        await mon.until(lambda: mon.faults("bed3").get("malformed") == 1)
        # A broker outage: disconnected and reconnected events and their log lines.
        await asyncio.to_thread(mosquitto.stop)
        await mon.until(lambda: mon.events("disconnected"))
        await asyncio.to_thread(mosquitto.start)
        await mon.until(lambda: mon.events("reconnected"))
    finally:
        await mon.stop()
    started = [m for m in mon.published if '"code":"source_started"' in m]
    assert len(started) == 1 and "nurse:***@" in started[0]
    assert mon.stream("ward1-ecg").source == source.spec
    assert len(mon.published) > 5  # statuses and events
    assert_no_secret("\n".join(mon.published))
    assert_no_secret(caplog.text)
    assert_no_secret(repr(source.__dict__))


def test_repro5_mqtt_password_never_in_errors(tmp_path: Path) -> None:
    cfg = Config()
    for spec in [f"mqtt://{SECRET_URL_PART}h/a?color=red", f"mqtt://{SECRET_URL_PART}h/a?qos=9",
                 f"mqtt://{SECRET_URL_PART}h:99999/a", f"mqtt://{SECRET_URL_PART}h", f"mqtt://{SECRET_URL_PART}h/a+b"]:
        with pytest.raises(SourceError) as err:
            open_source(spec, cfg)
        assert "nurse:***@" in str(err.value)
        assert_no_secret(str(err.value))
    with pytest.raises(SourceError) as err:  # two sources under one stream id
        open_sources([f"a=mqtt://{SECRET_URL_PART}h/a", f"a=mqtt://{SECRET_URL_PART}h/b"], cfg)
    assert "nurse:***@" in str(err.value)
    assert_no_secret(str(err.value))
    cfg.mqtt.ca_file = str(tmp_path / "missing.pem")
    with pytest.raises(SourceError) as err:
        open_source(f"mqtts://{SECRET_URL_PART}h/a", cfg)
    assert_no_secret(str(err.value))
    with pytest.raises(ConfigError) as cerr:
        asyncio.run(emit_mqtt(None, f"mqtt://{SECRET_URL_PART}h/a?qos=1", Config(), "json"))
    assert_no_secret(str(cerr.value))
    # [mqtt] password: in no repr of the config or of a source, should one be logged.
    cfg = Config()
    cfg.mqtt.password = "s@cret"
    source = open_source("mqtt://nurse@h/a", cfg)
    assert source.link.has_password
    assert_no_secret(repr(cfg) + str(cfg) + repr(source.__dict__))


def test_repro5_run_logs_no_mqtt_password(mosquitto: Broker, free_port: int, tmp_path: Path) -> None:
    """``ecgmon run`` as a user starts it: not one line of its log holds the password."""
    url = f"mqtt://{SECRET_URL_PART}127.0.0.1:{mosquitto.port}/ward1/+/ecg"
    daemon = subprocess.Popen(_ecgmon("-v", "run", "--source", url, "--headless",
                                      "--endpoint", f"tcp://127.0.0.1:{free_port}"),
                              env=_env(), cwd=tmp_path, stderr=subprocess.PIPE, text=True)
    log: list[str] = []
    subscribed_line = threading.Event()

    def read_log() -> None:
        for line in daemon.stderr:
            log.append(line)
            if "subscribed to ward1/+/ecg" in line:
                subscribed_line.set()

    reader = threading.Thread(target=read_log, daemon=True)
    reader.start()
    try:
        assert subscribed_line.wait(60), "".join(log)
        asyncio.run(publish(mosquitto, [("ward1/bed3/ecg", json_payload(0, 0)), ("ward1/bed3/ecg", b"junk")]))
        mosquitto.stop()  # a disconnect, logged
        mosquitto.start()
    finally:
        daemon.terminate()
        daemon.wait(30)
        reader.join(10)
    text = "".join(log)
    assert "nurse:***@" in text
    assert_no_secret(text)


# --------------------------------------------------------------------------- reproduction 7


async def test_repro7_junk_topics_do_not_become_streams_and_streams_are_capped(mosquitto: Broker,
                                                                                endpoint: str, caplog) -> None:
    """300 topics that only ever send garbage (or a topic too long to name a stream) add no
    stream; valid topics beyond [mqtt]
    max_streams are counted and ignored, reported by a few rate-limited events."""
    cfg = config()
    cfg.mqtt.max_streams = 4
    n_junk, valid = 300, [f"bed{i}" for i in range(7)]
    mon = Monitor(cfg, [MqttSource(mosquitto.url("ward1/+/ecg"), cfg, stream="ward1-ecg")], endpoint)
    try:
        await subscribed(mon, caplog)
        junk = [(f"ward1/junk{i}/ecg", [b"", b"hello", json_payload(samples=[1, [2]]), json_payload(fs=50)][i % 4])
                for i in range(n_junk - 1)]
        junk.append((f"ward1/{'x' * 300}/ecg", json_payload()))  # valid, but no stream id of 300 characters
        good = [(f"ward1/{bed}/ecg", json_payload(seq, 2 * seq)) for seq in range(3) for bed in valid]
        await publish(mosquitto, junk + good)
        await mon.until(lambda: mon.faults("ward1-ecg").get("malformed") == n_junk
                        and mon.faults("ward1-ecg").get("over_stream_limit") == 3 * (len(valid) - 4))
        await mon.until(lambda: sum(s.samples for s in mon.status().streams) == 4 * 6)
    finally:
        await mon.stop()
    names = {s.stream for s in mon.status().streams}
    assert len(names) == 1 + 4 and names - {"ward1-ecg"} <= set(valid), names
    # Reported on the source's own id only, and rate-limited (one a second at most per code).
    for code in ("corrupt_input", "stream_limit"):
        events = mon.events(code)
        assert events and {e.stream for e in events} == {"ward1-ecg"}
        assert len(events) <= 10
    assert "[mqtt] max_streams" in mon.events("stream_limit")[0].text
    assert mon.events("source_failed") == []
