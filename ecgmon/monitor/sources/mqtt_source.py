"""ECG telemetry from an MQTT broker: one subscription (wildcards allowed) yields chunks for many
streams, named by the topic levels the wildcards matched, with a persistent QoS 1 session."""

from __future__ import annotations

import asyncio
from collections import deque
import contextlib
import logging
import ssl
import time
from typing import AsyncIterator

import aiomqtt
import numpy as np
from pydantic import ValidationError

from ecgmon.chunk import Chunk, SourceEvent
from ecgmon.config import Config, MqttConfig
from ecgmon.monitor.sources.base import SourceError
from ecgmon.payloads.mqtt import (
    EcgPayload,
    MqttUrlError,
    PayloadError,
    decode,
    parse_mqtt_url,
    stream_id_of,
    wildcard_levels,
)

log = logging.getLogger("ecgmon.mqtt")

# Rate-limited events (malformed input, losses, duplicates): at most one per stream and code
# per this many seconds; the counts they carry are cumulative, so nothing is hidden.
EVENT_PERIOD_S = 1.0
# QoS 1 redelivers at most the broker's in-flight window (mosquitto: 20) again; a sequence
# number this far behind the newest is a device that restarted counting, not a redelivery.
RESTART_SEQ_BACK = 100


class StreamState:
    """Continuity of one stream: which payloads are new, repeated, late or after a gap, its
    fault counters, and its rate-limited events."""

    def __init__(self, stream: str) -> None:
        self.stream = stream
        self.next_start: int | None = None
        self.last_seq: int | None = None
        self.offset = 0
        self.counts: dict[str, int] = {}
        # Sample ranges declared lost; data arriving later inside one is late, not a duplicate.
        self._gaps: deque[tuple[int, int]] = deque(maxlen=64)
        self._last_emit: dict[str, float] = {}
        self._pending: dict[str, tuple[str, str]] = {}

    def count(self, key: str, n: int = 1) -> None:
        self.counts[key] = self.counts.get(key, 0) + n

    def accept(self, p: EcgPayload) -> tuple[int, np.ndarray | None, list[tuple[str, str, str]]]:
        """``(start, samples to pass on or None, [(code, level, text) to report]])``.

        Indices are the device's, plus an offset that grows when the device starts counting
        again, so that the stream never goes back in time (as a looping replay does).
        """
        notes: list[tuple[str, str, str]] = []
        nxt = self.next_start
        if (nxt is not None and p.start + self.offset < nxt and self.last_seq is not None
                and p.seq + RESTART_SEQ_BACK < self.last_seq):
            self.count("restarts")
            notes.append(("stream_restarted", "warning",
                          f"the device started counting again (seq {self.last_seq} → {p.seq}, "
                          f"its sample {p.start}); the stream goes on at sample {nxt}"))
            self.offset = nxt - p.start
            self._gaps.clear()
        start, samples = p.start + self.offset, p.samples
        end = start + p.n
        if nxt is not None and end <= nxt:
            late = any(a < end and start < b for a, b in self._gaps)
            self.count("late" if late else "duplicates")
            what = "late data inside a gap already reported" if late else "a repeated payload"
            notes.append(("duplicate_input", "info",
                          f"dropped {what} (seq {p.seq}, samples {start}-{end}); "
                          f"{self.counts.get('duplicates', 0)} duplicates, {self.counts.get('late', 0)} late so far"))
            return start, None, notes
        if nxt is not None and start < nxt:
            # Overlaps what was already passed on: only the new tail goes on.
            self.count("duplicates")
            samples, start = samples[nxt - start :], nxt
        elif nxt is not None and start > nxt:
            lost = start - nxt
            self.count("gaps")
            self.count("lost_samples", lost)
            self._gaps.append((nxt, start))
            notes.append(("signal_loss", "warning",
                          f"{lost} samples ({lost / p.fs:.2f} s) lost before sample {start} "
                          f"(seq {self.last_seq} → {p.seq}); {self.counts['gaps']} gaps, "
                          f"{self.counts['lost_samples']} samples lost so far"))
        self.next_start = end
        self.last_seq = p.seq
        return start, samples, notes

    def event(self, code: str, level: str, text: str, now: float) -> SourceEvent | None:
        """The event now, or None if one of this code went out less than EVENT_PERIOD_S ago
        (then it is held and sent by ``flush``)."""
        if now - self._last_emit.get(code, -1e9) < EVENT_PERIOD_S:
            self._pending[code] = (level, text)
            return None
        self._last_emit[code] = now
        self._pending.pop(code, None)
        return SourceEvent(self.stream, level, code, text, dict(self.counts))  # type: ignore[arg-type]

    def next_flush(self) -> float | None:
        """Monotonic time at which a held event falls due, if any."""
        return min((self._last_emit[c] + EVENT_PERIOD_S for c in self._pending), default=None)

    def flush(self, now: float) -> list[SourceEvent]:
        out = []
        for code, (level, text) in list(self._pending.items()):
            ev = self.event(code, level, text, now)
            if ev is not None:
                out.append(ev)
        return out


