"""Every alarm kind the engine knows is raised and then cleared on a real or synthetic
signal, driven through the real engine (StreamPipeline or AlarmEngine) on the signal clock.

Covered here: asystole, hr_low, hr_high, afib, bigeminy, trigeminy, noise, clipping and
vfib's clearing (its raising is in test_alarms.py). Latching kinds (asystole, vfib, vtach
by default) are tested with ``latch=[]`` to see them clear, and vfib also with the default
latch to see the designed behaviour: the alarm stays, marked ended, until acknowledged.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from ecgmon.chunk import Chunk
from ecgmon.config import AlarmsConfig, Config, DataConfig
from ecgmon.monitor.alarms import AlarmEngine
from ecgmon.monitor.alarms.kinds import KINDS
from ecgmon.evaluate.noise_stress import NoiseStress, add_noise
from ecgmon.monitor.dsp.qrs import LEARN_S
from ecgmon.monitor.pipeline import StreamPipeline
from ecgmon.replay.records import Record, load_record
from ecgmon.schema import AlarmMessage, BeatMessage
from pipeline_helpers import feed_unmodelled

FS = 360.0


@pytest.fixture(scope="module")
def rec100(data_dir: Path) -> Record:
    return load_record("mitdb:100", DataConfig(folder=str(data_dir)))


@pytest.fixture(scope="module")
def rec207(data_dir: Path) -> Record:
    return load_record("mitdb:207", DataConfig(folder=str(data_dir)))


def _config(**alarms: object) -> Config:
    """Default config with no latching (so latched kinds can be seen to clear)."""
    alarms.setdefault("latch", [])
    return Config(alarms=AlarmsConfig(**alarms))


def _feed(x: np.ndarray, config: Config, start: int = 0, step: int = 360) -> list[AlarmMessage]:
    """``x`` through a fresh pipeline (no beat model: labels are None) in 1 s chunks."""
    p = StreamPipeline("s", FS, "MLII", config)
    out = []
    for i in range(0, x.size, step):
        out += feed_unmodelled(p, Chunk("s", FS, ("MLII",), start + i, x[i : i + step, None].astype(np.float32)))
    return [m for m in out if isinstance(m, AlarmMessage)]


def _of(msgs: list[AlarmMessage], kind: str) -> list[AlarmMessage]:
    return [m for m in msgs if m.alarm == kind]


def _raised_then_cleared(msgs: list[AlarmMessage], kind: str) -> tuple[AlarmMessage, AlarmMessage]:
    """The first raised alarm of ``kind`` and its clearing (same id); nothing left active."""
    mine = _of(msgs, kind)
    raised = [m for m in mine if m.state == "raised"]
    assert raised, f"{kind} never raised: {[(m.alarm, m.state) for m in msgs]}"
    first = raised[0]
    cleared = [m for m in mine if m.state == "cleared" and m.id == first.id]
    assert cleared, f"{kind} raised at {first.raised_s} s but never cleared: {[m.state for m in mine]}"
    assert mine[-1].state == "cleared", f"{kind} still active at the end: {[m.state for m in mine]}"
    assert first.category == KINDS[kind].category and first.priority == KINDS[kind].priority
    assert first.onset_s <= first.raised_s < cleared[0].cleared_s
    return first, cleared[0]


def _synthetic(times: list[float], wide: set[int] = frozenset(), seconds: float | None = None) -> np.ndarray:
    """An ECG of Gaussian QRS complexes (narrow, or wide biphasic for the indices in ``wide``)
    at ``times`` with small T waves and a little noise (an exactly constant signal looks
    clipped or flat to the engine)."""
    n = round(((times[-1] + 3) if seconds is None else seconds) * FS)
    x = 0.01 * np.random.default_rng(1).standard_normal(n)
    tt = np.arange(-0.4, 0.4, 1 / FS)
    normal = 1.5 * np.exp(-0.5 * (tt / 0.012) ** 2)
    vent = -2.0 * tt / 0.05 * np.exp(-0.5 * (tt / 0.05) ** 2)
    t_wave = 0.25 * np.exp(-0.5 * ((tt - 0.25) / 0.04) ** 2)
    for k, t in enumerate(times):
        c = (vent if k in wide else normal) + t_wave
        i = round(t * FS) - tt.size // 2
        if i >= 0 and i + c.size <= n:
            x[i : i + c.size] += c
    return x


# -- signal kinds -----------------------------------------------------------------------


def test_asystole_on_a_real_pause_raised_and_cleared(rec100: Record) -> None:
    """Record 100 with 8 s of its QRS complexes replaced by low baseline wander and noise
    (not a flat line: leads are on), then the beats come back."""
    x = rec100.signal[: round(40 * FS), 0].astype(np.float64)
    a, b = round(15 * FS), round(23 * FS)
    t = np.arange(b - a) / FS
    base = float(np.median(x[a - round(FS) : a]))
    x[a:b] = base + 0.05 * np.sin(2 * np.pi * 0.3 * t) + 0.01 * np.random.default_rng(0).standard_normal(b - a)
    msgs = _feed(x, _config())
    raised, cleared = _raised_then_cleared(msgs, "asystole")
    # Onset: the last beat before the pause; raised 4 s of no QRS later, not suppressed.
    assert 13.5 <= raised.onset_s <= 15.0 and raised.raised_s == pytest.approx(raised.onset_s + 4, abs=1.1)
    assert not raised.suppressed and raised.priority == "high"
    # Cleared once the beats are back (23 s) and the hysteresis (clear_s 5) has passed.
    assert 23.0 <= cleared.cleared_s <= 23.0 + 5.0 + 2.0
    assert len([m for m in msgs if m.alarm == "asystole" and m.state == "raised"]) == 1
    assert not _of(msgs, "leads_off") and not _of(msgs, "noise")


def test_asystole_when_the_patient_is_connected_in_it(rec100: Record) -> None:
    """A stream that starts in a pause (baseline wander and noise, leads on) has no beat to
    date the pause from: it is dated from the signal's start and raised once the detector's
    learning period and asystole_s have passed; the beats of record 100 then clear it. Record
    100 itself, from its start, raises none."""
    beats = rec100.signal[: round(30 * FS), 0].astype(np.float64)
    n = round(20 * FS)
    t = np.arange(n) / FS
    pause = float(np.median(beats[: round(FS)])) + 0.05 * np.sin(2 * np.pi * 0.3 * t)
    pause += 0.01 * np.random.default_rng(0).standard_normal(n)
    msgs = _feed(np.concatenate([pause, beats]), _config())
    raised, cleared = _raised_then_cleared(msgs, "asystole")
    assert raised.onset_s == 0.0 and not raised.suppressed
    assert 4.0 + LEARN_S <= raised.raised_s <= 4.0 + LEARN_S + 1.0
    assert 20.0 <= cleared.cleared_s <= 20.0 + 5.0 + 3.0
    assert not _of(_feed(beats, _config()), "asystole")


def test_asystole_is_latched_by_default(rec100: Record) -> None:
    """With the default latch the alarm outlives its condition until acknowledged."""
    x = rec100.signal[: round(40 * FS), 0].astype(np.float64)
    a, b = round(15 * FS), round(23 * FS)
    x[a:b] = np.median(x[a - 360 : a]) + 0.05 * np.sin(2 * np.pi * 0.3 * np.arange(b - a) / FS)
    x[a:b] += 0.01 * np.random.default_rng(0).standard_normal(b - a)
    msgs = _of(_feed(x, Config()), "asystole")
    assert [m.state for m in msgs][:1] == ["raised"] and msgs[0].latched
    assert "cleared" not in [m.state for m in msgs]
    assert msgs[-1].state == "updated" and "latched" in msgs[-1].text


def test_clipping_raised_and_cleared(rec100: Record) -> None:
    """Record 100 saturating at a rail for 8 s (everything above it sits at the rail)."""
    x = rec100.signal[: round(40 * FS), 0].astype(np.float64)
    a, b = round(15 * FS), round(23 * FS)
    rail = float(np.quantile(x[a:b], 0.8))
    x[a:b] = np.minimum(x[a:b], rail)
    msgs = _feed(x, _config())
    raised, cleared = _raised_then_cleared(msgs, "clipping")
    assert 14.0 <= raised.onset_s <= 16.0 and raised.raised_s <= 20.0
    assert 23.0 <= cleared.cleared_s <= 23.0 + 4.0 + 5.0 + 1.0  # the 4 s window, then clear_s
    # Physiological alarms raised while clipped are visible but suppressed.
    assert all(m.suppressed for m in msgs if m.category == "physiological" and m.state == "raised")
    # The unclipped record alone raises nothing technical.
    clean = rec100.signal[: round(40 * FS), 0].astype(np.float64)
    assert not [m for m in _feed(clean, _config()) if m.category == "technical"]


def test_noise_from_nstdb_muscle_artefact_raised_and_cleared(rec100: Record, data_dir: Path) -> None:
    """Record 100 with nstdb 'ma' added at -6 dB the nst way: clean until 300 s, noisy 300-420 s,
    clean again after; fed from 270 s."""
    n = round(440 * FS)
    r = rec100.ann_samples[rec100.ann_samples < n]
    noisy, mask = add_noise(rec100.signal[:n], r, FS, NoiseStress("ma", -6.0), DataConfig(folder=str(data_dir)))
    a = round(270 * FS)
    assert not mask[:a].any() and mask[round(300 * FS)] and not mask[round(421 * FS) :].any()
    msgs = _feed(noisy[a:, 0].astype(np.float64), _config(), start=a)
    raised, cleared = _raised_then_cleared(msgs, "noise")
    assert 296.0 <= raised.onset_s <= 304.0 and raised.raised_s <= 306.0
    assert 420.0 <= cleared.cleared_s <= 420.0 + 4.0 + 5.0 + 3.0
    assert all(300.0 - 4.0 <= m.onset_s <= 420.0 for m in _of(msgs, "noise"))
    # What the noise fakes (runs, tachycardia) is published suppressed.
    faked = [m for m in msgs if m.category == "physiological" and m.state == "raised" and 302 <= m.raised_s <= 420]
    assert faked and all(m.suppressed for m in faked)


def test_vfib_clears_after_207s_flutter_ends(rec207: Record) -> None:
    """Record 207: flutter 40.8-51.1 s and 54.9-60.6 s; without latching the alarm ends."""
    x = rec207.signal[: round(80 * FS), 0].astype(np.float64)
    msgs = _of(_feed(x, _config()), "vfib")
    raised, _ = _raised_then_cleared(msgs, "vfib")
    assert 40.0 <= raised.onset_s and 40.8 <= raised.raised_s <= 52.0
    last = msgs[-1]
    assert last.state == "cleared" and 60.6 <= last.cleared_s <= 60.6 + 4.0 + 5.0 + 2.0
    assert all(m.onset_s >= 40.0 for m in msgs)


def test_vfib_is_latched_by_default_until_acknowledged(rec207: Record) -> None:
    x = rec207.signal[: round(80 * FS), 0].astype(np.float64)
    p = StreamPipeline("s", FS, "MLII", Config())
    msgs: list = []
    for i in range(0, x.size, 360):
        msgs += feed_unmodelled(p, Chunk("s", FS, ("MLII",), i, x[i : i + 360, None].astype(np.float32)))
    vf = [m for m in msgs if isinstance(m, AlarmMessage) and m.alarm == "vfib"]
    assert vf[0].state == "raised" and vf[0].latched and "cleared" not in [m.state for m in vf]
    assert vf[-1].state == "updated" and "latched" in vf[-1].text
    done = p.alarms.acknowledge(vf[0].id, "nurse")
    assert done is not None and done.state == "cleared" and done.acknowledged_by == "nurse"


# -- beat kinds on synthetic signals ------------------------------------------------------


def test_hr_low_raised_and_cleared() -> None:
    """46 bpm (under hr_low 50, over extreme brady 40) for 40 s, then 75 bpm."""
    slow = list(1.0 + np.arange(31) * 1.3)
    fast = list(slow[-1] + 0.8 + np.arange(40) * 0.8)
    msgs = _feed(_synthetic(slow + fast), _config())
    raised, cleared = _raised_then_cleared(msgs, "hr_low")
    assert not _of(msgs, "brady") and not _of(msgs, "hr_high")
    # 9 beats to measure the rate, then hr_limit_s (10 s) held.
    assert raised.onset_s == pytest.approx(1.0, abs=0.05) and 1.0 + 10.0 <= raised.raised_s <= 1.0 + 8 * 1.3 + 10.0 + 1.5
    assert slow[-1] <= cleared.cleared_s <= slow[-1] + 5 * 0.8 + 5.0 + 3.0
    assert "46 bpm" in raised.text


def test_hr_high_raised_and_cleared() -> None:
    """75 bpm, 130 bpm (over hr_high 120, under extreme tachy 140) for 30 s, 75 bpm again."""
    t0 = list(1.0 + np.arange(15) * 0.8)
    fast = list(t0[-1] + 0.46 + np.arange(65) * 0.46)
    t1 = list(fast[-1] + 0.8 + np.arange(30) * 0.8)
    msgs = _feed(_synthetic(t0 + fast + t1), _config())
    raised, cleared = _raised_then_cleared(msgs, "hr_high")
    assert not _of(msgs, "tachy") and not _of(msgs, "hr_low")
    # Onset: the first of the 9 beats whose median RR first says > 120 bpm (up to 4 slow ones).
    assert fast[0] - 4 * 0.8 - 0.1 <= raised.onset_s <= fast[0]
    assert raised.raised_s >= raised.onset_s + 10.0 and raised.raised_s <= fast[0] + 8 * 0.46 + 10.0 + 1.5
    assert fast[-1] <= cleared.cleared_s <= fast[-1] + 5 * 0.8 + 5.0 + 3.0


def test_afib_random_rr_raised_and_cleared() -> None:
    """Narrow complexes at random RR intervals (0.45-1.1 s) for 100 s, then a regular 75 bpm."""
    rng = np.random.default_rng(7)
    t0 = list(1.0 + np.arange(10) * 0.8)
    irregular = list(t0[-1] + np.cumsum(rng.uniform(0.45, 1.1, 130)))
    irregular = [t for t in irregular if t < 110.0]
    regular = list(irregular[-1] + 0.8 + np.arange(70) * 0.8)
    msgs = _feed(_synthetic(t0 + irregular + regular), _config())
    raised, cleared = _raised_then_cleared(msgs, "afib")
    # Raised after afib_beats (48) of irregular beats and the 30 s hold, within the irregular stretch.
    assert t0[0] <= raised.onset_s <= irregular[0] + 1.0
    assert raised.onset_s + 30.0 <= raised.raised_s <= irregular[-1]
    assert irregular[-1] < cleared.cleared_s <= regular[-1]
    assert len([m for m in _of(msgs, "afib") if m.state == "raised"]) == 1
    # The regular rhythm around it alone is no A-fib.
    steady = list(1.0 + np.arange(150) * 0.8)
    assert not _of(_feed(_synthetic(steady), _config()), "afib")


def _ectopy(unit: list[bool], cycles: int, before: int = 20, after: int = 20) -> tuple[list[float], list[bool]]:
    """Beat times and ventricular flags: ``before`` normal beats at 75 bpm, ``cycles`` of ``unit``
    (a ventricular beat comes 0.55 s early, followed by a compensatory 1.05 s pause), ``after`` normal."""
    flags = [False] * before + unit * cycles + [False] * after
    times, t = [], 1.0
    for k, v in enumerate(flags):
        times.append(t)
        nxt = flags[k + 1] if k + 1 < len(flags) else False
        t += 0.55 if nxt else (1.05 if v else 0.8)
    return times, flags


def _engine_beats(times: list[float], flags: list[bool]) -> list[AlarmMessage]:
    eng = AlarmEngine("s", FS, AlarmsConfig(latch=[]))
    out: list[AlarmMessage] = []
    for t, v in zip(times, flags):
        s = round(t * FS)
        out += eng.beat_done(
            BeatMessage(stream="s", sample=s, time_s=s / FS, fs=FS, delay_ms=0.0, rr_ms=None, amplitude_mv=1.0, label="V" if v else "N")
        )
    return out


@pytest.mark.parametrize("kind,unit", [("bigeminy", [False, True]), ("trigeminy", [False, False, True])])
def test_bigeminy_and_trigeminy_from_classified_beats(kind: str, unit: list[bool]) -> None:
    times, flags = _ectopy(unit, 8)
    msgs = _engine_beats(times, flags)
    raised, cleared = _raised_then_cleared(msgs, kind)
    last_v = times[len(flags) - 1 - flags[::-1].index(True)]
    # Onset: the first beat of the first of 4 cycles; raised once 4 cycles are in.
    assert raised.onset_s == pytest.approx(times[flags.index(True) - len(unit) + 1], abs=0.01)
    fourth_v = times[flags.index(True) + 3 * len(unit)]
    # Known when the next beat is detected or 2 s on (CLASSIFY_WAIT_S), as live.
    assert fourth_v < raised.raised_s <= fourth_v + 2.0 + 0.01
    # Held while the pattern goes on: cleared clear_s (5 s) after the last cycle at the earliest.
    assert last_v + 5.0 <= cleared.cleared_s <= last_v + 5.0 + 2.0 + 3.0
    assert len([m for m in _of(msgs, kind) if m.state == "raised"]) == 1
    # Every ventricular beat was recognised: no V-tach, no couplet, and not the other pattern.
    other = "trigeminy" if kind == "bigeminy" else "bigeminy"
    assert not _of(msgs, other) and not _of(msgs, "vtach") and not _of(msgs, "couplet")
    # Three cycles are not enough.
    assert not _of(_engine_beats(*_ectopy(unit, 3)), kind)


@pytest.mark.parametrize("kind,unit", [("bigeminy", [False, True]), ("trigeminy", [False, False, True])])
def test_bigeminy_and_trigeminy_from_wide_complexes_on_the_signal(kind: str, unit: list[bool]) -> None:
    """No beat model: the ventricular beats are recognised by their wide, unlike shape."""
    times, flags = _ectopy(unit, 8)
    wide = {k for k, v in enumerate(flags) if v}
    msgs = _feed(_synthetic(times, wide), _config())
    raised, cleared = _raised_then_cleared(msgs, kind)
    last_v = times[len(flags) - 1 - flags[::-1].index(True)]
    assert raised.onset_s == pytest.approx(times[flags.index(True) - len(unit) + 1], abs=0.05)
    # Held while the pattern goes on: cleared clear_s (5 s) after the last cycle at the earliest.
    assert last_v + 5.0 <= cleared.cleared_s <= last_v + 5.0 + 2.0 + 3.0
    assert len([m for m in _of(msgs, kind) if m.state == "raised"]) == 1
    # Every ventricular beat was recognised: no V-tach, no couplet, and not the other pattern.
    other = "trigeminy" if kind == "bigeminy" else "bigeminy"
    assert not _of(msgs, other) and not _of(msgs, "vtach") and not _of(msgs, "couplet")
