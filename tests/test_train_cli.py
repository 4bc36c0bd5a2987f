"""`ecgmon train`: one small epoch on two records, exported and loadable by the daemon."""

from __future__ import annotations

import json
from pathlib import Path

from ecgmon.cli import main
from ecgmon.monitor.model_loader import load_model


def test_one_epoch_on_two_records_with_folds_exports_a_model_the_daemon_loads(tmp_path: Path) -> None:
    out = tmp_path / "beat.pt"
    code = main(["train", "beat", "--records", "119", "101", "--folds", "2", "--epochs", "1",
                 "--channel", "MLII", "--jitter", "3", "--noise", "0.05",
                 "--rr-features", "post_rr_norm", "pre_rr_norm", "--out", str(out)])
    assert code == 0
    card = json.loads(out.with_suffix(".json").read_text())
    assert card["training"]["records"] == ["101", "119"] and card["training"]["validation_records"] == []
    assert "ecgmon train beat" in card["training"]["command"] and "--folds 2" in card["training"]["command"]
    assert card["input"]["rr_features"] == ["post_rr_norm", "pre_rr_norm"]
    m = card["metrics"]
    # Each record is classified once, by the fold model that never trained on it.
    assert sorted(r for f in m["folds"] for r in f["records"]) == ["101", "119"]
    assert m["n"] == sum(f["n"] for f in m["folds"]) and m["per_class"]["V"]["n"] > 400
    model = load_model(out, device="cpu")
    assert list(model.classes) == ["N", "S", "V", "F", "Q"] and out.stat().st_size < 5 * 2**20
    assert model.rr_features == ("post_rr_norm", "pre_rr_norm")


def test_training_and_validation_records_must_differ(tmp_path: Path, capsys) -> None:
    code = main(["train", "beat", "--records", "101", "119", "--val-records", "119", "101",
                 "--epochs", "1", "--out", str(tmp_path / "x.pt")])
    assert code == 2
    assert "error:" in capsys.readouterr().err


def test_one_epoch_of_the_segment_model(tmp_path: Path) -> None:
    out = tmp_path / "segment.pt"
    assert main(["train", "segment", "--records", "100", "208", "--val-records", "119",
                 "--epochs", "1", "--batch-size", "32", "--out", str(out)]) == 0
    model = load_model(out, device="cpu")
    assert model.kind == "segment" and list(model.classes) == ["normal", "abnormal"]
    card = json.loads(out.with_suffix(".json").read_text())
    assert card["metrics"]["n"] > 300 and card["training"]["class_counts"]["abnormal"] > 0
