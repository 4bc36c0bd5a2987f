"""Which ward member (daemon) serves which partition: leases in a JetStream key-value bucket
whose entries expire ``lease_s`` after their last write (the bucket's TTL).

Each member writes ``member.<name>`` and renews ``part.<p>`` for every partition it holds once
per ``lease_s / 3``. A renewal is a compare-and-set on the entry's revision, so a member that
lost a lease (it stalled past the TTL and another claimed the partition) learns it at its next
renewal and never takes it back. A member that dies stops renewing: its entries expire after at
most ``lease_s`` and the survivors claim its partitions with an atomic ``create``, which only one
of them wins. Every member aims at its fair share, ``ceil(partitions / live members)``: when a
member joins, the others release what they hold beyond it, so the streams spread over every
daemon (and every core). The server decides who holds what; nothing here is a scheduler of ours.
"""

from __future__ import annotations

from dataclasses import dataclass, field
import logging
import math
import time
import zlib

from nats.js import JetStreamContext
from nats.js.errors import BucketNotFoundError, KeyNotFoundError, KeyWrongLastSequenceError, NoKeysError
from nats.js.kv import KeyValue

from ecgmon.monitor.sources.ward_subjects import kv_bucket

log = logging.getLogger("ecgmon.ward")


@dataclass
class Changes:
    """What one lease step decided: partitions now held, lost to another member, or to hand back."""

    gained: list[int] = field(default_factory=list)
    lost: list[int] = field(default_factory=list)
    release: list[int] = field(default_factory=list)


class Leases:
    """One member's leases; ``step`` is called every ``period`` seconds by the source."""

    def __init__(self, js: JetStreamContext, prefix: str, partitions: int, lease_s: float, member: str) -> None:
        self.js = js
        self.bucket = kv_bucket(prefix)
        self.partitions = partitions
        self.lease_s = lease_s
        self.member = member
        self.period = lease_s / 3
        self.held: dict[int, int] = {}  # partition → revision of our last write
        self._renewed: dict[int, float] = {}  # partition → monotonic time of the last renewal
        self.members = 1
        self.kv: KeyValue | None = None
        # Members try the free partitions from different places: fewer lost races for one key.
        self._offset = zlib.crc32(member.encode()) % partitions

    async def open(self) -> None:
        try:
            self.kv = await self.js.key_value(self.bucket)
        except BucketNotFoundError:
            from nats.js.api import KeyValueConfig

            # history 1: only the current holder matters; ttl: a silent member's leases expire.
            self.kv = await self.js.create_key_value(KeyValueConfig(bucket=self.bucket, ttl=self.lease_s, history=1))
        await self.kv.put(f"member.{self.member}", b"")

    async def step(self, releasing: set[int]) -> Changes:
        """Heartbeat, renew what is held, then claim or hand back towards the fair share.
        ``releasing``: partitions being drained for hand-back (renewed, not counted as held)."""
        assert self.kv is not None
        kv, out, now = self.kv, Changes(), time.monotonic()
        await kv.put(f"member.{self.member}", b"")
        for p in list(self.held):
            try:
                self.held[p] = await kv.update(f"part.{p}", self.member.encode(), last=self.held[p])
                self._renewed[p] = now
            except (KeyWrongLastSequenceError, KeyNotFoundError):
                out.lost.append(p)  # it expired and another member holds it now
            except Exception as err:  # no answer (server away): held until the lease would have run out
                log.debug("renewing partition %d: %s", p, err)
                if now - self._renewed.get(p, now) >= self.lease_s:
                    out.lost.append(p)
        for p in out.lost:
            self.held.pop(p, None)
            self._renewed.pop(p, None)
        try:
            # A set: the listing is a watch, and a key written meanwhile shows up twice.
            keys = set(await kv.keys())
        except NoKeysError:
            keys = set()
        self.members = max(1, sum(k.startswith("member.") for k in keys))
        taken = {int(k[5:]) for k in keys if k.startswith("part.") and k[5:].isdigit()}
        fair = math.ceil(self.partitions / self.members)
        mine = [p for p in self.held if p not in releasing]
        if len(mine) > fair:
            out.release = sorted(mine, key=self._rank)[fair:]
            return out
        for p in sorted(range(self.partitions), key=self._rank):
            if len(mine) >= fair:
                break
            if p in taken or p in self.held:
                continue
            try:
                self.held[p] = await kv.create(f"part.{p}", self.member.encode())
            except KeyWrongLastSequenceError:
                continue  # another member won it
            self._renewed[p] = now
            mine.append(p)
            out.gained.append(p)
        return out

    async def release(self, p: int) -> None:
        """Hand partition ``p`` back (drained): delete its lease if it is still ours."""
        rev = self.held.pop(p, None)
        self._renewed.pop(p, None)
        if rev is not None and self.kv is not None:
            try:
                await self.kv.delete(f"part.{p}", last=rev)
            except Exception as err:  # expired or taken meanwhile: nothing to give back
                log.debug("releasing partition %d: %s", p, err)

    async def close(self) -> None:
        """A clean stop hands everything back at once, so the others need not wait for the TTL."""
        for p in list(self.held):
            await self.release(p)
        if self.kv is not None:
            try:
                await self.kv.delete(f"member.{self.member}")
            except Exception as err:
                log.debug("leaving the ward: %s", err)

    def _rank(self, p: int) -> int:
        return (p - self._offset) % self.partitions
