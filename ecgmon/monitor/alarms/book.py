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

People: an acknowledgement or silence names the alarm by its id, which is unique across daemon
runs (``bed3-vtach-7-1a2b3c4d``: stream, kind, its number in this run, the run), so a stale
or replayed request can never reach a new alarm of the same kind. The first acknowledgement stands; a later one is
refused (``AlarmRefused`` says by whom and when it was acknowledged). Silencing is not an
acknowledgement: it records ``silenced_by``, and a latched alarm stays until acknowledged.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timezone
import itertools
import secrets
import time

from ecgmon.monitor.alarms.kinds import KINDS
from ecgmon.schema import AlarmMessage

UPDATE_S = 5.0
# This daemon run's part of every alarm id: random, so ids never repeat across runs (a
# counter restarts with the process, the clock can go back).
RUN_ID = secrets.token_hex(4)
# Alarms are numbered across the whole run, not per book: a stream that left (idle) and came
# back has a new book, and its alarms must not repeat the ids of the ones before.
_NUMBERS = itertools.count(1)


class AlarmRefused(Exception):
    """An acknowledgement or silence that cannot apply; the message says why, for the person."""


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

    def __init__(
        self, stream: str, clear_s: float, latch: list[str] | tuple[str, ...], run: str = RUN_ID
    ) -> None:
        self.stream = stream
        self.clear_s = clear_s
        self.latch = frozenset(latch)
        self.run = run
        self._conds: dict[str, _Condition] = {}

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
        # Unseen for clear_s before this: it ended then, whether or not a tick came in between
        # (how often time is let pass must not decide if this is the same alarm or a new one).
        out = self._expire(kind, t, clear_s)
        cond = self._conds.get(kind)
        if cond is None or cond.ended:
            if cond is not None and cond.ended:
                # The condition came back while its latched alarm waits: the same alarm goes on.
                cond.ended = False
                cond.last_s = t
                return out + [self._update(cond, text, value, t)]
            cond = self._conds[kind] = _Condition(onset_s if onset_s is not None else t, t, text, value)
        cond.last_s = t
        if cond.alarm is None:
            cond.text, cond.value = text, value
            if t - cond.since_s >= hold_s:
                return out + [self._raise(kind, cond, t, suppressed)]
            return out
        if cond.alarm.suppressed and not suppressed:
            cond.alarm.suppressed = False
            cond.alarm.annunciated_s = round(t, 3)
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

    def acknowledge(self, alarm_id: str, by: str) -> AlarmMessage:
        """The alarm, acknowledged by ``by`` now; raises AlarmRefused if it is not active in
        this run or someone acknowledged it already (the first acknowledgement stands)."""
        cond = self._find(alarm_id)
        a = cond.alarm
        if a.acknowledged_by is not None:
            raise AlarmRefused(f"alarm '{alarm_id}' was already acknowledged by {a.acknowledged_by} "
                               f"at {_utc(a.acknowledged_wall)}")
        a.acknowledged_by, a.acknowledged_wall = by, time.time()
        if cond.ended:  # a latched alarm whose condition is over ends when acknowledged
            return self._clear(a.alarm, cond, cond.last_s)
        a.state = "updated"
        return a.model_copy()

    def silence(self, alarm_id: str, seconds: float, by: str) -> AlarmMessage:
        """The alarm, silenced by ``by`` for ``seconds`` from now (a later silence replaces an
        earlier one); raises AlarmRefused if it is not active in this run."""
        a = self._find(alarm_id).alarm
        a.silenced_until_wall, a.silenced_by = time.time() + seconds, by
        a.state = "updated"
        return a.model_copy()

    def active(self) -> list[AlarmMessage]:
        return [c.alarm.model_copy() for c in self._conds.values() if c.alarm is not None]

    # -- internals ---------------------------------------------------------------------

    def _find(self, alarm_id: str) -> _Condition:
        cond = next((c for c in self._conds.values() if c.alarm is not None and c.alarm.id == alarm_id), None)
        if cond is not None:
            return cond
        if not alarm_id.endswith(f"-{self.run}"):
            raise AlarmRefused(f"alarm '{alarm_id}' is not from this daemon run (its ids end in "
                               f"-{self.run}): it may be stale or replayed; look at the alarm as it is now")
        raise AlarmRefused(f"no active alarm '{alarm_id}' on {self.stream}: it has cleared or never was")

    def _expire(self, kind: str, t: float, clear_s: float | None) -> list[AlarmMessage]:
        cond = self._conds.get(kind)
        wait = self.clear_s if clear_s is None else clear_s
        if cond is None or cond.ended or t - cond.last_s < wait:
            return []
        if cond.alarm is None:
            del self._conds[kind]
            return []
        # It ended clear_s after it was last seen, however late time was let pass.
        end = cond.last_s + wait
        if kind in self.latch and cond.alarm.acknowledged_by is None:
            cond.ended = True
            return [self._update(cond, f"{KINDS[kind].title} ended (latched)", cond.value, end)]
        return [self._clear(kind, cond, end)]

    def _raise(self, kind: str, cond: _Condition, t: float, suppressed: bool) -> AlarmMessage:
        k = KINDS[kind]
        cond.updated_s = t
        cond.alarm = AlarmMessage(
            stream=self.stream,
            id=f"{self.stream}-{kind}-{next(_NUMBERS)}-{self.run}",
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
            annunciated_s=None if suppressed else round(t, 3),
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


def _utc(wall: float | None) -> str:
    return datetime.fromtimestamp(wall or 0.0, timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")
