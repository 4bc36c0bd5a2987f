"""What CURVE keys cost: messages through the real publisher to one subscriber, without keys and
with keys (encryption on both ends), for a small message (beat) and a display frame (wave).

    python bench/curve.py [--messages N] [--repeat R]

Prints messages per second and CPU microseconds per message (publisher and subscriber in this
one process, so the CPU figure covers both ends), the best of R runs.
"""

from __future__ import annotations

import argparse
import asyncio
from pathlib import Path
import shutil
import sys
import tempfile
import time

import zmq
import zmq.asyncio

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from ecgmon.curve import ClientKeys, ServerKeys, make_key_pair  # noqa: E402
from ecgmon.monitor.publisher import Publisher  # noqa: E402
from ecgmon.schema import BeatMessage, Message, StatusMessage, WaveMessage  # noqa: E402


async def one_run(msg: Message, n: int, keys: tuple[ServerKeys, ClientKeys] | None) -> tuple[float, float]:
    pub = Publisher("tcp://127.0.0.1:0", n + 1000, keys=keys[0] if keys else None)
    ctx = zmq.asyncio.Context()
    sub = ctx.socket(zmq.SUB)
    sub.setsockopt(zmq.RCVHWM, 0)
    if keys:
        keys[1].apply(sub)
    sub.setsockopt_string(zmq.SUBSCRIBE, "")
    sub.connect(pub.endpoint)
    while True:  # until the subscriber has joined
        pub.publish(StatusMessage(uptime_s=0, streams=[], dropped=0, sent=0))
        if await sub.poll(50):
            break
    while await sub.poll(100):
        await sub.recv_multipart()
    received = 0

    async def receive() -> None:
        nonlocal received
        while received < n:
            await sub.recv_multipart()
            received += 1

    t0, c0 = time.perf_counter(), time.process_time()
    task = asyncio.ensure_future(receive())
    for i in range(n):
        pub.publish(msg)
        if i % 200 == 0:
            await asyncio.sleep(0)  # let the subscriber read as it would in another process
    await task
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    sub.close()
    ctx.term()
    pub.close()
    return n / wall, cpu / n * 1e6


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--messages", type=int, default=20000)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    folder = Path(tempfile.mkdtemp())
    try:
        make_key_pair(folder, "server")
        make_key_pair(folder, "bench")
        (folder / "allowed").mkdir()
        shutil.copyfile(folder / "bench.key", folder / "allowed" / "bench.key")
        keys = (ServerKeys(str(folder / "server.key_secret"), str(folder / "allowed")),
                ClientKeys.load(str(folder / "bench.key_secret"), str(folder / "server.key")))
        beat = BeatMessage(stream="bed1", sample=360, time_s=1.0, fs=360.0, delay_ms=250.0, rr_ms=800.0,
                           amplitude_mv=1.2, label="N", probability=0.98)
        wave = WaveMessage(stream="bed1", fs=125.0, start=0, time_s=0.0, lead="MLII", samples_mv=[0.123] * 25)
        print(f"{args.messages} messages, best of {args.repeat}")
        for name, msg in (("beat", beat), ("wave", wave)):
            for label, k in (("no keys", None), ("CURVE", keys)):
                runs = [await one_run(msg, args.messages, k) for _ in range(args.repeat)]
                rate = max(r[0] for r in runs)
                cpu = min(r[1] for r in runs)
                print(f"{name:5s} {len(msg.model_dump_json()):4d} B  {label:8s} {rate:8.0f} msg/s  {cpu:5.1f} µs CPU/msg")
    finally:
        shutil.rmtree(folder)


if __name__ == "__main__":
    asyncio.run(main())
