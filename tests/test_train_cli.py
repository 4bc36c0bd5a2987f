"""`ecgmon train`: one small epoch on two records, exported and loadable by the daemon; its fold
models, and `ecgmon evaluate --cross-validated` classifying each record with the one that never saw it."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from ecgmon.cli import main
from ecgmon.monitor.model_loader import load_model


@pytest.fixture(scope="module")
def folds_trained(tmp_path_factory: pytest.TempPathFactory, data_dir: Path) -> Path:
    """One epoch on two records with 2 folds: the shipped file (its fold models beside it)."""
    out = tmp_path_factory.mktemp("train") / "beat.pt"
    # A module fixture runs before the per-test ECGMON_DATA of conftest: set it here too.
    with pytest.MonkeyPatch.context() as env:
        env.setenv("ECGMON_DATA", str(data_dir))
        code = main(["train", "beat", "--records", "119", "101", "--folds", "2", "--epochs", "1",
                     "--channel", "MLII", "--jitter", "3", "--noise", "0.05",
                     "--rr-features", "post_rr_norm", "pre_rr_norm", "lead2_tpl_corr", "--feature-mlp",
                     "--lead2-dropout", "0.5", "--out", str(out)])
    assert code == 0
    return out


def test_one_epoch_on_two_records_with_folds_exports_a_model_the_daemon_loads(folds_trained: Path) -> None:
    out = folds_trained
    card = json.loads(out.with_suffix(".json").read_text())
    assert card["training"]["records"] == ["101", "119"] and card["training"]["validation_records"] == []
    assert "ecgmon train beat" in card["training"]["command"] and "--folds 2" in card["training"]["command"]
    assert card["input"]["rr_features"] == ["post_rr_norm", "pre_rr_norm", "lead2_tpl_corr"]
    assert "--feature-mlp" in card["training"]["command"] and "--lead2-dropout 0.5" in card["training"]["command"]
    assert card["training"]["ensemble"]["combination"] == "mean of the members' probabilities"
    m = card["metrics"]
    # Each record is classified once, by the fold model that never trained on it.
    assert sorted(r for f in m["folds"] for r in f["records"]) == ["101", "119"]
    assert m["n"] == sum(f["n"] for f in m["folds"]) and m["per_class"]["V"]["n"] > 400
    model = load_model(out, device="cpu")
    assert list(model.classes) == ["N", "S", "V", "F", "Q"] and out.stat().st_size < 5 * 2**20
    assert model.rr_features == ("post_rr_norm", "pre_rr_norm", "lead2_tpl_corr")
    # One file, two networks: its output is the log of the members' mean probability, and a
    # missing second lead (NaN) is an input it takes, not a NaN class.
    net = torch.jit.load(str(out))
    window, rr = torch.randn(4, 252), torch.tensor([[1.0, 1.0, 0.9], [0.8, 1.3, float("nan")]] * 2)
    members = [torch.softmax(m(window, rr), dim=1) for m in net.members.children()]
    assert len(members) == 2
    torch.testing.assert_close(net(window, rr).exp(), (members[0] + members[1]) / 2)
    assert torch.isfinite(net(window, rr)).all()


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


def test_each_fold_model_is_exported_with_the_records_it_held_out(folds_trained: Path) -> None:
    shipped = json.loads(folds_trained.with_suffix(".json").read_text())
    folder = folds_trained.with_name("beat.folds")
    cards = [json.loads((folder / f"fold{i}.json").read_text()) for i in (1, 2)]
    for i, card in enumerate(cards, start=1):
        training = card["training"]
        assert training["command"] == shipped["training"]["command"] and training["fold"] == i
        assert not set(training["records"]) & set(training["held_out_records"])
        assert load_model(folder / f"fold{i}.pt", device="cpu").name == f"beat-cnn-bilstm-fold{i}"
    assert sorted(r for c in cards for r in c["training"]["held_out_records"]) == ["101", "119"]
    assert [c["training"]["held_out_records"] for c in cards] == [f["records"] for f in shipped["metrics"]["folds"]]


def test_cross_validated_evaluation_classifies_each_record_by_a_model_that_never_saw_it(
    folds_trained: Path, tmp_path: Path,
) -> None:
    report = tmp_path / "beats.json"
    assert main(["evaluate", "beats", "--model", str(folds_trained), "--cross-validated",
                 "mitdb:119", "mitdb:100", "--json", str(report)]) == 0
    result = json.loads(report.read_text())
    assert result["mode"].startswith("cross-validated") and len(result["fold_models"]) == 2
    held = {r: f["name"] for f in result["fold_models"] for r in f["held_out_records"]}
    by = {r["record"]: r for r in result["per_record"]}
    # 119 by the fold that held it out, 100 (never trained on) by the shipped model itself.
    assert by["mitdb:119"]["model"] == held["119"] and by["mitdb:100"]["model"] == "beat-cnn-bilstm"
    assert not any(r["trained_on"] for r in result["per_record"])
    assert result["held_out"]["records"] == ["mitdb:119", "mitdb:100"]


def test_cross_validation_refuses_fold_models_of_another_training(folds_trained: Path, tmp_path: Path, capsys) -> None:
    copy = tmp_path / "beat.pt"
    shutil.copy(folds_trained, copy)
    shutil.copy(folds_trained.with_suffix(".json"), copy.with_suffix(".json"))
    shutil.copytree(folds_trained.with_name("beat.folds"), tmp_path / "beat.folds")
    card = tmp_path / "beat.folds" / "fold2.json"
    stale = json.loads(card.read_text())
    stale["training"]["command"] += " --epochs 99"
    card.write_text(json.dumps(stale))
    assert main(["evaluate", "beats", "--model", str(copy), "--cross-validated", "mitdb:119"]) == 2
    assert "fold2.pt: a fold of another training" in capsys.readouterr().err
    shutil.rmtree(tmp_path / "beat.folds")
    assert main(["evaluate", "beats", "--model", str(copy), "--cross-validated", "mitdb:119"]) == 2
    assert "no fold models" in capsys.readouterr().err
