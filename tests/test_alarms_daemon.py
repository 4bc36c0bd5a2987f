"""Signal loss in the running daemon: a real serial device (a pseudo-terminal the test writes
ECG lines into) goes silent while its port stays open; the daemon's wall-clock check raises
the technical alarm, no asystole is raised in the silence, and the alarm clears once
samples flow again."""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
import tty

import numpy as np
import pytest

from zmq_helpers import collect_into, subscriber

from ecgmon.config import Config, DataConfig
from ecgmon.monitor.daemon import Daemon
from ecgmon.monitor.publisher import Publisher
from ecgmon.monitor.sources.serial_source import SerialSource
from ecgmon.payloads.serial import encode_ascii
from ecgmon.replay.records import load_record
from ecgmon.schema import AlarmMessage

FS = 360


@pytest.fixture(scope="module")
def ecg_uv(data_dir) -> np.ndarray:
    """Record 100's first lead in µV, as a device would print it."""
    rec = load_record("mitdb:100", DataConfig(folder=str(data_dir), cache="/nonexistent"), annotations=False)
    return np.round(rec.signal[: 60 * FS, 0] * 1000).astype(np.int64)


async def _write(fd: int, data: bytes) -> None:
    """Write all of ``data`` from a thread: a pty holds a few KB, and its reader runs in this loop."""

    def write_all() -> None:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]

    await asyncio.to_thread(write_all)


async def _wait_for(msgs: list, test, timeout: float) -> AlarmMessage:
    t0 = time.monotonic()
    while True:
        hit = next((m for m in msgs if isinstance(m, AlarmMessage) and test(m)), None)
        if hit is not None:
            return hit
        assert time.monotonic() - t0 < timeout, f"no such alarm in {timeout} s: {[m for m in msgs if isinstance(m, AlarmMessage)]}"
        await asyncio.sleep(0.05)


async def test_a_silent_device_raises_signal_loss_and_it_clears_when_data_returns(endpoint, ecg_uv) -> None:
    config = Config()
    config.models.beat = config.models.segment = ""
    config.alarms.signal_loss_s = 2.0
    config.alarms.clear_s = 2.0
    config.serial.reconnect_min_s = 0.1
    master, slave = os.openpty()
    tty.setraw(slave)  # bytes pass as they are: no echo back into the master, no line editing
    source = SerialSource(f"serial:{os.ttyname(slave)}?fs={FS}&format=ascii", config, "bed1")
    ctx, sub = await subscriber(endpoint, ("alarm.",))
    daemon = Daemon(config, [source], publisher=Publisher(endpoint, 10_000))
    run = asyncio.create_task(daemon.run())
    msgs: list = []
    collector = asyncio.create_task(collect_into(sub, msgs))
    try:
        await asyncio.sleep(0.3)  # the source opens the port
        await _write(master, encode_ascii(ecg_uv[: 20 * FS]))
        loss = await _wait_for(msgs, lambda m: m.alarm == "signal_loss" and m.state == "raised", 20)
        assert loss.category == "technical" and loss.stream == "bed1"
        # Raised at the signal time where the samples stopped (about 20 s), not later.
        assert 19.0 <= loss.raised_s <= 20.0
        assert not [m for m in msgs if isinstance(m, AlarmMessage) and m.alarm == "asystole"]
        await _write(master, encode_ascii(ecg_uv[20 * FS :]))
        cleared = await _wait_for(msgs, lambda m: m.id == loss.id and m.state == "cleared", 20)
        assert cleared.cleared_s > loss.raised_s
        assert not [m for m in msgs if isinstance(m, AlarmMessage) and m.alarm == "asystole" and not m.suppressed]
    finally:
        # The device goes away first: a serial source cancelled while it reads may swallow the
        # cancellation (seen here; see the report), and the daemon would never return.
        os.close(master)
        await asyncio.sleep(0.2)
        for task in (run, collector):
            task.cancel()
        await asyncio.gather(run, collector, return_exceptions=True)
        sub.close()
        ctx.term()
        with contextlib.suppress(OSError):
            os.close(slave)
