"""The daemon's control socket over real ZeroMQ sockets, with a real alarm engine holding a
real alarm (a flat line: leads off), and the dashboard's client side of it."""

from __future__ import annotations

import asyncio
import json

import numpy as np
import pytest
import zmq
import zmq.asyncio
from zmq.utils.monitor import parse_monitor_message

from ecgmon.config import Config
from ecgmon.dashboard.control_client import ControlUnavailable, request
from ecgmon.monitor.alarms.engine import AlarmEngine
from ecgmon.monitor.control import BATCH, MAX_FRAME_BYTES, ControlError, ControlServer
from ecgmon.monitor.rate_limit import RateLimiter
from ecgmon.schema import AlarmMessage

FS = 250.0


def flat_line_engine() -> tuple[AlarmEngine, AlarmMessage]:
    engine = AlarmEngine("bed1", FS, Config().alarms)
    raised: list[AlarmMessage] = []
    for k in range(20):
        x = np.zeros(int(FS))
        raised += engine.feed(k * int(FS), x, x, [])
    assert raised, "a flat line raised no alarm"
    return engine, raised[0]


@pytest.fixture
def served(endpoint):
    """A control server on a free port answering for stream bed1, and what it published."""
    engine, alarm = flat_line_engine()
    published: list[AlarmMessage] = []
    server = ControlServer(endpoint, {"bed1": engine}.get, published.append)
    yield server, alarm, published
    server.close()


async def _ask(server: ControlServer, payload, socket_type=zmq.DEALER) -> dict:
    """One request through a real client socket while the server serves."""
    task = asyncio.create_task(server.serve())
    ctx = zmq.asyncio.Context()
    try:
        if isinstance(payload, dict):
            return await request(ctx, server.endpoint, payload)
        sock = ctx.socket(socket_type)
        sock.setsockopt(zmq.LINGER, 0)
        sock.connect(server.endpoint)
        frames = [payload] if socket_type == zmq.REQ else [b"", payload]
        await sock.send_multipart(frames)
        assert await sock.poll(10_000), "no reply"
        reply = (await sock.recv_multipart())[-1]
        sock.close()
        return json.loads(reply)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        ctx.destroy(linger=0)  # closes a socket left open by a failed assertion, or term() would hang


async def test_acknowledge_and_silence_round_trip(served):
    server, alarm, published = served
    reply = await _ask(server, {"op": "ack", "stream": "bed1", "alarm_id": alarm.id, "by": "nurse"})
    assert reply["ok"] is True and reply["alarm"]["acknowledged_by"] == "nurse (unauthenticated)"
    assert published[-1].id == alarm.id and published[-1].acknowledged_by == "nurse (unauthenticated)"
    assert published[-1].acknowledged_wall is not None
    reply = await _ask(server, {"op": "silence", "stream": "bed1", "alarm_id": alarm.id, "by": "doc", "seconds": 120})
    assert reply["ok"] is True
    assert published[-1].silenced_until_wall - published[-1].acknowledged_wall == pytest.approx(120, abs=30)
    assert server.handled == 2 and len(published) == 2


async def test_a_req_client_is_answered_too(served):
    server, alarm, _ = served
    payload = json.dumps({"op": "ack", "stream": "bed1", "alarm_id": alarm.id, "by": "n"}).encode()
    assert (await _ask(server, payload, zmq.REQ))["ok"] is True


@pytest.mark.parametrize("payload,needle", [
    (b"", "malformed request"),
    (b"\xff\xfe not json", "malformed request"),
    (b"[1, 2]", "malformed request"),
    (b'{"op": "reboot", "stream": "bed1", "alarm_id": "x", "by": "n"}', "op"),
    (b'{"op": "ack", "stream": "bed1", "alarm_id": "x"}', "by"),
    (b'{"op": "ack", "stream": "bed1", "alarm_id": "x", "by": "n", "extra": 1}', "extra"),
    (b'{"op": "silence", "stream": "bed1", "alarm_id": "x", "by": "n"}', "silence needs seconds"),
    (b'{"op": "silence", "stream": "bed1", "alarm_id": "x", "by": "n", "seconds": -5}', "seconds"),
    (b'{"op": "silence", "stream": "bed1", "alarm_id": "x", "by": "n", "seconds": 1e9}', "seconds"),
    (b'{"op": "ack", "stream": "bed9", "alarm_id": "x", "by": "n"}', "no stream 'bed9'"),
    (b'{"op": "ack", "stream": "bed1", "alarm_id": "bed1-vtach-99", "by": "n"}', "not from this daemon run"),
])
async def test_malformed_or_wrong_requests_get_an_error_reply(served, payload, needle, caplog):
    server, alarm, published = served
    reply = await _ask(server, payload)
    assert reply["ok"] is False and needle in reply["error"], reply
    assert published == [] and server.refused == 1
    assert any("refused" in r.message for r in caplog.records)
    # and the server still answers
    ok = await _ask(server, {"op": "ack", "stream": "bed1", "alarm_id": alarm.id, "by": "n"})
    assert ok["ok"] is True


