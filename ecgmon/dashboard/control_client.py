"""Requests to a daemon's control socket (acknowledge, silence) with a timeout.

A fresh DEALER socket per request: a daemon that never answers leaves nothing behind that
could pair an old reply with a new request, and ZeroMQ's lazy connect means a daemon that
is away simply times out.
"""

from __future__ import annotations

import json

import zmq
import zmq.asyncio

from ecgmon.curve import ClientKeys

TIMEOUT_S = 2.0


class ControlUnavailable(Exception):
    """The daemon did not answer in time (not running, no control socket there, or our key not
    let in)."""


async def request(ctx: zmq.asyncio.Context, endpoint: str, payload: dict, timeout_s: float = TIMEOUT_S,
                  keys: ClientKeys | None = None) -> dict:
    """Send ``payload`` as JSON and return the daemon's JSON reply; with ``keys``, as a CURVE
    client (a daemon that does not let the key in never answers: ``ControlUnavailable``)."""
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    if keys is not None:
        keys.apply(sock)
    try:
        sock.connect(endpoint)
        # The empty frame makes the DEALER speak like a REQ, so REQ/REP servers work too.
        await sock.send_multipart([b"", json.dumps(payload).encode()])
        if not await sock.poll(timeout_s * 1000, zmq.POLLIN):
            hint = " (is this client's key among its allowed keys?)" if keys is not None else ""
            raise ControlUnavailable(f"daemon not answering on {endpoint}{hint}")
        frames = await sock.recv_multipart()
    finally:
        sock.close(linger=0)
    try:
        reply = json.loads(frames[-1])
    except ValueError:
        return {"ok": False, "error": "unreadable reply from the daemon"}
    return reply if isinstance(reply, dict) else {"ok": False, "error": "unreadable reply from the daemon"}
