"""The online R-peak detector on real MIT-BIH records: accuracy floors, any rate, any chunking."""

from __future__ import annotations

from fractions import Fraction

import numpy as np
import pytest
import wfdb
from scipy.signal import resample_poly

from ecgmon.monitor.dsp.qrs import QRSDetector
from ecgmon.evaluate.matching import score_beats
from ecgmon.replay.reference import ReferenceBeats, reference_beats

FLOOR_RECORDS = ["100", "106", "119", "208", "215"]


def _read(data_dir, record: str, seconds: float | None = None):
    path = str(data_dir / "mitdb" / record)
    sampto = None if seconds is None else int(seconds * 360)
    rec = wfdb.rdrecord(path, channels=[0], sampto=sampto)
    ann = wfdb.rdann(path, "atr", sampto=sampto)
    ref = reference_beats(ann.sample, ann.symbol, rec.sig_len)
    return rec.p_signal[:, 0], float(rec.fs), ref


def _detect(x: np.ndarray, fs: float, chunk: int):
    det = QRSDetector(fs)
    beats = []
    for i in range(0, len(x), chunk):
        beats += det.process(x[i : i + chunk])
    return beats


def _resample(x: np.ndarray, ref: ReferenceBeats, fs: float, new_fs: float):
    ratio = Fraction(int(new_fs), int(fs))
    y = resample_poly(x, ratio.numerator, ratio.denominator)
    scale = new_fs / fs
    moved = ReferenceBeats(
        np.round(ref.samples * scale).astype(np.int64),
        ref.symbols,
        [(round(a * scale), round(b * scale)) for a, b in ref.excluded],
    )
    return y, moved


@pytest.mark.parametrize("record", FLOOR_RECORDS)
def test_sensitivity_and_predictivity_floors(data_dir, record):
    x, fs, ref = _read(data_dir, record)
    beats = _detect(x, fs, 360)
    score = score_beats(ref, np.array([b.sample for b in beats]), fs)
    assert score.se >= 0.99, f"{record}: Se {score.se:.4f} ({score})"
    assert score.ppv >= 0.99, f"{record}: +P {score.ppv:.4f} ({score})"
    delays = np.array([b.detected_at - b.sample for b in beats]) / fs
    assert np.all(delays > 0), "a beat cannot be detected before its R peak"
    assert np.median(delays) <= 0.3


@pytest.mark.parametrize("new_fs", [125, 250, 500])
@pytest.mark.parametrize("record", FLOOR_RECORDS)
def test_other_sample_rates(data_dir, record, new_fs):
    x, fs, ref = _read(data_dir, record, seconds=600)
    y, moved = _resample(x, ref, fs, new_fs)
    beats = _detect(y, new_fs, int(new_fs // 4))
    score = score_beats(moved, np.array([b.sample for b in beats]), new_fs)
    assert score.se >= 0.99 and score.ppv >= 0.99, f"{record} at {new_fs} Hz: {score}"


def test_beats_do_not_depend_on_chunking(data_dir):
    x, fs, _ = _read(data_dir, "208", seconds=40)  # PVCs and couplets: search-back and T-wave paths run
    whole = _detect(x, fs, len(x))
    assert len(whole) > 40
    for chunk in (1, 7, 360):
        beats = _detect(x, fs, chunk)
        assert [(b.sample, b.detected_at) for b in beats] == [
            (b.sample, b.detected_at) for b in whole
        ], f"chunk size {chunk} changed the beats"
        np.testing.assert_allclose([b.amplitude for b in beats], [b.amplitude for b in whole])


def test_flat_line_and_noise_give_no_beats():
    fs = 360.0
    flat = np.full(int(20 * fs), 0.3)
    assert _detect(flat, fs, 36) == []
    rng = np.random.default_rng(0)
    tiny_noise = 0.001 * rng.standard_normal(int(20 * fs))
    assert _detect(tiny_noise, fs, 36) == []


@pytest.mark.parametrize("fs,noise_mv", [(360.0, 0.01), (360.0, 0.02), (128.0, 0.01), (250.0, 0.01), (500.0, 0.02)])
def test_a_stream_that_starts_in_a_pause_finds_no_beats_in_its_noise(fs, noise_mv):
    """No beat to learn from (a stream or a restarted pipeline starting in asystole): amplifier
    noise of 10-20 uV must not become beats (it did, 65 in 30 s: 'extreme tachycardia')."""
    noise = noise_mv * np.random.default_rng(2).standard_normal(int(30 * fs))
    assert _detect(noise, fs, round(fs / 10)) == []


def test_nan_samples_do_not_stop_detection(data_dir):
    x, fs, ref = _read(data_dir, "100", seconds=60)
    x = x.copy()
    x[int(10 * fs) : int(10 * fs) + 20] = np.nan
    beats = _detect(x, fs, 360)
    after = [b for b in beats if b.sample > 20 * fs]
    expected = ref.samples[ref.samples > 20 * fs]
    assert len(after) >= len(expected) - 1


def test_rejects_rates_it_was_not_built_for():
    with pytest.raises(ValueError, match="sample rate"):
        QRSDetector(50.0)


def _with_pause(x: np.ndarray, fs: float, at_s: float, length_s: float, noise_mv: float) -> np.ndarray:
    y = x.copy()
    a, b = int(at_s * fs), int((at_s + length_s) * fs)
    y[a:b] = np.median(x) + noise_mv * np.random.default_rng(1).standard_normal(b - a)
    return y


@pytest.mark.parametrize("noise_mv", [0.0, 0.02])
def test_no_false_beats_in_an_8_second_pause(data_dir, noise_mv):
    """Asystole with a little noise must stay beat-free, or it would mask the alarm."""
    x, fs, _ = _read(data_dir, "100", seconds=90)
    y = _with_pause(x, fs, 30, 8, noise_mv)
    beats = _detect(y, fs, 36)
    inside = [b for b in beats if 30.1 * fs < b.sample < 37.9 * fs]
    assert inside == []
    assert len([b for b in beats if b.sample > 39 * fs]) >= 60  # and beats come back after it


def test_recovers_after_the_signal_shrinks_tenfold(data_dir):
    x, fs, ref = _read(data_dir, "100", seconds=120)
    y = x.copy()
    y[int(60 * fs) :] = (y[int(60 * fs) :] - np.median(x)) / 10
    beats = np.array([b.sample for b in _detect(y, fs, 36)])
    late = ref.samples[ref.samples > 70 * fs]
    late_beats = beats[beats > 70 * fs]
    score = score_beats(ReferenceBeats(late, [], []), late_beats, fs)
    assert score.se >= 0.99 and score.ppv >= 0.99, score


def test_heavy_noise_never_reports_one_r_peak_twice(data_dir):
    """118 with muscle noise at 0 dB once gave two detections, 225 ms apart, of one R peak
    (the R search reaches back over the previous beat); the beats must strictly increase."""
    from ecgmon.config import Config, DataConfig
    from ecgmon.evaluate.noise_stress import NoiseStress, add_noise
    from ecgmon.replay.records import load_record

    data = DataConfig(folder=str(data_dir))
    rec = load_record("mitdb:118", data)
    noisy, _ = add_noise(rec.signal[: int(600 * rec.fs)], rec.ann_samples, rec.fs, NoiseStress("ma", 0.0), data)
    detector = QRSDetector(rec.fs, Config().detector)
    samples = [b.sample for pos in range(0, noisy.shape[0], 3600) for b in detector.process(noisy[pos : pos + 3600, 0])]
    assert len(samples) > 500
    assert np.all(np.diff(samples) > 0)