async def test_no_daemon_is_reported_not_waited_for(endpoint):
    ctx = zmq.asyncio.Context()
    try:
        with pytest.raises(ControlUnavailable, match="not answering"):
            await request(ctx, endpoint, {"op": "ack"}, timeout_s=0.5)
    finally:
        ctx.term()


def test_address_in_use_is_a_clear_error(endpoint):
    first = ControlServer(endpoint, lambda s: None, lambda m: None)
    try:
        with pytest.raises(ControlError, match="address in use|Address already in use"):
            ControlServer(endpoint, lambda s: None, lambda m: None)
    finally:
        first.close()


# -- issue 12, reproduction 4: a flood or an odd request must neither go unanswered nor starve
# monitoring; reproduction 6: an acknowledgement stands.


async def test_a_1mb_request_gets_an_error_reply(served):
    server, alarm, _ = served
    payload = b'{"op": "ack", "stream": "bed1", "alarm_id": "x", "by": "' + b"n" * 1_000_000 + b'"}'
    reply = await _ask(server, payload)  # before: ZeroMQ dropped the client, no reply, no log line
    assert reply["ok"] is False and "request too large" in reply["error"]
    assert server.refusals["too_large"] == 1


async def test_deeply_nested_json_gets_an_error_reply(served):
    server, _, _ = served
    deep = b"[" * 100_000 + b"]" * 100_000
    assert (await _ask(server, deep))["ok"] is False  # before: no reply (over the frame limit)
    nested = b'{"op": "ack", "stream": {"bed": [1]}, "alarm_id": "x", "by": "n"}'
    reply = await _ask(server, nested)
    assert reply["ok"] is False and "nested JSON" in reply["error"]


@pytest.mark.parametrize("seconds", ['"120"', "true"])
async def test_seconds_must_be_a_number(served, seconds):
    server, alarm, published = served
    payload = (f'{{"op": "silence", "stream": "bed1", "alarm_id": "{alarm.id}", "by": "n", '
               f'"seconds": {seconds}}}').encode()
    reply = await _ask(server, payload)  # before: "120" was taken for 120 s
    assert reply["ok"] is False and "seconds" in reply["error"] and published == []


async def test_a_name_with_a_newline_is_refused(served):
    server, alarm, published = served
    reply = await _ask(server, {"op": "ack", "stream": "bed1", "alarm_id": alarm.id, "by": "n\nforged log line"})
    assert reply["ok"] is False and "by" in reply["error"] and published == []


async def _pipeline(server: ControlServer, requests: list[bytes]) -> list[dict]:
    """Send every request from one DEALER before reading any reply, as a flood does."""
    ctx = zmq.asyncio.Context()
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(server.endpoint)
    try:
        for r in requests:
            await sock.send_multipart([b"", r])
        replies = []
        for _ in requests:
            assert await sock.poll(10_000), f"no reply after {len(replies)}"
            replies.append(json.loads((await sock.recv_multipart())[-1]))
        return replies
    finally:
        sock.close()
        ctx.term()


