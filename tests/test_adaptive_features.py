"""Patient-adaptive beat inputs (RR against the patient's recent rhythm, the QRS against the
patient's own running dominant-beat template, in the first lead and the second): the live
pipeline computes exactly what training computes from the same record, and a one-lead
stream gets the second lead's inputs as unknown (NaN); they separate V from N on a record no model saw;
malformed and short input gives neutral values or a clear error, never a crash."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from ecgmon.chunk import Chunk
from ecgmon.config import Config, DataConfig
from ecgmon.models.datasets import filtered_channel, load_beats
from ecgmon.monitor.dsp.beat_features import (
    ADAPTIVE_FEATURES,
    BEAT_FEATURES,
    BEFORE,
    FIRST_LEAD2,
    FS_MODEL,
    LEAD2_FEATURES,
    RR_FEATURES,
    AdaptiveFeatures,
    adaptive_features,
    beat_rr_features,
    beat_rr_row,
    lead2_features,
)
from ecgmon.monitor.dsp.beat_template import aligned_correlation
from ecgmon.monitor.model_set import load_models
from ecgmon.monitor.pipeline import StreamPipeline
from ecgmon.replay.records import load_record
from ecgmon.schema import BeatMessage

MINUTES = 4


@pytest.fixture(scope="module")
def adaptive_model(data_dir):
    """The shipped beat model's card asking for every input, adaptive ones included (only the
    jobs' inputs are looked at here, the network is never run)."""
    models, errors = load_models(Config().models)
    assert errors == []
    return dataclasses.replace(models["beat"], rr_features=BEAT_FEATURES)


def _live(record, model, chunk: int, leads: int = 2):
    pipeline = StreamPipeline("s", record.fs, "MLII", Config(), model, None)
    signal = record.signal[: MINUTES * 60 * int(record.fs), :leads]
    jobs = []
    for pos in range(0, signal.shape[0], chunk):
        pipeline.feed(Chunk("s", record.fs, record.channels[:leads], pos, signal[pos : pos + chunk].copy()))
        jobs.extend(pipeline.take_jobs())
    jobs.extend(pipeline.finish())
    return jobs


@pytest.mark.parametrize("spec", ["mitdb:119", "svdb:800"])
def test_live_adaptive_features_equal_the_offline_ones(spec, data_dir, adaptive_model):
    # 119: bigeminy, a third of its beats V; svdb 800 at 128 Hz, resampled to the model rate.
    record = load_record(spec, DataConfig(folder=str(data_dir)))
    jobs = _live(record, adaptive_model, 256)
    messages = [m for j in jobs for m in j.finish(None) if isinstance(m, BeatMessage)]
    r_native = np.array([m.sample for m in messages])
    assert len(jobs) == len(messages) > 200
    # Offline, as training does it: the whole record filtered and resampled, R at the model rate.
    n = round(MINUTES * 60 * FS_MODEL)
    signal, signal2 = filtered_channel(record, 0)[:n], filtered_channel(record, 1)[:n]
    r = np.round(r_native * FS_MODEL / record.fs).astype(np.int64)
    rr = beat_rr_features(r_native, record.fs)  # the live RR (at the stream's own rate)
    offline = np.hstack([adaptive_features(signal, r, rr), lead2_features(signal2, r, rr)])
    k = len(RR_FEATURES)
    checked = 0
    for i, job in enumerate(jobs[:-1]):  # the last beat has no successor live nor offline alike
        if job.inputs is None:
            continue
        _, features = job.inputs
        np.testing.assert_allclose(features[:k], rr[i], rtol=1e-5)
        np.testing.assert_allclose(features[k:], offline[i], rtol=1e-4, atol=1e-4)
        checked += 1
    assert checked > 200
    # The second lead is not a copy of the first: its template inputs are its own.
    assert not np.allclose(offline[:, FIRST_LEAD2 - k :], offline[:, 2:8], atol=0.01)
    # The template did form: most beats are compared with it, not given the neutral values.
    assert np.mean(offline[:, ADAPTIVE_FEATURES.index("tpl_corr")] < 1.0) > 0.9


def test_a_one_lead_stream_gets_no_second_lead_inputs(data_dir, adaptive_model):
    # A one-lead source (most serial and MQTT devices): the second lead's inputs are unknown
    # (NaN, which the models were trained to meet), the rest as with two leads.
    record = load_record("mitdb:119", DataConfig(folder=str(data_dir)))
    one, two = _live(record, adaptive_model, 360, leads=1), _live(record, adaptive_model, 360)
    rows = [(a.inputs[1], b.inputs[1]) for a, b in zip(one, two) if a.inputs is not None]
    assert len(one) == len(two) and len(rows) > 200
    for a, b in rows:
        assert np.isnan(a[FIRST_LEAD2:]).all() and np.isfinite(b[FIRST_LEAD2:]).all()
        np.testing.assert_array_equal(a[:FIRST_LEAD2], b[:FIRST_LEAD2])
    assert len(LEAD2_FEATURES) == len(BEAT_FEATURES) - FIRST_LEAD2


