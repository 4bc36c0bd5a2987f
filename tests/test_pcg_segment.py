"""Heart-sound cycle segmentation (monitor/dsp/pcg_segment.py) on real pcg2016 recordings: the
cycle it finds, the order of the states, the features' indifference to a stethoscope's gain and
colour (what lets them carry over to a device never trained on), and short or silent audio."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from scipy import signal

from ecgmon.monitor.dsp import pcg_segment as P

RECORDINGS = ["training-a/a0001", "training-b/b0001", "training-d/d0001", "training-e/e00001"]


def read(data_dir: Path, rec: str) -> np.ndarray:
    x, fs = sf.read(data_dir / "pcg2016" / f"{rec}.flac", dtype="float32")
    assert fs == P.FS
    return x


def test_a0001_cycles_follow_the_heart(data_dir: Path) -> None:
    x = read(data_dir, "training-a/a0001")
    y, F, seg = P.segment(x)
    assert F.shape == (len(x) // 40, 4)
    assert 0.9 <= seg.cycle_s <= 1.05  # about 61 bpm: the envelope's autocorrelation peak
    cycles = seg.cycles()
    # 35.7 s at ~0.98 s a cycle: nearly every cycle complete, none invented
    assert 30 <= len(cycles) <= 37
    rr = np.diff([c[0] for c in cycles]) / P.FEATURE_FS
    assert np.median(rr) == pytest.approx(seg.cycle_s, abs=0.04)
    for a, s, b, d, e in cycles:
        durs = np.array([s - a, b - s, d - b, e - d]) / P.FEATURE_FS
        assert 0.05 <= durs[0] <= 0.2 and 0.05 <= durs[2] <= 0.2  # S1, S2: Springer's limits
        assert durs[1] < durs[3]  # systole shorter than diastole at this rate
    # the states only ever step S1 -> systole -> S2 -> diastole -> S1
    changes = np.flatnonzero(np.diff(seg.states) != 0)
    steps = (seg.states[changes + 1] - seg.states[changes]) % 4
    assert np.all(steps == 1)
    # S1 and S2 are where the sound is: the envelope there is well above systole and diastole
    hom = F[:, 0]
    loud = hom[(seg.states == P.S1) | (seg.states == P.S2)].mean()
    quiet = hom[(seg.states == P.SYSTOLE) | (seg.states == P.DIASTOLE)].mean()
    assert loud - quiet > 1.0


@pytest.mark.parametrize("rec", RECORDINGS)
def test_features_ignore_the_stethoscope_gain_and_colour(data_dir: Path, rec: str) -> None:
    x = read(data_dir, rec)
    fx, sx = P.recording_features(x, None)
    assert fx.shape == (len(P.FEATURE_NAMES),) and np.isfinite(fx).all()
    # another gain: the same segmentation, the same ratios
    fg, sg = P.recording_features((0.1 * x).astype(np.float32), None)
    assert np.array_equal(sx.states, sg.states)
    assert np.max(np.abs(fx - fg)) < 0.05
    # another colour: a first-order 150 Hz high-pass mixed in, then a gain (a diaphragm against a bell)
    hp = signal.butter(1, 150, btype="highpass", fs=P.FS, output="sos")
    y = (0.2 * (0.3 * x + signal.sosfilt(hp, x))).astype(np.float32)
    fy, sy = P.recording_features(y, None)
    assert np.mean(sx.states == sy.states) >= 0.95
    f, pxx = signal.welch(x, fs=P.FS, nperseg=512)
    _, pyy = signal.welch(y, fs=P.FS, nperseg=512)
    edges = P.CELL_EDGES
    shift = [np.log(pyy[(f >= lo) & (f < hi)].sum() / pxx[(f >= lo) & (f < hi)].sum()) for lo, hi in zip(edges[:-1], edges[1:])]
    assert np.ptp(shift) > 2.0  # the plain band levels move by more than 2 nats across the bands...
    cells = np.abs(fx[P.STATE_FEATURES:] - fy[P.STATE_FEATURES:])
    assert np.median(cells) < 0.1  # ...the cycle-aligned cells hardly at all


def test_short_and_silent_audio(data_dir: Path) -> None:
    x = read(data_dir, "training-a/a0001")
    features, seg = P.recording_features(x[: int(2.0 * P.FS)], None)
    assert seg is None and np.isnan(features).all()
    with pytest.raises(ValueError, match="too short"):
        P.segment(x[: int(1.0 * P.FS)])
    features, seg = P.recording_features(np.zeros(int(10 * P.FS), np.float32), None)
    assert seg is not None and np.isnan(features).all()  # no heart, no cycle: no verdict


def test_feature_names_match_the_vector() -> None:
    assert len(P.FEATURE_NAMES) == P.STATE_FEATURES + 84 == len(set(P.FEATURE_NAMES))


def test_held_out_training_d_keeps_its_figures(data_dir: Path) -> None:
    """Attempt I's fold without training-d (rule and round-1 emission learnt on a, b, e by
    bench/pcg_cycles.py --fold-rule, tests/pcg_cycles_rule_d.json), applied to every d recording
    as a new device would be: features standardised on d's own recordings, score calibrated on
    them (no label read), then judged. Measured: Se 0.381, Sp 0.800, MAcc 0.590, coverage 0.84,
    AUC 0.659; the bounds leave room for harmless changes, not for a broken segmenter."""
    import json

    from ecgmon.models.pcg_data import database_folders, load_pcg
    from ecgmon.scores import auc

    rule = json.loads((Path(__file__).parent / "pcg_cycles_rule_d.json").read_text())
    data = load_pcg(database_folders(data_dir / "pcg2016" / "training-d"), lambda s: None, progress=False)
    emission = P.Emission(np.array(rule["emission"]))
    X = np.array([P.recording_features(data.audio(i), emission)[0] for i in range(len(data))])
    cols = [f["index"] for f in rule["features"]]
    assert [P.FEATURE_NAMES[c] for c in cols] == [f["name"] for f in rule["features"]]
    sign = np.array([f["sign"] for f in rule["features"]], float)
    med = np.nanmedian(X, 0)
    q75, q25 = np.nanpercentile(X, [75, 25], 0)
    Z = np.clip((X - med) / np.maximum(q75 - q25, 1e-9), -5, 5)
    s = (Z[:, cols] * sign).mean(1)
    q25, m, q75 = np.percentile(s, [25, 50, 75])
    z = (s - m) / (q75 - q25)
    y = data.labels
    called = np.abs(z - rule["z_threshold"]) >= rule["z_margin"]
    ab = z >= rule["z_threshold"]
    se = np.sum(called & ab & (y == 1)) / np.sum(called & (y == 1))
    sp = np.sum(called & ~ab & (y == 0)) / np.sum(called & (y == 0))
    assert called.mean() >= 0.7
    assert sp >= 0.6 and (se + sp) / 2 >= 0.56
    assert auc(y, z) >= 0.62
