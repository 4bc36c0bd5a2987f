"""The bedside heart-rate method: trimmed 12-interval mean, 4-interval mean in bradycardia,
falling rate in a pause, no rate before enough beats or after a long silence."""

from __future__ import annotations

import numpy as np
import pytest

from ecgmon.config import HeartRateConfig, SimulatorConfig
from ecgmon.monitor.dsp.heart_rate import HR_METHOD, HeartRateMeter
from ecgmon.replay.ecgsyn import ECGSynth


def meter_with(rr: list[float], start: float = 10.0) -> tuple[HeartRateMeter, float]:
    """A meter fed a beat at ``start`` and then after each interval; returns the last time."""
    m = HeartRateMeter(HeartRateConfig())
    t = start
    m.add_beat(t)
    for interval in rr:
        t += interval
        m.add_beat(t)
    return m, t


def test_steady_75_bpm() -> None:
    m, t = meter_with([0.8] * 20)
    assert m.rate(t) == pytest.approx(75.0)
    assert m.rate(t + 0.7) == pytest.approx(75.0)
    assert m.rr_s == pytest.approx(0.8)


def test_none_before_four_intervals() -> None:
    m = HeartRateMeter(HeartRateConfig())
    assert m.rate(0.0) is None
    for i in range(5):
        assert m.rate(i * 0.8) is None
        m.add_beat(i * 0.8)
    assert m.rate(4 * 0.8) == pytest.approx(75.0)


def test_one_outlier_each_way_is_excluded() -> None:
    # A premature beat (short RR) and a missed beat (long RR) among 12: both trimmed.
    m, t = meter_with([0.8] * 5 + [0.4] + [0.8] * 3 + [1.6] + [0.8] * 2)
    assert m.rate(t) == pytest.approx(75.0)
    # A plain mean would have said 60 / 0.8333 = 72.
    m, t = meter_with([0.8] * 5 + [0.4] + [0.8] * 6)
    assert m.rate(t) == pytest.approx(75.0)


def test_only_the_single_smallest_is_excluded() -> None:
    m, t = meter_with([0.8] * 6 + [0.4, 0.4] + [0.8] * 4)
    # Drops one 0.4 and one 0.8: (9 * 0.8 + 0.4) / 10 = 0.76 s.
    assert m.rate(t) == pytest.approx(60.0 / 0.76)


def test_only_the_last_twelve_count() -> None:
    m, t = meter_with([0.5] * 10 + [0.8] * 12)
    assert m.rate(t) == pytest.approx(75.0)
    m, t = meter_with([0.5] * 10 + [0.8] * 11)
    # One 0.5 left in the window: the smallest, so trimmed, along with one 0.8.
    assert m.rate(t) == pytest.approx(75.0)
    m, t = meter_with([0.5] * 10 + [0.8] * 10)
    assert m.rate(t) == pytest.approx(60.0 / ((0.5 + 9 * 0.8) / 10))


def test_bradycardia_uses_last_four_and_responds_quickly() -> None:
    m, t = meter_with([1.5] * 14)
    assert m.rate(t) == pytest.approx(40.0)
    # Step down to 30 bpm: after two intervals the 4-interval mean already shows it
    # ((2 * 1.5 + 2 * 2.0) / 4 = 1.75 s; the trimmed 12-mean would still be at 1.55 s).
    for _ in range(2):
        t += 2.0
        m.add_beat(t)
    assert m.rate(t) == pytest.approx(60.0 / 1.75)
    for _ in range(2):
        t += 2.0
        m.add_beat(t)
    assert m.rate(t) == pytest.approx(30.0)


def test_above_50_bpm_the_twelve_interval_mean_holds() -> None:
    m, t = meter_with([1.1] * 14 + [0.5] * 2)
    # Mean 1.1 s is under 1.2 s: the trimmed 12-mean ((9 * 1.1 + 0.5) / 10), not the last 4.
    assert m.rate(t) == pytest.approx(60.0 / 1.04)


def test_leaving_bradycardia_switches_back() -> None:
    m, t = meter_with([1.5] * 14)
    for _ in range(12):
        t += 0.75
        m.add_beat(t)
    assert m.rate(t) == pytest.approx(80.0)


def test_asystole_makes_the_rate_fall_then_vanish() -> None:
    m, t = meter_with([0.8] * 20)
    assert m.rate(t + 1.5) == pytest.approx(75.0)  # one missed beat: no flicker
    rates = [m.rate(t + dt) for dt in (2.0, 3.0, 4.0, 5.0, 5.9)]
    assert rates[0] == pytest.approx(30.0)
    assert all(a > b for a, b in zip(rates, rates[1:]))
    assert rates[-1] == pytest.approx(60.0 / 5.9)
    assert m.rate(t + 6.5) is None
    # Beats come back: the long pause is the largest interval and is trimmed.
    for rr in (6.5, 0.8, 0.8):
        t += rr
        m.add_beat(t)
    assert m.rate(t) == pytest.approx(75.0)


def test_bradycardia_pause_threshold_scales_with_rr() -> None:
    m, t = meter_with([1.5] * 8)
    assert m.rate(t + 2.9) == pytest.approx(40.0)
    assert m.rate(t + 3.2) == pytest.approx(60.0 / 3.2)


def test_beats_must_increase() -> None:
    m = HeartRateMeter()
    m.add_beat(1.0)
    with pytest.raises(ValueError):
        m.add_beat(1.0)
    with pytest.raises(ValueError):
        m.add_beat(0.5)


def test_reset_forgets_beats() -> None:
    m, t = meter_with([0.8] * 20)
    m.reset()
    assert m.rate(t) is None and m.rr_s is None


def test_configured_window_sizes() -> None:
    m = HeartRateMeter(HeartRateConfig(intervals=4, short_intervals=2, long_rr_s=1.0))
    t = 0.0
    m.add_beat(t)
    for rr in [0.5, 0.5, 0.5, 0.9, 0.9]:
        t += rr
        m.add_beat(t)
    # Last 4: 0.5 0.5 0.9 0.9, trimmed to 0.5 0.9: mean 0.7 s.
    assert m.rate(t) == pytest.approx(60.0 / 0.7)


def test_method_is_one_line_naming_the_windows() -> None:
    assert "\n" not in HR_METHOD
    assert "12" in HR_METHOD and "4" in HR_METHOD and "1.2 s" in HR_METHOD
    assert HeartRateMeter(HeartRateConfig(intervals=8)).method.startswith("mean of last 8 RR")


def test_rate_of_the_simulator() -> None:
    fs = 360.0
    s = ECGSynth(SimulatorConfig(seed=4, heart_rate_bpm=88, hr_std_bpm=2, ectopic_fraction=0.1))
    s.generate(int(fs * 120))
    m = HeartRateMeter()
    rates = []
    for r in s.r_peaks:
        m.add_beat(r / fs)
        rate = m.rate(r / fs)
        if rate is not None:
            rates.append(rate)
    # PVCs with compensatory pauses keep the sinus rate; the trimmed mean rides over them.
    assert np.median(rates[20:]) == pytest.approx(88.0, abs=3.0)
    assert min(rates[20:]) > 80.0 and max(rates[20:]) < 96.0
