"""A small live Rich table of the streams a daemon publishes (source, time, beats, HR, beat
delay); a ZeroMQ subscriber like any other, so it knows only the wire schema."""

from __future__ import annotations

from dataclasses import dataclass

from rich.console import Console
from rich.live import Live
from rich.table import Table
import zmq
import zmq.asyncio

from ecgmon.schema import (
    BeatMessage,
    EventMessage,
    Message,
    StatusMessage,
    VitalsMessage,
    parse_message,
)

# Wave frames are many and not shown here, so they are not subscribed to.
TOPICS = ("beat.", "vitals.", "status.", "event.")


@dataclass
class _Row:
    source: str = ""
    state: str = ""
    time_s: float = 0.0
    beats: int = 0
    hr_bpm: float | None = None
    delay_ms: float | None = None
    note: str = ""


class StreamTable:
    """The latest state of each stream, updated from messages; renders as a Rich table."""

    def __init__(self, endpoint: str) -> None:
        self.endpoint = endpoint
        self.rows: dict[str, _Row] = {}
        self.sent = 0
        self.dropped = 0

    def _row(self, stream: str) -> _Row:
        return self.rows.setdefault(stream, _Row())

    def update(self, msg: Message) -> None:
        if isinstance(msg, StatusMessage):
            self.sent, self.dropped = msg.sent, msg.dropped
            for s in msg.streams:
                row = self._row(s.stream)
                row.source, row.state = s.source, s.state
                row.time_s = max(row.time_s, s.time_s)
                row.beats = max(row.beats, s.beats)
        elif isinstance(msg, VitalsMessage):
            row = self._row(msg.stream)
            row.time_s = max(row.time_s, msg.time_s)
            row.beats = max(row.beats, msg.beats)
            row.hr_bpm = msg.hr_bpm
        elif isinstance(msg, BeatMessage):
            row = self._row(msg.stream)
            row.time_s = max(row.time_s, msg.time_s)
            row.delay_ms = msg.delay_ms
        elif isinstance(msg, EventMessage):
            self._row(msg.stream).note = msg.text if msg.level != "info" else ""

    def __rich__(self) -> Table:
        table = Table(
            title=f"ecgmon · {self.endpoint}",
            caption=f"sent {self.sent} · dropped {self.dropped} · Ctrl-C to stop",
        )
        for name, justify in [
            ("stream", "left"), ("source", "left"), ("state", "left"), ("time", "right"),
            ("beats", "right"), ("HR bpm", "right"), ("delay ms", "right"), ("note", "left"),
        ]:
            table.add_column(name, justify=justify)
        for stream, r in sorted(self.rows.items()):
            minutes, seconds = divmod(r.time_s, 60)
            table.add_row(
                stream,
                r.source,
                r.state,
                f"{int(minutes)}:{seconds:04.1f}",
                str(r.beats),
                "—" if r.hr_bpm is None else f"{r.hr_bpm:.0f}",
                "—" if r.delay_ms is None else f"{r.delay_ms:.0f}",
                r.note,
                style="red" if r.state == "failed" else None,
            )
        return table


async def run_live_table(endpoint: str, console: Console | None = None) -> None:
    """Subscribe to ``endpoint`` and show the table until cancelled."""
    ctx = zmq.asyncio.Context()
    sock = ctx.socket(zmq.SUB)
    sock.setsockopt(zmq.LINGER, 0)
    for topic in TOPICS:
        sock.setsockopt_string(zmq.SUBSCRIBE, topic)
    sock.connect(endpoint)
    table = StreamTable(endpoint)
    try:
        with Live(table, console=console, refresh_per_second=4):
            while True:
                frames = await sock.recv_multipart()
                if len(frames) < 2:
                    continue
                try:
                    table.update(parse_message(frames[1]))
                except ValueError:
                    continue  # a message of a newer schema: skip it, keep showing the rest
    finally:
        sock.close(linger=0)
        ctx.term()
