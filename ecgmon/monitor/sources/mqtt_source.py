"""ECG telemetry from an MQTT broker: one subscription (wildcards allowed) yields chunks for many
streams, named by the topic levels the wildcards matched, with a persistent QoS 1 session.

Every message is untrusted: a topic becomes a stream only with its first valid payload and
only up to ``[mqtt] max_streams``; anything else is counted and reported under the source's
own id. Whatever one message does, it is acknowledged and the other streams go on."""

from __future__ import annotations

import asyncio
from collections import deque
import contextlib
import logging
import time
from typing import AsyncIterator

import aiomqtt
import numpy as np
from pydantic import ValidationError

from ecgmon.chunk import Chunk, SourceEvent
from ecgmon.config import Config, MqttConfig
from ecgmon.monitor.sources.base import SourceError
from ecgmon.monitor.sources.event_throttle import EventThrottle
from ecgmon.mqtt_client import Backoff, BrokerLink, TlsSetupError, reason
from ecgmon.payloads.mqtt import (
    EcgPayload,
    MqttUrlError,
    PayloadError,
    decode,
    parse_mqtt_url,
    redact,
    stream_id_of,
    wildcard_levels,
)

log = logging.getLogger("ecgmon.mqtt")

# Stream ids name ZeroMQ topics and status entries; a topic may be 64 kB long.
MAX_STREAM_ID = 64
# QoS 1 redelivers at most the broker's in-flight window (mosquitto: 20) again; a sequence
# number this far behind the newest is a device that restarted counting, not a redelivery.
RESTART_SEQ_BACK = 100


class StreamState(EventThrottle):
    """Continuity of one stream: which payloads are new, repeated, late or after a gap, its
    fault counters, and its rate-limited events."""

    def __init__(self, stream: str, holding: set[EventThrottle] | None = None) -> None:
        self.counts: dict[str, int] = {}
        super().__init__(stream, lambda: self.counts, holding=holding)
        self.next_start: int | None = None
        self.last_seq: int | None = None
        self.offset = 0
        self.last_valid = time.monotonic()  # when it last sent a valid payload
        self.lead2_told = False  # a missing second lead is told once, then only counted
        # Sample ranges declared lost; data arriving later inside one is late, not a duplicate.
        self._gaps: deque[tuple[int, int]] = deque(maxlen=64)

    def count(self, key: str, n: int = 1) -> None:
        self.counts[key] = self.counts.get(key, 0) + n

    def accept(self, p: EcgPayload) -> tuple[int, np.ndarray | None, list[tuple[str, str, str]]]:
        """``(start, samples to pass on or None, [(code, level, text) to report]])``.

        Indices are the device's, plus an offset that grows when the device starts counting
        again, so that the stream never goes back in time (as a looping replay does).
        """
        notes: list[tuple[str, str, str]] = []
        self.last_valid = time.monotonic()
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


def _options(spec: str, config: Config, params: dict[str, str]) -> tuple[MqttConfig, str | None]:
    """``config.mqtt`` with the spec's query overrides; and an explicit client id, if given.
    ``spec`` is the redacted one: it is quoted in errors."""
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
        raise SourceError(f"'{spec}': bad value for '{first['loc'][0]}': "
                          f"{first['msg'].removeprefix('Value error, ')}") from None
    if explicit_id == "" or (explicit_id is None and not opts.client_id):
        raise SourceError(f"'{spec}': a persistent session needs a non-empty client_id")
    return opts, explicit_id



