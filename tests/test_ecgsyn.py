"""The built-in ECGSYN-style simulator and its source: continuity, true R peaks, rate,
ectopic beats, spec parsing and paced chunks."""

from __future__ import annotations

import time

import numpy as np
import pytest
from scipy.signal import find_peaks

from ecgmon.config import ReplayConfig, SimulatorConfig
from ecgmon.monitor.sources.base import SourceError
from ecgmon.monitor.sources.simulator import SimulatorSource, parse_sim_spec
from ecgmon.replay.ecgsyn import ECGSynth


def synth(**kw) -> ECGSynth:
    kw.setdefault("seed", 1)
    return ECGSynth(SimulatorConfig(**kw))


def beats(s: ECGSynth) -> tuple[np.ndarray, np.ndarray]:
    return np.asarray(s.r_peaks), np.asarray(s.kinds)


@pytest.mark.parametrize("noise", [0.0, 0.05])
def test_pieces_equal_one_call(noise: float) -> None:
    whole = synth(noise_mv=noise, ectopic_fraction=0.2)
    x = whole.generate(20_000)
    cut = synth(noise_mv=noise, ectopic_fraction=0.2)
    sizes = [1, 7, 0, 360, 1000, 3, 5000]
    parts = [cut.generate(m) for m in sizes]
    parts.append(cut.generate(20_000 - sum(sizes)))
    y = np.concatenate(parts)
    assert x.dtype == np.float32 and x.ndim == 1 and x.shape == (20_000,)
    np.testing.assert_array_equal(x, y)
    assert list(whole.r_peaks) == list(cut.r_peaks)
    assert list(whole.kinds) == list(cut.kinds)
    assert whole.position == cut.position == 20_000


def test_seed_makes_it_reproducible_and_different_seeds_differ() -> None:
    a = synth(seed=5).generate(3600)
    b = synth(seed=5).generate(3600)
    c = synth(seed=6).generate(3600)
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(a, c)


def test_r_peaks_are_recorded_only_once_generated() -> None:
    s = synth()
    for _ in range(50):
        s.generate(97)
        r, _ = beats(s)
        assert len(r) and r.max() < s.position
        assert np.all(np.diff(r) > 0)


@pytest.mark.parametrize("fs, hr", [(360.0, 72.0), (1000.0, 60.0), (125.0, 150.0), (250.0, 40.0)])
def test_r_peaks_are_the_signal_maxima(fs: float, hr: float) -> None:
    s = synth(fs=fs, heart_rate_bpm=hr, noise_mv=0.0, ectopic_fraction=0.2)
    x = s.generate(int(fs * 60))
    r, kinds = beats(s)
    assert {"N", "V"} <= set(kinds)
    w = int(0.06 * fs)
    inner = r[(r > w) & (r < len(x) - w)]
    offsets = np.array([np.argmax(x[i - w : i + w + 1]) - w for i in inner])
    assert np.all(np.abs(offsets) <= 1)
    # Every beat and nothing else stands out: no P or T wave reaches half an R wave.
    peaks, _ = find_peaks(x, height=0.6, distance=int(0.15 * fs))
    assert len(peaks) == len(r)
    assert np.all(np.abs(peaks - r) <= 1)


def test_amplitudes_are_realistic() -> None:
    s = synth(noise_mv=0.0, ectopic_fraction=0.2, heart_rate_bpm=72)
    x = s.generate(360 * 60)
    r, kinds = beats(s)
    base = np.median(x)  # mostly the isoelectric line between beats
    n_height = x[r[kinds == "N"]] - base
    v_height = x[r[kinds == "V"]] - base
    assert 1.0 <= n_height.min() and n_height.max() <= 1.5
    assert v_height.mean() > 1.3 * n_height.mean()
    assert x.min() > -1.0


def test_rate_follows_config() -> None:
    for hr in (40.0, 72.0, 150.0):
        s = synth(heart_rate_bpm=hr, hr_std_bpm=3.0, ectopic_fraction=0.1)
        s.generate(int(360 * 60))
        r, _ = beats(s)
        mean_rr = np.diff(r).mean() / 360.0
        assert 60.0 / mean_rr == pytest.approx(hr, abs=2.0)
        assert len(r) == pytest.approx(hr, abs=3)


def test_variability_follows_hr_std() -> None:
    for hr_std in (0.0, 5.0):
        s = synth(heart_rate_bpm=70, hr_std_bpm=hr_std, ectopic_fraction=0.0, noise_mv=0.0)
        s.generate(360 * 600)
        r, _ = beats(s)
        hr = 60.0 * 360.0 / np.diff(r)
        # At zero variability only the rounding of R peaks to samples is left.
        expected = max(hr_std, 0.0)
        assert hr.std() == pytest.approx(expected, abs=0.35 * max(expected, 1.0))


def test_ectopic_fraction_is_honoured() -> None:
    for fraction in (0.0, 0.05, 0.2, 0.5):
        s = synth(seed=11, ectopic_fraction=fraction)
        s.generate(360 * 1800)
        _, kinds = beats(s)
        assert len(kinds) > 2000
        assert (kinds == "V").mean() == pytest.approx(fraction, abs=0.03)
        # A PVC is always followed by a conducted beat, never by another PVC.
        assert not np.any((kinds[1:] == "V") & (kinds[:-1] == "V"))


