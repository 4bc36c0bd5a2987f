"""What the dashboard knows: the latest state of every stream and of every daemon connection,
updated message by message. No ZeroMQ and no drawing here, so it is tested with plain messages.

Times: signal time (``time_s``) places samples and beats on the trace; the monotonic clock
measures how long a connection or stream has been silent; wall time (``wall``, ``raised_wall``)
gives alarm ages and transport latency.
"""

from __future__ import annotations

from collections import Counter, deque
from dataclasses import dataclass, field

import numpy as np
from pydantic import ValidationError

from ecgmon.schema import (
    DAEMON_STREAM,
    AlarmMessage,
    BeatMessage,
    EventMessage,
    Message,
    PcgClassMessage,
    PcgMessage,
    SegmentMessage,
    StatusMessage,
    VitalsMessage,
    WaveMessage,
    parse_message,
)

# Signal time kept for the traces: more than the widest trace window shows.
KEEP_S = 12.0
# A connection or stream without a message for this long shows "no data" (status comes every second).
STALE_S = 3.0
BEAT_CLASSES = ("N", "S", "V", "F", "Q")
PRIORITY_RANK = {"high": 0, "medium": 1, "low": 2}


class Trace:
    """The last ``KEEP_S`` seconds of a sampled signal on the signal clock."""

    def __init__(self) -> None:
        self.t = np.empty(0)
        self.y = np.empty(0)

    def add(self, time_s: float, fs: float, values: list[float]) -> None:
        if not values or fs <= 0:
            return
        t = time_s + np.arange(len(values)) / fs
        if len(self.t) and t[0] < self.t[-1] - 1.0:
            self.t, self.y = np.empty(0), np.empty(0)  # the signal clock went back: a new replay
        self.t = np.concatenate([self.t, t])
        self.y = np.concatenate([self.y, np.asarray(values, dtype=float)])
        keep = self.t >= self.t[-1] - KEEP_S
        self.t, self.y = self.t[keep], self.y[keep]

    @property
    def end(self) -> float | None:
        return float(self.t[-1]) if len(self.t) else None


@dataclass
class StreamView:
    """Everything shown in one stream's panel."""

    name: str
    link: int  # index of the connection it comes from (its daemon's control socket)
    pub: str = ""  # the daemon instance that speaks for it
    source: str = ""
    state: str = ""
    lead: str = ""
    last_rx: float | None = None  # monotonic time of its latest message
    wave: Trace = field(default_factory=Trace)
    hr_bpm: float | None = None
    beats: int = 0
    classes: Counter = field(default_factory=Counter)
    marks: deque = field(default_factory=lambda: deque(maxlen=256))  # (time_s, label) of recent beats
    beat_latency_ms: float | None = None
    rhythm: SegmentMessage | None = None
    alarms: dict[str, AlarmMessage] = field(default_factory=dict)  # active ones, by id
    note: EventMessage | None = None  # the latest warning or error
    envelope: Trace = field(default_factory=Trace)
    sounds: deque = field(default_factory=lambda: deque(maxlen=256))  # (time_s, "1" or "2")
    pcg: PcgMessage | None = None
    verdict: PcgClassMessage | None = None

    def active_alarms(self) -> list[AlarmMessage]:
        """Highest priority first, then the newest."""
        return sorted(self.alarms.values(), key=lambda a: (PRIORITY_RANK[a.priority], -a.raised_wall))


@dataclass
class Link:
    """One daemon connection: its endpoints and what arrived over it."""

    endpoint: str
    control: str | None
    pub: str = ""  # publisher id of the daemon instance; a new one means it restarted
    last_rx: float | None = None
    received: int = 0
    missed: int = 0  # gaps in seq, per topic
    garbage: int = 0  # frames that are not a message we can read
    status: StatusMessage | None = None
    latency_ms: float | None = None  # wall clock at reception minus publication, smoothed
    refused: str | None = None  # why the daemon does not let us in (CURVE keys), if it does not