class _DebugOnly(logging.LoggerAdapter):
    """paho and aiomqtt log a lost connection as an error; our events already report it."""

    def log(self, level: int, msg: object, *args: object, **kwargs: object) -> None:
        super().log(logging.DEBUG, msg, *args, **kwargs)  # type: ignore[arg-type]


QUIET_CLIENT_LOG = _DebugOnly(logging.getLogger("ecgmon.mqtt.client"), {})


def reason(err: BaseException) -> str:
    """Why a connection failed: aiomqtt's "Disconnected during message iteration" hides it."""
    return str(err.__cause__ or err) or type(err).__name__


def _options(spec: str, config: Config, params: dict[str, str]) -> tuple[MqttConfig, str | None]:
    """``config.mqtt`` with the spec's query overrides; and an explicit client id, if given."""
    params = dict(params)
    explicit_id = params.pop("client_id", None)
    known = [f for f in MqttConfig.model_fields if f != "client_id"]
    for key in params:
        if key not in known:
            raise SourceError(f"'{spec}': unknown MQTT parameter '{key}' (known: client_id, {', '.join(known)})")
    if "qos" in params and params["qos"].isdigit():
        params["qos"] = int(params["qos"])  # type: ignore[assignment]
    try:
        opts = MqttConfig.model_validate({**config.mqtt.model_dump(), **params})
    except ValidationError as err:
        first = err.errors()[0]
        raise SourceError(f"'{spec}': bad value for '{first['loc'][0]}': {first['msg']}") from None
    if explicit_id == "" or (explicit_id is None and not opts.client_id):
        raise SourceError(f"'{spec}': a persistent session needs a non-empty client_id")
    return opts, explicit_id


def tls_context(ca_file: str, spec: str) -> ssl.SSLContext:
    """The TLS context for ``ca_file`` (or the system's trust store); SourceError if unusable."""
    try:
        return ssl.create_default_context(cafile=ca_file or None)
    except (OSError, ssl.SSLError) as err:
        raise SourceError(f"'{spec}': cannot use CA file '{ca_file}' for TLS: {err}; "
                          f"set [mqtt] ca_file to a PEM certificate") from None


