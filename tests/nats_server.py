"""A real nats-server with JetStream on a free loopback port for the ward tests, configured as
``ecgmon ward nats-conf`` prints it (the partition mapping included), and bedside devices that
publish real recordings to it in real time, one thread and event loop for all of them."""

from __future__ import annotations

import asyncio
from pathlib import Path
import shutil
import subprocess
import threading
import time

import numpy as np
import pytest
import wfdb

from conftest import free_tcp_port, wait_listening
from ecgmon.monitor.sources.ward_subjects import device_subject, server_config
from ecgmon.payloads.mqtt import encode_binary

NATS_SERVER = shutil.which("nats-server") or "/usr/sbin/nats-server"


class NatsServer:
    def __init__(self, workdir: Path, port: int, prefix: str, partitions: int) -> None:
        self.port = port
        self.conf = workdir / "nats.conf"
        self.log = workdir / "nats.log"
        (workdir / "js").mkdir(parents=True, exist_ok=True)
        self.conf.write_text(server_config("127.0.0.1", port, str(workdir / "js"), prefix, partitions))
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    def start(self, timeout: float = 15.0) -> None:
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen([NATS_SERVER, "-c", str(self.conf)], stdout=log, stderr=subprocess.STDOUT)
        wait_listening("nats-server", self.proc, self.port, timeout, lambda: self.log.read_text()[-2000:], self.stop)

    def stop(self) -> None:
        if self.proc is None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.proc = None


@pytest.fixture
def nats_ward(tmp_path: Path):
    """A running nats-server for ward ``ward`` with 6 partitions; stopped at the end of the test."""
    if not Path(NATS_SERVER).exists():
        pytest.fail("nats-server is not installed: run scripts/system-deps.sh")
    server = NatsServer(tmp_path / "nats", free_tcp_port(), "ward", 6)
    server.start()
    try:
        yield server
    finally:
        server.stop()


class Devices:
    """Beds publishing MIT-BIH records (MLII) live in 0.1 s binary payloads on ``ward.<bed>``,
    each from its record's start, until ``stop``; ``published[bed]`` counts their messages."""

    def __init__(self, url: str, beds: dict[str, Path], chunk_s: float = 0.1) -> None:
        self.url = url
        self.signals = {}
        for bed, record in beds.items():
            rec = wfdb.rdrecord(str(record), channels=[0])
            self.signals[bed] = (float(rec.fs), rec.p_signal[:, 0].astype(np.float32))
        self.chunk_s = chunk_s
        self.published: dict[str, int] = {bed: 0 for bed in beds}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=lambda: asyncio.run(self._run()), daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)

    async def _run(self) -> None:
        import nats

        nc = await nats.connect(self.url)
        t0 = time.monotonic()
        k = 0
        while not self._stop.is_set():
            for bed, (fs, x) in self.signals.items():
                n = int(round(fs * self.chunk_s))
                start = k * n
                payload = encode_binary(k, start, fs, "MLII", x[start % (len(x) - n):][:n])
                await nc.publish(device_subject("ward", bed), payload)
                self.published[bed] += 1
            k += 1
            # Paced on the clock: every bed sends chunk k at t0 + k * chunk_s.
            await asyncio.sleep(max(0.0, t0 + k * self.chunk_s - time.monotonic()))
        await nc.flush()
        await nc.close()
