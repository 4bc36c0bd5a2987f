"""Alarm engine: lifecycle (hysteresis, latching, acknowledge, silence), beat alarms on
beat sequences, technical alarms on flat and missing signal, VF/flutter on record 207."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from ecgmon.chunk import Chunk
from ecgmon.config import AlarmsConfig, Config, ConfigError, parse_config
from ecgmon.monitor.alarms import AlarmEngine
from ecgmon.monitor.alarms.book import AlarmBook, AlarmRefused
from ecgmon.monitor.alarms.engine import BEAT_KINDS
from ecgmon.monitor.pipeline import StreamPipeline
from ecgmon.replay.records import load_record
from ecgmon.schema import AlarmMessage, BeatMessage
from pipeline_helpers import feed_unmodelled

FS = 360.0


def _beat(t: float, label: str | None) -> BeatMessage:
    return BeatMessage(stream="s", sample=round(t * FS), time_s=round(t * FS) / FS, fs=FS, delay_ms=0.0,
                       rr_ms=None, amplitude_mv=1.0, label=label)


def _run_beats(engine: AlarmEngine, times: list[float], labels: list[str]) -> list[AlarmMessage]:
    out: list[AlarmMessage] = []
    for t, lab in zip(times, labels):
        out += engine.beat_done(_beat(t, lab))
    return out


def test_config_rejects_inconsistent_limits_and_unknown_latch() -> None:
    with pytest.raises(ConfigError, match="hr_low_bpm must be below hr_high_bpm"):
        parse_config({"alarms": {"hr_low_bpm": 100, "hr_high_bpm": 90}})
    with pytest.raises(ConfigError, match="latch"):
        parse_config({"alarms": {"latch": ["vtach", "nonsense"]}})
    with pytest.raises(ConfigError, match="alarms.asystole_s"):
        parse_config({"alarms": {"asystole_s": 0.5}})
    assert parse_config({"alarms": {"hr_high_bpm": 130}}).alarms.hr_high_bpm == 130


def test_book_hold_hysteresis_latch_acknowledge_silence() -> None:
    book = AlarmBook("s", clear_s=5.0, latch=["vtach"])
    assert book.observe("hr_high", 0.0, True, hold_s=3.0) == []
    assert book.observe("hr_high", 2.0, False) == []  # broken before the hold: nothing
    assert book.observe("hr_high", 3.0, True, hold_s=3.0) == []
    [raised] = book.observe("hr_high", 6.0, True, hold_s=3.0)
    assert raised.state == "raised" and raised.onset_s == 3.0 and raised.raised_s == 6.0
    assert book.observe("hr_high", 8.0, False) == []  # hysteresis: not yet
    [cleared] = book.tick(11.5)
    # It ended clear_s after it was last seen, not when time was let pass.
    assert cleared.state == "cleared" and cleared.cleared_s == 11.0
    # Seen again after more than clear_s with no tick in between: the old alarm ended at
    # last seen + clear_s and this is a new one, as if time had been let pass every second.
    book.observe("hr_high", 12.0, True)
    ended, again = book.observe("hr_high", 18.0, True)
    assert (ended.state, ended.cleared_s) == ("cleared", 17.0)
    assert again.state == "raised" and again.id != ended.id and again.onset_s == 18.0
    book.tick(30.0)

    [v] = book.observe("vtach", 20.0, True, text="V-tach")
    [ended] = book.tick(30.0)
    assert ended.state == "updated" and "latched" in ended.text  # stays until acknowledged
    silenced = book.silence(v.id, 60, "nurse")
    assert silenced.silenced_until_wall is not None
    done = book.acknowledge(v.id, "nurse")
    assert done.state == "cleared" and done.acknowledged_by == "nurse"
    with pytest.raises(AlarmRefused, match="no active alarm"):
        book.acknowledge(v.id, "nurse")
    assert book.active() == []


def test_vtach_raised_and_cleared_from_beats() -> None:
    eng = AlarmEngine("s", FS, AlarmsConfig(latch=[]))
    t = list(np.arange(0, 20, 0.8))  # 75 bpm normal
    msgs = _run_beats(eng, t, ["N"] * len(t))
    assert not [m for m in msgs if m.alarm == "vtach"]
    run = list(20 + np.arange(8) * 0.4)  # 8 V beats at 150 bpm
    msgs = _run_beats(eng, run, ["V"] * 8)
    [raised] = [m for m in msgs if m.alarm == "vtach" and m.state == "raised"]
    assert raised.priority == "high" and raised.onset_s == pytest.approx(20.0, abs=0.01)
    after = list(run[-1] + 0.8 + np.arange(12) * 0.8)
    msgs = _run_beats(eng, after, ["N"] * 12)
    assert [m.state for m in msgs if m.alarm == "vtach"] == ["cleared"]


def test_slow_v_run_is_a_pvc_run_and_pairs_are_couplets() -> None:
    eng = AlarmEngine("s", FS, AlarmsConfig(latch=[]))
    t = np.arange(0, 30, 0.8)
    labels = ["N"] * len(t)
    labels[10:14] = ["V"] * 4  # 4 beats: too short for V-tach
    labels[20:22] = ["V", "V"]
    kinds = {m.alarm for m in _run_beats(eng, list(t), labels) if m.state == "raised"}
    assert {"pvc_run", "couplet"} <= kinds and "vtach" not in kinds


def test_extreme_brady_and_tachy() -> None:
    eng = AlarmEngine("s", FS, AlarmsConfig(latch=[]))
    slow = list(np.arange(0, 20, 1.8))  # 33 bpm
    fast = list(slow[-1] + 1.8 + np.arange(30) * 0.4)  # 150 bpm
    msgs = _run_beats(eng, slow + fast, ["N"] * (len(slow) + len(fast)))
    states = [(m.alarm, m.state) for m in msgs if m.alarm in ("brady", "tachy")]
    assert ("brady", "raised") in states and ("brady", "cleared") in states and ("tachy", "raised") in states


def _feed(p: StreamPipeline, x: np.ndarray, start: int = 0, step: int = 360) -> list:
    out = []
    for i in range(0, x.size, step):
        out += feed_unmodelled(p, Chunk("s", p.fs, ("MLII",), start + i, x[i : i + step, None].astype(np.float32)))
    return out


def test_flat_line_is_leads_off_without_asystole_storm() -> None:
    rec = load_record("mitdb:100", Config().data)
    x = rec.signal[: round(30 * FS), 0].astype(np.float64)
    flat = np.full(round(60 * FS), x[-1])
    p = StreamPipeline("s", FS, "MLII", Config())
    msgs = [m for m in _feed(p, np.concatenate([x, flat, x])) if isinstance(m, AlarmMessage)]
    leads = [m for m in msgs if m.alarm == "leads_off"]
    assert [m.state for m in leads][:1] == ["raised"] and leads[-1].state == "cleared"
    asys = [m for m in msgs if m.alarm == "asystole" and m.state == "raised"]
    assert len(asys) <= 1 and all(m.suppressed for m in asys)


def test_disconnect_with_nan_and_wall_clock_signal_loss() -> None:
    eng = AlarmEngine("s", FS, AlarmsConfig())
    x = np.sin(np.arange(round(20 * FS)) / FS * 2 * np.pi)
    x[round(8 * FS):] = np.nan
    msgs = eng.feed(0, x, np.nan_to_num(x), [], wall=100.0)
    assert any(m.alarm == "signal_loss" and m.state == "raised" for m in msgs)
    eng2 = AlarmEngine("s", FS, AlarmsConfig())
    eng2.feed(0, np.zeros(360) + 0.1 * np.arange(360), np.zeros(360), [], wall=100.0)
    assert eng2.check_signal_loss(102.0) == []
    [lost] = eng2.check_signal_loss(105.0)
    assert lost.alarm == "signal_loss" and lost.category == "technical"


def test_ventricular_flutter_in_record_207() -> None:
    rec = load_record("mitdb:207", Config().data)
    x = rec.signal[: round(70 * FS), 0].astype(np.float64)  # flutter 40.8-51.1 s and 54.9-60.6 s
    p = StreamPipeline("s", FS, "MLII", Config())
    vf = [m for m in _feed(p, x) if isinstance(m, AlarmMessage) and m.alarm == "vfib" and m.state == "raised"]
    assert vf and 40.8 <= vf[0].raised_s <= 52.0 and not vf[0].suppressed


def test_beat_alarms_inside_vf_are_part_of_the_vf_alarm() -> None:
    """CUDB cu07 from 120 s (VF from 182 s to the end), without a beat model: the detector
    counts fibrillation waves as beats, and before the chaining the 5 min of VF raised 27
    couplets, PVC runs, V-tach and extreme tachycardia alarms besides the V-fib alarm. Now
    a beat alarm with VF found within clear_s of it is published suppressed: the V-fib alarm is
    announced, and the beat alarms raised before VF was found are not touched."""
    rec = load_record("cudb:cu07", Config().data)
    fs = rec.fs
    x = rec.signal[round(120 * fs) : round(420 * fs), 0].astype(np.float64)
    p = StreamPipeline("s", fs, "MLII", Config())
    msgs = _feed(p, x, step=round(fs))
    for job in p.finish():
        msgs += job.finish(None)
    raised = [m for m in msgs if isinstance(m, AlarmMessage) and m.state == "raised"]
    vf = [m for m in raised if m.alarm == "vfib"]
    assert vf and 62.0 <= vf[0].raised_s <= 72.0 and not vf[0].suppressed  # VF from 62 s of the part
    during = [m for m in raised if m.alarm in BEAT_KINDS and m.raised_s > vf[0].raised_s]
    assert len(during) >= 20
    assert sum(not m.suppressed for m in during) <= 2
    before = [m for m in raised if m.alarm in BEAT_KINDS and m.raised_s < vf[0].raised_s - 5.0]
    assert before and not any(m.suppressed for m in before)


def test_beat_alarms_without_a_beat_model_do_not_depend_on_chunking() -> None:
    """Without a beat model the beats reach the alarm engine when a class would have come
    back, not at their detection: fed in 0.1 s chunks or 2 s chunks, mitdb 208's PVC
    couplets and trigeminy (told by the template alone) raise and clear the same
    alarms at the same signal times."""
    rec = load_record("mitdb:208", Config().data)
    x = rec.signal[: round(300 * FS), 0].astype(np.float64)

    def alarms(step: int) -> list[tuple]:
        p = StreamPipeline("s", FS, "MLII", Config(alarms=AlarmsConfig(latch=[])))
        msgs = _feed(p, x, step=step)
        for job in p.finish():
            msgs += job.finish(None)
        return [(m.alarm, m.state, m.onset_s, m.raised_s, m.cleared_s, m.suppressed, m.text)
                for m in msgs if isinstance(m, AlarmMessage) and m.category == "physiological"]

    live = alarms(36)
    assert {"couplet", "trigeminy"} <= {a[0] for a in live if a[1] == "raised"}
    # The same alarms; a clearing may be told in another order, when time is next let pass.
    assert sorted(alarms(720), key=repr) == sorted(live, key=repr)


def _complex(kind: str) -> np.ndarray:
    """A narrow normal QRS (a 25 ms Gaussian) or a wide, biphasic ventricular one (120 ms)."""
    t = np.arange(-0.2, 0.2, 1 / FS)
    if kind == "N":
        return 1.5 * np.exp(-0.5 * (t / 0.012) ** 2)
    if kind == "W":  # wide too, but another shape: a slurred monophasic complex
        return -1.5 * np.exp(-0.5 * (t / 0.04) ** 2) + 0.8 * np.exp(-0.5 * ((t - 0.08) / 0.02) ** 2)
    return -2.0 * t / 0.05 * np.exp(-0.5 * (t / 0.05) ** 2)


def _drive(times: list[float], kinds: list[str], labels: list[str], every_s: float) -> list[AlarmMessage]:
    """An engine fed 1 s chunks of complexes at ``times``; beat classes come back ``every_s``
    seconds of signal late at most, in batches, as from a busy classifier."""
    n = round((times[-1] + 5) * FS)
    # A little noise: a signal sitting exactly at one value looks clipped to the engine.
    x = 0.01 * np.random.default_rng(0).standard_normal(n)
    for t, k in zip(times, kinds):
        c = _complex(k)
        i = round(t * FS) - c.size // 2
        x[i : i + c.size] += c
    eng = AlarmEngine("s", FS, AlarmsConfig(latch=[]))
    out: list[AlarmMessage] = []
    det = [round(t * FS) + 36 for t in times]  # detected 100 ms after the R peak
    done = 0
    step = round(FS)
    for start in range(0, n, step):
        end = min(n, start + step)
        out += eng.feed(start, x[start:end], x[start:end], [(d - 36, d) for d in det if start <= d < end])
        if (end / FS) % every_s < 1.0 or end == n:
            # A beat's class is known once the next beat is detected (or 2 s on), as live.
            while done < len(times) and ((done + 1 < len(times) and det[done + 1] < end) or det[done] + 2 * FS < end):
                out += eng.beat_done(_beat(times[done], labels[done]))
                done += 1
    return out


def test_late_classes_neither_end_nor_raise_beat_alarms_again() -> None:
    times = list(np.arange(1, 30, 0.8)) + list(30.6 + np.arange(30) * 0.4) + list(43.0 + np.arange(20) * 0.8)
    labels = ["N"] * 37 + ["V"] * 30 + ["N"] * 20
    kinds = ["N" if lab == "N" else "V" for lab in labels]
    prompt = [(m.state, m.raised_s, m.cleared_s) for m in _drive(times, kinds, labels, 1.0) if m.alarm == "vtach"]
    late = [(m.state, m.raised_s, m.cleared_s) for m in _drive(times, kinds, labels, 10.0) if m.alarm == "vtach"]
    assert [s for s, _, _ in prompt if s != "updated"] == ["raised", "cleared"]
    assert [s for s in late if s[0] != "updated"] == [s for s in prompt if s[0] != "updated"]


def test_wide_unlike_beats_the_model_calls_normal_make_vtach() -> None:
    times = list(np.arange(1, 30, 0.8)) + list(30.6 + np.arange(8) * 0.55)  # 109 bpm
    labels = ["N"] * len(times)  # the model misses the ventricular beats
    wide = ["N"] * 37 + ["V"] * 8
    raised = [m for m in _drive(times, wide, labels, 1.0) if m.alarm == "vtach" and m.state == "raised"]
    assert raised and raised[0].onset_s == pytest.approx(30.6, abs=0.01)
    # The same rate with normal complexes is a sinus tachycardia, not V-tach.
    assert not [m for m in _drive(times, ["N"] * len(times), labels, 1.0) if m.alarm == "vtach"]


def test_an_irregular_run_of_unlike_beats_is_not_vtach() -> None:
    """Electrode motion makes fast "beats" that come irregularly and look unlike each other,
    and the model may call them V: not V-tach. A run that is regular, or whose beats repeat one
    shape, still is (the alternating complexes of mitdb 223's V-tach come at a steady rate)."""
    normal = list(np.arange(1, 30, 0.8))
    irregular = list(30.6 + np.cumsum([0, 0.3, 0.5, 0.35, 0.6, 0.3, 0.55, 0.4]))  # 140 bpm, RR cv 0.26
    regular = list(30.6 + np.arange(8) * 0.43)
    after = [40.0 + 0.8 * i for i in range(10)]

    def vtach(run: list[float], shapes: list[str]) -> bool:
        times = normal + run + after
        kinds = ["N"] * len(normal) + shapes + ["N"] * len(after)
        labels = ["N"] * len(normal) + ["V"] * len(run) + ["N"] * len(after)
        return any(m.alarm == "vtach" and m.state == "raised" for m in _drive(times, kinds, labels, 1.0))

    assert not vtach(irregular, ["V", "W"] * 4)
    assert vtach(irregular, ["V"] * 8)
    assert vtach(regular, ["V", "W"] * 4)


# -- issue 12, reproduction 6: alarm identity


def _id_in_a_new_process() -> str:
    """The first tachy alarm's id in a fresh process, as a daemon started again would raise it."""
    code = ("from ecgmon.monitor.alarms.book import AlarmBook; "
            "print(AlarmBook('bed7', 5.0, []).observe('tachy', 0.0, True)[0].id)")
    return subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True).stdout.strip()


