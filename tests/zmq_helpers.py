"""A real ZeroMQ subscriber for tests that watch a daemon's messages."""

from __future__ import annotations

import asyncio

from typing import Callable

import zmq
import zmq.asyncio

from ecgmon.monitor.daemon import Daemon
from ecgmon.monitor.publisher import Publisher
from ecgmon.schema import Message, parse_message

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


async def daemon_messages(
    endpoint: str, make_daemon: Callable[[Publisher], Daemon], prefixes=PREFIXES, timeout_s: float = 300
) -> list[Message]:
    """Every message with ``prefixes`` that the daemon ``make_daemon`` builds on a publisher at
    ``endpoint`` publishes in its whole run (its sources end)."""
    pub = Publisher(endpoint, 100000)
    ctx, sub = await subscriber(endpoint, prefixes)
    try:
        await asyncio.wait_for(make_daemon(pub).run(), timeout_s)
        msgs = []
        while await sub.poll(300):
            msgs.append(parse_message((await sub.recv_multipart())[1]))
        return msgs
    finally:
        sub.close()
        ctx.term()