def test_template_features_separate_v_from_n_on_an_unseen_record(data_dir):
    # mitdb 119 is in no fold of this test: no model at all, only the patient's own template.
    beats = load_beats(["119"], DataConfig(folder=str(data_dir)), channel="MLII", progress=False)
    corr = beats.rr[:, BEAT_FEATURES.index("tpl_corr")]
    width = beats.rr[:, BEAT_FEATURES.index("tpl_width_ratio")]
    n, v = beats.labels == 0, beats.labels == 2
    assert n.sum() > 1000 and v.sum() > 400
    assert np.median(corr[n]) > 0.95 and np.median(corr[v]) < 0.7
    assert np.median(width[v]) > 1.3 * np.median(width[n])
    assert beats.rr.shape[1] == len(BEAT_FEATURES)


def test_short_and_malformed_input():
    signal = np.sin(np.arange(4000) / 20.0).astype(np.float32)
    # No beats, one beat: no intervals, nothing learnt, neutral values.
    assert adaptive_features(signal, np.zeros(0, np.int64), np.zeros((0, 7))).shape == (0, len(ADAPTIVE_FEATURES))
    one = adaptive_features(signal, np.array([500]), beat_rr_features(np.array([500]), FS_MODEL))
    np.testing.assert_array_equal(one, [[1, 1, 1, 0, 1, 1, 1, 1, 0]])
    # Beats whose window does not fit, NaN samples, a flat line: neutral, finite, no template.
    r = np.array([10, 400, 800, 1200, 1600, 2000, 2400, 3990])
    rr = beat_rr_features(r, FS_MODEL)
    for x in (np.full(4000, np.nan, np.float32), np.zeros(4000, np.float32)):
        out = adaptive_features(x, r, rr)
        assert np.isfinite(out).all()
        np.testing.assert_array_equal(out[:, 2:8], np.tile([1, 0, 1, 1, 1, 1], (r.size, 1)))
    tracker = AdaptiveFeatures()
    assert np.isfinite(tracker.step(None, np.full(7, np.nan))).all()  # no interval, no window
    with pytest.raises(ValueError):
        adaptive_features(signal, r, rr[:3])  # one RR row per beat
    with pytest.raises(ValueError):
        adaptive_features(signal, r.reshape(2, 4), rr)


@pytest.mark.parametrize("spec", ["mitdb:203", "svdb:800"])
def test_one_rr_row_is_the_table_row_bit_for_bit(spec, data_dir):
    # The live pipeline computes one row per beat (beat_rr_row); training the whole table
    # (beat_rr_features). Real beats (203: ectopy and AF; svdb 800 at 128 Hz), a history cut
    # short as the live one is, the first beats, windows so short that beats leave them, and
    # too few beats: the same float32 values, NaN included.
    record = load_record(spec, DataConfig(folder=str(data_dir)))
    r, fs = np.unique(record.ann_samples)[:700], record.fs
    for beats, window_s in ((r, 300.0), (r[137:420], 300.0), (r[:40], 3.0), (r[:1], 300.0)):
        table = beat_rr_features(beats, fs, record_window_s=window_s)
        for i in range(beats.size):
            row = beat_rr_row(beats, fs, i, record_window_s=window_s)
            assert row.dtype == table.dtype and np.array_equal(row, table[i], equal_nan=True), (spec, i)
    with pytest.raises(ValueError):
        beat_rr_row(np.array([10, 10, 20]), fs, 1)


def test_aligned_correlation_is_numpys_strided_formulation():
    # The template comparison cuts its shifted windows by index; the same floats as numpy's
    # own sliding-window view and means, on real-looking and degenerate (flat) stretches.
    rng = np.random.default_rng(0)
    for segment, reference in (
        (rng.normal(size=112), rng.normal(size=90)),
        (np.sin(np.arange(40) / 3.0), np.sin(np.arange(30) / 3.0 + 0.4)),
        (np.r_[np.zeros(50), rng.normal(size=62)], rng.normal(size=90)),
        (np.ones(112), rng.normal(size=90)),
    ):
        views = np.lib.stride_tricks.sliding_window_view(segment, reference.size)
        v = views - views.mean(axis=1, keepdims=True)
        t = reference - reference.mean()
        denom = np.sqrt((v * v).sum(axis=1) * (t * t).sum())
        with np.errstate(invalid="ignore", divide="ignore"):
            corr = np.where(denom > 0, (v @ t) / denom, 0.0)
        assert aligned_correlation(segment, reference) == (float(corr.max()), int(np.argmax(corr)))