async def test_a_flood_is_rate_limited_and_the_server_stays_responsive(served, caplog, monkeypatch):
    server, alarm, published = served
    monkeypatch.setattr("ecgmon.monitor.control.LOG_PERIOD_S", 1e9)  # one log period whatever the pace
    server.limiter = RateLimiter(rate_per_s=0.0, burst=20)  # a frozen bucket: counts, not time
    junk = [b"garbage", b'{"op": "ack"}', json.dumps({"op": "ack", "stream": "bed1", "alarm_id": "bed1-x-1",
                                                      "by": "n"}).encode()]
    task = asyncio.create_task(server.serve())
    try:
        replies = await _pipeline(server, [junk[i % 3] for i in range(600)])
        limited = [r for r in replies if r["error"].startswith("rate limited")]
        assert len(replies) == 600 and len(limited) == 580 and replies[19] not in limited
        assert server.refusals["rate_limited"] == 580 and server.refused == 600 and published == []
        # One log line for the whole flood (before: one per request).
        assert len([r for r in caplog.records if "refused" in r.message]) == 1
        # Another client is still answered.
        ok = await request(zmq.asyncio.Context.instance(), server.endpoint,
                           {"op": "ack", "stream": "bed1", "alarm_id": alarm.id, "by": "n"})
        assert ok["ok"] is True and len(published) == 1
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def test_a_flood_is_handled_a_batch_per_event_loop_turn(served):
    """Between two turns of the event loop (where the sources run) the server answers at most
    BATCH requests; before, a queued flood was answered without ever letting them run."""
    server, _, _ = served
    server.limiter = RateLimiter(rate_per_s=0.0, burst=10**9)
    ctx = zmq.asyncio.Context()
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(server.endpoint)
    for _ in range(400):
        await sock.send_multipart([b"", b"garbage"])
    await asyncio.sleep(0.5)  # the flood reaches the daemon before it starts serving
    seen: list[int] = []

    async def ticker() -> None:
        while True:
            seen.append(server.refused)
            await asyncio.sleep(0)

    ticking = asyncio.create_task(ticker())
    await asyncio.sleep(0)  # the ticker's first look: nothing answered yet
    serving = asyncio.create_task(server.serve())
    try:
        for n in range(400):
            assert await sock.poll(10_000), f"no reply after {n}"
            await sock.recv_multipart()
    finally:
        sock.close()
        for t in (serving, ticking):
            t.cancel()
        await asyncio.gather(serving, ticking, return_exceptions=True)
        ctx.term()
    assert seen[-1] == 400 and max(b - a for a, b in zip(seen, seen[1:])) <= BATCH


async def test_repeated_acks_broadcast_once_and_the_first_stands(served):
    server, alarm, published = served
    server.limiter = RateLimiter(rate_per_s=0.0, burst=10**9)
    acks = [json.dumps({"op": "ack", "stream": "bed1", "alarm_id": alarm.id, "by": by}).encode()
            for by in ["nurse"] + ["doctor"] * 49]
    task = asyncio.create_task(server.serve())
    try:
        replies = await _pipeline(server, acks)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    assert replies[0]["ok"] is True and [r["ok"] for r in replies[1:]] == [False] * 49
    assert "already acknowledged by nurse (unauthenticated) at" in replies[1]["error"]
    assert len(published) == 1 and published[0].acknowledged_by == "nurse (unauthenticated)"  # before: 50 broadcasts


async def test_silence_is_not_an_acknowledgement(served):
    server, alarm, published = served
    reply = await _ask(server, {"op": "silence", "stream": "bed1", "alarm_id": alarm.id, "by": "doc", "seconds": 60})
    assert reply["ok"] is True and reply["alarm"]["silenced_by"] == "doc (unauthenticated)"
    assert published[-1].acknowledged_by is None and published[-1].acknowledged_wall is None
    reply = await _ask(server, {"op": "ack", "stream": "bed1", "alarm_id": alarm.id, "by": "nurse"})
    assert reply["ok"] is True and published[-1].acknowledged_by == "nurse (unauthenticated)"


async def test_an_unknown_key_cannot_forge_a_log_line(served, caplog):
    server, _, _ = served
    payload = b'{"op": "ack", "stream": "bed1", "alarm_id": "x", "by": "n", "\\n2026 INFO ecgmon: forged": 1}'
    reply = await _ask(server, payload)
    assert reply["ok"] is False and "forged" in reply["error"] and "\n" not in reply["error"]
    assert not [r for r in caplog.records if "\n" in r.getMessage()]  # before: the newline was logged


async def test_a_frame_over_the_hard_limit_cuts_off_only_its_sender(served):
    """Over MAX_FRAME_BYTES ZeroMQ closes the connection (nothing is buffered beyond it); the
    daemon goes on answering everyone else."""
    server, alarm, _ = served
    task = asyncio.create_task(server.serve())
    ctx = zmq.asyncio.Context()
    big = ctx.socket(zmq.DEALER)
    big.setsockopt(zmq.LINGER, 0)
    monitor = big.get_monitor_socket(zmq.EVENT_DISCONNECTED)
    big.connect(server.endpoint)
    try:
        await big.send_multipart([b"", b"x" * (MAX_FRAME_BYTES + 1)])
        assert await monitor.poll(10_000), "the daemon kept the connection"
        assert parse_monitor_message(await monitor.recv_multipart())["event"] == zmq.EVENT_DISCONNECTED
        ok = await request(ctx, server.endpoint, {"op": "ack", "stream": "bed1", "alarm_id": alarm.id, "by": "n"})
        assert ok["ok"] is True and server.handled == 1 and server.refused == 0
    finally:
        big.disable_monitor()
        monitor.close()
        big.close()
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        ctx.term()