class MqttSource:
    """Subscribes to ``mqtt://[user:pass@]host[:port]/topic/filter[?qos=1&client_id=x]`` and
    yields each stream's chunks with the device's sample indices.

    The client id is ``<[mqtt] client_id>-<stream>`` (or the spec's ``client_id``), fixed so
    that the broker's persistent session keeps what is published while the daemon is away.
    Broker outages are events (``disconnected``, ``reconnected``), never errors; only a bad
    spec or TLS file raises SourceError, here in the constructor.
    """

    def __init__(self, spec: str, config: Config, stream: str) -> None:
        self.spec = spec
        self.stream = stream
        self.fs = 0.0  # shown by the daemon before the first chunk
        self.lead = ""
        try:
            url = parse_mqtt_url(spec, wildcards=True)
        except MqttUrlError as err:
            raise SourceError(str(err)) from None
        self.url = url
        self.options, explicit_id = _options(spec, config, url.params)
        self.topic = url.topic
        self.client_id = explicit_id or f"{self.options.client_id}-{stream}"
        self._wildcard = any(level in ("+", "#") for level in url.topic.split("/"))
        self._username = url.username if url.username is not None else (self.options.username or None)
        self._password = url.password if url.password is not None else (self.options.password or None)
        self._tls = tls_context(self.options.ca_file, spec) if (url.tls or self.options.tls) else None
        self._streams: dict[str, StreamState] = {}
        self._foreign: set[str] = set()
        self.counts: dict[str, int] = {}  # the connection's own counters (on self.stream)

    def stream_state(self, stream: str) -> StreamState:
        st = self._streams.get(stream)
        if st is None:
            st = self._streams[stream] = StreamState(stream)
        return st

    def _client(self) -> aiomqtt.Client:
        o = self.options
        client = aiomqtt.Client(
            self.url.host, self.url.port, identifier=self.client_id,
            clean_session=o.clean_start, keepalive=o.keepalive_s,
            username=self._username, password=self._password, tls_context=self._tls,
            logger=QUIET_CLIENT_LOG,
        )
        # paho acknowledges a message as it queues it, so messages still queued when the
        # daemon stops would be lost to the persistent session. We acknowledge each one only
        # after its chunk was consumed; aiomqtt 2 has no API for it yet (aiomqtt issue #345,
        # PR #346), hence its paho client.
        client._client.manual_ack_set(True)  # noqa: SLF001
        return client

    async def chunks(self) -> AsyncIterator[Chunk | SourceEvent]:
        o = self.options
        delay = o.reconnect_min_s
        down_since: float | None = None
        while True:
            connected = False
            try:
                async with self._client() as client:
                    granted = await client.subscribe(self.topic, qos=o.qos)
                    self._check_granted(granted)
                    log.info("%s: subscribed to %s on %s as %s (QoS %d, %s session)", self.stream,
                             self.topic, self.url.broker, self.client_id, o.qos,
                             "clean" if o.clean_start else "persistent")
                    if down_since is not None:
                        yield self._connection_event(
                            "reconnected", "info",
                            f"connected to {self.url.broker} after "
                            f"{time.monotonic() - down_since:.1f} s")
                    delay, down_since, connected = o.reconnect_min_s, None, True
                    async with contextlib.aclosing(self._receive(client)) as items:
                        async for item in items:
                            yield item
            except aiomqtt.MqttError as err:
                if down_since is None:
                    down_since = time.monotonic()
                    self.counts["disconnects"] = self.counts.get("disconnects", 0) + 1
                    yield self._connection_event(
                        "disconnected", "error",
                        f"{'lost the connection to' if connected else 'cannot connect to'} "
                        f"{self.url.broker} ({reason(err)}); retrying every {o.reconnect_min_s:g} "
                        f"to {o.reconnect_max_s:g} s")
                else:
                    log.debug("%s: still no connection to %s: %s", self.stream, self.url.broker, reason(err))
                await asyncio.sleep(delay)
                delay = min(delay * 2, o.reconnect_max_s)

    def _check_granted(self, granted: object) -> None:
        code = granted[0] if isinstance(granted, (list, tuple)) and granted else None
        failed = code.is_failure if hasattr(code, "is_failure") else (isinstance(code, int) and code >= 0x80)
        if failed:
            raise SourceError(f"broker {self.url.broker} refused the subscription to '{self.topic}' "
                              f"(not authorised for it?)")

    def _connection_event(self, code: str, level: str, text: str) -> SourceEvent:
        return SourceEvent(self.stream, level, code, text, dict(self.counts))  # type: ignore[arg-type]

    async def _receive(self, client: aiomqtt.Client) -> AsyncIterator[Chunk | SourceEvent]:
        """Messages of one connection until it drops (MqttError), with held events sent when due."""
        messages = client.messages.__aiter__()
        # The pending read survives a flush timeout (asyncio.wait does not cancel it), so a
        # message arriving at that moment cannot be dropped by the cancellation.
        pending: asyncio.Future[aiomqtt.Message] | None = None
        try:
            while True:
                if pending is None:
                    pending = asyncio.ensure_future(messages.__anext__())
                due = self._next_flush()
                timeout = None if due is None else max(0.0, due - time.monotonic())
                done, _ = await asyncio.wait({pending}, timeout=timeout)
                if not done:
                    now = time.monotonic()
                    for st in self._streams.values():
                        for ev in st.flush(now):
                            yield ev
                    continue
                message, pending = pending.result(), None
                for item in self._handle(message.topic.value, message.payload):
                    yield item
                # Consumed: the daemon has fed its chunk by the time we are resumed.
                client._client.ack(message.mid, message.qos)  # noqa: SLF001
        finally:
            # Not acknowledged, so the broker delivers it again on the next connection.
            if pending is not None and not pending.done():
                pending.cancel()
            elif pending is not None and not pending.cancelled():
                pending.exception()  # retrieved: no "never retrieved" warning

    def _next_flush(self) -> float | None:
        return min((t for st in self._streams.values() if (t := st.next_flush()) is not None), default=None)

    def _handle(self, topic: str, payload: object) -> list[Chunk | SourceEvent]:
        """The chunk and events one message gives; malformed or repeated input never raises."""
        received = time.time()
        levels = wildcard_levels(self.topic, topic)
        if levels is None:
            # A subscription left in this client id's session by an earlier run with another filter.
            if topic not in self._foreign and len(self._foreign) < 1000:
                self._foreign.add(topic)
                log.warning("%s: ignoring messages on '%s', which is not under '%s' (a subscription "
                            "kept in session %s from an earlier run?)", self.stream, topic, self.topic,
                            self.client_id)
            return []
        sid = (stream_id_of(levels) if self._wildcard else "") or self.stream
        st = self.stream_state(sid)
        now = time.monotonic()
        out: list[Chunk | SourceEvent] = []
        try:
            data = payload if isinstance(payload, (bytes, bytearray)) else str(payload or "").encode()
            p = decode(bytes(data))
        except PayloadError as err:
            st.count("malformed")
            ev = st.event("corrupt_input", "warning",
                          f"malformed payload on {topic}: {err}; {st.counts['malformed']} so far", now)
            out.extend([ev] if ev else [])
            out.extend(st.flush(now))
            return out
        start, samples, notes = st.accept(p)
        for code, level, text in notes:
            ev = st.event(code, level, text, now)
            if ev is not None:
                out.append(ev)
        out.extend(st.flush(now))
        if samples is not None:
            out.append(Chunk(sid, p.fs, (p.lead,), start, samples.reshape(-1, 1), received))
        return out
