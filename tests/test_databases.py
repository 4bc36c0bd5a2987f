"""Training on several databases: folds by record that hold out patients of each database,
per-database reports of pooled predictions, and cross-database scores (trained on the others)."""

from __future__ import annotations

import numpy as np
import pytest

from ecgmon.models.aami import DS1
from ecgmon.models.databases import cross_database, describe, per_database
from ecgmon.models.datasets import by_database, database_of, record_folds

SVDB = [f"svdb:{n}" for n in (800, 801, 802, 803, 804, 805, 806, 807, 808, 809, 810, 811)]


def test_database_of_a_record():
    assert database_of("101") == database_of("mitdb:101") == "mitdb"
    assert database_of("svdb:800") == "svdb"
    assert by_database(["svdb:801", "119", "svdb:800", "101"]) == {
        "mitdb": ["101", "119"], "svdb": ["svdb:800", "svdb:801"]}


def test_folds_over_two_databases_hold_out_each_database_in_every_fold():
    folds = record_folds(list(DS1) + SVDB, 5, 1)
    held = [r for _, val in folds for r in val]
    assert sorted(held) == sorted(list(DS1) + SVDB)  # each record held out exactly once
    for train, val in folds:
        assert not set(train) & set(val)
        assert {database_of(r) for r in val} == {"mitdb", "svdb"}
        assert 4 <= sum(database_of(r) == "mitdb" for r in val) <= 5
    # One database alone: the split it always was (the shipped cards' folds stay reproducible).
    ids = sorted(DS1)
    order = np.random.default_rng(1).permutation(len(ids))
    assert [v for _, v in record_folds(DS1, 5, 1)] == [sorted(ids[i] for i in p) for p in np.array_split(order, 5)]
    # Small databases never leave a fold empty.
    assert all(val for _, val in record_folds(["101", "119", "svdb:800", "svdb:801"], 3, 1))


def test_per_database_and_cross_database_reports():
    classes = ("N", "S", "V", "F", "Q")
    records = np.array(["101"] * 4 + ["svdb:800"] * 4)
    labels = np.array([0, 0, 2, 1, 0, 1, 1, 2])
    probs = np.eye(5)[[0, 0, 2, 0, 0, 1, 0, 0]]
    per = per_database(labels, probs, records, classes)
    assert per["mitdb"]["per_class"]["V"] == {"n": 1, "se": 1.0, "ppv": 1.0, "f1": 1.0}
    assert per["mitdb"]["per_class"]["S"]["se"] == 0.0 and per["svdb"]["per_class"]["S"]["se"] == 0.5
    assert per["svdb"]["records"] == 1 and per["mitdb"]["n"] == 4

    seen = []

    def fit(train, test):  # a stand-in model: calls everything N, remembers what it saw
        seen.append((sorted(train), sorted(test)))
        n = int(np.isin(records, test).sum())
        return labels[np.isin(records, test)], np.tile(np.eye(5)[0], (n, 1))

    cross = cross_database(["101", "svdb:800"], classes, fit)
    assert seen == [(["svdb:800"], ["101"]), (["101"], ["svdb:800"])]  # never scored on its own
    assert cross["svdb"]["trained_on"] == ["mitdb"] and cross["svdb"]["per_class"]["N"]["se"] == 1.0
    assert "S Se 0.0 +P None" in describe(cross["svdb"])
    assert cross_database(["101", "119"], classes, fit) == {}  # one database: nothing across


def test_training_over_mitdb_and_svdb_reports_each_database_and_across(tmp_path, data_dir):
    import json

    from ecgmon.chunk import Chunk
    from ecgmon.cli import main
    from ecgmon.config import Config, DataConfig
    from ecgmon.evaluate.record_run import run_jobs
    from ecgmon.monitor.dsp.beat_features import ADAPTIVE_FEATURES
    from ecgmon.monitor.model_loader import load_model
    from ecgmon.monitor.pipeline import StreamPipeline
    from ecgmon.replay.records import load_record
    from ecgmon.schema import BeatMessage

    out = tmp_path / "beat.pt"
    features = ["pre_rr_norm", "post_rr_norm", *ADAPTIVE_FEATURES]
    assert main(["train", "beat", "--records", "119", "101", "svdb:800", "svdb:801", "--folds", "2",
                 "--epochs", "1", "--majority-fraction", "0.25", "--channel", "MLII", "0",
                 "--rr-features", *features, "--out", str(out)]) == 0
    card = json.loads(out.with_suffix(".json").read_text())
    m = card["metrics"]
    assert "--channel MLII 0" in card["training"]["command"]
    assert set(m["per_database"]) == {"mitdb", "svdb"}
    assert m["per_database"]["mitdb"]["n"] + m["per_database"]["svdb"]["n"] == m["n"]
    assert m["per_database"]["mitdb"]["per_class"]["V"]["n"] > 400  # 119's V beats
    assert m["cross_database"]["svdb"]["trained_on"] == ["mitdb"]
    assert m["cross_database"]["mitdb"]["n"] == m["per_database"]["mitdb"]["n"]
    for fold in m["folds"]:  # each fold held out patients of both databases
        assert {database_of(r) for r in fold["records"]} == {"mitdb", "svdb"}
    # The daemon loads it and classifies a 128 Hz stream with the adaptive inputs.
    model = load_model(out, device="cpu")
    assert model.rr_features == tuple(features)
    record = load_record("svdb:802", DataConfig(folder=str(data_dir)))
    pipeline = StreamPipeline("s", record.fs, "ECG1", Config(), model, None)
    x = record.signal[: int(60 * record.fs), :1]
    jobs = []
    for pos in range(0, x.shape[0], 64):
        pipeline.feed(Chunk("s", record.fs, ("ECG1",), pos, x[pos : pos + 64].copy()))
        jobs.extend(pipeline.take_jobs())
    jobs.extend(pipeline.finish())
    beats = [b for b in run_jobs(jobs, {"beat": model}) if isinstance(b, BeatMessage)]
    assert len(beats) > 50 and sum(b.label is not None for b in beats) >= len(beats) - 1
