"""``ecgmon evaluate alarms``: records replayed through the whole pipeline (beat model
included), their alarms scored against reference episodes.

Reference episodes per alarm kind:

- ``vtach``: MIT-BIH ``(VT`` rhythm episodes of at least 5 reference beats;
- ``vfib``: ``(VFL`` and ``(VF`` episodes;
- ``afib``: ``(AFIB`` episodes;
- ``asystole``, ``brady``, ``tachy``: derived from the reference beats with the alarm's own
  definition (an RR gap of ``asystole_s``; median rate over ``brady_beats`` /
  ``tachy_beats`` beats beyond the limit).

An episode is detected when an unsuppressed alarm of its kind is active at some time from
its onset to ``TOLERANCE_S`` after its end; the delay is from onset to the alarm's raise (0
for an alarm already active). An alarm that meets no episode it may answer is false.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable

import numpy as np

from ecgmon.config import AlarmsConfig
from ecgmon.schema import AlarmMessage

TOLERANCE_S = 5.0
SCORED = ("vtach", "vfib", "afib", "asystole", "brady", "tachy")
# Reference rhythms an alarm of a kind may answer without being false: a V-tach alarm in
# ventricular flutter, or on a 3-4 beat V-tach the annotators marked, is not a false alarm.
ANSWERS = {
    "vtach": ("vtach", "vtach_any", "vfib"),
    "vfib": ("vfib",),
    "afib": ("afib",),
    "asystole": ("asystole",),
    "brady": ("brady",),
    "tachy": ("tachy", "tachy_any"),
}
# AAMI beat symbols of MIT-BIH (everything else in an atr file is not a beat).
BEAT_SYMBOLS = set("NLRBAaJSVrFejnE/fQ?")


@dataclass
class Episode:
    kind: str
    onset_s: float
    end_s: float
    beats: int = 0


@dataclass
class AlarmSpan:
    kind: str
    raised_s: float
    cleared_s: float | None
    suppressed: bool


def rhythm_episodes(samples: np.ndarray, symbols: list[str], aux: list[str], fs: float, end_s: float) -> list[Episode]:
    """VT (>= 5 beats, and all as ``vtach_any``), VF/flutter and AF episodes from an atr file."""
    samples = np.asarray(samples)
    beat_t = np.array([s / fs for s, sym in zip(samples, symbols) if sym in BEAT_SYMBOLS])
    marks = [(s / fs, a.strip("\x00")) for s, a in zip(samples, aux) if a.startswith("(")]
    out: list[Episode] = []
    for i, (t0, name) in enumerate(marks):
        t1 = marks[i + 1][0] if i + 1 < len(marks) else end_s
        n = int(np.count_nonzero((beat_t >= t0) & (beat_t < t1)))
        if name == "(VT":
            out.append(Episode("vtach_any", t0, t1, n))
            if n >= 5:
                out.append(Episode("vtach", t0, t1, n))
        elif name in ("(VFL", "(VF"):
            out.append(Episode("vfib", t0, t1, n))
        elif name == "(AFIB":
            out.append(Episode("afib", t0, t1, n))
    return out


def _median_rate_runs(beat_t: np.ndarray, beats: int, test, kind: str) -> list[Episode]:
    """Merged spans where the median-RR rate over ``beats`` beats passes ``test``."""
    if beat_t.size < beats:
        return []
    rr = np.diff(beat_t)
    win = np.lib.stride_tricks.sliding_window_view(rr, beats - 1)
    rate = 60.0 / np.median(win, axis=1)
    hit = test(rate)
    out: list[Episode] = []
    for i in np.flatnonzero(hit):
        a, b = beat_t[i], beat_t[i + beats - 1]
        if out and a <= out[-1].end_s:
            out[-1].end_s = max(out[-1].end_s, b)
        else:
            out.append(Episode(kind, a, b, beats))
    return out


def beat_episodes(beat_t: np.ndarray, cfg: AlarmsConfig, rhythms: list[Episode] = ()) -> list[Episode]:
    """Asystole, extreme brady and extreme tachy from reference beat times (seconds).

    Stretches without annotated beats because the annotators marked VF/flutter there
    (``rhythms``) are not asystole or bradycardia.
    """
    beat_t = np.asarray(beat_t, dtype=float)
    vf = [e for e in rhythms if e.kind == "vfib"]
    out: list[Episode] = []
    gaps = np.flatnonzero(np.diff(beat_t) >= cfg.asystole_s)
    out += [Episode("asystole", beat_t[i], beat_t[i + 1]) for i in gaps]
    out += _median_rate_runs(beat_t, cfg.brady_beats, lambda r: r < cfg.brady_bpm, "brady")
    out += _median_rate_runs(beat_t, cfg.tachy_beats, lambda r: r > cfg.tachy_bpm, "tachy")
    # A shorter fast stretch is not an extreme-tachy episode, but not a false alarm's cause either.
    out += _median_rate_runs(beat_t, max(2, cfg.tachy_beats // 2), lambda r: r > cfg.tachy_bpm, "tachy_any")
    return [
        e for e in out
        if e.kind not in ("asystole", "brady") or not any(v.onset_s < e.end_s and v.end_s > e.onset_s for v in vf)
    ]


def alarm_spans(messages: Iterable[AlarmMessage], end_s: float) -> list[AlarmSpan]:
    """One span per alarm id: raised (or first unsuppressed) to cleared (or the record's end)."""
    spans: dict[str, AlarmSpan] = {}
    for m in messages:
        span = spans.get(m.id)
        if span is None:
            span = spans[m.id] = AlarmSpan(m.alarm, m.raised_s, None, m.suppressed)
        if not m.suppressed:
            span.suppressed = False
        if m.state == "cleared":
            span.cleared_s = m.cleared_s
    for s in spans.values():
        if s.cleared_s is None:
            s.cleared_s = end_s
    return list(spans.values())


@dataclass
class KindScore:
    episodes: int = 0
    detected: int = 0
    false_alarms: int = 0
    alarms: int = 0
    suppressed: int = 0
    delays_s: list[float] = field(default_factory=list)

    @property
    def sensitivity(self) -> float | None:
        return self.detected / self.episodes if self.episodes else None


def score(episodes: list[Episode], spans: list[AlarmSpan]) -> dict[str, KindScore]:
    """Per scored kind: episode detection and delays, and false alarms."""
    out = {k: KindScore() for k in SCORED}
    live = [s for s in spans if not s.suppressed]
    for kind in SCORED:
        sc = out[kind]
        mine = [s for s in live if s.kind == kind]
        sc.alarms = len(mine)
        sc.suppressed = sum(1 for s in spans if s.kind == kind and s.suppressed)
        for ep in (e for e in episodes if e.kind == kind):
            sc.episodes += 1
            hits = [s for s in mine if s.raised_s <= ep.end_s + TOLERANCE_S and s.cleared_s >= ep.onset_s]
            if hits:
                sc.detected += 1
                sc.delays_s.append(max(0.0, min(s.raised_s for s in hits) - ep.onset_s))
        ok = [e for e in episodes if e.kind in ANSWERS[kind]]
        for s in mine:
            if not any(s.raised_s <= e.end_s + TOLERANCE_S and s.cleared_s >= e.onset_s - TOLERANCE_S for e in ok):
                sc.false_alarms += 1
    return out
