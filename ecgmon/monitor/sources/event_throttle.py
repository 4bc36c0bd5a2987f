"""Rate-limited technical events of one stream, shared by the serial and MQTT sources: a device
sending garbage a thousand times a second must cost subscribers one event a second, and the
events that do go out must still tell the whole story (cumulative counts, latest text)."""

from __future__ import annotations

from typing import Callable, Literal

from ecgmon.chunk import SourceEvent

Level = Literal["info", "warning", "error"]
# At most one event per stream and code per this many seconds.
EVENT_PERIOD_S = 1.0


class EventThrottle:
    """At most one event per code per ``period``; one offered sooner is held (the latest text
    wins) and comes out of ``flush`` once due. ``counts`` gives the stream's cumulative fault
    counters, read when an event goes out, so a held event is never stale."""

    def __init__(self, stream: str, counts: Callable[[], dict[str, int]], period: float = EVENT_PERIOD_S,
                 holding: set[EventThrottle] | None = None) -> None:
        self.stream = stream
        self.period = period
        self._counts = counts
        self._last_emit: dict[str, float] = {}
        self._pending: dict[str, tuple[Level, str]] = {}
        # Where a source with many streams keeps the throttles that hold an event, so that it
        # looks for the next one due among those, not among all its streams on every message.
        self._holding = holding

    def event(self, code: str, level: Level, text: str, now: float) -> SourceEvent | None:
        """The event now, or None if one of this code went out less than ``period`` ago
        (then it is held and sent by ``flush``)."""
        if now - self._last_emit.get(code, -float("inf")) < self.period:
            self._pending[code] = (level, text)
            if self._holding is not None:
                self._holding.add(self)
            return None
        self._last_emit[code] = now
        self._pending.pop(code, None)
        return SourceEvent(self.stream, level, code, text, dict(self._counts()))

    def next_flush(self) -> float | None:
        """Monotonic time at which a held event falls due, if any."""
        return min((self._last_emit[c] + self.period for c in self._pending), default=None)

    def flush(self, now: float) -> list[SourceEvent]:
        """The held events that are due now."""
        out = []
        for code, (level, text) in list(self._pending.items()):
            ev = self.event(code, level, text, now)
            if ev is not None:
                out.append(ev)
        return out
