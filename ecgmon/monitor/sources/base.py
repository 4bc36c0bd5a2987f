"""What every source is: an async producer of Chunks for one stream, and its errors."""

from __future__ import annotations

from typing import AsyncIterator, Protocol

from ecgmon.chunk import Chunk


class SourceError(Exception):
    """A source that cannot start or cannot go on; the message says what to do."""


class Source(Protocol):
    """Produces the chunks of one stream until it ends (or forever).

    ``stream`` is the stream id used in topics; ``spec`` is what the user asked for
    (``mitdb:100``, ``sim``); ``lead`` names the monitored channel. A source raises
    ``SourceError`` for a fault it cannot recover from; it never sleeps except to pace.
    """

    stream: str
    spec: str
    fs: float
    lead: str

    def chunks(self) -> AsyncIterator[Chunk]: ...
