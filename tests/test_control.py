"""The daemon's control socket over real ZeroMQ sockets, with a real alarm engine holding a
real alarm (a flat line: leads off), and the dashboard's client side of it."""

from __future__ import annotations

import asyncio
import json

import numpy as np
import pytest
import zmq
import zmq.asyncio

from ecgmon.config import Config
from ecgmon.dashboard.control_client import ControlUnavailable, request
from ecgmon.monitor.alarms.engine import AlarmEngine
from ecgmon.monitor.control import ControlError, ControlServer
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
        ctx.term()


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
