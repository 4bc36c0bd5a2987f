"""The daemon's control socket: dashboards acknowledge and silence alarms through it.

A ZeroMQ ROUTER socket, so REQ and DEALER clients alike are answered (the reply goes back
with the request's envelope). A request is one JSON object::

    {"op": "ack" | "silence", "stream": "bed3", "alarm_id": "bed3-vtach-7-1a2b3c4d", "by": "nurse",
     "seconds": 120}            # seconds: silence only

and the reply ``{"ok": true, "alarm": {...}}`` or ``{"ok": false, "error": "..."}``. The
alarm engine records who and when; the changed alarm is published like any other, so every
subscriber sees it.

Every request is untrusted, and none may slow monitoring down. Each client (ROUTER identity,
and authenticated key name when there is one) has a token bucket; a request over it gets a
short error reply without being read. A request over ``MAX_REQUEST_BYTES``, not one flat JSON
object, or with a field of the wrong type (strict: ``"120"`` is not a number) gets an error
reply. At most ``BATCH`` requests are handled before the event loop runs everything else, so a
flood only ever delays the sources by one batch. Refusals are counted (``refusals``) and
logged at most once per ``LOG_PERIOD_S``, the first in full and the rest as counts.
"""

from __future__ import annotations

import asyncio
from collections import Counter
import json
import logging
import re
import time
from typing import Callable, Literal, Protocol

from pydantic import BaseModel, ConfigDict, Field, ValidationError
import zmq
import zmq.asyncio

from ecgmon.curve import ServerKeys, check_bind
from ecgmon.monitor.alarms.book import AlarmRefused
from ecgmon.monitor.publisher import PublisherError
from ecgmon.monitor.rate_limit import RateLimiter
from ecgmon.schema import AlarmMessage

log = logging.getLogger("ecgmon.control")

MAX_REQUEST_BYTES = 8192  # a request is a few hundred bytes; a larger one is answered "too large"
# ZeroMQ itself drops a peer sending a bigger frame, without a word to anyone: well above the
# cap, so that a too-large request is answered. What one peer can hold queued in the daemon is
# MAX_FRAME_BYTES × RCVHWM (8 MiB), since ZeroMQ stops reading a peer whose queue is full.
MAX_FRAME_BYTES = 2 * 1024 * 1024
RCVHWM = 4
RATE_PER_S = 5.0  # per client: a person acknowledges a few alarms a minute
BURST = 20
BATCH = 8  # requests handled per event-loop turn; the sources run between batches
LOG_PERIOD_S = 10.0
MAX_SILENCE_S = 3600.0
# No control or format characters (newlines, bidi overrides) in names: they reach the log and
# the dashboards.
_PRINTABLE = r"^\P{C}+$"
# JSON strings, each to its closing quote or the end (possessive: linear time on any input).
_JSON_STRING = re.compile(rb'"(?:[^"\\]|\\.)*+"?', re.DOTALL)


class ControlError(PublisherError):
    """The control socket cannot be bound; the message says what to do."""


class AlarmControl(Protocol):
    """What the control socket needs of a stream's alarm engine."""

    def acknowledge(self, alarm_id: str, by: str) -> AlarmMessage:
        """The changed alarm; raises AlarmRefused saying why not."""

    def silence(self, alarm_id: str, seconds: float, by: str) -> AlarmMessage:
        """The changed alarm; raises AlarmRefused saying why not."""


class ControlRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    op: Literal["ack", "silence"]
    stream: str = Field(min_length=1, max_length=200, pattern=_PRINTABLE)
    alarm_id: str = Field(min_length=1, max_length=200, pattern=_PRINTABLE)
    by: str = Field(min_length=1, max_length=100, pattern=_PRINTABLE, description="who: recorded with the alarm")
    seconds: float | None = Field(None, gt=0, le=MAX_SILENCE_S)


def _nested(payload: bytes) -> bool:
    """More than one object or array outside strings: a request is one flat object. Cheap
    before parsing: only a payload with more than one bracket is scanned for strings."""
    if payload.count(b"{") + payload.count(b"[") <= 1:
        return False
    bare = _JSON_STRING.sub(b"", payload)
    return bare.count(b"{") + bare.count(b"[") > 1


def _reason(err: ValidationError) -> str:
    return "; ".join(f"{_field(e['loc'])}: {e['msg']}" for e in err.errors())


def _field(loc: tuple) -> str:
    """A field's name as the client spelled it, made safe for one log line: an unknown key
    could hold a newline (a forged log line) or kilobytes."""
    name = ".".join(map(str, loc)) or "request"
    return name if name.isprintable() and len(name) <= 40 else repr(name[:40])