def test_alarm_ids_differ_across_daemon_runs() -> None:
    first, second = _id_in_a_new_process(), _id_in_a_new_process()
    assert first != second  # before: bed7-tachy-1 both times
    assert first.startswith("bed7-tachy-1-") and second.startswith("bed7-tachy-1-")


def test_a_stream_that_comes_back_never_repeats_an_alarm_id() -> None:
    """An idle stream leaves with its book; when its device returns, a new book starts: the
    alarms of both must still have ids of their own (a dashboard keys alarms by id)."""
    before = AlarmBook("bed7", clear_s=5.0, latch=[]).observe("tachy", 0.0, True)[0].id
    after = AlarmBook("bed7", clear_s=5.0, latch=[]).observe("tachy", 0.0, True)[0].id
    assert before != after


def test_an_id_from_a_previous_run_is_refused() -> None:
    stale = _id_in_a_new_process()
    book = AlarmBook("bed7", clear_s=5.0, latch=[])
    [now] = book.observe("tachy", 0.0, True)
    with pytest.raises(AlarmRefused, match="not from this daemon run"):
        book.acknowledge(stale, "replayed")  # before: it acknowledged this run's bed7-tachy-1
    with pytest.raises(AlarmRefused, match="not from this daemon run"):
        book.silence(stale, 60, "replayed")
    assert book.active()[0].acknowledged_by is None and book.active()[0].silenced_until_wall is None
    assert book.acknowledge(now.id, "nurse").acknowledged_by == "nurse"


