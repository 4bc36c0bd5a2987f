"""Property-based fuzzing (hypothesis) of the control protocol.

``ControlServer.handle`` is given arbitrary bytes and near-valid requests (each field swapped
for a wrong type, a non-finite or out-of-range number, a control character, nesting, an
unknown key, a stale alarm id; truncated or spliced JSON): it always returns a dict reply with
``ok`` True or False and never raises, and only a well-formed request about a live alarm
changes (and publishes) anything. Then random multi-frame messages, empty frames included,
over a real ROUTER socket: every message is answered and a valid request is answered
afterwards. The budget is ``fuzz_settings`` (ECGMON_FUZZ_EXAMPLES for a long run).
"""

from __future__ import annotations

import asyncio
import json
import unicodedata

from hypothesis import event, given, strategies as st
import pytest
import zmq
import zmq.asyncio

from ecgmon.monitor.control import MAX_REQUEST_BYTES, ControlServer
from ecgmon.monitor.rate_limit import RateLimiter
from ecgmon.schema import AlarmMessage

from fuzz_settings import fuzz_settings
from test_control import flat_line_engine


class _Ward:
    """One stream, bed1, with a fresh alarm for every example; what was published."""

    def __init__(self) -> None:
        self.engine, self.alarm = flat_line_engine()
        self.published: list[AlarmMessage] = []

    def reset(self) -> None:
        self.engine, self.alarm = flat_line_engine()
        self.published.clear()


def _server(ward: _Ward, endpoint: str = "tcp://127.0.0.1:*") -> ControlServer:
    server = ControlServer(endpoint, lambda s: ward.engine if s == "bed1" else None, ward.published.append)
    server.limiter = RateLimiter(rate_per_s=0.0, burst=10**9)  # fuzz the requests, not the limit
    return server


def _check_reply(reply: object) -> dict:
    assert isinstance(reply, dict) and reply["ok"] in (True, False), reply
    if reply["ok"]:
        assert set(reply) == {"ok", "alarm"}
    else:
        assert set(reply) == {"ok", "error"} and isinstance(reply["error"], str) and reply["error"]
        assert reply["error"].isprintable() and len(reply["error"]) < 2000  # it is logged as one line
    json.dumps(reply)  # it must go on the wire
    return reply


_weird = st.one_of(
    st.none(), st.booleans(), st.integers(), st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=20), st.just("120"), st.just("bed1\n2026 forged log line"), st.just([]), st.just({}),
    st.lists(st.integers(), max_size=3), st.dictionaries(st.text(max_size=3), st.integers(), max_size=2),
)


# Values just off, per field ("LIVE" stands for the example's real alarm id).
_EDGE = {
    "op": ["ACK", "reboot", ""],
    "stream": ["bed9", "", "bed1 "],
    "alarm_id": ["bed1-leads_off-1", "bed1-leads_off-1-00000000", "x", "LIVE\n"],
    "by": ["x" * 101, "a\x00b", "", "\u202enurse"],
    "seconds": [3600.01, 0, -5, 1e9, "120", True, 120],
}
# Unknown keys, as a client could spell them: they are named in the error, which is logged.
_KEYS = ["extra", "\nforged log line", "k" * 5000, "\u202e", ""]


@st.composite
def near_valid(draw) -> bytes:
    """A valid request with up to three fields dropped, set just off or to a wrong type, or an
    unknown key added, then perhaps truncated, spliced, nested or padded."""
    request: dict = {
        "op": draw(st.sampled_from(["ack", "silence"])), "stream": "bed1", "alarm_id": "LIVE",
        "by": draw(st.sampled_from(["nurse", "Dr. Øster-Ünal"])), "seconds": draw(st.sampled_from([120, 0.5, 3600])),
    }
    for _ in range(draw(st.integers(0, 3))):
        key = draw(st.sampled_from(sorted(_EDGE)))
        how = draw(st.sampled_from(["drop", "edge", "weird", "unknown"]))
        if how == "drop":
            request.pop(key, None)
        elif how == "unknown":
            request[draw(st.sampled_from(_KEYS))] = draw(_weird)
        else:
            request[key] = draw(st.sampled_from(_EDGE[key]) if how == "edge" else _weird)
    text = json.dumps(request, allow_nan=True).encode()
    cut = draw(st.sampled_from(["whole"] * 4 + ["truncate", "splice", "wrap", "pad"]))
    if cut == "truncate":
        text = text[: draw(st.integers(0, len(text)))]
    elif cut == "splice":
        i = draw(st.integers(0, len(text)))
        text = text[:i] + draw(st.binary(max_size=8)) + text[i:]
    elif cut == "wrap":
        depth = draw(st.integers(1, 300))
        text = b"[" * depth + text + b"]" * depth
    elif cut == "pad":
        text = text[:-1] + b', "pad": "' + b"x" * draw(st.sampled_from([10, MAX_REQUEST_BYTES])) + b'"}'
    return text


