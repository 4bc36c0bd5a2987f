"""Driving a stream pipeline without models as the daemon would: what a chunk gives, then
what its jobs give (without a beat model the jobs hand the beats to the alarm engine)."""

from __future__ import annotations

from ecgmon.chunk import Chunk
from ecgmon.monitor.pipeline import StreamPipeline
from ecgmon.schema import Message


def feed_unmodelled(p: StreamPipeline, chunk: Chunk) -> list[Message]:
    """The messages of ``chunk`` and of the jobs it made, finished with no model output."""
    out = p.feed(chunk)
    for job in p.take_jobs():
        out += job.finish(None)
    return out
