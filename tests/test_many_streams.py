"""One daemon, several streams from mixed sources: a record replay, the simulator and a
serial device over a real pseudo-terminal; one source stopping or ending never stops the others."""

from __future__ import annotations

import asyncio
import dataclasses
from pathlib import Path
import time

from zmq_helpers import collect_into, subscriber

from ecgmon.config import Config, DataConfig
from ecgmon.monitor.daemon import Daemon
from ecgmon.monitor.publisher import Publisher
from ecgmon.monitor.sources.factory import open_source
from ecgmon.monitor.sources.record import RecordSource
from ecgmon.replay.records import load_record
from ecgmon.replay.serial_emitter import emit_serial
from ecgmon.schema import BeatMessage, EventMessage, StatusMessage


async def test_three_streams_and_one_stopping(data_dir: Path, tmp_path: Path, endpoint: str) -> None:
    config = Config()
    config.replay.speed = 8.0
    config.replay.chunk_s = 0.1
    config.publisher.status_period_s = 0.2
    config.serial.reconnect_min_s = 0.1
    config.serial.reconnect_max_s = 0.4
    data = DataConfig(folder=str(data_dir), cache="/nonexistent")
    rec119 = load_record("mitdb:119", data)
    short = dataclasses.replace(rec119, signal=rec119.signal[: int(90 * rec119.fs)])  # ends after 90 s
    link = tmp_path / "ttyECG"
    sources = [
        RecordSource("mitdb:119", config, stream="bed1", record=short),
        open_source("bed2=sim?seed=4&hr=95", config),
        open_source(f"bed3=serial:{link}?fs=360&format=binary", config),
    ]
    device = RecordSource("mitdb:100", config, record=load_record("mitdb:100", data))

    pub = Publisher(endpoint, 10000)
    ctx, sub = await subscriber(endpoint)
    msgs: list = []

    def beats(stream: str) -> int:
        return sum(1 for m in msgs if isinstance(m, BeatMessage) and m.stream == stream)

    def event(stream: str, code: str) -> bool:
        return any(isinstance(m, EventMessage) and m.stream == stream and m.code == code for m in msgs)

    async def until(cond, what: str, timeout: float = 60) -> None:
        t0 = time.monotonic()
        while not cond():
            assert time.monotonic() - t0 < timeout, f"timed out waiting for {what}"
            await asyncio.sleep(0.05)

    collector = asyncio.create_task(collect_into(sub, msgs))
    daemon = asyncio.create_task(Daemon(config, sources, pub).run())
    emitter = asyncio.create_task(emit_serial(device, f"serial:{link}", config, "binary"))
    try:
        await until(lambda: all(beats(s) >= 5 for s in ("bed1", "bed2", "bed3")), "beats on all three streams")

        emitter.cancel()  # the serial device is unplugged
        await asyncio.gather(emitter, return_exceptions=True)
        await until(lambda: event("bed3", "disconnected"), "the serial disconnect")
        counts = {s: beats(s) for s in ("bed1", "bed2")}
        await until(lambda: all(beats(s) >= counts[s] + 5 for s in counts), "the other streams going on")

        await until(lambda: event("bed1", "source_ended"), "the record's end")
        n2 = beats("bed2")
        await until(lambda: beats("bed2") >= n2 + 5, "the simulator going on after the record ended")
        assert not daemon.done()
        status = [m for m in msgs if isinstance(m, StatusMessage)][-1]
        states = {s.stream: s.state for s in status.streams}
        assert states == {"bed1": "ended", "bed2": "running", "bed3": "running"}  # bed3 waits for its device
        assert status.streams[2].faults["disconnects"] == 1
    finally:
        for task in (emitter, daemon, collector):
            task.cancel()
        await asyncio.gather(emitter, daemon, collector, return_exceptions=True)
        sub.close()
        ctx.term()