def test_pvc_is_premature_with_compensatory_pause() -> None:
    fs, hr = 360.0, 75.0
    s = synth(fs=fs, heart_rate_bpm=hr, hr_std_bpm=0.0, ectopic_fraction=0.2)
    s.generate(int(fs * 300))
    r, kinds = beats(s)
    rr = np.diff(r) / fs
    sinus = 60.0 / hr
    v = np.flatnonzero(kinds == "V")
    v = v[(v > 0) & (v < len(r) - 1)]
    before, after = rr[v - 1], rr[v]
    assert np.all((before >= 0.6 * sinus - 0.01) & (before <= 0.7 * sinus + 0.01))
    np.testing.assert_allclose(before + after, 2 * sinus, atol=2.5 / fs)
    normal = (kinds[1:] == "N") & (kinds[:-1] == "N")
    np.testing.assert_allclose(rr[normal], sinus, atol=1.5 / fs)


def test_pvc_is_wide_and_has_no_p_wave() -> None:
    fs = 500.0
    # At 40 bpm the beat before a PVC has finished its T wave when the PVC comes, so the
    # window where a P wave would be is clean.
    s = synth(fs=fs, heart_rate_bpm=40, hr_std_bpm=0.0, noise_mv=0.0, ectopic_fraction=0.2)
    x = s.generate(int(fs * 300))
    r, kinds = beats(s)
    r, kinds = r[2:-2], kinds[2:-2]

    def half_width(i: int) -> float:
        half = x[i] - 0.5 * (x[i] - x[i - int(0.3 * fs)])
        return (x[i - int(0.2 * fs) : i + int(0.2 * fs)] > half).sum() / fs

    def p_bump(i: int) -> float:
        seg = x[i - int(0.32 * fs) : i - int(0.16 * fs)]
        return float(seg.max() - seg.min())

    n_idx, v_idx = r[kinds == "N"], r[kinds == "V"]
    assert len(v_idx) > 10
    n_width = np.median([half_width(i) for i in n_idx])
    v_width = np.median([half_width(i) for i in v_idx])
    assert v_width > 1.8 * n_width
    assert min(p_bump(i) for i in n_idx) > 0.15
    assert max(p_bump(i) for i in v_idx) < 0.08


def test_noise_level() -> None:
    clean = synth(seed=4, noise_mv=0.0).generate(36_000)
    noisy = synth(seed=4, noise_mv=0.1).generate(36_000)
    assert np.std(noisy - clean) == pytest.approx(0.1, rel=0.05)


def test_baseline_wander_is_mild() -> None:
    fs = 360.0
    s = synth(noise_mv=0.0, ectopic_fraction=0.0)
    x = s.generate(int(fs * 60))
    r, _ = beats(s)
    # The level before each P wave follows the breathing: 0.05-0.1 mV, not flat, not more.
    level = x[r[1:] - int(0.4 * fs)]
    assert 0.05 <= (level.max() - level.min()) / 2 <= 0.12


def test_spec_overrides_and_defaults() -> None:
    base = SimulatorConfig(noise_mv=0.03, seed=9)
    assert parse_sim_spec("sim", base) == base
    cfg = parse_sim_spec("sim?hr=110&hr_std=3&noise=0.05&ectopic=0.2&fs=250&seed=1", base)
    assert (cfg.heart_rate_bpm, cfg.hr_std_bpm, cfg.noise_mv) == (110.0, 3.0, 0.05)
    assert (cfg.ectopic_fraction, cfg.fs, cfg.seed) == (0.2, 250.0, 1)
    partial = parse_sim_spec("sim?hr=50", base)
    assert partial.heart_rate_bpm == 50.0 and partial.noise_mv == 0.03 and partial.seed == 9
    assert parse_sim_spec("sim?heart_rate_bpm=80", base).heart_rate_bpm == 80.0


@pytest.mark.parametrize(
    "spec, names",
    [
        ("sim?hr=abc", "'hr'"),
        ("sim?hr=500", "'hr'"),
        ("sim?ectopic=0.9", "'ectopic'"),
        ("sim?fs=10", "'fs'"),
        ("sim?seed=1.5", "'seed'"),
        ("sim?bpm=70", "'bpm'"),
        ("sim?hr=70&hr=80", "'hr'"),
        ("sim?noise=", "'noise'"),
        ("sim?hr", "key=value"),
        ("simulator", "not a simulator spec"),
    ],
)
def test_bad_spec_names_the_parameter(spec: str, names: str) -> None:
    with pytest.raises(SourceError) as err:
        parse_sim_spec(spec, SimulatorConfig())
    assert names in str(err.value)


async def test_source_yields_contiguous_chunks_at_speed_0() -> None:
    cfg = SimulatorConfig(fs=250.0, seed=3)
    replay = ReplayConfig(speed=0, chunk_s=0.1)
    src = SimulatorSource(cfg, replay, stream="bed1", spec="sim?fs=250&seed=3")
    assert (src.stream, src.spec, src.fs, src.lead) == ("bed1", "sim?fs=250&seed=3", 250.0, "sim")
    got = []
    async for chunk in src.chunks():
        got.append(chunk)
        if len(got) == 300:  # two minutes of signal
            break
    assert [c.start for c in got] == [25 * i for i in range(300)]
    for c in got:
        assert c.samples.shape == (25, 1) and c.samples.dtype == np.float32
        assert c.stream == "bed1" and c.fs == 250.0 and c.channels == ("sim",)
    joined = np.concatenate([c.samples[:, 0] for c in got])
    np.testing.assert_array_equal(joined, ECGSynth(cfg).generate(len(joined)))
    assert list(src.synth.r_peaks) and max(src.synth.r_peaks) < len(joined)


async def test_source_is_paced_at_speed_1() -> None:
    src = SimulatorSource(SimulatorConfig(seed=2), ReplayConfig(speed=1, chunk_s=0.05))
    t0 = time.monotonic()
    n = 0
    async for _ in src.chunks():
        n += 1
        if n == 5:
            break
    # The fifth chunk ends at 0.25 s of signal and is not delivered before then.
    assert time.monotonic() - t0 >= 0.24
