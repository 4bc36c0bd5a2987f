"""A second ECG lead from a device (issue 13, item 3): a serial port (``lead2=N``, through a real
pseudo-terminal) or an MQTT topic (``second_lead=true``, through a real mosquitto) carrying both
leads of a real two-lead record gives the same beats, the same beat-model inputs and the same
classes as the record replayed in process with its second lead (through a StreamPipeline with the
shipped beat model, and through one daemon serving both); a missing or malformed second lead is
NaN in the second lead only (the first exact, one event), and monitoring goes on."""

from __future__ import annotations

import asyncio
import dataclasses
from pathlib import Path
import time

import aiomqtt
import numpy as np
import pytest
import torch

from mqtt_broker import Broker, mosquitto  # noqa: F401  (the fixture)

from ecgmon.chunk import Chunk, SourceEvent
from ecgmon.config import Config, DataConfig
from ecgmon.monitor.dsp.beat_features import FIRST_LEAD2
from ecgmon.monitor.daemon import Daemon
from ecgmon.monitor.model_set import load_models
from ecgmon.monitor.pipeline import StreamPipeline
from ecgmon.monitor.sources.mqtt_source import MqttSource
from ecgmon.monitor.sources.record import RecordSource
from ecgmon.monitor.sources.serial_source import SerialSource
from ecgmon.payloads.mqtt import encode_binary, encode_json
from ecgmon.replay.mqtt_emitter import emit_mqtt
from ecgmon.replay.records import load_record
from ecgmon.replay.serial_emitter import emit_serial
from ecgmon.schema import BeatMessage, EventMessage
from zmq_helpers import daemon_messages

MINUTES = 3


@pytest.fixture(scope="module")
def rec119(data_dir):
    """Three minutes of mitdb 119 (bigeminy: a third of its beats V), both leads."""
    record = load_record("mitdb:119", DataConfig(folder=str(data_dir), cache="/nonexistent"))
    n = int(MINUTES * 60 * record.fs)
    keep = record.ann_samples < n
    return dataclasses.replace(record, signal=record.signal[:n].copy(), ann_samples=record.ann_samples[keep],
                               ann_symbols=[s for s, k in zip(record.ann_symbols, keep) if k])


@pytest.fixture(scope="module")
def beat_model():
    torch.set_num_threads(1)
    models, errors = load_models(Config().models)
    assert errors == [] and "beat" in models
    return models["beat"]


def make_config() -> Config:
    config = Config()
    config.replay.speed = 0
    config.replay.chunk_s = 0.1
    config.serial.reconnect_min_s = 0.1
    config.serial.reconnect_max_s = 0.4
    return config


def classified(chunks: list[Chunk], model) -> tuple[list[tuple[int, str]], list[np.ndarray], np.ndarray]:
    """Beats of ``chunks`` through a StreamPipeline with the beat model, as the daemon runs
    them: ``[(sample, class)]``, each beat's model features, and each class probability."""
    pipe = StreamPipeline("s", chunks[0].fs, chunks[0].channels[0], Config(), model, None)
    jobs = []
    for chunk in chunks:
        pipe.feed(chunk)
        jobs.extend(pipe.take_jobs())
    jobs.extend(pipe.finish())
    assert all(j.model == "beat" for j in jobs)
    todo = [j for j in jobs if j.inputs is not None]
    outputs: dict[int, np.ndarray] = {}
    for i in range(0, len(todo), 256):  # as the batcher does: stack, run, one row per job
        batch = todo[i : i + 256]
        out = model(*[torch.from_numpy(np.stack(col)) for col in zip(*(j.inputs for j in batch))])
        logits = (out[0] if isinstance(out, (tuple, list)) else out).numpy()
        outputs.update((id(j), logits[k].copy()) for k, j in enumerate(batch))
    messages = [m for j in jobs for m in j.finish(outputs.get(id(j))) if isinstance(m, BeatMessage)]
    features = [j.inputs[1] for j in jobs if j.inputs is not None]
    return ([(m.sample, m.label) for m in messages], features,
            np.array([m.probability or 0.0 for m in messages]))


