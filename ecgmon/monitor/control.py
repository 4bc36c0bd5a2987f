"""The daemon's control socket: dashboards acknowledge and silence alarms through it.

A ZeroMQ ROUTER socket, so REQ and DEALER clients alike are answered (the reply goes back
with the request's envelope). A request is one JSON object::

    {"op": "ack" | "silence", "stream": "bed3", "alarm_id": "bed3-vtach-7", "by": "nurse",
     "seconds": 120}            # seconds: silence only

and the reply ``{"ok": true, "alarm": {...}}`` or ``{"ok": false, "error": "..."}``. The
alarm engine records who and when; the changed alarm is published like any other, so every
subscriber sees it. A malformed request gets an error reply and a log line, never a crash.
"""

from __future__ import annotations

import json
import logging
from typing import Callable, Literal, Protocol

from pydantic import BaseModel, ConfigDict, Field, ValidationError
import zmq
import zmq.asyncio

from ecgmon.monitor.publisher import PublisherError
from ecgmon.schema import AlarmMessage

log = logging.getLogger("ecgmon.control")

MAX_REQUEST_BYTES = 65536  # ZeroMQ drops a peer that sends more: a request is a few hundred
MAX_SILENCE_S = 3600.0


class ControlError(PublisherError):
    """The control socket cannot be bound; the message says what to do."""


class AlarmControl(Protocol):
    """What the control socket needs of a stream's alarm engine."""

    def acknowledge(self, alarm_id: str, by: str) -> AlarmMessage | None: ...

    def silence(self, alarm_id: str, seconds: float, by: str) -> AlarmMessage | None: ...


class ControlRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    op: Literal["ack", "silence"]
    stream: str = Field(min_length=1, max_length=200)
    alarm_id: str = Field(min_length=1, max_length=200)
    by: str = Field(min_length=1, max_length=100, description="who: recorded with the alarm")
    seconds: float | None = Field(None, gt=0, le=MAX_SILENCE_S)


def _reason(err: ValidationError) -> str:
    return "; ".join(f"{'.'.join(map(str, e['loc'])) or 'request'}: {e['msg']}" for e in err.errors())


class ControlServer:
    """Answers control requests using ``engines(stream)`` (None: no such stream or no alarm
    engine) and hands each changed alarm to ``publish``."""

    def __init__(
        self,
        endpoint: str,
        engines: Callable[[str], AlarmControl | None],
        publish: Callable[[AlarmMessage], object],
    ) -> None:
        self.engines = engines
        self.publish = publish
        self.handled = 0
        self.refused = 0
        self._ctx = zmq.asyncio.Context()
        self._sock = self._ctx.socket(zmq.ROUTER)
        self._sock.setsockopt(zmq.LINGER, 0)
        self._sock.setsockopt(zmq.MAXMSGSIZE, MAX_REQUEST_BYTES)
        try:
            self._sock.bind(endpoint)
        except zmq.ZMQError as err:
            self.close()
            raise ControlError(
                f"cannot open the control socket on {endpoint}: {err.strerror}; choose another with "
                f"--control or [publisher] control_endpoint ('' for none)"
            ) from None
        self.endpoint = self._sock.getsockopt_string(zmq.LAST_ENDPOINT) or endpoint

    def handle(self, payload: bytes) -> dict:
        """The reply to one request."""
        try:
            req = ControlRequest.model_validate_json(payload)
        except ValidationError as err:
            return self._refuse(f"malformed request: {_reason(err)}")
        engine = self.engines(req.stream)
        if engine is None:
            return self._refuse(f"no stream '{req.stream}' with alarms here")
        if req.op == "ack":
            changed = engine.acknowledge(req.alarm_id, req.by)
        elif req.seconds is None:
            return self._refuse("malformed request: silence needs seconds")
        else:
            changed = engine.silence(req.alarm_id, req.seconds, req.by)
        if changed is None:
            return self._refuse(f"no active alarm '{req.alarm_id}' on {req.stream}")
        self.publish(changed)
        self.handled += 1
        log.info("%s: %s %s by %s", req.stream, req.op, req.alarm_id, req.by)
        return {"ok": True, "alarm": json.loads(changed.model_dump_json())}

    def _refuse(self, error: str) -> dict:
        self.refused += 1
        log.warning("control request refused: %s", error)
        return {"ok": False, "error": error}

    async def serve(self) -> None:
        """Answer requests until cancelled."""
        while True:
            frames = await self._sock.recv_multipart()
            # [identity, (empty delimiter from REQ,) payload]: the reply keeps the envelope.
            envelope, payload = frames[:-1], frames[-1]
            if len(frames) < 2:
                continue
            try:
                reply = self.handle(payload)
            except Exception as err:  # a bug behind one request must not end the control socket
                log.error("control request failed: %s: %s", type(err).__name__, err)
                reply = {"ok": False, "error": f"internal error: {type(err).__name__}"}
            await self._sock.send_multipart([*envelope, json.dumps(reply).encode()])

    def close(self) -> None:
        if not self._sock.closed:
            self._sock.close(linger=0)
        self._ctx.term()