class MqttSource:
    """Subscribes to ``mqtt://[user:pass@]host[:port]/topic/filter[?qos=1&client_id=x]`` and
    yields each stream's chunks with the device's sample indices: ``(n, 1)``, or ``(n, 2)``
    with ``second_lead`` (the payloads' ``samples2``, NaN where a payload has none).

    The client id is ``<[mqtt] client_id>-<stream>`` (or the spec's ``client_id``), fixed so
    that the broker's persistent session keeps what is published while the daemon is away.
    Broker outages are events (``disconnected``, ``reconnected``), never errors; only a bad
    spec or TLS file raises SourceError, here in the constructor.

    ``spec`` shows the password as ``***``: it is what status, events and logs quote.
    """

    def __init__(self, spec: str, config: Config, stream: str) -> None:
        self.spec = redact(spec)
        self.stream = stream
        self.fs = 0.0  # shown by the daemon before the first chunk
        self.lead = ""
        try:
            url = parse_mqtt_url(spec, wildcards=True)
        except MqttUrlError as err:
            raise SourceError(str(err)) from None
        self.url = url
        self.options, explicit_id = _options(self.spec, config, url.params)
        self.topic = url.topic
        self.client_id = explicit_id or f"{self.options.client_id}-{stream}"
        self._wildcard = any(level in ("+", "#") for level in url.topic.split("/"))
        try:
            # clean_start False: the broker keeps our subscription and queue while we are away.
            self.link = BrokerLink(url, self.options, self.client_id, clean_session=self.options.clean_start)
        except TlsSetupError as err:
            raise SourceError(f"'{self.spec}': {err}; set [mqtt] ca_file to a PEM certificate") from None
        self._streams: dict[str, StreamState] = {}
        self._arrived: dict[int, float] = {}  # wall time each queued message came off the socket
        self._holding: set[EventThrottle] = set()  # the throttles (own, streams') holding an event
        self._foreign: set[str] = set()
        # The source's own counters (connection, and messages that belong to no stream), with
        # their events on the source's own id: a junk topic never names a stream.
        self.counts: dict[str, int] = {}
        self._events = EventThrottle(stream, lambda: self.counts, holding=self._holding)
        # A stream silent this long has left the daemon's status: its place here is free too.
        self._idle_s = config.publisher.idle_stream_s

    def stream_state(self, stream: str) -> StreamState:
        st = self._streams.get(stream)
        if st is None:
            st = self._streams[stream] = StreamState(stream, self._holding)
        return st

    def _forget_idle(self, now: float) -> None:
        """Drop the streams silent for ``[publisher] idle_stream_s`` (the daemon drops them
        too; new data starts one afresh), so that topics that come and go never use up
        ``max_streams``."""
        for sid, st in list(self._streams.items()):
            if now - st.last_valid >= self._idle_s and st.next_flush() is None:
                del self._streams[sid]
                self._holding.discard(st)

    def _count(self, key: str) -> int:
        self.counts[key] = self.counts.get(key, 0) + 1
        return self.counts[key]

    def _client(self) -> aiomqtt.Client:
        client = self.link.client()
        # paho acknowledges a message as it queues it, so messages still queued when the
        # daemon stops would be lost to the persistent session. We acknowledge each one only
        # after its chunk was consumed; aiomqtt 2 has no API for it yet (aiomqtt issue #345,
        # PR #346), hence its paho client.
        paho = client._client  # noqa: SLF001
        paho.manual_ack_set(True)
        # A chunk arrives when paho reads its message off the socket, not when this source takes
        # it from aiomqtt's queue (which drops paho's timestamp): under load messages wait there,
        # and that wait belongs in the beats' latency. Keyed by message id, unique among the
        # messages not yet acknowledged (all of QoS 1 and 2); QoS 0 ones are stamped when taken.
        deliver, arrived = paho.on_message, self._arrived
        arrived.clear()

        def on_message(paho_client: object, userdata: object, message: object) -> None:
            if getattr(message, "qos", 0):
                arrived[message.mid] = time.time()  # type: ignore[attr-defined]
            deliver(paho_client, userdata, message)

        paho.on_message = on_message
        return client

    async def chunks(self) -> AsyncIterator[Chunk | SourceEvent]:
        o = self.options
        backoff = Backoff(o.reconnect_min_s, o.reconnect_max_s)
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
                    backoff.reset()
                    down_since, connected = None, True
                    async with contextlib.aclosing(self._receive(client)) as items:
                        async for item in items:
                            yield item
            except aiomqtt.MqttError as err:
                if down_since is None:
                    down_since = time.monotonic()
                    self._count("disconnects")
                    yield self._connection_event(
                        "disconnected", "error",
                        f"{'lost the connection to' if connected else 'cannot connect to'} "
                        f"{self.url.broker} ({reason(err)}); retrying every {o.reconnect_min_s:g} "
                        f"to {o.reconnect_max_s:g} s")
                else:
                    log.debug("%s: still no connection to %s: %s", self.stream, self.url.broker, reason(err))
                await backoff.wait()

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
                due = self._next_flush()
                if due is None and pending is None:
                    # Nothing held: the next message itself, without a task and a timer each.
                    message = await messages.__anext__()
                else:
                    if pending is None:
                        pending = asyncio.ensure_future(messages.__anext__())
                    timeout = None if due is None else max(0.0, due - time.monotonic())
                    done, _ = await asyncio.wait({pending}, timeout=timeout)
                    if not done:
                        for ev in self._flush(time.monotonic()):
                            yield ev
                        continue
                    message, pending = pending.result(), None
                for item in self._handle_safely(message):
                    yield item
                # Consumed: the daemon has fed its chunk by the time we are resumed. A payload
                # that gave nothing (malformed, refused) is acknowledged all the same, or the
                # broker would deliver it again on every reconnect: a poison message.
                client._client.ack(message.mid, message.qos)  # noqa: SLF001
        finally:
            # Not acknowledged, so the broker delivers it again on the next connection.
            if pending is not None and not pending.done():
                pending.cancel()
            elif pending is not None and not pending.cancelled():
                pending.exception()  # retrieved: no "never retrieved" warning

    def _next_flush(self) -> float | None:
        due = []
        for th in list(self._holding):
            t = th.next_flush()
            if t is None:
                self._holding.discard(th)
            else:
                due.append(t)
        return min(due, default=None)

    def _flush(self, now: float) -> list[SourceEvent]:
        # In a fixed order (the source's own, then its streams'), whatever order they were held in.
        held = [th for th in (self._events, *self._streams.values()) if th in self._holding]
        return [ev for th in held for ev in th.flush(now)]

    def _handle_safely(self, message: aiomqtt.Message) -> list[Chunk | SourceEvent]:
        """``_handle``, with any unforeseen failure costing this one message only: counted and
        reported on the source's id, never an end of the source's other streams."""
        received = self._arrived.pop(message.mid, None) if message.qos else None
        try:
            return self._handle(message.topic.value, message.payload, received)
        except Exception as err:  # a bug, not bad input: that is PayloadError inside _handle
            n = self._count("internal_errors")
            log.debug("%s: traceback of the failure on a message", self.stream, exc_info=True)
            text = (f"a message on {message.topic.value[:2 * MAX_STREAM_ID]} could not be handled "
                    f"({type(err).__name__}: {err}); dropped, {n} so far; the other messages go on")
            ev = self._events.event("internal_error", "error", text, time.monotonic())
            return [ev] if ev else []

    def _handle(self, topic: str, payload: object, received: float | None = None) -> list[Chunk | SourceEvent]:
        """The chunk and events one message gives (``received``: when it arrived, else now);
        malformed or repeated input never raises."""
        received = time.time() if received is None else received
        levels = wildcard_levels(self.topic, topic)
        if levels is None:
            # A subscription left in this client id's session by an earlier run with another filter.
            if topic not in self._foreign and len(self._foreign) < 1000:
                self._foreign.add(topic)
                log.warning("%s: ignoring messages on '%s', which is not under '%s' (a subscription "
                            "kept in session %s from an earlier run?)", self.stream, topic[:200], self.topic,
                            self.client_id)
            return []
        sid = (stream_id_of(levels) if self._wildcard else "") or self.stream
        now = time.monotonic()
        out: list[Chunk | SourceEvent] = []
        # A stream exists from its first valid payload on (the source's own id always does).
        known = sid in self._streams or sid == self.stream
        shown = topic if len(topic) <= 2 * MAX_STREAM_ID else f"{topic[:2 * MAX_STREAM_ID]}..."
        try:
            if len(sid) > MAX_STREAM_ID:
                raise PayloadError(f"the topic gives a stream id over {MAX_STREAM_ID} characters")
            data = payload if isinstance(payload, (bytes, bytearray)) else str(payload or "").encode()
            p = decode(bytes(data))
        except PayloadError as err:
            if known:
                st = self.stream_state(sid)
                st.count("malformed")
                ev = st.event("corrupt_input", "warning",
                              f"malformed payload on {shown}: {err}; {st.counts['malformed']} so far", now)
            else:
                n = self._count("malformed")
                ev = self._events.event("corrupt_input", "warning",
                                        f"malformed payload on {shown}, which is no stream yet: {err}; "
                                        f"{n} such so far", now)
            out.extend([ev] if ev else [])
            out.extend(self._flush(now))
            return out
        if not known and len(self._streams) >= self.options.max_streams:
            self._forget_idle(now)
        if not known and len(self._streams) >= self.options.max_streams:
            n = self._count("over_stream_limit")
            ev = self._events.event(
                "stream_limit", "warning",
                f"ignoring {shown}: this source already carries {len(self._streams)} streams "
                f"([mqtt] max_streams); {n} messages ignored so far", now)
            out.extend([ev] if ev else [])
            out.extend(self._flush(now))
            return out
        st = self.stream_state(sid)
        start, samples, notes = st.accept(p)
        for code, level, text in notes:
            ev = st.event(code, level, text, now)
            if ev is not None:
                out.append(ev)
        out.extend(self._flush(now))
        if samples is not None:
            values, channels = samples.reshape(-1, 1), (p.lead,)
            if self.options.second_lead:
                values, channels = self._with_lead2(st, p, samples, shown, now, out)
            out.append(Chunk(sid, p.fs, channels, start, values, received))
        return out

    def _with_lead2(self, st: StreamState, p: EcgPayload, samples: np.ndarray, shown: str, now: float,
                    out: list[Chunk | SourceEvent]) -> tuple[np.ndarray, tuple[str, ...]]:
        """The chunk's two columns: the samples passed on and the same stretch of the payload's
        second lead, NaN where it has none (counted, and told once per stream)."""
        skip = p.n - samples.size  # accept passes on the new tail of an overlapping payload
        if p.samples2 is None:
            second = np.full(samples.size, np.nan, np.float32)
        else:
            second = p.samples2[skip:]
        missing = int(np.count_nonzero(~np.isfinite(second)))
        if missing:
            st.count("lead2_missing", missing)
            if not st.lead2_told:
                st.lead2_told = True
                why = ("carry no second lead (samples2)" if p.samples2 is None
                       else "carry second-lead values that are not numbers")
                ev = st.event("lead2_missing", "warning",
                              f"payloads on {shown} {why}: those samples are NaN in the second lead "
                              f"(counted as lead2_missing), the first lead and monitoring go on", now)
                out.extend([ev] if ev else [])
        return np.column_stack((samples, second)), (p.lead, p.lead2)
