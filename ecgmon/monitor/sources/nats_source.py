"""A ward worker's source: the streams of the NATS partitions this daemon holds the leases of.

``nats://host:4222/ward?partitions=16`` joins the ward ``ward``: devices publish bed ``bed3`` on
``ward.bed3``, the server maps it to one of 16 partitions, JetStream keeps it, and each partition
is read by exactly one daemon at a time (``ward_leases``). A partition's messages come in the
order the server stored them, through one durable consumer; each is acknowledged only after
its chunk went through the pipeline, and the stream is a work queue, so what is acknowledged is
gone and what is not stays. A daemon that claims a partition deletes the partition's consumer
and makes it anew from the first message still kept: it resumes right after the last one its
predecessor acknowledged, in order, and the predecessor (should it be alive but stalled) can no
longer fetch or acknowledge anything. A stream's pipeline state (filters, learning period,
templates, alarms) starts afresh on the new daemon; the samples do not go missing.

Payloads are MQTT telemetry's (JSON or ``ECG1``), with the same continuity checks per stream
(``StreamState``: repeats dropped, gaps reported), and every input is untrusted as there.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
import logging
import os
import re
import socket
import time
from typing import AsyncIterator

import nats
from nats.aio.msg import Msg
from nats.js import JetStreamContext, api
from nats.js.errors import NotFoundError

from ecgmon.chunk import Chunk, SourceEvent
from ecgmon.config import Config
from ecgmon.monitor.sources.base import SourceError
from ecgmon.monitor.sources.mqtt_source import MAX_STREAM_ID, StreamState
from ecgmon.monitor.sources.ward_leases import Leases
from ecgmon.monitor.sources.ward_subjects import (
    WardUrlError,
    consumer_name,
    parse_ward_url,
    partition_filter,
    stream_name,
    stream_subjects,
)
from ecgmon.payloads.mqtt import PayloadError, decode, stream_id_of

log = logging.getLogger("ecgmon.ward")

# Messages of one partition sent to us and not yet acknowledged: a few seconds of the beds of
# a partition, and the bound on what the server sends ahead of the pipeline.
MAX_ACK_PENDING = 1000
# Never redelivered by time: a partition changes hands by making its consumer anew, so a busy
# daemon that is slow to acknowledge never gets its own messages twice.
ACK_WAIT_S = 3600.0
# How long a first connection may take before the daemon says it cannot reach the server.
CONNECT_WAIT_S = 5.0
# How long the work queue keeps what no daemon read (all daemons down): a day of the ward.
KEEP_S = 24 * 3600.0


@dataclass
class _Partition:
    """A partition this daemon reads: its fetching task and the streams seen in it."""

    epoch: int
    task: asyncio.Task | None = None  # setting up its consumer
    sub: object | None = None  # its push subscription
    releasing: bool = False
    inflight: int = 0  # fetched, not yet acknowledged
    streams: set[str] = field(default_factory=set)


def _member_name() -> str:
    return re.sub(r"[^A-Za-z0-9_-]", "_", f"{socket.gethostname()}-{os.getpid()}")


class NatsWardSource:
    """The streams of the partitions held; chunks carry the devices' sample indices."""

    def __init__(self, spec: str, config: Config, stream: str) -> None:
        try:
            self.url = parse_ward_url(spec)
        except WardUrlError as err:
            raise SourceError(str(err)) from None
        self.spec = self.url.shown
        self.stream = stream
        self.fs = 0.0  # shown by the daemon before the first chunk
        self.lead = ""
        self.member = self.url.member or _member_name()
        self.counts: dict[str, int] = {}
        self._stream = stream_name(self.url.prefix)
        # (partition, lease epoch, message, wall time it arrived) or an event, in arrival order.
        self._queue: asyncio.Queue[tuple[int, int, Msg, float] | SourceEvent] = asyncio.Queue()
        self._parts: dict[int, _Partition] = {}
        self._states: dict[str, StreamState] = {}
        self._epoch = 0

    # -- the generator the daemon reads -------------------------------------------------

    async def chunks(self) -> AsyncIterator[Chunk | SourceEvent]:
        # The client retries a server that is not there yet for ever: say so, as MQTT does.
        connecting = asyncio.ensure_future(self._connect())
        done, _ = await asyncio.wait({connecting}, timeout=CONNECT_WAIT_S)
        if not done:
            self.counts["disconnects"] = self.counts.get("disconnects", 0) + 1
            yield self._event(self.stream, "error", "disconnected",
                              f"cannot reach the NATS server of {self.spec}; retrying every second")
        nc = await connecting
        if not done:
            yield self._event(self.stream, "info", "reconnected", f"connected to {self.spec}")
        keeper: asyncio.Task | None = None
        leases: Leases | None = None
        try:
            js = nc.jetstream()
            await self._ensure_stream(js)
            leases = Leases(js, self.url.prefix, self.url.partitions, self.url.lease_s, self.member)
            await leases.open()
            yield self._event(self.stream, "info", "ward_joined",
                              f"joined ward '{self.url.prefix}' on {self.spec} as {self.member} "
                              f"({self.url.partitions} partitions, leases of {self.url.lease_s:g} s)")
            keeper = asyncio.create_task(self._keep(leases, nc, js), name=f"ward leases {self.stream}")
            while True:
                item = await self._queue.get()
                if isinstance(item, SourceEvent):
                    yield item
                    continue
                p, epoch, msg, arrived = item
                part = self._parts.get(p)
                if part is None or part.epoch != epoch:
                    continue  # the lease was lost: the partition's new holder reads it again
                for out in self._handle(part, msg, arrived):
                    yield out
                # Consumed: the daemon fed the chunk before resuming us. A payload that gave
                # nothing (malformed, repeated) is acknowledged too, or it would come back forever.
                part.inflight -= 1
                try:
                    await msg.ack()
                except Exception as err:  # connection down: the next holder reads it again
                    log.debug("ack: %s", err)
        finally:
            if keeper is not None:
                keeper.cancel()
                await asyncio.gather(keeper, return_exceptions=True)
            for part in self._parts.values():
                if part.task is not None:
                    part.task.cancel()
            await asyncio.gather(*(p.task for p in self._parts.values() if p.task), return_exceptions=True)
            try:
                if leases is not None:
                    await asyncio.wait_for(leases.close(), 2.0)
                await asyncio.wait_for(nc.close(), 2.0)
            except Exception as err:  # stopping anyway
                log.debug("closing the NATS connection: %s", err)

    def _event(self, stream: str, level: str, code: str, text: str, counts: dict | None = None) -> SourceEvent:
        return SourceEvent(stream, level, code, text, dict(self.counts if counts is None else counts))  # type: ignore[arg-type]

    async def _connect(self) -> nats.NATS:
        async def disconnected() -> None:
            self.counts["disconnects"] = self.counts.get("disconnects", 0) + 1
            self._queue.put_nowait(self._event(self.stream, "error", "disconnected",
                                               f"lost the connection to {self.spec}; reconnecting"))

        async def reconnected() -> None:
            self._queue.put_nowait(self._event(self.stream, "info", "reconnected", f"connected to {self.spec} again"))

        async def error(err: Exception) -> None:
            log.debug("%s: %s", self.stream, err)

        try:
            return await nats.connect(self.url.servers, name=f"ecgmon-{self.member}", max_reconnect_attempts=-1,
                                      reconnect_time_wait=1.0, connect_timeout=2, disconnected_cb=disconnected,
                                      reconnected_cb=reconnected, error_cb=error)
        except Exception as err:  # not an outage (retried above): a bad address, TLS or credentials
            raise SourceError(f"cannot use the NATS server of {self.spec} ({type(err).__name__}: {err}); "
                              f"start it with `nats-server -c` and the config of `ecgmon ward nats-conf`") from None

    async def _ensure_stream(self, js: JetStreamContext) -> None:
        """Make the ward's work-queue stream, or check the one there was made for as many partitions."""
        desc = f"ecgmon ward {self.url.prefix}: {self.url.partitions} partitions"
        try:
            info = await js.stream_info(self._stream)
        except NotFoundError:
            await js.add_stream(api.StreamConfig(
                name=self._stream, description=desc, subjects=stream_subjects(self.url.prefix),
                retention=api.RetentionPolicy.WORK_QUEUE, storage=api.StorageType.FILE, max_age=KEEP_S))
            return
        if info.config.description != desc:
            raise SourceError(f"the ward's stream {self._stream} on {self.spec} says '{info.config.description}', "
                              f"not {self.url.partitions} partitions: give every worker and the server's "
                              f"mapping the same partitions=")

    # -- leases and partitions -----------------------------------------------------------

    async def _keep(self, leases: Leases, nc: nats.NATS, js: JetStreamContext) -> None:
        """Every lease period: renew, claim, hand back; and send the held stream events."""
        while True:
            releasing = {p for p, part in self._parts.items() if part.releasing}
            try:
                changes = await leases.step(releasing)
            except Exception as err:  # the server away: the leases run out on their own
                log.debug("lease step: %s", err)
                changes = None
            if changes is not None:
                for p in changes.lost:
                    await self._leave(p, "its lease ran out (this daemon or the server was away); "
                                         "whoever claims the partition next goes on from its last acknowledged sample")
                for p in changes.gained:
                    self._epoch += 1
                    part = self._parts[p] = _Partition(self._epoch)
                    part.task = asyncio.create_task(self._consume(nc, js, p, part), name=f"ward partition {p}")
                for p in changes.release:
                    part = self._parts.get(p)
                    if part is not None:
                        part.releasing = True
                        await self._stop(part)
                if changes.gained or changes.lost or changes.release:
                    held = sorted(p for p, part in self._parts.items() if not part.releasing)
                    self._queue.put_nowait(self._event(
                        self.stream, "info", "ward_partitions",
                        f"{self.member} serves partitions {held} of {self.url.partitions} "
                        f"({leases.members} daemons in the ward)"))
            for p, part in list(self._parts.items()):
                if part.releasing and part.inflight <= 0:
                    await self._leave(p, "the ward rebalanced (a daemon joined)")
                    await leases.release(p)
            now = time.monotonic()
            for st in self._states.values():
                for ev in st.flush(now):
                    self._queue.put_nowait(ev)
            await asyncio.sleep(leases.period)

    async def _stop(self, part: _Partition) -> None:
        if part.task is not None:
            part.task.cancel()
        if part.sub is not None:
            try:
                await part.sub.unsubscribe()  # type: ignore[attr-defined]
            except Exception as err:  # already gone with the connection
                log.debug("unsubscribe: %s", err)
            part.sub = None

    async def _leave(self, p: int, why: str) -> None:
        """Stop reading partition ``p``; its streams leave this daemon (``stream_moved``)."""
        part = self._parts.pop(p, None)
        if part is None:
            return
        await self._stop(part)
        for sid in sorted(part.streams):
            self._states.pop(sid, None)
            self._queue.put_nowait(self._event(sid, "info", "stream_moved",
                                               f"{sid}: leaves {self.member} with partition {p}: {why}", {}))

    async def _consume(self, nc: nats.NATS, js: JetStreamContext, p: int, part: _Partition) -> None:
        """Read partition ``p`` from the first message still kept, in order, into the queue."""
        name = consumer_name(p)
        try:
            # Deleting the consumer fences the previous holder: it can no longer receive or ack.
            try:
                await js.delete_consumer(self._stream, name)
            except NotFoundError:
                pass
            # A push consumer: the server sends as the messages come, at most MAX_ACK_PENDING
            # unacknowledged, so a daemon that falls behind is sent no more (a pull consumer
            # costs a request per fetch, most of the source's CPU with a bed or two a partition).
            info = await js.add_consumer(self._stream, api.ConsumerConfig(
                durable_name=name, deliver_subject=nc.new_inbox(),
                filter_subject=partition_filter(self.url.prefix, p),
                deliver_policy=api.DeliverPolicy.ALL, ack_policy=api.AckPolicy.EXPLICIT,
                ack_wait=ACK_WAIT_S, max_ack_pending=MAX_ACK_PENDING, max_deliver=-1))

            async def take(msg: Msg) -> None:
                part.inflight += 1
                # Stamped now: the wait in our queue counts in the daemon's latency as it should.
                self._queue.put_nowait((p, part.epoch, msg, time.time()))

            part.sub = await js.subscribe_bind(self._stream, info.config, name, cb=take, manual_ack=True,
                                               pending_msgs_limit=4 * MAX_ACK_PENDING)
        except asyncio.CancelledError:
            raise
        except Exception as err:  # the server went away: the lease runs out and another holder tries
            log.warning("%s: partition %d: %s: %s", self.stream, p, type(err).__name__, err)

    # -- one message ---------------------------------------------------------------------

    def _handle(self, part: _Partition, msg: Msg, received: float) -> list[Chunk | SourceEvent]:
        sid = stream_id_of([msg.subject.rpartition(".")[2]])
        now = time.monotonic()
        try:
            if not sid or len(sid) > MAX_STREAM_ID:
                raise PayloadError(f"the subject gives no stream id of at most {MAX_STREAM_ID} characters")
            p = decode(msg.data)
        except PayloadError as err:
            self.counts["malformed"] = self.counts.get("malformed", 0) + 1
            return [self._event(self.stream, "warning", "corrupt_input",
                                f"malformed payload on {msg.subject[:2 * MAX_STREAM_ID]}: {err}")]
        st = self._states.get(sid)
        if st is None:
            if len(self._states) >= self.url.max_streams:
                self.counts["over_stream_limit"] = self.counts.get("over_stream_limit", 0) + 1
                return []
            st = self._states[sid] = StreamState(sid)
            part.streams.add(sid)
        start, samples, notes = st.accept(p)
        out: list[Chunk | SourceEvent] = [ev for code, level, text in notes
                                          if (ev := st.event(code, level, text, now)) is not None]
        if samples is not None:
            out.append(Chunk(sid, p.fs, (p.lead,), start, samples.reshape(-1, 1), received))
        return out