async def replay_chunks(record, config: Config) -> list[Chunk]:
    return [c async for c in RecordSource("mitdb:119", config, record=record).chunks() if isinstance(c, Chunk)]


async def wait_path(path: Path, timeout: float = 10) -> None:
    t0 = time.monotonic()
    while not path.exists():
        assert time.monotonic() - t0 < timeout, f"{path} did not appear"
        await asyncio.sleep(0.01)


async def over_pty(record, tmp_path: Path, fmt: str, query: str, corrupt=None) -> tuple[list[Chunk], list[SourceEvent]]:
    """The record sent by the serial emitter (both leads: ASCII columns or frame channels) and
    read back by a SerialSource with ``query``, until the emitter is done."""
    config = make_config()
    link = tmp_path / "ttyECG"
    emitter = asyncio.create_task(emit_serial(RecordSource("mitdb:119", config, record=record),
                                              f"serial:{link}", config, fmt, corrupt=corrupt))
    chunks: list[Chunk] = []
    events: list[SourceEvent] = []
    try:
        await wait_path(link)
        source = SerialSource(f"serial:{link}?fs=360&format={fmt}&{query}", config, "bed1")

        async def run() -> None:
            async for item in source.chunks():
                if isinstance(item, SourceEvent):
                    events.append(item)
                    if item.code == "disconnected" and chunks:
                        return
                else:
                    chunks.append(item)

        await asyncio.wait_for(run(), 120)
        await asyncio.wait_for(emitter, 10)
    finally:
        emitter.cancel()
        await asyncio.gather(emitter, return_exceptions=True)
    return chunks, events


@pytest.mark.parametrize("fmt", ["ascii", "binary"])
async def test_serial_two_leads_give_the_record_replays_beats_and_classes(fmt, rec119, beat_model, tmp_path,
                                                                          capsys) -> None:
    chunks, events = await over_pty(rec119, tmp_path, fmt, "channel=0&lead2=1")
    # The simulator sends both leads, and says how to read them.
    assert f"format={fmt}&lead2=1'" in capsys.readouterr().out
    assert [e.code for e in events] == ["disconnected"]  # the end of the replay, nothing else
    assert events[0].counts["lead2_missing"] == 0
    assert all(c.channels == ("serial", "serial1") for c in chunks)
    # An ASCII reader drops the first line after opening (the port may open mid-line).
    first = 1 if fmt == "ascii" else 0
    expected = rec119.signal[first:]
    got = np.concatenate([c.samples for c in chunks])
    assert got.shape == expected.shape == (MINUTES * 60 * 360 - first, 2)
    np.testing.assert_allclose(got, expected, atol=1e-6)  # 1 µV wire units: MIT-BIH's 5 µV steps exactly

    # The in-process replay of the same samples with replay.second_lead on (the default):
    # chunking differs (the pty delivers what it has), which the pipeline is built not to notice.
    reference = await replay_chunks(dataclasses.replace(rec119, signal=rec119.signal[first:]), make_config())
    assert reference[0].samples.shape[1] == 2
    beats, features, prob = classified(chunks, beat_model)
    ref_beats, ref_features, ref_prob = classified(reference, beat_model)
    assert len(beats) > 180 and sum(label == "V" for _, label in beats) > 30
    assert beats == ref_beats
    np.testing.assert_allclose(prob, ref_prob, atol=1e-4)
    assert len(features) == len(ref_features)
    for a, b in zip(features, ref_features):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4, equal_nan=True)
    # The second lead was used: once its template formed, the beats have lead-2 inputs.
    assert np.mean([np.isfinite(f[FIRST_LEAD2:]).all() for f in features]) > 0.9

    # One lead from the same port: the same beats, no lead-2 inputs (what a one-lead device gets).
    one, _ = await over_pty(rec119, tmp_path, fmt, "channel=0")
    assert all(c.channels == ("serial",) for c in one)
    one_beats, one_features, _ = classified(one, beat_model)
    assert [s for s, _ in one_beats] == [s for s, _ in beats]
    assert all(np.isnan(f[FIRST_LEAD2:]).all() for f in one_features)


