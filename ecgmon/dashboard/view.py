"""Drawing the dashboard: one Rich panel per stream laid out as a grid sized to the terminal,
and a status area. Built afresh on every redraw from ``DashboardState``; sizes come from the
console, so the same code serves 80×24 and a wall-sized terminal."""

from __future__ import annotations

from dataclasses import dataclass
import math
from pathlib import PurePath
import time

import numpy as np
from rich import box
from rich.console import Console, ConsoleOptions, Group, RenderResult
from rich.panel import Panel
from rich.segment import Segment
from rich.text import Text

from ecgmon.dashboard.braille import column_extents, marks_line, render_trace
from ecgmon.dashboard.state import BEAT_CLASSES, DashboardState, StreamView, Trace
from ecgmon.schema import AlarmMessage, PcgClassMessage

MIN_PANEL_W = 60  # a second column only when each gets this many characters
MIN_PANEL_H = 8
MAX_ECG_ROWS = 10  # taller only stretches the waveform beyond any monitor's gain
MAX_PCG_ROWS = 4
STATUS_H = 2
MAX_ALARM_LINES = 3
CLASS_STYLE = {"N": "green", "S": "yellow", "V": "bold red", "F": "magenta", "Q": "dim"}
PRIORITY_STYLE = {"high": "bold white on red", "medium": "black on yellow", "low": "black on cyan"}
KEYS_HELP = "←→/tab/1-9 select · a acknowledge · s silence · q quit"


class Plain:
    """Lines of one style drawn as bare segments: the braille traces fill most of a panel and
    need none of ``Text``'s wrapping, which would cost more than drawing them."""

    def __init__(self, lines: list[str], style: str) -> None:
        self.lines = lines
        self.style = style

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        style = console.get_style(self.style)
        for line in self.lines:
            yield Segment(line[: options.max_width], style)
            yield Segment.line()


@dataclass
class Geometry:
    """How the streams are laid out for one terminal size."""

    cols: int
    rows: int
    panel_w: int
    panel_h: int
    first: int  # index of the first stream shown (a page, when they do not all fit)
    shown: int