def test_a_second_acknowledgement_does_not_overwrite_the_first() -> None:
    book = AlarmBook("bed7", clear_s=5.0, latch=[])
    [a] = book.observe("tachy", 0.0, True)
    first = book.acknowledge(a.id, "nurse")
    with pytest.raises(AlarmRefused, match="already acknowledged by nurse at 20"):
        book.acknowledge(a.id, "intruder")
    [kept] = book.active()
    assert kept.acknowledged_by == "nurse" and kept.acknowledged_wall == first.acknowledged_wall


def test_silence_does_not_write_acknowledged_by() -> None:
    book = AlarmBook("bed7", clear_s=5.0, latch=["vtach"])
    [v] = book.observe("vtach", 0.0, True)
    silenced = book.silence(v.id, 60, "nurse")
    assert silenced.silenced_by == "nurse" and silenced.silenced_until_wall is not None
    assert silenced.acknowledged_by is None and silenced.acknowledged_wall is None  # before: by, with no time
    # Silenced is not acknowledged: a latched alarm stays after its condition ends.
    [ended] = book.tick(10.0)
    assert ended.state == "updated" and "latched" in ended.text


def test_an_alarm_raised_suppressed_says_when_it_was_annunciated() -> None:
    """A physiological alarm raised during a technical condition is visible but silent; the
    time it was first annunciated (the suppression lifted while the condition went on) is the
    one a reader of its delay needs, and the messages carry it."""
    book = AlarmBook("bed7", clear_s=5.0, latch=[])
    [plain] = book.observe("tachy", 1.0, True)
    assert not plain.suppressed and plain.annunciated_s == plain.raised_s == 1.0
    [quiet] = book.observe("vtach", 10.0, True, suppressed=True)
    assert quiet.suppressed and quiet.annunciated_s is None
    assert book.observe("vtach", 11.0, True, suppressed=True) == []  # still suppressed: no news
    [told] = book.observe("vtach", 14.5, True)
    assert told.state == "updated" and not told.suppressed
    assert (told.raised_s, told.annunciated_s) == (10.0, 14.5)
    [cleared] = book.tick(20.0, ("vtach",))
    assert cleared.state == "cleared" and cleared.annunciated_s == 14.5
