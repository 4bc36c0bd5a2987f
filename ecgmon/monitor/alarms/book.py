"""Alarm lifecycle: when a condition becomes an alarm, how it ends, latching, acknowledge
and silence, ids and the messages that say so.

Detectors only *observe* conditions at signal times (``observe(kind, t, present)``); the
book turns observations into alarms:

- raise: a condition present without a break for ``hold_s`` (0 for detectors whose own
  definition already spans time, e.g. five beats of V-tach) is raised;
- clear, with hysteresis: an alarm ends once its condition has not been seen for
  ``clear_s``, so a condition that flickers does not raise a new alarm every few seconds;
- latch: a latching kind's alarm stays after its condition ends (``updated``, text says
  ended) until someone acknowledges it;
- suppressed: raised during a technical condition, the alarm is published with
  ``suppressed=True`` (visible, not annunciated); it becomes a real alarm (``updated``) if
  the condition outlives the technical one.
"""

from __future__ import annotations

from dataclasses import dataclass
import time

from ecgmon.monitor.alarms.kinds import KINDS
from ecgmon.schema import AlarmMessage

UPDATE_S = 5.0


@dataclass(slots=True)
class _Condition:
    """A condition seen present, raised or not yet."""

    since_s: float  # start of the unbroken presence
    last_s: float  # last time seen present
    text: str
    value: float | None
    alarm: AlarmMessage | None = None
    ended: bool = False  # a latched alarm whose condition has cleared
    updated_s: float = 0.0  # last time an update was published for a changed text


class AlarmBook:
    """The alarms of one stream."""

    def __init__(self, stream: str, clear_s: float, latch: list[str] | tuple[str, ...]) -> None:
        self.stream = stream
        self.clear_s = clear_s
        self.latch = frozenset(latch)
        self._conds: dict[str, _Condition] = {}
        self._count = 0

    # -- detectors ---------------------------------------------------------------------

    def observe(
        self,
        kind: str,
        t: float,
        present: bool,
        *,
        onset_s: float | None = None,
        text: str = "",
        value: float | None = None,
        hold_s: float = 0.0,
        suppressed: bool = False,
        clear_s: float | None = None,
    ) -> list[AlarmMessage]:
        """Record that ``kind`` is (or is not) present at signal time ``t``."""
        cond = self._conds.get(kind)
        if not present:
            if cond is not None and cond.alarm is None:
                del self._conds[kind]  # a pending condition must be unbroken
            return self._expire(kind, t, clear_s)
        if cond is None or cond.ended:
            if cond is not None and cond.ended:
                # The condition came back while its latched alarm waits: the same alarm goes on.
                cond.ended = False
                cond.last_s = t
                return [self._update(cond, text, value, t)]
            cond = self._conds[kind] = _Condition(onset_s if onset_s is not None else t, t, text, value)
        cond.last_s = t
        if cond.alarm is None:
            cond.text, cond.value = text, value
            if t - cond.since_s >= hold_s:
                return [self._raise(kind, cond, t, suppressed)]
            return []
        out = []
        if cond.alarm.suppressed and not suppressed:
            cond.alarm.suppressed = False
            out.append(self._update(cond, text, value, t))
        elif text != cond.text and t - cond.updated_s >= UPDATE_S:
            # A changing figure (rate, beats, seconds) is republished at most every UPDATE_S.
            cond.updated_s = t
            out.append(self._update(cond, text, value, t))
        return out

    def tick(self, t: float, kinds: tuple[str, ...] | None = None, clear_s: float | None = None) -> list[AlarmMessage]:
        """Let time pass: clear what has not been seen for ``clear_s`` (only ``kinds`` if given)."""
        out: list[AlarmMessage] = []
        for kind in list(self._conds):
            if kinds is None or kind in kinds:
                out += self._expire(kind, t, clear_s)
        return out

    def present(self, kind: str) -> _Condition | None:
        return self._conds.get(kind)

    # -- people ------------------------------------------------------------------------

    def acknowledge(self, alarm_id: str, by: str) -> AlarmMessage | None:
        cond = self._find(alarm_id)
        if cond is None:
            return None
        a = cond.alarm
        a.acknowledged_by, a.acknowledged_wall = by, time.time()
        if cond.ended:  # a latched alarm whose condition is over ends when acknowledged
            return self._clear(a.alarm, cond, cond.last_s)
        a.state = "updated"
        return a.model_copy()

    def silence(self, alarm_id: str, seconds: float, by: str) -> AlarmMessage | None:
        cond = self._find(alarm_id)
        if cond is None:
            return None
        a = cond.alarm
        a.silenced_until_wall = time.time() + seconds
        a.acknowledged_by = a.acknowledged_by or by
        a.state = "updated"
        return a.model_copy()

    def active(self) -> list[AlarmMessage]:
        return [c.alarm.model_copy() for c in self._conds.values() if c.alarm is not None]

    # -- internals ---------------------------------------------------------------------

    def _find(self, alarm_id: str) -> _Condition | None:
        return next((c for c in self._conds.values() if c.alarm is not None and c.alarm.id == alarm_id), None)

    def _expire(self, kind: str, t: float, clear_s: float | None) -> list[AlarmMessage]:
        cond = self._conds.get(kind)
        wait = self.clear_s if clear_s is None else clear_s
        if cond is None or cond.ended or t - cond.last_s < wait:
            return []
        if cond.alarm is None:
            del self._conds[kind]
            return []
        if kind in self.latch and cond.alarm.acknowledged_by is None:
            cond.ended = True
            return [self._update(cond, f"{KINDS[kind].title} ended (latched)", cond.value, t)]
        return [self._clear(kind, cond, t)]

    def _raise(self, kind: str, cond: _Condition, t: float, suppressed: bool) -> AlarmMessage:
        self._count += 1
        k = KINDS[kind]
        cond.updated_s = t
        cond.alarm = AlarmMessage(
            stream=self.stream,
            id=f"{self.stream}-{kind}-{self._count}",
            alarm=kind,
            category=k.category,
            priority=k.priority,
            state="raised",
            text=cond.text or k.title,
            onset_s=round(cond.since_s, 3),
            raised_s=round(t, 3),
            raised_wall=time.time(),
            latched=kind in self.latch,
            suppressed=suppressed,
            value=cond.value,
        )
        return cond.alarm.model_copy()

    def _update(self, cond: _Condition, text: str, value: float | None, t: float) -> AlarmMessage:
        cond.text, cond.value = text, value
        a = cond.alarm
        a.state, a.text, a.value = "updated", text or a.text, value
        return a.model_copy()

    def _clear(self, kind: str, cond: _Condition, t: float) -> AlarmMessage:
        del self._conds[kind]
        a = cond.alarm
        a.state, a.cleared_s = "cleared", round(t, 3)
        return a.model_copy()
