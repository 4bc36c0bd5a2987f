"""``ecgmon evaluate alarms``: records replayed through the whole pipeline (beat model
included), their alarms scored against reference episodes.

Alarms are scored without latching (``[alarms] latch`` is emptied for the run): a latched
alarm stays until someone acknowledges it, so one alarm would cover the rest of a record.

Reference episodes per alarm kind:

- ``vtach``: MIT-BIH ``(VT`` rhythm episodes of at least 5 reference beats, and runs of
  reference ventricular beats (V, E) with the alarm's own definition (``vtach_beats`` in a row
  faster than ``vtach_bpm``) that no ``(VT`` label covers: databases such as SVDB mark no
  rhythms, and an alarm on eleven annotated V beats in a row is not false there;
- ``vfib``: ``(VFL`` and ``(VF`` rhythm episodes and the spans WFDB brackets with ``[``
  (start of ventricular flutter/fibrillation) and ``]`` (its end), the two merged where they
  overlap (MIT-BIH 207 has both, CUDB only the brackets; an unclosed ``[`` runs to the end);
- ``afib``: ``(AFIB`` episodes;
- ``asystole``, ``brady``, ``tachy``: derived from the reference beats with the alarm's own
  definition (an RR gap of ``asystole_s``; median rate over ``brady_beats`` /
  ``tachy_beats`` beats beyond the limit). VF/flutter has no beat annotations: a gap inside
  a VF episode is not asystole (its edges count as beats) and a slow run that overlaps one
  is not bradycardia.

An episode is detected when an unsuppressed alarm of its kind is active at some time from
its onset to ``TOLERANCE_S`` after its end; the delay is from onset to the alarm's raise (0
for an alarm already active). An alarm that meets no episode it may answer is false.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable, Mapping

import numpy as np
import wfdb

from ecgmon.config import AlarmsConfig, Config
from ecgmon.evaluate.fold_models import FoldModels, scoring_mode
from ecgmon.monitor.model_loader import LoadedModel
from ecgmon.evaluate.noise_stress import NoiseStress, add_noise
from ecgmon.evaluate.record_run import run_record
from ecgmon.monitor.sources.base import SourceError
from ecgmon.replay.records import Record, RecordError, load_record, record_id
from ecgmon.schema import AlarmMessage

TOLERANCE_S = 5.0
SCORED = ("vtach", "vfib", "afib", "asystole", "brady", "tachy")
# The high-priority (life-threatening) kinds, whose pooled median delay the acceptance uses;
# A-fib waits afib_hold_s by design and is reported on its own.
URGENT = ("vtach", "vfib", "asystole", "brady", "tachy")
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
VENTRICULAR_SYMBOLS = ("V", "E")  # AAMI class V
# A run this long is "V-tach" to the annotators of MIT-BIH (who mark runs of 3 as (VT): not
# an episode the alarm must find, but not the cause of a false alarm either.
SHORT_VT_BEATS = 3


@dataclass
class Episode:
    kind: str
    onset_s: float
    end_s: float
    beats: int = 0


@dataclass
class AlarmSpan:
    kind: str
    start_s: float  # when it was annunciated (see alarm_spans); one never annunciated: its raise
    cleared_s: float | None
    suppressed: bool


def rhythm_episodes(samples: np.ndarray, symbols: list[str], aux: list[str], fs: float, end_s: float) -> list[Episode]:
    """VT (>= 5 beats, and all as ``vtach_any``), VF/flutter and AF episodes from an atr file."""
    samples = np.asarray(samples)
    beat_t = np.array([s / fs for s, sym in zip(samples, symbols) if sym in BEAT_SYMBOLS])
    marks = [(s / fs, a.strip("\x00")) for s, a in zip(samples, aux) if a.startswith("(")]
    out: list[Episode] = []
    vf: list[tuple[float, float]] = []
    for i, (t0, name) in enumerate(marks):
        t1 = marks[i + 1][0] if i + 1 < len(marks) else end_s
        n = int(np.count_nonzero((beat_t >= t0) & (beat_t < t1)))
        if name == "(VT":
            out.append(Episode("vtach_any", t0, t1, n))
            if n >= 5:
                out.append(Episode("vtach", t0, t1, n))
        elif name in ("(VFL", "(VF"):
            vf.append((t0, t1))
        elif name == "(AFIB":
            out.append(Episode("afib", t0, t1, n))
    vf += bracket_spans(samples, symbols, fs, end_s)
    for t0, t1 in _union(vf):
        out.append(Episode("vfib", t0, t1, int(np.count_nonzero((beat_t >= t0) & (beat_t < t1)))))
    return out


def bracket_spans(samples: np.ndarray, symbols: list[str], fs: float, end_s: float) -> list[tuple[float, float]]:
    """Spans of ventricular flutter/fibrillation between WFDB's ``[`` and ``]`` annotations
    (seconds). A ``]`` with no ``[`` before it closes a span begun before the first annotation
    (a slice cut inside one); a ``[`` never closed runs to ``end_s``."""
    out: list[tuple[float, float]] = []
    start: float | None = None
    closed_any = False
    for s, sym in zip(np.asarray(samples), symbols):
        if sym == "[" and start is None:
            start = s / fs
        elif sym == "]":
            if start is not None:
                out.append((start, s / fs))
            elif not out and not closed_any:
                out.append((0.0, s / fs))
            start, closed_any = None, True
    if start is not None:
        out.append((start, end_s))
    return out


def _union(spans: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """Overlapping or touching spans merged, in time order."""
    out: list[tuple[float, float]] = []
    for a, b in sorted(spans):
        if out and a <= out[-1][1]:
            out[-1] = (out[-1][0], max(b, out[-1][1]))
        else:
            out.append((a, b))
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


def ventricular_runs(beat_t: np.ndarray, ventricular: np.ndarray, cfg: AlarmsConfig,
                     rhythms: list[Episode] = ()) -> list[Episode]:
    """V-tach episodes from runs of reference ventricular beats that no ``(VT`` episode in
    ``rhythms`` overlaps: ``vtach`` for ``vtach_beats`` or more faster than ``vtach_bpm``,
    and every run of ``SHORT_VT_BEATS`` or more as ``vtach_any``."""
    labelled = [e for e in rhythms if e.kind == "vtach_any"]
    v = np.concatenate([[False], np.asarray(ventricular, dtype=bool), [False]])
    starts, ends = np.flatnonzero(~v[:-1] & v[1:]), np.flatnonzero(v[:-1] & ~v[1:])
    out: list[Episode] = []
    for a, b in zip(starts, ends):  # beats a .. b-1
        n, t0, t1 = int(b - a), float(beat_t[a]), float(beat_t[b - 1])
        if n < SHORT_VT_BEATS or any(e.onset_s <= t1 and e.end_s >= t0 for e in labelled):
            continue
        out.append(Episode("vtach_any", t0, t1, n))
        if n >= cfg.vtach_beats and 60.0 * (n - 1) / (t1 - t0) > cfg.vtach_bpm:
            out.append(Episode("vtach", t0, t1, n))
    return out


def beat_episodes(beat_t: np.ndarray, cfg: AlarmsConfig, rhythms: list[Episode] = ()) -> list[Episode]:
    """Asystole, extreme brady and extreme tachy from reference beat times (seconds).

    Stretches without annotated beats because the annotators marked VF/flutter there
    (``rhythms``) are not asystole or bradycardia.
    """
    beat_t = np.asarray(beat_t, dtype=float)
    vf = [e for e in rhythms if e.kind == "vfib"]
    out: list[Episode] = []
    # Asystole: gaps between beats, VF episodes' edges counting as beats, so a pause before
    # or after VF still counts and the stretch inside VF (no beats annotated) does not.
    edges = np.sort(np.concatenate([beat_t, [e.onset_s for e in vf], [e.end_s for e in vf]]))
    for i in np.flatnonzero(np.diff(edges) >= cfg.asystole_s):
        a, b = edges[i], edges[i + 1]
        if not any(v.onset_s <= (a + b) / 2 <= v.end_s for v in vf):
            out.append(Episode("asystole", a, b))
    out += _median_rate_runs(beat_t, cfg.brady_beats, lambda r: r < cfg.brady_bpm, "brady")
    out += _median_rate_runs(beat_t, cfg.tachy_beats, lambda r: r > cfg.tachy_bpm, "tachy")
    # A shorter fast stretch is not an extreme-tachy episode, but not a false alarm's cause either.
    out += _median_rate_runs(beat_t, max(2, cfg.tachy_beats // 2), lambda r: r > cfg.tachy_bpm, "tachy_any")
    return [e for e in out if e.kind != "brady" or not any(v.onset_s < e.end_s and v.end_s > e.onset_s for v in vf)]


def alarm_spans(messages: Iterable[AlarmMessage], end_s: float) -> list[AlarmSpan]:
    """One span per alarm id: annunciated (raised, or for one raised suppressed the lifting of
    its suppression: until then nobody was told) to cleared (or the record's end); an alarm
    never annunciated keeps its raise time and counts as suppressed."""
    spans: dict[str, AlarmSpan] = {}
    for m in messages:
        span = spans.get(m.id)
        if span is None:
            span = spans[m.id] = AlarmSpan(m.alarm, m.raised_s, None, True)
        if span.suppressed and m.annunciated_s is not None:
            span.suppressed = False
            span.start_s = m.annunciated_s
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
    missed_s: list[float] = field(default_factory=list)  # onsets of missed episodes
    false_s: list[float] = field(default_factory=list)  # raise times of false alarms

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
            hits = [s for s in mine if s.start_s <= ep.end_s + TOLERANCE_S and s.cleared_s >= ep.onset_s]
            if hits:
                sc.detected += 1
                sc.delays_s.append(round(max(0.0, min(s.start_s for s in hits) - ep.onset_s), 3))
            else:
                sc.missed_s.append(round(ep.onset_s, 1))
        ok = [e for e in episodes if e.kind in ANSWERS[kind]]
        for s in mine:
            if not any(s.start_s <= e.end_s + TOLERANCE_S and s.cleared_s >= e.onset_s - TOLERANCE_S for e in ok):
                sc.false_alarms += 1
                sc.false_s.append(round(s.start_s, 1))
    return out


# --------------------------------------------------------------------------- one record


@dataclass
class RecordAlarms:
    record: str
    hours: float
    trained_on: bool
    scores: dict[str, KindScore]
    noise_coverage: float | None = None  # share of the added-noise time under a noise alarm
    beat_model: str = ""  # the name of the beat model that classified it (a fold model in cross-validation)


def reference_episodes(record: Record, cfg: AlarmsConfig, span: tuple[int, int] | None = None) -> list[Episode]:
    """The reference episodes of ``record`` (from its 'atr' file), within samples ``span``."""
    if record.path is None:
        raise SourceError(f"{record.name}: no record files to read the reference rhythms from")
    try:
        ann = wfdb.rdann(str(record.path), "atr")
    except Exception as err:  # wfdb raises assorted errors for a missing or corrupt file
        raise SourceError(f"{record.name}: no readable reference annotations ('atr'): {err}") from None
    samples = np.asarray(ann.sample, dtype=np.int64)
    symbols = [str(x) for x in ann.symbol]
    aux = [str(x) for x in ann.aux_note]
    lo, hi = span if span is not None else (0, record.n_samples)
    marks = [(int(samples[i]) - lo, symbols[i], aux[i]) for i in np.flatnonzero((samples >= lo) & (samples < hi))]
    earlier = np.flatnonzero(np.array([a.startswith("(") for a in aux], dtype=bool) & (samples < lo))
    if earlier.size:  # the rhythm in effect at the span's start begins there
        marks.insert(0, (0, "", aux[earlier[-1]]))
    brackets = np.flatnonzero(np.isin(symbols, ["[", "]"]) & (samples < lo))
    if brackets.size and symbols[brackets[-1]] == "[":  # a bracketed VF span open at the start
        marks.insert(0, (0, "[", ""))
    at, syms, notes = (list(c) for c in zip(*marks)) if marks else ([], [], [])
    fs = record.fs
    episodes = rhythm_episodes(np.array(at, dtype=np.int64), syms, notes, fs, (hi - lo) / fs)
    beats = [(a / fs, sym in VENTRICULAR_SYMBOLS) for a, sym in zip(at, syms) if sym in BEAT_SYMBOLS]
    beat_t = np.array([t for t, _ in beats], dtype=float)
    ventricular = np.array([v for _, v in beats], dtype=bool)
    return episodes + ventricular_runs(beat_t, ventricular, cfg, episodes) + beat_episodes(beat_t, cfg, episodes)


def evaluate_record(
    spec: str,
    config: Config,
    models: Mapping[str, LoadedModel],
    span_s: tuple[float, float] | None = None,
    noise: NoiseStress | None = None,
) -> RecordAlarms:
    """Replay ``spec`` (seconds ``span_s`` of it, with ``noise`` added if given) through the
    pipeline with ``models`` and score its alarms against the reference."""
    try:
        record = load_record(spec, config.data)
    except RecordError as err:
        raise SourceError(str(err)) from None
    lo, hi = (0, record.n_samples) if span_s is None else (round(span_s[0] * record.fs), round(span_s[1] * record.fs))
    hi = min(hi, record.n_samples)
    cfg = config.alarms.model_copy(update={"latch": []})
    config = config.model_copy(update={"alarms": cfg})
    episodes = reference_episodes(record, cfg, (lo, hi))
    signal = record.signal[lo:hi]
    noisy = None
    if noise is not None:
        ann = record.ann_samples if record.ann_samples is not None else np.zeros(0, dtype=np.int64)
        try:
            signal, noisy = add_noise(signal, ann[(ann >= lo) & (ann < hi)] - lo, record.fs, noise, config.data)
        except RecordError as err:
            raise SourceError(str(err)) from None
    part = Record(record.name, record.fs, record.channels, signal, record.units, path=record.path)
    msgs = [m for m in run_record(spec, config, models, record=part) if isinstance(m, AlarmMessage)]
    end_s = (hi - lo) / record.fs
    spans = alarm_spans(msgs, end_s)
    beat = models.get("beat")
    trained = beat is not None and beat.trained_on(spec)
    coverage = None if noisy is None else _coverage(noisy, record.fs, [s for s in spans if s.kind == "noise"])
    return RecordAlarms(spec, end_s / 3600.0, trained, score(episodes, spans), coverage,
                        "" if beat is None else beat.name)


def _coverage(mask: np.ndarray, fs: float, spans: list[AlarmSpan]) -> float | None:
    """Share of the ``mask`` samples inside one of ``spans``."""
    if not mask.any():
        return None
    covered = np.zeros(mask.size, dtype=bool)
    for s in spans:
        covered[max(0, round(s.start_s * fs)) : round(s.cleared_s * fs)] = True
    return float((covered & mask).sum() / mask.sum())


# --------------------------------------------------------------------------- summary


def _kind_block(results: list[RecordAlarms], kind: str) -> dict:
    hours = sum(r.hours for r in results)
    sc = [r.scores[kind] for r in results]
    episodes, detected = sum(s.episodes for s in sc), sum(s.detected for s in sc)
    false = sum(s.false_alarms for s in sc)
    delays = sorted(d for s in sc for d in s.delays_s)
    return {
        "episodes": episodes,
        "detected": detected,
        "sensitivity": detected / episodes if episodes else None,
        "alarms": sum(s.alarms for s in sc),
        "false_alarms": false,
        "false_per_hour": false / hours if hours else None,
        "suppressed": sum(s.suppressed for s in sc),
        "delay_median_s": float(np.median(delays)) if delays else None,
        "delay_p90_s": float(np.percentile(delays, 90)) if delays else None,
        "delays_s": delays,
    }


def _block(results: list[RecordAlarms]) -> dict:
    kinds = {k: _kind_block(results, k) for k in SCORED}
    urgent = sorted(d for k in URGENT for d in kinds[k]["delays_s"])
    return {
        "records": [r.record for r in results],
        "hours": round(sum(r.hours for r in results), 3),
        "kinds": kinds,
        "urgent_delay_median_s": float(np.median(urgent)) if urgent else None,
    }


def acceptance(results: list[RecordAlarms]) -> dict:
    """The issue's acceptance criteria over all ``results``: each a value and whether it passes."""
    block = _block(results)
    k = block["kinds"]
    vf207 = [r.scores["vfib"] for r in results if record_id(r.record) == "207"]
    checks = {
        "vtach_sensitivity": (k["vtach"]["sensitivity"], lambda v: v is not None and v >= 0.9),
        "vfib_detected_in_207": (vf207[0].detected if vf207 else None, lambda v: v is None or v > 0),
        "vtach_false_per_hour": (k["vtach"]["false_per_hour"], lambda v: v is not None and v <= 1.0),
        "asystole_false_per_hour": (k["asystole"]["false_per_hour"], lambda v: v is not None and v <= 1.0),
        "urgent_delay_median_s": (block["urgent_delay_median_s"], lambda v: v is None or v <= 10.0),
    }
    return {name: {"value": v, "pass": bool(test(v))} for name, (v, test) in checks.items()}


def summary(
    results: list[RecordAlarms], models: Mapping[str, LoadedModel], noise: NoiseStress | None = None,
    folds: FoldModels | None = None,
) -> dict:
    beat = models.get("beat")
    return {
        "standard": "alarm episodes against MIT-BIH reference rhythms and beats (IEC 60601-2-27 style "
                    f"definitions), detection within {TOLERANCE_S:g} s of an episode's end, no latching",
        "beat_model": None if beat is None else
        {"name": beat.name, "path": str(beat.path), "sha256": beat.card.get("sha256")},
        **scoring_mode(folds),
        "noise": None if noise is None else {"noise": noise.noise, "snr_db": noise.snr_db},
        "per_record": [
            {"record": r.record, "trained_on": r.trained_on, "beat_model": r.beat_model, "hours": round(r.hours, 3),
             "noise_coverage": r.noise_coverage,
             "kinds": {k: {"episodes": s.episodes, "detected": s.detected, "false_alarms": s.false_alarms,
                           "suppressed": s.suppressed, "delays_s": s.delays_s, "missed_s": s.missed_s,
                           "false_s": s.false_s} for k, s in r.scores.items()}}
            for r in results
        ],
        "held_out": _block([r for r in results if not r.trained_on]),
        "all": _block(results),
        "acceptance": acceptance(results),
    }
