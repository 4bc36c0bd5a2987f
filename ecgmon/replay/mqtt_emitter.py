"""The MQTT device simulator: a paced source published to a topic, one payload per chunk (with
the record's second lead as ``samples2`` when the chunks carry one), QoS 1, with an outbox that
keeps every payload until the broker acknowledges it, so an outage loses nothing."""

from __future__ import annotations

import asyncio
from collections import deque
import logging
import re
from typing import Callable

import aiomqtt

from ecgmon.config import Config, ConfigError
from ecgmon.mqtt_client import Backoff, BrokerLink, TlsSetupError, reason
from ecgmon.payloads.mqtt import LEAD2_DEFAULT, MqttUrlError, encode_binary, encode_json, parse_mqtt_url, redact

log = logging.getLogger("ecgmon.replay")

ENCODERS = {"json": encode_json, "binary": encode_binary}
# The outbox is bounded only by memory; past this many waiting payloads, say so (and again
# at each doubling), since a long outage at a high speed can hold a whole record.
OUTBOX_WARN = 10_000


async def _watch(client: aiomqtt.Client) -> None:
    """Raises MqttError when the connection drops (aiomqtt's message iterator does, even with
    no subscription), so that a publish awaiting its PUBACK is not left to time out."""
    async for _ in client.messages:
        pass


async def _drain(client: aiomqtt.Client, topic: str, outbox: deque[bytes], wake: asyncio.Event,
                 ended: Callable[[], bool]) -> None:
    """Publish the outbox oldest first until the source has ended and all is acknowledged;
    MqttError when the connection drops."""
    watcher = asyncio.create_task(_watch(client))
    try:
        while True:
            if outbox:
                # Awaits the PUBACK; only then is the payload dropped from the outbox, so
                # after a failure it is sent again (the daemon drops the repeats).
                publish = asyncio.ensure_future(client.publish(topic, outbox[0], qos=1))
                await asyncio.wait({publish, watcher}, return_when=asyncio.FIRST_COMPLETED)
                if not publish.done():
                    publish.cancel()
                    await asyncio.gather(publish, return_exceptions=True)
                    watcher.result()  # the MqttError that ended the connection
                publish.result()
                outbox.popleft()
            elif ended():
                return
            else:
                wake.clear()
                woken = asyncio.ensure_future(wake.wait())
                await asyncio.wait({woken, watcher}, return_when=asyncio.FIRST_COMPLETED)
                woken.cancel()
                if watcher.done():
                    watcher.result()
    finally:
        watcher.cancel()
        await asyncio.gather(watcher, return_exceptions=True)


async def emit_mqtt(source, target: str, config: Config, fmt: str) -> None:
    """Publish each chunk of ``source`` (any object with an async ``chunks()``) to ``target``,
    ``mqtt://[user:pass@]host[:port]/topic[?client_id=x]``, as ``fmt`` (``json`` or ``binary``) payloads.

    ``seq`` counts payloads from 0 and ``start`` is the chunk's first sample index. Returns once
    the source has ended and the broker has acknowledged every payload; an unreachable broker
    is retried with backoff for as long as it takes. ConfigError for a bad target, format or CA file.
    """
    # A bad --to is a bad command-line value: ConfigError is what the CLI reports as one line.
    if fmt not in ENCODERS:
        raise ConfigError(f"--format {fmt}: an MQTT payload is json or binary")
    try:
        url = parse_mqtt_url(target, wildcards=False)
    except MqttUrlError as err:
        raise ConfigError(f"--to {err}") from None
    encode = ENCODERS[fmt]
    opts = config.mqtt
    unknown = set(url.params) - {"client_id"}
    if unknown:
        raise ConfigError(f"--to {redact(target)}: unknown parameter '{sorted(unknown)[0]}' (only client_id)")
    client_id = url.params.get("client_id") or (
        f"{opts.client_id}-replay-{re.sub(r'[^A-Za-z0-9_-]+', '-', url.topic).strip('-')}")
    try:
        link = BrokerLink(url, opts, client_id)
    except TlsSetupError as err:
        raise ConfigError(f"mqtt.ca_file: {err}") from None
    outbox: deque[bytes] = deque()
    wake = asyncio.Event()
    ended = False
    seq = 0

    async def produce() -> None:
        nonlocal ended, seq
        warn_at = OUTBOX_WARN
        async for chunk in source.chunks():
            if not hasattr(chunk, "samples"):  # a SourceEvent of the source: nothing to send
                continue
            # A record's second lead (replay.second_lead) goes out as the payload's samples2.
            two = chunk.samples.shape[1] > 1
            outbox.append(encode(seq, chunk.start, chunk.fs, chunk.channels[0], chunk.samples[:, 0],
                                 chunk.samples[:, 1] if two else None,
                                 chunk.channels[1] if two else LEAD2_DEFAULT))
            seq += 1
            wake.set()
            if len(outbox) >= warn_at:
                log.warning("%d payloads wait for %s (%.0f MB in memory)", len(outbox), url.broker,
                            sum(map(len, outbox)) / 1e6)
                warn_at *= 2
        ended = True
        wake.set()

    async def send() -> None:
        backoff, down = Backoff(opts.reconnect_min_s, opts.reconnect_max_s), False
        while True:
            connected = False
            try:
                async with link.client() as client:
                    if down:
                        log.info("reconnected to %s; sending %d waiting payloads", url.broker, len(outbox))
                    backoff.reset()
                    down, connected = False, True
                    await _drain(client, url.topic, outbox, wake, lambda: ended)
                    return
            except aiomqtt.MqttError as err:
                if not down:
                    log.warning("%s %s (%s); %d payloads wait; retrying every %g to %g s",
                                "lost the connection to" if connected else "cannot connect to",
                                url.broker, reason(err), len(outbox),
                                opts.reconnect_min_s, opts.reconnect_max_s)
                down = True
                await backoff.wait()

    log.info("publishing %s to %s/%s as %s (QoS 1, client id %s)", getattr(source, "spec", "source"),
             url.broker, url.topic, fmt, client_id)
    producer = asyncio.create_task(produce(), name="replay producer")
    sender = asyncio.create_task(send(), name="replay sender")
    try:
        # The producer may fail (a bad record); the sender never ends before the producer.
        done, _ = await asyncio.wait({producer, sender}, return_when=asyncio.FIRST_EXCEPTION)
        for task in done:
            task.result()
        await sender
    finally:
        for task in (producer, sender):
            task.cancel()
        await asyncio.gather(producer, sender, return_exceptions=True)
        if outbox:
            log.warning("stopped with %d payloads not acknowledged by %s", len(outbox), url.broker)
    log.info("published %d payloads to %s/%s", seq, url.broker, url.topic)