class DashboardState:
    """The dashboard's model: streams in order of appearance, connections, selection."""

    def __init__(self, endpoints: list[tuple[str, str | None]]) -> None:
        self.links = [Link(e, c) for e, c in endpoints]
        self.streams: dict[str, StreamView] = {}
        self.selected = 0
        self.notice: tuple[str, str, float] | None = None  # (text, style, monotonic time)
        self._last_seq: dict[tuple[str, str], int] = {}

    # -- input -----------------------------------------------------------------------

    def receive(self, link: int, frames: list[bytes], now: float, wall: float) -> Message | None:
        """Take one multipart message from connection ``link``; garbage is counted, not raised."""
        ln = self.links[link]
        ln.last_rx = now
        ln.received += 1
        if len(frames) != 2:
            ln.garbage += 1
            return None
        try:
            msg = parse_message(frames[1])
        except (ValidationError, ValueError):
            ln.garbage += 1
            return None
        if msg.topic.encode() != frames[0]:
            ln.garbage += 1
            return None
        self._count_gap(ln, msg)
        lat = max(0.0, (wall - msg.wall) * 1000.0) if msg.wall else None
        if lat is not None:
            ln.latency_ms = lat if ln.latency_ms is None else 0.9 * ln.latency_ms + 0.1 * lat
        self.apply(msg, link, now)
        return msg

    def _count_gap(self, ln: Link, msg: Message) -> None:
        # The latest daemon instance heard here; a ward's proxy carries several at once, so a new
        # one is a restart (or a moved stream) of the streams it speaks for only (see apply).
        ln.pub = msg.pub
        key = (msg.pub, msg.topic)
        prev = self._last_seq.get(key)
        self._last_seq[key] = msg.seq
        if prev is not None and msg.seq > prev + 1:
            ln.missed += msg.seq - prev - 1

    def view(self, stream: str, link: int) -> StreamView:
        v = self.streams.get(stream)
        if v is None:
            v = self.streams[stream] = StreamView(stream, link)
        return v

    def apply(self, msg: Message, link: int, now: float) -> None:
        """Update the model from one message."""
        if isinstance(msg, StatusMessage):
            self.links[link].status = msg
            # An ECG and a stethoscope of one patient share a stream id: one panel for both,
            # naming both sources, running while either runs.
            by_name: dict[str, list] = {}
            for s in msg.streams:
                by_name.setdefault(s.stream, []).append(s)
            for name, parts in by_name.items():
                v = self.view(name, link)
                v.source = " + ".join(p.source for p in parts)
                states = [p.state for p in parts]
                v.state = next((x for x in ("running", "starting", "failed") if x in states), states[0])
                v.lead = next((p.lead for p in parts if p.lead), "")
                if v.hr_bpm is None:
                    v.hr_bpm = next((p.hr_bpm for p in parts if p.hr_bpm is not None), None)
                v.beats = max([v.beats] + [p.beats for p in parts])
            return
        if msg.stream == DAEMON_STREAM:
            return  # the daemon's own events belong to no stream panel
        v = self.view(msg.stream, link)
        if msg.pub and v.pub != msg.pub and v.link == link:
            if v.pub:
                # Another daemon instance speaks for this stream: its daemon restarted, or (a ward
                # on several daemons) the stream moved to another. What the old one said (alarms,
                # traces) no longer holds.
                v = self.streams[msg.stream] = StreamView(msg.stream, link)
            v.pub = msg.pub
        v.last_rx = now
        if isinstance(msg, WaveMessage):
            v.wave.add(msg.time_s, msg.fs, msg.samples_mv)
            v.lead = msg.lead
        elif isinstance(msg, BeatMessage):
            # With a beat model a beat arrives one beat late; its time places it correctly.
            label = msg.label or "·"
            v.marks.append((msg.time_s, label))
            if msg.label:
                v.classes[msg.label] += 1
            v.beat_latency_ms = msg.latency_ms
        elif isinstance(msg, VitalsMessage):
            v.hr_bpm, v.beats = msg.hr_bpm, max(v.beats, msg.beats)
        elif isinstance(msg, SegmentMessage):
            v.rhythm = msg
        elif isinstance(msg, AlarmMessage):
            if msg.state == "cleared":
                v.alarms.pop(msg.id, None)
            else:
                v.alarms[msg.id] = msg
        elif isinstance(msg, PcgMessage):
            v.pcg = msg
            v.envelope.add(msg.time_s, msg.fs, msg.envelope)
            v.sounds.extend([(t, "1") for t in msg.s1_s] + [(t, "2") for t in msg.s2_s])
        elif isinstance(msg, PcgClassMessage):
            v.verdict = msg
        elif isinstance(msg, EventMessage):
            if msg.level != "info":
                v.note = msg
            elif msg.code in ("source_started", "stream_started"):
                v.note = None

    # -- selection and questions ------------------------------------------------------

    def names(self) -> list[str]:
        return list(self.streams)

    def selected_name(self) -> str | None:
        names = self.names()
        if not names:
            return None
        self.selected %= len(names)
        return names[self.selected]

    def select(self, step: int = 0, index: int | None = None) -> None:
        n = len(self.streams)
        if not n:
            return
        if index is not None:
            if 0 <= index < n:
                self.selected = index
        else:
            self.selected = (self.selected + step) % n

    def stale_s(self, view: StreamView, now: float) -> float | None:
        """Seconds without data, for a stream whose daemon is silent or which should be
        sending (an ended or failed stream of a live daemon is not stale), else None."""
        ln = self.links[view.link]
        if ln.last_rx is None:
            return None  # never connected: the status line says so
        link_age = now - ln.last_rx
        if link_age > STALE_S:
            return link_age
        if view.state in ("ended", "failed"):
            return None
        age = now - (view.last_rx if view.last_rx is not None else ln.last_rx)
        return age if age > STALE_S else None

    def say(self, text: str, style: str, now: float) -> None:
        self.notice = (text, style, now)

