"""A real ZeroMQ subscriber for tests that watch a daemon's messages."""

from __future__ import annotations

import asyncio

import zmq
import zmq.asyncio

from ecgmon.schema import parse_message

PREFIXES = ("event.", "status.", "beat.")


async def subscriber(endpoint: str, prefixes=PREFIXES) -> tuple[zmq.asyncio.Context, zmq.asyncio.Socket]:
    ctx = zmq.asyncio.Context()
    sub = ctx.socket(zmq.SUB)
    sub.setsockopt(zmq.LINGER, 0)
    for prefix in prefixes:
        sub.setsockopt_string(zmq.SUBSCRIBE, prefix)
    sub.connect(endpoint)
    await asyncio.sleep(0.3)  # let the subscription reach the publisher before anything is sent
    return ctx, sub


async def collect_into(sub: zmq.asyncio.Socket, msgs: list) -> None:
    """Append every message received to ``msgs`` until cancelled."""
    while True:
        msgs.append(parse_message((await sub.recv_multipart())[1]))