def _assert_outcome(ward: _Ward, server: ControlServer, payload: bytes, reply: dict) -> None:
    """What a reply may be: a change only for a well-formed request about the live alarm."""
    _check_reply(reply)
    event("ok" if reply["ok"] else reply["error"].split(":")[0].split(" '")[0])  # what was reached
    if reply["ok"]:
        request = json.loads(payload)
        assert request["op"] in ("ack", "silence") and request["stream"] == "bed1"
        assert request["alarm_id"] == ward.alarm.id and reply["alarm"]["id"] == ward.alarm.id
        assert type(request["by"]) is str and not any(unicodedata.category(c)[0] == "C" for c in request["by"])
        if request["op"] == "silence":
            assert type(request["seconds"]) in (int, float) and 0 < request["seconds"] <= 3600
            assert reply["alarm"]["silenced_by"] == f"{request['by']} (unauthenticated)" and reply["alarm"]["acknowledged_by"] is None
    assert len(ward.published) == server.handled


@pytest.fixture(scope="module")
def ward_server():
    """One server for all examples (handle needs no socket traffic); its ward is reset."""
    ward = _Ward()
    server = _server(ward)
    yield ward, server
    server.close()


@fuzz_settings(300)
@given(payload=st.binary(max_size=2 * MAX_REQUEST_BYTES))
def test_fuzz_handle_arbitrary_bytes(ward_server, payload: bytes) -> None:
    _check_reply(ward_server[1].handle(payload))


@fuzz_settings(300)
@given(payload=near_valid())
def test_fuzz_handle_near_valid_requests(ward_server, payload: bytes) -> None:
    ward, server = ward_server
    ward.reset()
    server.handled = 0
    payload = payload.replace(b'"LIVE"', json.dumps(ward.alarm.id).encode())
    _assert_outcome(ward, server, payload, server.handle(payload))
    # The same request again changes nothing more: an acknowledgement stands, no rebroadcast
    # of an unchanged alarm.
    again = _check_reply(server.handle(payload))
    if again["ok"]:
        assert json.loads(payload)["op"] == "silence"


_frame = st.one_of(
    st.just(b""), st.binary(max_size=40),
    near_valid(), st.just(b'{"op": "ack", "stream": "bed1", "alarm_id": "LIVE", "by": "fuzz"}'),
)


@fuzz_settings(5)
@given(st.lists(st.lists(_frame, min_size=1, max_size=4), min_size=50, max_size=100))
def test_fuzz_real_socket_random_frames(messages: list[list[bytes]]) -> None:
    """Every message gets exactly one reply, in order; a valid request is answered after."""
    asyncio.run(_exchange(messages))


async def _exchange(messages: list[list[bytes]]) -> None:
    ward = _Ward()
    server = _server(ward)
    task = asyncio.create_task(server.serve())
    ctx = zmq.asyncio.Context()
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(server.endpoint)
    live = json.dumps(ward.alarm.id).encode()
    try:
        for frames in messages:
            await sock.send_multipart([f.replace(b'"LIVE"', live) for f in frames])
        for _ in messages:
            assert await sock.poll(10_000), "a message got no reply"
            reply = await sock.recv_multipart()
            assert len(reply) <= 2 and (len(reply) == 1 or reply[0] == b"")
            _check_reply(json.loads(reply[-1]))
        assert server.handled + server.refused == len(messages) and len(ward.published) == server.handled
        ward.reset()
        await sock.send_multipart([b"", json.dumps({"op": "silence", "stream": "bed1", "alarm_id": ward.alarm.id,
                                                    "by": "n", "seconds": 60}).encode()])
        assert await sock.poll(10_000), "no reply after the fuzz"
        assert _check_reply(json.loads((await sock.recv_multipart())[-1]))["ok"] is True
    finally:
        sock.close()
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        server.close()
        ctx.term()