class ControlServer:
    """Answers control requests using ``engines(stream)`` (None: no such stream or no alarm
    engine) and hands each changed alarm to ``publish``."""

    def __init__(
        self,
        endpoint: str,
        engines: Callable[[str], AlarmControl | None],
        publish: Callable[[AlarmMessage], object],
        keys: ServerKeys | None = None,
        insecure: bool = False,
    ) -> None:
        check_bind(endpoint, keys is not None, insecure, "control socket")
        self.engines = engines
        self.publish = publish
        self.handled = 0
        self.refused = 0
        self.refusals: Counter[str] = Counter()  # by kind: rate_limited, too_large, malformed, ...
        self.limiter = RateLimiter(RATE_PER_S, BURST)
        self._logged_s: float | None = None  # when the last refusal was logged
        self._unlogged: Counter[str] = Counter()  # refusals since then, by kind
        self._ctx = zmq.asyncio.Context()
        self._sock = self._ctx.socket(zmq.ROUTER)
        # With keys only allowed clients get in, and each request carries its key's name.
        self._auth = keys.protect(self._sock) if keys is not None else None
        self._sock.setsockopt(zmq.LINGER, 0)
        self._sock.setsockopt(zmq.MAXMSGSIZE, MAX_FRAME_BYTES)
        self._sock.setsockopt(zmq.RCVHWM, RCVHWM)
        try:
            self._sock.bind(endpoint)
        except zmq.ZMQError as err:
            self.close()
            raise ControlError(
                f"cannot open the control socket on {endpoint}: {err.strerror}; choose another with "
                f"--control or [publisher] control_endpoint ('' for none)"
            ) from None
        self.endpoint = self._sock.getsockopt_string(zmq.LAST_ENDPOINT) or endpoint

    def handle(self, payload: bytes, key: str | None = None) -> dict:
        """The reply to one request; never raises, whatever the payload.

        ``key`` is the client's authenticated key name (CURVE): what is recorded as who acted.
        Without keys nobody is authenticated: the ``by`` the client gave is recorded, marked
        ``"<by> (unauthenticated)"`` (a key name has no spaces, so the two never mix up).
        """
        if len(payload) > MAX_REQUEST_BYTES:
            return self._refuse("too_large", f"request too large: {len(payload):,} bytes (at most {MAX_REQUEST_BYTES:,})")
        if _nested(payload):
            return self._refuse("malformed", "malformed request: nested JSON (a request is one flat object)")
        try:
            req = ControlRequest.model_validate_json(payload)
        except ValidationError as err:
            return self._refuse("malformed", f"malformed request: {_reason(err)}")
        if req.op == "silence" and req.seconds is None:
            return self._refuse("malformed", "malformed request: silence needs seconds")
        who = key if key is not None else f"{req.by} (unauthenticated)"
        engine = self.engines(req.stream)
        if engine is None:
            return self._refuse("no_stream", f"no stream '{req.stream}' with alarms here")
        try:
            if req.op == "ack":
                changed = engine.acknowledge(req.alarm_id, who)
            else:
                changed = engine.silence(req.alarm_id, req.seconds, who)
        except AlarmRefused as err:
            return self._refuse("alarm", str(err))
        self.publish(changed)  # only a changed alarm gets here: nothing is broadcast twice
        self.handled += 1
        log.info("%s: %s %s by %s", req.stream, req.op, req.alarm_id, who)
        return {"ok": True, "alarm": changed.model_dump(mode="json")}

    def _refuse(self, kind: str, error: str) -> dict:
        self.refused += 1
        self.refusals[kind] += 1
        now = time.monotonic()
        if self._logged_s is not None and now - self._logged_s < LOG_PERIOD_S:
            self._unlogged[kind] += 1
        else:
            # One line per period at most: a flood must not flood the log as well.
            held = ", ".join(f"{n} {k}" for k, n in sorted(self._unlogged.items()))
            log.warning("control request refused: %s%s", error,
                        f" (and {sum(self._unlogged.values())} more before it: {held})" if held else "")
            self._logged_s = now
            self._unlogged.clear()
        return {"ok": False, "error": error}

    def _answer(self, frames: list[zmq.Frame]) -> list[bytes]:
        """The reply frames to one message, ``[identity, (empty delimiter,) payload]`` from a
        DEALER or REQ client; the reply keeps the envelope."""
        identity, payload, key = frames[0].bytes, frames[-1], _key_name(frames[-1])
        clients = [("identity", identity)] + ([("key", key)] if key is not None else [])
        envelope_ok = len(frames) == 2 or (len(frames) == 3 and not frames[1].bytes)
        if not self.limiter.allow(*clients):
            reply = self._refuse("rate_limited", f"rate limited: at most {RATE_PER_S:g} requests a second")
        elif not envelope_ok:
            reply = self._refuse("malformed", "malformed request: one frame expected (after an empty one from REQ)")
        else:
            try:
                reply = self.handle(payload.bytes, key)
            except Exception as err:  # a bug behind one request must not end the control socket
                log.error("control request failed: %s: %s", type(err).__name__, err)
                reply = {"ok": False, "error": f"internal error: {type(err).__name__}"}
        # An odd envelope is not echoed (it could be many frames): the reply reads like REQ's.
        envelope = [f.bytes for f in frames[:-1]] if envelope_ok else [identity, b""]
        return [*envelope, json.dumps(reply).encode()]

    async def serve(self) -> None:
        """Answer requests until cancelled, at most ``BATCH`` in one turn of the event loop."""
        while True:
            for _ in range(BATCH):
                frames = await self._sock.recv_multipart(copy=False)
                if len(frames) >= 2:  # a ROUTER message always has the identity first
                    # A ROUTER never blocks a send: a reply to a peer that does not read is dropped.
                    await self._sock.send_multipart(self._answer(frames))
            # A ready message makes no await wait: without this, a flood would never let the
            # sources run.
            await asyncio.sleep(0)

    def close(self) -> None:
        if not self._sock.closed:
            self._sock.close(linger=0)
        if self._auth is not None:
            self._auth.stop()
        self._ctx.term()


def _key_name(frame: zmq.Frame) -> str | None:
    """The authenticated name of the connection (ZeroMQ's ``User-Id`` under CURVE), if any."""
    try:
        return frame.get("User-Id")
    except zmq.ZMQError:
        return None
