"""Model datasets: AAMI labels, causal RR features, beat windows from the daemon's filter,
10-second segments, and record-wise splits, on real MIT-BIH records."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from scipy.signal import resample_poly
import wfdb

from ecgmon.config import DataConfig
from ecgmon.models.aami import CLASSES, DS1, DS2, PACED, aami_class, aami_index
from ecgmon.models.augment import centre_crop
from ecgmon.models.datasets import (
    SEGMENT,
    SEGMENT_STEP,
    BeatSet,
    assert_disjoint,
    leave_records_out,
    load_beats,
    load_segments,
    record_folds,
)
from ecgmon.monitor.dsp.beat_features import (
    AFTER,
    BEAT_FEATURES,
    BEFORE,
    FS_MODEL,
    WINDOW,
    beat_rr_features,
    beat_window,
    beat_windows,
    normalise_rr,
    rr_features,
)
from ecgmon.monitor.dsp.filters import ECGFilter
from ecgmon.replay.records import load_record
from ecgmon.replay.reference import vf_episodes


@pytest.fixture(scope="module")
def data(data_dir: Path) -> DataConfig:
    # Module-scoped fixtures run before the per-test ECGMON_DATA fixture: name the folder.
    return DataConfig(folder=str(data_dir))


@pytest.fixture(scope="module")
def beats(data: DataConfig) -> BeatSet:
    return load_beats(["100", "119", "mitdb:207", "208"], data)


@pytest.fixture(scope="module")
def segments(data: DataConfig):
    return load_segments(["100", "207", "208"], data, progress=False)


# --------------------------------------------------------------------------- AAMI


def test_aami_mapping_of_symbols() -> None:
    assert CLASSES == ("N", "S", "V", "F", "Q")
    expected = {
        "N": "NLRej", "S": "AaJS", "V": "VE", "F": "F", "Q": "/fQ",
    }
    for cls, symbols in expected.items():
        for s in symbols:
            assert aami_class(s) == cls, s
            assert aami_index(s) == CLASSES.index(cls)
    for s in ["!", "+", "~", "|", "[", "]", "x", '"', "Z"]:
        assert aami_class(s) is None
        assert aami_index(s) == -1


def test_de_chazal_record_lists(data_dir: Path) -> None:
    assert len(DS1) == len(DS2) == 22
    assert not set(DS1) & set(DS2) and not set(PACED) & (set(DS1) | set(DS2))
    assert len(set(DS1) | set(DS2) | set(PACED)) == 48
    assert "232" in DS2 and "232" not in DS1
    # DS2 is withheld: only 100 of it is in the shared data.
    present = {p.stem for p in (data_dir / "mitdb").glob("*.hea")}
    assert set(DS1) <= present
    assert set(DS2) & present == {"100"}


def test_record_119_is_normal_and_ventricular_only(beats: BeatSet, data: DataConfig) -> None:
    rec = load_record("mitdb:119", data)
    classes = {aami_class(s) for s in rec.ann_symbols} - {None}
    assert classes == {"N", "V"}
    counts = beats.of_records(["119"]).class_counts()
    # The atr file holds 1543 N and 444 V; the first and last beats are dropped.
    assert counts["V"] == 444
    assert 1538 <= counts["N"] <= 1543
    assert counts["S"] == counts["F"] == counts["Q"] == 0


def test_record_208_has_fusion_beats(beats: BeatSet) -> None:
    counts = beats.of_records(["208"]).class_counts()
    assert 370 <= counts["F"] <= 373  # 373 in the atr file, less edge beats
    assert counts["V"] >= 990


# --------------------------------------------------------------------------- RR features


def test_rr_features_by_hand() -> None:
    fs = 100.0
    r = np.array([0, 100, 180, 300, 400])
    rr = rr_features(r, fs, local_n=2, record_window_s=2.5)
    d = [1.0, 0.8, 1.2, 1.0]
    np.testing.assert_allclose(rr[:, 0], [d[0], *d])  # first beat borrows its post-RR
    np.testing.assert_allclose(rr[:, 1], [*d, d[-1]])  # last beat repeats its pre-RR
    np.testing.assert_allclose(rr[:, 2], [1.0, 1.0, 0.9, 1.0, 1.1])
    # The long-run window (2.5 s) holds the pre-RRs of beats after r[i] - 250 samples.
    np.testing.assert_allclose(rr[:, 3], [1.0, 1.0, 0.9, 1.0, (0.8 + 1.2 + 1.0) / 3])
    np.testing.assert_allclose(normalise_rr(rr), rr[:, :3] / rr[:, 3:])
    full = beat_rr_features(r, fs, local_n=2, record_window_s=2.5)
    assert full.shape == (5, 7) and full.dtype == np.float32


def test_rr_features_edge_cases() -> None:
    assert np.isnan(rr_features(np.array([5]), 360.0)).all()
    assert rr_features(np.array([], dtype=np.int64), 360.0).shape == (0, 4)
    with pytest.raises(ValueError, match="increasing"):
        rr_features(np.array([10, 10, 20]), 360.0)


def test_rr_features_are_causal_except_next_rr() -> None:
    rng = np.random.default_rng(3)
    r = np.cumsum(rng.integers(100, 700, 2000))  # about 20 minutes at 360 Hz
    full = rr_features(r, 360.0)
    for m in [2, 3, 11, 12, 500, 1999]:
        part = rr_features(r[:m], 360.0)
        # Everything of the first m beats stays, except the post-RR the last one guessed.
        np.testing.assert_array_equal(part[:-1], full[: m - 1])
        np.testing.assert_array_equal(part[-1, [0, 2, 3]], full[m - 1, [0, 2, 3]])
    # And the long-run average really is a 5-minute window, not the whole record.
    late = np.searchsorted(r, r[-1] - 300 * 360, side="right")
    assert full[-1, 3] == pytest.approx(np.mean(np.diff(r)[late - 1 :]) / 360.0)


# --------------------------------------------------------------------------- windows


def test_beat_window_constants_and_edges() -> None:
    assert FS_MODEL == 360 and (BEFORE, AFTER, WINDOW) == (90, 162, 252)
    x = np.arange(1000.0)
    np.testing.assert_array_equal(beat_window(x, 500), x[410:662])
    assert beat_window(x, 500)[BEFORE] == 500
    assert beat_window(x, 89) is None and beat_window(x, 90) is not None
    assert beat_window(x, 838) is not None and beat_window(x, 839) is None
    r = np.array([10, 90, 500, 838, 900])
    windows, fits = beat_windows(x, r)
    assert fits.tolist() == [False, True, True, True, False]
    for w, rr in zip(windows, r[fits]):
        np.testing.assert_array_equal(w, beat_window(x, rr))


def test_windows_are_slices_of_the_causal_filter_output(beats: BeatSet, data: DataConfig) -> None:
    rec = load_record("mitdb:119", data)
    whole = ECGFilter(rec.fs)(rec.signal[:, 0])
    # The pipeline filters chunk by chunk: same output.
    f = ECGFilter(rec.fs)
    chunked = np.concatenate([f(c) for c in np.array_split(rec.signal[:, 0], 900)])
    np.testing.assert_allclose(chunked, whole, atol=1e-9)
    mine = beats.of_records(["119"])
    assert mine.windows.shape[1] == WINDOW and mine.windows.dtype == np.float32
    for i in [0, 1, len(mine) // 2, len(mine) - 1]:
        r = int(mine.samples[i])
        np.testing.assert_allclose(mine.windows[i], whole[r - BEFORE : r + AFTER], atol=1e-6)
    # Causal: the signal after a window's end changes nothing in it.
    r = int(mine.samples[100])
    early = ECGFilter(rec.fs)(rec.signal[: r + AFTER, 0])
    np.testing.assert_allclose(mine.windows[100], early[r - BEFORE :], atol=1e-6)


def test_a_margin_widens_each_window_around_the_same_r(beats: BeatSet, data: DataConfig) -> None:
    wide = load_beats(["119"], data, progress=False, margin=5)
    mine = beats.of_records(["119"])
    assert wide.windows.shape[1] == WINDOW + 10
    # Same beats (none of 119's sits within 5 samples of a window's reach past an end).
    np.testing.assert_array_equal(wide.samples, mine.samples)
    np.testing.assert_array_equal(centre_crop(wide.windows, 5), mine.windows)


def test_beats_in_vf_episodes_are_dropped(beats: BeatSet, data: DataConfig) -> None:
    rec = load_record("mitdb:207", data)
    episodes = vf_episodes(rec.ann_samples, rec.ann_symbols, rec.n_samples)
    assert len(episodes) == 6
    s = beats.of_records(["207"]).samples
    for start, end in episodes:
        assert not ((s >= start) & (s <= end)).any()
    assert len(s) > 1800
    assert set(beats.records.tolist()) == {"100", "119", "207", "208"}
    assert beats.rr.shape == (len(beats), len(BEAT_FEATURES)) and not np.isnan(beats.rr).any()
    assert beats.labels.dtype == np.int64 and beats.samples.dtype == np.int64


def test_a_record_at_another_rate_is_resampled(tmp_path: Path, data: DataConfig, beats: BeatSet) -> None:
    """Record 100 written at 250 Hz: same beats, windows at 360 Hz close to the native ones."""
    rec = load_record("mitdb:100", data)
    raw = rec.signal[: 360 * 120].astype(np.float64)  # two minutes
    x250 = resample_poly(raw, 25, 36, axis=0)
    wfdb.wrsamp("r250", fs=250, units=["mV", "mV"], sig_name=list(rec.channels),
                p_signal=x250, fmt=["16", "16"], write_dir=str(tmp_path))
    keep = rec.ann_samples < raw.shape[0]
    samples = np.round(rec.ann_samples[keep] * 250 / 360).astype(np.int64)
    symbols = [s for s, k in zip(rec.ann_symbols, keep) if k]
    wfdb.wrann("r250", "atr", samples, symbol=symbols, write_dir=str(tmp_path))
    slow = load_beats([str(tmp_path / "r250.hea")], data, progress=False)
    native = beats.of_records(["100"])
    native = native.take(native.samples < raw.shape[0] - AFTER)
    assert slow.records[0] == "r250"
    assert abs(len(slow) - len(native)) <= 1
    assert slow.class_counts()["S"] == native.class_counts()["S"]
    # Same beats, same place (within a sample of rounding), same shape.
    n = min(len(slow), len(native))
    assert np.abs(slow.samples[:n] - native.samples[:n]).max() <= 1
    corr = [np.corrcoef(a, b)[0, 1] for a, b in zip(slow.windows[10:n - 10], native.windows[10:n - 10])]
    assert np.median(corr) > 0.95


def test_ds1_class_counts_match_the_literature(data: DataConfig) -> None:
    counts = load_beats(list(DS1), data, progress=False).class_counts()
    # de Chazal et al. 2004, table II (DS1); edge and VF-episode beats make ours a little fewer.
    literature = {"N": 45866, "S": 944, "V": 3788, "F": 415}
    for cls, n in literature.items():
        assert counts[cls] == pytest.approx(n, rel=0.03), (cls, counts)
    assert 0 < counts["Q"] < 20  # 8 in the literature


# --------------------------------------------------------------------------- segments


def test_segments_shape_and_overlap(segments) -> None:
    assert SEGMENT == 3600 and SEGMENT_STEP == 1800
    hundred = segments.of_records(["100"])
    assert hundred.windows.shape == ((650000 - SEGMENT) // SEGMENT_STEP + 1, SEGMENT)
    assert hundred.windows.dtype == np.float32
    np.testing.assert_array_equal(np.diff(hundred.starts), SEGMENT_STEP)
    w = hundred.windows
    np.testing.assert_array_equal(w[:-1, SEGMENT_STEP:], w[1:, :SEGMENT_STEP])


def test_segments_are_cut_from_the_filtered_signal(segments, data: DataConfig) -> None:
    rec = load_record("mitdb:208", data)
    whole = ECGFilter(rec.fs)(rec.signal[:, 0])
    mine = segments.of_records(["208"])
    for i in [0, 7, len(mine) - 1]:
        s = int(mine.starts[i])
        np.testing.assert_allclose(mine.windows[i], whole[s : s + SEGMENT], atol=1e-6)


def test_segment_labels(segments, data: DataConfig) -> None:
    hundred = segments.of_records(["100"])
    assert hundred.labels.mean() < 0.2  # normal sinus rhythm, 33 A beats and one V
    assert set(hundred.rhythms.tolist()) == {"(N"}
    assert segments.of_records(["208"]).labels.mean() > 0.9  # V and F beats throughout
    # Every window reaching into one of 207's ventricular flutter episodes is abnormal.
    rec = load_record("mitdb:207", data)
    s207 = segments.of_records(["207"])
    in_vf = np.zeros(len(s207), bool)
    for start, end in vf_episodes(rec.ann_samples, rec.ann_symbols, rec.n_samples):
        in_vf |= (s207.starts < end) & (s207.starts + SEGMENT > start)
    assert in_vf.sum() >= 30
    assert s207.labels[in_vf].all()
    assert 0.25 < s207.labels.mean() < 0.6
    # In 100 (sinus rhythm throughout) exactly the windows holding an A or V beat are abnormal.
    rec100 = load_record("mitdb:100", data)
    odd = rec100.ann_samples[[aami_class(s) not in (None, "N") for s in rec100.ann_symbols]]
    starts = hundred.starts[:, None]
    holds_odd = ((starts <= odd) & (odd < starts + SEGMENT)).any(axis=1)
    np.testing.assert_array_equal(hundred.labels, holds_odd.astype(np.int64))


# --------------------------------------------------------------------------- splits


def test_leave_records_out_is_disjoint_and_deterministic() -> None:
    train, val = leave_records_out(list(DS1), 4, seed=1)
    assert len(val) == 4 and len(train) == 18
    assert sorted(train + val) == sorted(DS1)
    assert_disjoint(train, val)
    assert leave_records_out(list(reversed(DS1)), 4, seed=1) == (train, val)
    assert leave_records_out([f"mitdb:{r}" for r in DS1], 4, seed=1) == (train, val)
    others = {tuple(leave_records_out(list(DS1), 4, seed=s)[1]) for s in range(2, 8)}
    assert len(others | {tuple(val)}) > 1
    for bad in [0, 22]:
        with pytest.raises(ValueError, match="n_val"):
            leave_records_out(list(DS1), bad, seed=1)
    with pytest.raises(ValueError, match="more than once"):
        leave_records_out(["101", "mitdb:101", "106"], 1, seed=0)


def test_record_folds_partition_the_records() -> None:
    folds = record_folds(list(DS1), 5, seed=7)
    assert folds == record_folds(list(DS1), 5, seed=7)
    assert len(folds) == 5
    held = [r for _, val in folds for r in val]
    assert sorted(held) == sorted(DS1)
    for train, val in folds:
        assert_disjoint(train, val)
        assert sorted(train + val) == sorted(DS1)
        assert 4 <= len(val) <= 5


def test_assert_disjoint_catches_a_shared_record() -> None:
    assert_disjoint(DS1, DS2)
    with pytest.raises(ValueError, match="101"):
        assert_disjoint(["mitdb:101", "106"], ["101"])


def test_beat_set_selects_by_record(beats: BeatSet) -> None:
    train, val = ["100", "119"], ["207", "208"]
    a, b = beats.of_records(train), beats.of_records(val)
    assert len(a) + len(b) == len(beats)
    assert set(a.records.tolist()) == set(train) and set(b.records.tolist()) == set(val)
    assert_disjoint(a.records.tolist(), b.records.tolist())
