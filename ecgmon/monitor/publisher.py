"""The only part that talks to ZeroMQ: a PUB socket sending ``[topic, json]`` without ever
blocking the pipeline, stamping each message with publisher id, per-topic seq and wall time.
"""

from __future__ import annotations

import secrets
import time

import zmq

from ecgmon.curve import ServerKeys, check_bind
from ecgmon.schema import Message


class PublisherError(Exception):
    """The publisher cannot start (bad endpoint, address in use); the message says what to do."""


class Publisher:
    """A PUB socket bound to ``endpoint``.

    A plain (not ``zmq.asyncio``) socket: every send is NOBLOCK, so it never waits and the
    event loop has nothing to await; the asyncio socket wrapped each send in a future and a
    poller registration, 8 % of the daemon's CPU at 100 streams (bench/ward.py's profile).

    ZeroMQ's PUB socket drops, per subscriber, what does not fit under ``send_hwm``, so a slow
    subscriber never slows the pipeline nor the other subscribers; it sees the gaps in
    ``seq``. With ``nodrop`` (``XPUB_NODROP``) a full queue is reported instead: the message is
    not sent to anyone and counted in ``dropped``.

    With ``keys`` only allowed CURVE clients receive anything; without, an endpoint beyond
    loopback is refused (``CurveError``) unless ``insecure``.
    """

    def __init__(self, endpoint: str, send_hwm: int, nodrop: bool = False,
                 keys: ServerKeys | None = None, insecure: bool = False) -> None:
        check_bind(endpoint, keys is not None, insecure, "publisher")
        self.endpoint = endpoint
        self.pub = secrets.token_hex(4)
        self.sent = 0
        self.dropped = 0
        self._seq: dict[str, int] = {}
        self._ctx = zmq.Context()
        self._sock = self._ctx.socket(zmq.PUB)
        self._auth = keys.protect(self._sock) if keys is not None else None
        self._sock.setsockopt(zmq.SNDHWM, send_hwm)
        self._sock.setsockopt(zmq.LINGER, 0)
        if nodrop:
            self._sock.setsockopt(zmq.XPUB_NODROP, 1)
        try:
            self._sock.bind(endpoint)
        except zmq.ZMQError as err:
            self.close()
            raise PublisherError(_bind_advice(endpoint, err)) from None
        # With port 0 or '*' ZeroMQ picks the port; report the one actually bound.
        self.endpoint = self._sock.getsockopt_string(zmq.LAST_ENDPOINT) or endpoint

    def publish(self, msg: Message) -> bool:
        """Stamp and send ``msg`` without blocking; False if it was dropped."""
        topic = msg.topic
        seq = self._seq.get(topic, 0)
        self._seq[topic] = seq + 1  # a dropped message keeps its number: subscribers see the gap
        msg.pub = self.pub
        msg.seq = seq
        msg.wall = time.time()
        frames = [topic.encode(), msg.model_dump_json().encode()]
        try:
            self._sock.send_multipart(frames, flags=zmq.NOBLOCK)
        except zmq.Again:  # the queue is full (XPUB_NODROP): not sent to anyone
            self.dropped += 1
            return False
        self.sent += 1
        return True

    def close(self, linger_ms: int = 0) -> None:
        """Close the socket; queued messages get ``linger_ms`` to leave (default: dropped)."""
        if not self._sock.closed:
            self._sock.close(linger=linger_ms)
        if self._auth is not None:
            self._auth.stop()
        self._ctx.term()


def _bind_advice(endpoint: str, err: zmq.ZMQError) -> str:
    if err.errno == zmq.EADDRINUSE:
        return (
            f"cannot publish on {endpoint}: the address is in use (another ecgmon running?); "
            f"stop it or choose another with --endpoint or [publisher] endpoint"
        )
    return (
        f"cannot publish on {endpoint}: {err.strerror}; "
        f"an endpoint looks like tcp://127.0.0.1:5555, tcp://*:5555 or ipc:///tmp/ecgmon"
    )
