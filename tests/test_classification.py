"""Live classification: the windows and RR features the pipeline hands to the models are the
ones training cut from the same record; jobs finish in order into classified beats and
segments; the shipped models classify a replay."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
from scipy.signal import resample_poly

from ecgmon.chunk import Chunk
from ecgmon.config import Config, DataConfig
from ecgmon.models.datasets import filtered_channel
from ecgmon.monitor.classification import MAX_WAIT_S
from ecgmon.monitor.dsp.beat_features import BEAT_FEATURES, adaptive_features, beat_rr_features, lead2_features
from ecgmon.monitor.dsp.ring_buffer import ModelRateWindows, RingBuffer
from ecgmon.monitor.model_set import load_models, model_path
from ecgmon.monitor.pipeline import StreamPipeline
from ecgmon.evaluate.record_run import run_jobs, run_record
from ecgmon.replay.records import load_record
from ecgmon.schema import BeatMessage, SegmentMessage

MINUTES = 3


@pytest.fixture(scope="module")
def shipped():
    models, errors = load_models(Config().models)
    assert errors == []
    return models


@pytest.fixture(scope="module")
def record100(data_dir):
    # Module scope runs before the autouse ECGMON_DATA fixture: name the folder here.
    return load_record("mitdb:100", DataConfig(folder=str(data_dir)))


def test_ring_buffer_keeps_the_newest_samples_by_absolute_index():
    ring = RingBuffer(10)
    ring.extend(np.arange(7, dtype=np.float32))
    ring.extend(np.arange(7, 12, dtype=np.float32))
    assert ring.start == 2 and ring.end == 12
    np.testing.assert_array_equal(ring.get(2, 12), np.arange(2, 12))
    assert ring.get(1, 5) is None  # already overwritten
    assert ring.get(10, 13) is None  # not yet here
    ring.extend(np.arange(12, 40, dtype=np.float32))  # longer than the ring
    np.testing.assert_array_equal(ring.get(30, 40), np.arange(30, 40))


@pytest.mark.parametrize("fs", [250.0, 500.0, 1000.0])
def test_windows_at_the_model_rate_match_resampling_the_whole_stream(fs):
    rng = np.random.default_rng(1)
    x = np.cumsum(rng.normal(size=int(fs * 20))).astype(np.float32) * 0.01
    windows = ModelRateWindows(fs, 360.0)
    whole = resample_poly(x.astype(np.float64), windows.up, windows.down)
    ring = RingBuffer(len(x))
    ring.extend(x)
    for k0 in (400, 1234, 5000):
        cut = windows.cut(ring, k0, 252)
        assert cut is not None
        np.testing.assert_allclose(cut, whole[k0 : k0 + 252], atol=1e-4)
    assert windows.cut(ring, len(whole), 252) is None


def _jobs(record, config: Config, models, chunk: int):
    pipeline = StreamPipeline("s", record.fs, "MLII", config, models["beat"], None)
    signal = record.signal[: MINUTES * 60 * int(record.fs)]  # both leads, as a replay gives them
    beats, jobs = [], []
    for pos in range(0, signal.shape[0], chunk):
        pipeline.feed(Chunk("s", record.fs, record.channels, pos, signal[pos : pos + chunk].copy()))
        jobs.extend(pipeline.take_jobs())
    jobs.extend(pipeline.finish())
    return pipeline, jobs


def test_live_beat_inputs_equal_the_training_inputs(record100, shipped):
    config = Config()
    _, jobs = _jobs(record100, config, shipped, 360)
    # What the jobs were made from: the detector's beats, in order.
    messages = [m for m in run_jobs(jobs, {}) if isinstance(m, BeatMessage)]
    r = np.array([m.sample for m in messages])
    assert len(jobs) == len(messages) > 150
    offline_signal = filtered_channel(record100, 0)
    offline_rr = beat_rr_features(r, record100.fs)
    # The patient-adaptive and second-lead inputs too, as training computes them over the whole record.
    offline_rr = np.hstack([offline_rr, adaptive_features(offline_signal, r, offline_rr),
                            lead2_features(filtered_channel(record100, 1), r, offline_rr)])
    model = shipped["beat"]
    cols = [BEAT_FEATURES.index(n) for n in model.rr_features]
    for i, job in enumerate(jobs[:-1]):  # the last beat has no successor live nor offline alike
        if job.inputs is None:
            assert r[i] < model.before  # only a beat too close to the stream's start
            continue
        window, rr = job.inputs
        np.testing.assert_allclose(window, offline_signal[r[i] - model.before : r[i] - model.before + model.window],
                                   atol=1e-5)
        np.testing.assert_allclose(rr, offline_rr[i, cols], rtol=1e-4, atol=1e-5)


def test_jobs_do_not_depend_on_chunking(record100, shipped):
    config = Config()
    _, a = _jobs(record100, config, shipped, 7)
    _, b = _jobs(record100, config, shipped, 3600)
    assert len(a) == len(b)
    for ja, jb in zip(a, b):
        assert (ja.inputs is None) == (jb.inputs is None)
        if ja.inputs is not None:
            for x, y in zip(ja.inputs, jb.inputs):
                np.testing.assert_array_equal(x, y)


def test_a_beat_without_successor_is_classified_after_the_wait(record100, shipped):
    config = Config()
    fs = 360.0
    pipeline = StreamPipeline("s", fs, "MLII", config, shipped["beat"], None)
    x = record100.signal[: int(20 * fs), :1].copy()
    x[int(12 * fs):] = 0.0  # flat after 12 s: the last beats get no successor
    pos, jobs = 0, []
    while pos < x.shape[0]:
        pipeline.feed(Chunk("s", fs, ("MLII",), pos, x[pos : pos + 36]))
        jobs.extend(pipeline.take_jobs())
        pos += 36
    beats = [m for m in run_jobs(jobs, shipped) if isinstance(m, BeatMessage)]
    assert pipeline.beats == len(beats)  # none held back, though no beat follows the last
    assert beats[-1].time_s < 12.5 and beats[-1].label is not None
    assert 20 - beats[-1].time_s >= MAX_WAIT_S


def test_record_run_classifies_beats_and_segments(shipped):
    msgs = run_record("mitdb:119", Config(), shipped)
    beats = [m for m in msgs if isinstance(m, BeatMessage)]
    segments = [m for m in msgs if isinstance(m, SegmentMessage)]
    labels = Counter(b.label for b in beats)
    # 119 holds 444 ventricular premature beats in bigeminy: the beat model must see many.
    assert labels["V"] > 300 and labels["N"] > 1000
    assert sum(1 for b in beats if b.label is None) <= 2  # only edge beats go unclassified
    assert all(0.0 < b.probability <= 1.0 for b in beats if b.label)
    assert [b.sample for b in beats] == sorted(b.sample for b in beats)
    starts = np.array([s.start for s in segments])
    assert np.all(np.diff(starts) == 1800) and starts[0] == 0
    assert {s.label for s in segments} == {"normal", "abnormal"}


def test_model_settings_resolve_and_refuse_the_wrong_kind(tmp_path):
    assert model_path("beat-cnn-bilstm.pt").is_file()
    config = Config().models.model_copy(
        update={"beat": "segment-attention-cnn.pt", "segment": "", "pcg": "", "pcg_cycles": ""}
    )
    models, errors = load_models(config)
    assert models == {} and len(errors) == 1
    assert "segment model, not a beat model" in errors[0]
    bad = tmp_path / "beat.pt"
    bad.write_bytes(b"not a model")
    models, errors = load_models(config.model_copy(update={"beat": str(bad)}))
    assert models == {} and "[models] beat" in errors[0] and "\n" not in errors[0]
