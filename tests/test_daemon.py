"""The daemon wiring and the source factory: faults stay in their stream, shutdown is clean."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest
import zmq
import zmq.asyncio

from ecgmon.chunk import Chunk
from ecgmon.config import Config
from ecgmon.monitor.daemon import Daemon
from ecgmon.monitor.publisher import Publisher
from ecgmon.monitor.sources.base import SourceError
from ecgmon.monitor.sources.factory import open_source, open_sources, split_spec, stream_id
from ecgmon.monitor.sources.record import RecordSource
from ecgmon.monitor.sources.simulator import SimulatorSource
from ecgmon.schema import BeatMessage, EventMessage, StatusMessage, parse_message
from zmq_helpers import subscriber


class ArraySource:
    """A test source: chunks of a sine-like trace, then an end, a SourceError or a bug."""

    def __init__(self, stream: str, seconds: float, fail: Exception | None = None, fs: float = 360.0) -> None:
        self.stream, self.spec, self.fs, self.lead = stream, f"test:{stream}", fs, "II"
        self.n = int(seconds * fs)
        self.fail = fail
        self.chunk_stream = stream  # the stream its chunks name (a multi-stream source differs)

    async def chunks(self):
        t = np.arange(self.n) / self.fs
        x = np.where((t % 0.8) < 0.02, 1.5, 0.0).astype(np.float32)  # a spike every 0.8 s
        step = int(self.fs / 10)
        for start in range(0, self.n, step):
            yield Chunk(self.chunk_stream, self.fs, (self.lead,), start, x[start : start + step, None])
            await asyncio.sleep(0)
        if self.fail is not None:
            raise self.fail


async def collect(sub: zmq.asyncio.Socket) -> list:
    msgs = []
    while await sub.poll(300):
        msgs.append(parse_message((await sub.recv_multipart())[1]))
    return msgs


async def test_one_stream_failing_never_stops_the_others(endpoint: str) -> None:
    config = Config()
    pub = Publisher(endpoint, 10000)
    ctx, sub = await subscriber(endpoint)
    sources = [
        ArraySource("ok", 20),
        ArraySource("bad", 3, fail=SourceError("device unplugged: plug it back in")),
        ArraySource("bug", 2, fail=RuntimeError("oops")),
        ArraySource("slow", 2, fs=50.0),  # below the detector's range: fails at start
    ]
    daemon = Daemon(config, sources, pub)
    try:
        await asyncio.wait_for(daemon.run(), 30)
        msgs = await collect(sub)
    finally:
        sub.close()
        ctx.term()
    events = {(m.stream, m.code): m for m in msgs if isinstance(m, EventMessage)}
    assert events[("bad", "source_failed")].text == "device unplugged: plug it back in"
    assert events[("bad", "source_failed")].level == "error"
    assert "RuntimeError: oops" in events[("bug", "source_failed")].text
    assert "outside" in events[("slow", "source_failed")].text
    assert ("ok", "source_ended") in events and ("ok", "source_started") in events
    final = [m for m in msgs if isinstance(m, StatusMessage)][-1]
    states = {s.stream: (s.state, s.samples) for s in final.streams}
    assert states == {"ok": ("ended", 7200), "bad": ("failed", 1080), "bug": ("failed", 720),
                      "slow": ("failed", 0)}
    beats = [m for m in msgs if isinstance(m, BeatMessage) and m.stream == "ok"]
    assert len(beats) >= 20  # the healthy stream ran to its end


async def test_cancel_shuts_down_cleanly(endpoint: str) -> None:
    config = Config()
    config.replay.speed = 4.0
    config.publisher.status_period_s = 0.2
    pub = Publisher(endpoint, 10000)
    ctx, sub = await subscriber(endpoint)
    sim = open_source("sim?seed=1", config)
    task = asyncio.create_task(Daemon(config, [sim], pub).run())
    try:
        await asyncio.sleep(2.0)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        msgs = await collect(sub)
    finally:
        sub.close()
        ctx.term()
    statuses = [m for m in msgs if isinstance(m, StatusMessage)]
    assert len(statuses) >= 5  # periodic status at 0.2 s
    assert statuses[-1].streams[0].state == "ended"
    assert statuses[-1].streams[0].beats > 0
    # The port is free again: the publisher was closed.
    Publisher(endpoint, 10).close()


def test_source_specs() -> None:
    assert split_spec("bed3=mitdb:100") == ("bed3", "mitdb:100")
    assert split_spec("sim?hr=110&noise=0.1") == (None, "sim?hr=110&noise=0.1")
    assert split_spec("bed1=sim?hr=110") == ("bed1", "sim?hr=110")
    assert split_spec("/data/a=b/100.hea") == (None, "/data/a=b/100.hea")
    assert stream_id("sim") == "sim" and stream_id("mitdb:100") == "mitdb-100"
    assert stream_id("icu_2=nstdb:118e06") == "icu_2"
    with pytest.raises(SourceError, match="nothing after"):
        split_spec("bed3=")
    with pytest.raises(SourceError, match="NAME=SPEC"):
        stream_id("what?")


def test_open_sources(data_dir) -> None:
    config = Config()
    sim = open_source("bed2=sim?hr=100", config)
    assert isinstance(sim, SimulatorSource) and sim.stream == "bed2" and sim.config.heart_rate_bpm == 100
    rec = open_source("mitdb:100", config)
    assert isinstance(rec, RecordSource) and (rec.stream, rec.fs, rec.lead) == ("mitdb-100", 360.0, "MLII")
    hea = open_source(f"x={data_dir / 'mitdb' / '101.hea'}", config)
    assert hea.stream == "x"
    with pytest.raises(SourceError, match="both publish as stream 'sim'"):
        open_sources(["sim", "sim?hr=90"], config)
    with pytest.raises(SourceError, match="no source"):
        open_sources([], config)


async def test_two_sources_claiming_one_stream_are_not_mixed(endpoint: str) -> None:
    """An MQTT topic can name a stream that another source already publishes: never mix them."""
    config = Config()
    pub = Publisher(endpoint, 10000)
    ctx, sub = await subscriber(endpoint)
    first, second = ArraySource("bed3", 10), ArraySource("other", 10)
    second.chunk_stream = "bed3"  # e.g. mqtt://.../ward1/+/ecg receiving ward1/bed3/ecg
    try:
        await asyncio.wait_for(Daemon(config, [first, second], pub).run(), 30)
        msgs = await collect(sub)
    finally:
        sub.close()
        ctx.term()
    clashes = [m for m in msgs if isinstance(m, EventMessage) and m.code == "stream_id_clash"]
    assert len(clashes) == 1 and "rename" in clashes[0].text
    final = [m for m in msgs if isinstance(m, StatusMessage)][-1]
    bed3 = next(s for s in final.streams if s.stream == "bed3")
    assert bed3.samples == 3600 and bed3.faults["foreign_chunks"] > 0  # only its own data