def layout(n: int, width: int, height: int, selected: int) -> Geometry:
    cols = max(1, min(n, width // MIN_PANEL_W))
    avail = max(MIN_PANEL_H, height - STATUS_H)
    rows_fit = max(1, avail // MIN_PANEL_H)
    rows = max(1, min(math.ceil(n / cols) if n else 1, rows_fit))
    per_page = cols * rows
    first = (selected // per_page) * per_page if n > per_page else 0
    return Geometry(cols, rows, width // cols, avail // rows, first, min(per_page, max(n - first, 0)))


def _age(seconds: float) -> str:
    seconds = max(0, int(seconds))
    return f"{seconds // 60}:{seconds % 60:02d}" if seconds < 3600 else f"{seconds // 3600}h{seconds % 3600 // 60:02d}"


def _short_sources(sources: str) -> str:
    """Sources for a panel title: a file by its name, not its whole path."""
    return " + ".join(PurePath(s).name if "/" in s and "://" not in s else s for s in sources.split(" + "))


def trace_lines(trace: Trace, window_s: float, cells: int, rows: int, floor_span: float) -> list[str]:
    """Braille lines of the trace's last ``window_s`` seconds, scaled to its visible range
    (at least ``floor_span`` tall, so noise on a flat line is not blown up to full height)."""
    end = trace.end
    if end is None or cells <= 0 or rows <= 0:
        return ["" for _ in range(max(rows, 0))]
    t0 = end - window_s
    lo, hi = column_extents(trace.t, trace.y, t0, end + 1e-9, cells * 2)
    vis = trace.y[trace.t >= t0]
    vmin, vmax = (float(np.min(vis)), float(np.max(vis))) if len(vis) else (0.0, 1.0)
    if vmax - vmin < floor_span:
        mid = (vmax + vmin) / 2
        vmin, vmax = mid - floor_span / 2, mid + floor_span / 2
    pad = 0.05 * (vmax - vmin)
    return render_trace(lo, hi, rows, vmin - pad, vmax + pad)


def window_for(cells: int) -> float:
    """Seconds of signal across a trace ``cells`` wide: about 25 mm/s paper on a normal panel."""
    return float(np.clip(cells / 12.0, 4.0, 10.0))


def _marks(pairs, end: float | None, window_s: float, cells: int, styles: dict[str, str]) -> Text:
    text = Text(no_wrap=True, overflow="crop")
    if end is None:
        return text
    times = [t for t, _ in pairs]
    letters = [m for _, m in pairs]
    pos = 0
    for cell, letter in marks_line(times, letters, end - window_s, end + 1e-9, cells):
        text.append(" " * (cell - pos))
        text.append(letter, styles.get(letter, "dim"))
        pos = cell + 1
    return text


def alarm_line(alarm: AlarmMessage, wall: float) -> Text:
    text = Text(no_wrap=True, overflow="ellipsis")
    text.append(f" {alarm.priority.upper():<6}", PRIORITY_STYLE[alarm.priority])
    text.append(" ")
    text.append(alarm.text or alarm.alarm, "strike dim" if alarm.suppressed else "bold")
    text.append(f"  {_age(wall - alarm.raised_wall)}", "dim")
    if alarm.suppressed:
        text.append("  suppressed", "dim italic")
    if alarm.acknowledged_by:
        text.append(f"  ✓ ack {alarm.acknowledged_by}", "green")
    if alarm.silenced_until_wall and alarm.silenced_until_wall > wall:
        text.append(f"  silenced {_age(alarm.silenced_until_wall - wall)}", "cyan")
    if alarm.latched:
        text.append("  latched", "dim")
    return text


def header(v: StreamView, stale: float | None, cells: int) -> Text:
    text = Text(no_wrap=True, overflow="ellipsis")
    alarms = v.active_alarms()
    hr_style = "bold red" if alarms and alarms[0].priority == "high" and not alarms[0].suppressed else "bold green"
    hr = "---" if v.hr_bpm is None or stale else f"{v.hr_bpm:3.0f}"
    text.append("HR ", "dim")
    text.append(hr, hr_style)
    text.append(" bpm", "dim")
    text.append("  rhythm " if cells >= 70 else "  ", "dim")  # narrow: the word goes first
    if v.rhythm is not None:
        text.append(f"{v.rhythm.label} {v.rhythm.probability * 100:.0f}%", "bold")
    else:
        text.append("—")
    physio = [a for a in alarms if a.category == "physiological"]
    if physio:
        text.append(f" {physio[0].alarm.upper()}", PRIORITY_STYLE[physio[0].priority])
    text.append(" ")
    for c in BEAT_CLASSES:  # compact (N61 S0 V29 …) so that it fits a 60-column panel
        text.append(f" {c}", CLASS_STYLE[c])
        text.append(f"{v.classes.get(c, 0)}")
    return text


VERDICT_STYLE = {"abnormal": "bold red", "normal": "bold green", "uncertain": "bold yellow"}


def verdict_text(verdict: PcgClassMessage) -> Text:
    """The heart-sound verdict: 'abnormal 83%', 'normal 71%', or 'uncertain: near threshold'
    (no percentage: the model cannot tell, and a number would read as a measurement). The
    cycle rule's gives its score against the threshold on this device's scale instead (a score,
    not a probability: it says where the recording lies among the stethoscope's own), and the
    heart cycles it judged rather than windows."""
    text = Text(no_wrap=True)
    style = VERDICT_STYLE.get(verdict.label, "bold")
    if verdict.label == "uncertain" or verdict.probability is None:
        text.append(f"{verdict.label}" + (f": {verdict.reason}" if verdict.reason else ""), style)
    else:
        text.append(f"{verdict.label} {verdict.probability * 100:.0f}%", style)
    if verdict.method == "cycles":
        if verdict.label != "uncertain" and verdict.p_abnormal is not None:
            text.append(f" score {verdict.p_abnormal:+.2f} {'≥' if verdict.label == 'abnormal' else '<'} "
                        f"{verdict.threshold:+.2f}", "dim")
        text.append(f" ({verdict.windows} cycles)", "dim")
    else:
        text.append(f" ({verdict.windows} windows)", "dim")
    return text


def heart_sounds(v: StreamView, cells: int, rows: int, window_s: float) -> list[Text | Plain]:
    """The heart-sound area: envelope with S1/S2 marks and the verdict, or one line saying none."""
    if v.pcg is None:
        return [Text("♥ no heart sounds", "dim", no_wrap=True)]
    info = Text(no_wrap=True, overflow="ellipsis")
    info.append("♥ PCG ", "dim")
    info.append("---" if v.pcg.hr_bpm is None else f"{v.pcg.hr_bpm:.0f}", "bold cyan")
    info.append(" bpm", "dim")
    if v.verdict is not None:
        info.append("  ")
        info.append_text(verdict_text(v.verdict))
    if v.pcg.quality is not None:
        q = v.pcg.quality
        info.append("  quality ", "dim")
        info.append(f"{q:.2f}", "green" if q >= 0.5 else "yellow" if q >= 0.2 else "red")
    lines = Plain(trace_lines(v.envelope, window_s, cells, rows, 1e-6), "cyan")
    marks = _marks(v.sounds, v.envelope.end, window_s, cells, {"1": "bold cyan", "2": "bold blue"})
    return [lines, marks, info]


def panel_need(v: StreamView) -> int:
    """Lines a panel can use: beyond them a taller panel would only add blank lines."""
    alarms = max(1, min(len(v.alarms), MAX_ALARM_LINES))
    pcg = 1 if v.pcg is None else MAX_PCG_ROWS + 2
    return 2 + 1 + MAX_ECG_ROWS + 1 + alarms + pcg


def stream_panel(v: StreamView, index: int, selected: bool, g: Geometry, stale: float | None, wall: float) -> Panel:
    cells = max(1, g.panel_w - 4)
    inner_h = max(1, g.panel_h - 2)
    alarms = v.active_alarms()
    alarm_lines = [alarm_line(a, wall) for a in alarms[:MAX_ALARM_LINES]]
    if len(alarms) > MAX_ALARM_LINES:
        alarm_lines[-1] = Text(f" … {len(alarms) - MAX_ALARM_LINES + 1} more alarms", "bold")
    if not alarm_lines:
        alarm_lines = [Text("no active alarms", "dim")]
    spare = inner_h - 2 - len(alarm_lines) - (1 if v.pcg is None else 2)
    pcg_rows = 0 if v.pcg is None else min(MAX_PCG_ROWS, max(1, spare // 3))
    ecg_rows = min(MAX_ECG_ROWS, max(1, spare - pcg_rows))
    window = window_for(cells)
    body: list[Text | Plain] = [header(v, stale, cells)]
    body.append(Plain(trace_lines(v.wave, window, cells, ecg_rows, 0.5), "dim green" if stale else "green"))
    if stale:
        body.append(Text(f"no data for {_age(stale)}", "bold red", no_wrap=True))
    else:
        body.append(_marks(v.marks, v.wave.end, window, cells, CLASS_STYLE))
    body += alarm_lines
    body += heart_sounds(v, cells, pcg_rows, window)
    title = Text(no_wrap=True)
    title.append(f" {index + 1} {v.name} ", "bold reverse" if selected else "bold")
    title.append(f" {_short_sources(v.source)} {v.lead} ", "dim")
    state = "NO DATA" if stale else v.state
    title.append(f" {state} ", "bold white on red" if stale or v.state == "failed" else "dim")
    if v.note is not None:
        title.append(f" {v.note.text} ", "yellow" if v.note.level == "warning" else "red")
    border = "bold bright_white" if selected else ("red" if alarms and alarms[0].priority == "high" else "grey50")
    return Panel(
        Group(*body), title=title, title_align="left", box=box.HEAVY if selected else box.ROUNDED,
        border_style=border, width=g.panel_w, height=g.panel_h, padding=(0, 1),
    )


def status_lines(state: DashboardState, g: Geometry, now: float, width: int) -> list[Text]:
    line = Text(no_wrap=True, overflow="ellipsis")
    for i, ln in enumerate(state.links):
        if i:
            line.append(" │ ", "dim")
        age = now - ln.last_rx if ln.last_rx is not None else None
        if ln.refused and (age is None or age > 3.0):
            line.append(f"✕ {ln.endpoint} {ln.refused}", "bold white on red")
            continue
        if age is None:
            line.append(f"○ {ln.endpoint} waiting for the daemon", "bold yellow")
            continue
        if age > 3.0:
            line.append(f"○ {ln.endpoint} no data for {_age(age)}, reconnecting", "bold white on red")
        else:
            line.append(f"● {ln.endpoint}", "bold green")
        st = ln.status
        if st is not None:
            line.append(f" up {_age(st.uptime_s)}", "dim")
        line.append(f" · rx {ln.received} · missed {ln.missed}")
        if ln.garbage:
            line.append(f" · garbage {ln.garbage}", "yellow")
        if st is not None:
            line.append(f" · daemon dropped {st.dropped}", "yellow" if st.dropped else "")
        if ln.latency_ms is not None:
            line.append(f" · latency {ln.latency_ms:.0f} ms")
        # The daemon's own delay, chunk arrival to beat publication, worst stream of this link.
        beat = [v.beat_latency_ms for v in state.streams.values() if v.link == i and v.beat_latency_ms is not None]
        if beat:
            line.append(f" · beat {max(beat):.0f} ms")
    second = Text(no_wrap=True, overflow="ellipsis")
    n = len(state.streams)
    if n > g.shown:
        shown = f"{g.first + 1}-{g.first + g.shown}" if g.shown > 1 else f"{g.first + 1}"
        second.append(f"streams {shown} of {n} · ", "bold")
    second.append(KEYS_HELP, "dim")
    if state.notice is not None:
        text, style, at = state.notice
        if now - at < 10.0:
            second.append("  ")
            second.append(text, style)
    return [line, second]


class Dashboard:
    """The renderable handed to Rich ``Live``: lays itself out to the console's size."""

    def __init__(self, state: DashboardState, clock=time.monotonic, wall=time.time) -> None:
        self.state = state
        self.clock = clock
        self.wall = wall

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        width = options.max_width
        height = options.height or console.height
        state, now, wall = self.state, self.clock(), self.wall()
        names = state.names()
        sel = state.selected if names else 0
        g = layout(len(names), width, height, sel)
        if not names:
            yield Panel(Text("no data yet: waiting for the daemon's first message", "bold yellow"),
                        height=max(3, height - STATUS_H), width=width)
            yield from status_lines(state, g, now, width)
            return
        shown = names[g.first : g.first + g.shown]
        g.panel_h = min(g.panel_h, max(panel_need(state.streams[n]) for n in shown))
        panel_options = options.update(width=g.panel_w, height=g.panel_h)
        rendered = []
        for k, name in enumerate(shown):
            i, v = g.first + k, state.streams[name]
            panel = stream_panel(v, i, i == sel, g, state.stale_s(v, now), wall)
            rendered.append(console.render_lines(panel, panel_options, pad=True))
        # Panels side by side, joined line by line: cheaper than a Rich table, which measures
        # every cell before drawing it.
        for r in range(0, len(rendered), g.cols):
            row = rendered[r : r + g.cols]
            for y in range(g.panel_h):
                for lines in row:
                    yield from lines[y]
                yield Segment.line()
        # Blank lines keep the status area at the bottom of the terminal.
        used = math.ceil(len(shown) / g.cols) * g.panel_h
        yield from [Text("")] * max(0, height - STATUS_H - used)
        yield from status_lines(state, g, now, width)
