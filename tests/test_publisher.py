"""The ZeroMQ publisher over real sockets on loopback: framing, seq, drops, bind errors."""

from __future__ import annotations

import asyncio
import time

import pytest
import zmq
import zmq.asyncio

from ecgmon.monitor.publisher import Publisher, PublisherError
from ecgmon.schema import BeatMessage, StatusMessage, VitalsMessage, WaveMessage, parse_message


def beat(stream: str, i: int) -> BeatMessage:
    return BeatMessage(stream=stream, sample=i, time_s=i / 360, fs=360.0, delay_ms=200.0,
                       rr_ms=None, amplitude_mv=1.0)


def wave(i: int) -> WaveMessage:
    # About 10 kB, so that a few thousand overflow the kernel's socket buffers (a few MB).
    return WaveMessage(stream="w", fs=120.0, start=24 * i, time_s=0.2 * i, lead="MLII",
                       samples_mv=[0.123456] * 1000)


def status() -> StatusMessage:
    return StatusMessage(uptime_s=0.0, streams=[], dropped=0, sent=0)


async def connected_sub(ctx: zmq.asyncio.Context, pub: Publisher, endpoint: str, prefix: str = "",
                        small: bool = False) -> zmq.asyncio.Socket:
    """A SUB socket that has certainly joined: ZeroMQ drops what is sent before it has."""
    sub = ctx.socket(zmq.SUB)
    sub.setsockopt(zmq.LINGER, 0)
    if small:
        sub.setsockopt(zmq.RCVHWM, 10)
        sub.setsockopt(zmq.RCVBUF, 4096)
    sub.setsockopt_string(zmq.SUBSCRIBE, "status.")
    sub.setsockopt_string(zmq.SUBSCRIBE, prefix)
    sub.connect(endpoint)
    for _ in range(100):
        pub.publish(status())
        if await sub.poll(50):
            while await sub.poll(50):
                await sub.recv_multipart()
            sub.setsockopt_string(zmq.UNSUBSCRIBE, "status.")
            return sub
    raise AssertionError("subscriber never joined")


async def drain_then_one_more(pub: Publisher, sub: zmq.asyncio.Socket, n: int) -> list[int]:
    """Everything the stalled subscriber got, then one more message so a gap shows at the end."""
    seqs = []
    while await sub.poll(200):
        seqs.append(parse_message((await sub.recv_multipart())[1]).seq)
    assert pub.publish(wave(n))
    seqs.append(parse_message((await asyncio.wait_for(sub.recv_multipart(), 5))[1]).seq)
    assert seqs == sorted(seqs) and seqs[-1] == n
    return seqs


def missed(seqs: list[int]) -> int:
    return seqs[0] + sum(b - a - 1 for a, b in zip(seqs, seqs[1:]))


async def test_messages_arrive_with_per_topic_seq(endpoint: str) -> None:
    pub = Publisher(endpoint, 1000)
    ctx = zmq.asyncio.Context()
    sub = await connected_sub(ctx, pub, endpoint, prefix="")
    try:
        sent = []
        for i in range(50):
            for msg in (beat("a", i), beat("b", i), VitalsMessage(stream="a", time_s=i, hr_bpm=60.0,
                                                                  hr_method="m", beats=i)):
                t0 = time.time()
                assert pub.publish(msg)
                sent.append(msg)
                assert t0 <= msg.wall <= time.time()
        got: dict[str, list[int]] = {}
        for _ in range(len(sent)):
            topic, payload = await asyncio.wait_for(sub.recv_multipart(), 5)
            msg = parse_message(payload)
            assert msg.topic == topic.decode()
            assert msg.pub == pub.pub and len(pub.pub) == 8
            got.setdefault(msg.topic, []).append(msg.seq)
        assert got == {t: list(range(50)) for t in ("beat.a", "beat.b", "vitals.a")}
        assert pub.sent >= 150 and pub.dropped == 0
        # Another publisher is another pub id, and its seq starts again at 0.
        other = Publisher("tcp://127.0.0.1:0", 10)
        assert other.pub != pub.pub and other.endpoint.startswith("tcp://127.0.0.1:")
        other.close()
    finally:
        sub.close()
        ctx.term()
        pub.close()


async def test_stalled_subscriber_never_blocks_and_others_get_everything(endpoint: str) -> None:
    """Default (lossy) PUB: the stalled subscriber loses messages and sees the gaps in seq;
    a subscriber that keeps up receives every message."""
    # ZeroMQ tells the publisher what a subscriber has read only now and then, so the
    # high-water mark must leave some headroom for the subscriber that keeps up.
    pub = Publisher(endpoint, 100)
    ctx = zmq.asyncio.Context()
    stalled = await connected_sub(ctx, pub, endpoint, prefix="wave.", small=True)
    fast = await connected_sub(ctx, pub, endpoint, prefix="wave.")
    try:
        n = 2000
        fast_seqs = []
        for i in range(0, n, 5):
            for j in range(i, i + 5):
                assert pub.publish(wave(j))
            for _ in range(5):
                _, payload = await asyncio.wait_for(fast.recv_multipart(), 5)
                fast_seqs.append(parse_message(payload).seq)
        assert fast_seqs == list(range(n))
        stalled_seqs = await drain_then_one_more(pub, stalled, n)
        assert 0 < len(stalled_seqs) < n
        # The subscriber can count exactly what it lost from the gaps in seq.
        assert missed(stalled_seqs) == n - len(stalled_seqs) + 1
    finally:
        stalled.close()
        fast.close()
        ctx.term()
        pub.close()


async def test_nodrop_counts_drops_without_blocking(endpoint: str) -> None:
    pub = Publisher(endpoint, 10, nodrop=True)
    ctx = zmq.asyncio.Context()
    stalled = await connected_sub(ctx, pub, endpoint, prefix="wave.", small=True)
    try:
        before = pub.sent
        n = 5000
        results = [pub.publish(wave(i)) for i in range(n)]
        assert pub.dropped > 0 and pub.dropped == results.count(False)
        assert pub.sent - before + pub.dropped == n
        # Dropped messages keep their seq number, so the subscriber sees the gap.
        seqs = await drain_then_one_more(pub, stalled, n)
        assert missed(seqs) == pub.dropped
    finally:
        stalled.close()
        ctx.term()
        pub.close()


def test_address_in_use_is_a_clear_error(endpoint: str) -> None:
    first = Publisher(endpoint, 10)
    try:
        with pytest.raises(PublisherError, match="in use.*--endpoint"):
            Publisher(endpoint, 10)
    finally:
        first.close()
    Publisher(endpoint, 10).close()  # closed with linger 0: the port is free again at once


def test_bad_endpoint_is_a_clear_error() -> None:
    with pytest.raises(PublisherError, match="cannot publish on nonsense.*tcp://"):
        Publisher("nonsense", 10)