class UntilUnplugged:
    """A serial source that ends when its device goes away after sending data (the end of the
    simulator's replay), so that the daemon finishes the stream as it does a record's."""

    def __init__(self, source: SerialSource) -> None:
        self.source, self.spec, self.stream = source, source.spec, source.stream

    def __getattr__(self, name: str):
        return getattr(self.source, name)

    async def chunks(self):
        had_data = False
        async for item in self.source.chunks():
            yield item
            had_data = had_data or isinstance(item, Chunk)
            if isinstance(item, SourceEvent) and item.code == "disconnected" and had_data:
                return


async def test_daemon_classifies_a_two_lead_serial_device_as_the_record(rec119, beat_model, tmp_path,
                                                                        endpoint) -> None:
    """One daemon, two beds: the record replayed in process (second lead on) and the same record
    from a binary serial device with lead2=1. The daemon's own batcher classifies both: the beds'
    beat messages are the same, sample for sample and class for class."""
    config = make_config()
    link = tmp_path / "ttyECG"
    emitter = asyncio.create_task(emit_serial(RecordSource("mitdb:119", config, record=rec119),
                                              f"serial:{link}", config, "binary"))
    try:
        await wait_path(link)
        device = UntilUnplugged(SerialSource(f"serial:{link}?fs=360&format=binary&lead2=1", config, "device"))
        replay = RecordSource("mitdb:119", config, stream="replay", record=rec119)
        msgs = await daemon_messages(endpoint, lambda pub: Daemon(config, [replay, device], pub,
                                                                  {"beat": beat_model}, []), timeout_s=180)
        await asyncio.wait_for(emitter, 10)
    finally:
        emitter.cancel()
        await asyncio.gather(emitter, return_exceptions=True)
    beats = {sid: [(m.sample, m.label, m.rr_ms) for m in msgs if isinstance(m, BeatMessage) and m.stream == sid]
             for sid in ("replay", "device")}
    assert len(beats["replay"]) > 180 and sum(b[1] == "V" for b in beats["replay"]) > 30
    assert beats["device"] == beats["replay"]
    assert not [m for m in msgs if isinstance(m, EventMessage) and m.code in ("lead2_missing", "corrupt_input")]


class SecondLeadDamage:
    """The emitter's ``corrupt`` hook: on ASCII lines, the second column of every 50th line
    becomes ``nan`` or a word; its lines are never cut, so the first lead comes through whole."""

    def __init__(self) -> None:
        self.damaged = 0
        self._line = 0

    def __call__(self, data: bytes) -> bytes:
        lines = data.split(b"\r\n")
        for i, line in enumerate(lines[:-1]):
            self._line += 1
            if self._line % 50 == 0:
                first, _, _ = line.partition(b",")
                lines[i] = first + (b",nan" if self._line % 100 else b",lead-off")
                self.damaged += 1
        return b"\r\n".join(lines)


async def test_serial_bad_second_lead_values_cost_only_the_second_lead(rec119, beat_model, tmp_path) -> None:
    damage = SecondLeadDamage()
    chunks, events = await over_pty(rec119, tmp_path, "ascii", "lead2=1", corrupt=damage)
    got = np.concatenate([c.samples for c in chunks])
    expected = rec119.signal[1:]
    np.testing.assert_allclose(got[:, 0], expected[:, 0], atol=1e-6)  # the first lead: every sample
    bad = np.isnan(got[:, 1])
    assert bad.sum() == damage.damaged > 300
    np.testing.assert_allclose(got[~bad, 1], expected[~bad, 1], atol=1e-6)
    codes = [e.code for e in events]
    assert codes == ["lead2_missing", "disconnected"]  # told once, then only counted
    assert "not a number" in events[0].text
    assert events[-1].counts["lead2_missing"] == damage.damaged and events[-1].counts["bad_lines"] == 0
    # The beats are the record's: the second lead never touches detection.
    beats, features, _ = classified(chunks, beat_model)
    ref_beats, _, _ = classified(await replay_chunks(dataclasses.replace(rec119, signal=expected), make_config()),
                                 beat_model)
    assert [s for s, _ in beats] == [s for s, _ in ref_beats]
    # A beat whose window holds a missing second-lead sample has no lead-2 inputs (NaN: the
    # model's "no second lead"), not inputs measured on a held, flat stretch.
    assert any(np.isnan(f[FIRST_LEAD2:]).all() for f in features)


