"""What every source is: an async producer of Chunks (and SourceEvents), and its errors."""

from __future__ import annotations

from typing import AsyncIterator, Protocol

from ecgmon.chunk import Chunk, SourceEvent


class SourceError(Exception):
    """A source that cannot start or cannot go on; the message says what to do."""


class Source(Protocol):
    """Produces chunks until it ends (or forever), with technical events between them.

    ``stream`` is the stream id used in topics (a source that carries several streams, such
    as an MQTT wildcard subscription, names itself with it and sets each chunk's own
    ``stream``); ``spec`` is what the user asked for (``mitdb:100``, ``sim``). A source
    raises ``SourceError`` for a fault it cannot recover from and reports the faults it
    recovers from as SourceEvents; it never sleeps except to pace or to wait for data.
    """

    stream: str
    spec: str

    def chunks(self) -> AsyncIterator[Chunk | SourceEvent]: ...