async def test_serial_device_without_the_second_channel(rec119, tmp_path) -> None:
    # lead2=3 of a two-channel device: frames carry no channel 3. The first lead as always,
    # the second NaN throughout, one clear event naming the cause.
    chunks, events = await over_pty(rec119, tmp_path, "binary", "lead2=3")
    got = np.concatenate([c.samples for c in chunks])
    np.testing.assert_allclose(got[:, 0], rec119.signal[:, 0], atol=1e-6)
    assert np.isnan(got[:, 1]).all()
    assert [e.code for e in events] == ["lead2_missing", "disconnected"]
    assert "the device sends 2 channels" in events[0].text and "lead2=3" in events[0].text
    assert events[-1].counts["lead2_missing"] == got.shape[0] and events[-1].counts["bad_frames"] == 0


# --------------------------------------------------------------------------- MQTT


class Subscriber:
    """An MqttSource on ``ward1/+/ecg`` (``query`` added), its chunks and events kept."""

    def __init__(self, broker: Broker, query: str) -> None:
        config = make_config()
        config.mqtt.reconnect_min_s, config.mqtt.reconnect_max_s = 0.1, 0.5
        self.source = MqttSource(broker.url("ward1/+/ecg") + f"?{query}", config, stream="ward1-ecg")
        self.chunks: dict[str, list[Chunk]] = {}
        self.events: list[SourceEvent] = []
        self.task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        async for item in self.source.chunks():
            if isinstance(item, SourceEvent):
                self.events.append(item)
            else:
                self.chunks.setdefault(item.stream, []).append(item)

    async def ready(self, broker: Broker) -> None:
        """Once a probe comes back, the subscription exists at the broker."""
        async with aiomqtt.Client("127.0.0.1", broker.port) as probe:
            while "probe" not in self.chunks:
                await probe.publish("ward1/probe/ecg", encode_json(0, 0, 360.0, "II", np.zeros(1)), qos=1)
                await asyncio.sleep(0.1)
                if self.task.done():
                    self.task.result()

    async def until(self, stream: str, end: int, timeout: float = 60) -> None:
        async def wait() -> None:
            while not self.chunks.get(stream) or self.chunks[stream][-1].end < end:
                assert not self.task.done(), "the source ended"
                await asyncio.sleep(0.05)

        await asyncio.wait_for(wait(), timeout)

    async def stop(self) -> None:
        self.task.cancel()
        await asyncio.gather(self.task, return_exceptions=True)


@pytest.mark.parametrize("fmt", ["json", "binary"])
async def test_mqtt_two_leads_give_the_record_replays_beats_and_classes(fmt, mosquitto, rec119, beat_model) -> None:
    sub = Subscriber(mosquitto, "second_lead=true")
    try:
        await sub.ready(mosquitto)
        config = make_config()
        await emit_mqtt(RecordSource("mitdb:119", config, record=rec119), mosquitto.url("ward1/bed3/ecg"),
                        config, fmt)
        await sub.until("bed3", rec119.signal.shape[0])
    finally:
        await sub.stop()
    chunks = sub.chunks["bed3"]
    assert [e.stream for e in sub.events if e.code == "lead2_missing"] == ["probe"]  # the one-lead probe only
    assert all(c.channels == ("MLII", "V1") for c in chunks)
    got = np.concatenate([c.samples for c in chunks])
    # JSON: float32 exactly; binary: 1 µV steps, and MIT-BIH's are 5 µV.
    np.testing.assert_allclose(got, rec119.signal, atol=0 if fmt == "json" else 1e-6)
    beats, features, prob = classified(chunks, beat_model)
    ref_beats, ref_features, ref_prob = classified(await replay_chunks(rec119, make_config()), beat_model)
    assert len(beats) > 180 and beats == ref_beats
    np.testing.assert_allclose(prob, ref_prob, atol=1e-4)
    for a, b in zip(features, ref_features, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4, equal_nan=True)
    assert np.mean([np.isfinite(f[FIRST_LEAD2:]).all() for f in features]) > 0.9


async def test_mqtt_missing_and_malformed_second_lead(mosquitto, rec119) -> None:
    """Per payload: no samples2, a samples2 of the wrong length or type, values that are no
    numbers, a binary second-lead part cut short: the first lead whole, the second NaN there."""
    x = rec119.signal[:3600]
    n = 360
    pieces = [x[i : i + n] for i in range(0, x.shape[0], n)]

    def body(i: int, first: np.ndarray, second: object) -> dict:
        return {"v": 1, "seq": i, "start": i * n, "fs": 360.0, "lead": "MLII", "lead2": "V5",
                "samples": first.tolist(), "samples2": second}

    good = [pieces[0][:, 1].tolist(), pieces[1][:, 1].tolist()]
    mixed = pieces[4][:, 1].tolist()
    mixed[10], mixed[20], mixed[30] = None, "x", [1]
    payloads = [
        encode_json(0, 0, 360.0, "MLII", pieces[0][:, 0], pieces[0][:, 1], "V5"),
        encode_binary(1, n, 360.0, "MLII", pieces[1][:, 0], pieces[1][:, 1], "V5"),
        encode_json(2, 2 * n, 360.0, "MLII", pieces[2][:, 0]),  # no second lead at all
        json_bytes(body(3, pieces[3][:, 0], good[0][:-1])),  # one value short
        json_bytes(body(4, pieces[4][:, 0], mixed)),  # three values that are no numbers
        json_bytes(body(5, pieces[5][:, 0], {"a": 1})),  # not a list
        encode_binary(6, 6 * n, 360.0, "MLII", pieces[6][:, 0], pieces[6][:, 1], "V5")[:-2],  # cut short
        encode_binary(7, 7 * n, 360.0, "MLII", pieces[7][:, 0]),  # version 1: one lead
        encode_json(8, 8 * n, 360.0, "MLII", pieces[8][:, 0], pieces[8][:, 1], "V5"),
        encode_binary(9, 9 * n, 360.0, "MLII", pieces[9][:, 0], pieces[9][:, 1], "V5"),
    ]
    sub = Subscriber(mosquitto, "second_lead=1")
    try:
        await sub.ready(mosquitto)
        async with aiomqtt.Client("127.0.0.1", mosquitto.port) as client:
            for payload in payloads:
                await client.publish("ward1/bed3/ecg", payload, qos=1)
        await sub.until("bed3", x.shape[0])
    finally:
        await sub.stop()
    got = np.concatenate([c.samples for c in sub.chunks["bed3"]])
    np.testing.assert_allclose(got[:, 0], x[:, 0], atol=1e-6)  # every first-lead sample
    expected_nan = np.zeros(x.shape[0], bool)
    for k in (2, 3, 5, 6, 7):
        expected_nan[k * n : (k + 1) * n] = True
    expected_nan[4 * n + np.array([10, 20, 30])] = True
    np.testing.assert_array_equal(np.isnan(got[:, 1]), expected_nan)
    np.testing.assert_allclose(got[~expected_nan, 1], x[~expected_nan, 1], atol=1e-6)
    events = [e for e in sub.events if e.stream == "bed3"]
    assert [e.code for e in events] == ["lead2_missing"]  # told once, the rest counted
    assert "carry no second lead" in events[0].text
    # Nothing was malformed: a bad second lead never costs the payload.
    counts = sub.source.stream_state("bed3").counts
    assert counts["lead2_missing"] == 5 * n + 3 and "malformed" not in counts


def json_bytes(body: dict) -> bytes:
    import json

    return json.dumps(body).encode()
