"""`ecgmon evaluate model`: tiny models trained here on two records, scored on a record they
never saw through the daemon's loader; numbers consistent with their confusion matrix, real
PNGs, refusals and bad files as one clear line."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import matplotlib.image
import numpy as np
import pytest
import torch
from scipy.stats import rankdata

from ecgmon.cli import main
from ecgmon.scores import precision_recall, roc
from ecgmon.models.export import export_pt2
from ecgmon.models.networks import SegmentAttentionCNN
from ecgmon.model_card import file_sha256
from ecgmon.monitor.model_loader import load_model

# One training record each (both have normal and abnormal examples), one epoch: fast, and
# what is tested is the evaluation, not the model.
TRAIN = {"beat": ["--records", "106"], "segment": ["--records", "208"]}
HELD_OUT = ["--val-records", "119", "--epochs", "1"]


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory, data_dir: Path) -> dict[str, Path]:
    """A beat-spectrogram and a segment model of one epoch on one record, held-out record 119."""
    folder = tmp_path_factory.mktemp("models")
    out = {"beat": folder / "spec.pt", "segment": folder / "segment.pt"}
    # Module scope runs before the per-test ECGMON_DATA fixture of conftest: set it here too.
    with pytest.MonkeyPatch.context() as env:
        env.setenv("ECGMON_DATA", str(data_dir))
        assert main(["train", "beat-spectrogram", *TRAIN["beat"], *HELD_OUT, "--out", str(out["beat"])]) == 0
        assert main(["train", "segment", *TRAIN["segment"], *HELD_OUT, "--batch-size", "32",
                     "--out", str(out["segment"])]) == 0
    return out


def _evaluate(model: Path, out: Path, *extra: str) -> int:
    return main(["evaluate", "model", str(model), "--device", "cpu", "--out", str(out), *extra])


def _check_png(path: Path) -> None:
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", path
    image = matplotlib.image.imread(path)  # decodes it: a truncated file fails here
    height, width = image.shape[:2]
    assert 300 <= width <= 3000 and 300 <= height <= 3000, (path, image.shape)
    assert image[..., :3].std() > 0.05, f"{path} is (nearly) blank"


def _check_consistent(m: dict) -> None:
    """Every number in metrics.json follows from its confusion matrix."""
    classes = m["model"]["classes"]
    cm = np.array(m["confusion"]["rows_reference_columns_predicted"])
    assert cm.shape == (len(classes), len(classes)) and cm.sum() == m["n"] == sum(m["n_per_record"].values())
    assert m["accuracy"] == pytest.approx(np.trace(cm) / cm.sum(), abs=1e-4)
    f1s = []
    for c, name in enumerate(classes):
        per = m["per_class"][name]
        assert per["n"] == cm[c].sum()
        if cm[c].sum():
            assert per["se"] == pytest.approx(cm[c, c] / cm[c].sum(), abs=1e-4)
            assert per["f1"] == pytest.approx(2 * cm[c, c] / (cm[c].sum() + cm[:, c].sum()), abs=1e-4)
            assert 0 <= per["auc"] <= 1 and 0 < per["average_precision"] <= 1
            f1s.append(per["f1"])
        else:
            assert per["se"] is None and per["auc"] is None and per["average_precision"] is None
        if cm[:, c].sum():
            assert per["ppv"] == pytest.approx(cm[c, c] / cm[:, c].sum(), abs=1e-4)
    assert m["macro_f1"] == pytest.approx(np.mean(f1s), abs=1e-3)


def test_spectrogram_beat_model_on_its_held_out_record(models: dict[str, Path], tmp_path: Path, capsys) -> None:
    out = tmp_path / "eval"
    assert _evaluate(models["beat"], out) == 0
    m = json.loads((out / "metrics.json").read_text())
    assert m["records"] == ["119"] and m["training_records_included"] == []
    assert m["model"]["sha256"] == file_sha256(models["beat"]) and m["model"]["kind"] == "beat"
    assert m["command"] == f"ecgmon evaluate model {models['beat']} --records 119 --channel 0 --out {out}"
    assert m["per_class"]["V"]["n"] > 400  # 119 is a record of ventricular bigeminy
    _check_consistent(m)
    # The serving path (TorchScript file, card's inputs) gives exactly the trainer's held-out result.
    assert m["reproduces_card_metrics"] is True
    assert m["plots"] == ["confusion.png", "roc.png", "pr.png", "gradcam.png"] and m["notes"] == []
    for name in m["plots"]:
        _check_png(out / name)
    shown = capsys.readouterr().out
    assert "macro-F1" in shown and "reproduces the held-out confusion matrix" in shown


def test_segment_model_with_attention_and_as_torch_export(models: dict[str, Path], tmp_path: Path) -> None:
    assert _evaluate(models["segment"], tmp_path / "pt") == 0
    m = json.loads((tmp_path / "pt" / "metrics.json").read_text())
    _check_consistent(m)
    assert m["model"]["classes"] == ["normal", "abnormal"] and m["n"] > 300
    assert m["plots"] == ["confusion.png", "roc.png", "pr.png", "attention.png"]
    for name in m["plots"]:
        _check_png(tmp_path / "pt" / name)

    # The same weights exported with torch.export (.pt2) score the same.
    loaded = load_model(models["segment"], device="cpu")
    eager = SegmentAttentionCNN()
    eager.load_state_dict(loaded.module.state_dict())
    card = {k: v for k, v in loaded.card.items() if k not in ("format", "sha256", "ecgmon_version")}
    pt2 = tmp_path / "segment.pt2"
    export_pt2(eager, [torch.zeros(2, 3600)], pt2, card)
    assert _evaluate(pt2, tmp_path / "pt2") == 0
    m2 = json.loads((tmp_path / "pt2" / "metrics.json").read_text())
    assert m2["model"]["format"] == "torch.export"
    assert m2["confusion"] == m["confusion"] and "attention.png" in m2["plots"]


def _one_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err, err
    return err


def test_a_training_record_is_refused_unless_allowed(models: dict[str, Path], tmp_path: Path, capsys) -> None:
    assert _evaluate(models["beat"], tmp_path / "a", "--records", "119", "mitdb:106") == 2
    err = _one_error_line(capsys)
    assert "mitdb:106" in err and "training records" in err and "--allow-train-records" in err
    assert not (tmp_path / "a" / "metrics.json").exists()

    assert _evaluate(models["beat"], tmp_path / "b", "--records", "106", "--allow-train-records") == 0
    m = json.loads((tmp_path / "b" / "metrics.json").read_text())
    assert m["training_records_included"] == ["106"] and m["reproduces_card_metrics"] is None


def _copy(model: Path, folder: Path) -> Path:
    folder.mkdir()
    shutil.copy(model.with_suffix(".json"), folder / "m.json")
    return Path(shutil.copy(model, folder / "m.pt"))


def test_corrupt_or_cardless_model_file_is_one_clear_line(models: dict[str, Path], tmp_path: Path, capsys) -> None:
    truncated = _copy(models["beat"], tmp_path / "truncated")
    truncated.write_bytes(truncated.read_bytes()[:1000])
    assert _evaluate(truncated, tmp_path / "out") == 2
    assert "does not match its card" in _one_error_line(capsys)

    # Garbage whose card vouches for it (sha256 updated): the loader looks inside the file.
    garbage = _copy(models["beat"], tmp_path / "garbage")
    garbage.write_bytes(b"not a model at all\n" * 50)
    card = json.loads(garbage.with_suffix(".json").read_text())
    card["sha256"] = file_sha256(garbage)
    garbage.with_suffix(".json").write_text(json.dumps(card))
    assert _evaluate(garbage, tmp_path / "out") == 2
    assert "corrupt or truncated" in _one_error_line(capsys)

    cardless = _copy(models["beat"], tmp_path / "cardless")
    cardless.with_suffix(".json").unlink()
    assert _evaluate(cardless, tmp_path / "out") == 2
    assert "model card m.json is missing" in _one_error_line(capsys)
    assert not (tmp_path / "out").exists()


def test_wrong_records_are_one_clear_line(models: dict[str, Path], tmp_path: Path, capsys) -> None:
    assert _evaluate(models["beat"], tmp_path / "out", "--records", str(tmp_path / "nosuch.hea")) == 2
    assert "nosuch.hea" in _one_error_line(capsys)

    bad = tmp_path / "bad.hea"
    bad.write_text("this is not a WFDB header\n")
    assert _evaluate(models["segment"], tmp_path / "out", "--records", str(bad)) == 2
    assert "bad" in _one_error_line(capsys)

    # A card without held-out records (trained on everything): no honest default to fall back on.
    nothing_held_out = _copy(models["segment"], tmp_path / "all")
    card = json.loads(nothing_held_out.with_suffix(".json").read_text())
    card["training"]["validation_records"] = []
    nothing_held_out.with_suffix(".json").write_text(json.dumps(card))
    assert _evaluate(nothing_held_out, tmp_path / "out") == 2
    assert "names no validation records" in _one_error_line(capsys)


def test_curve_areas_against_independent_definitions() -> None:
    rng = np.random.default_rng(3)
    positive = rng.random(500) < 0.2
    score = np.round(rng.random(500) + 0.4 * positive, 2)  # rounded: many tied scores
    # ROC AUC is the Mann-Whitney U statistic (ties count one half).
    ranks = rankdata(score)
    n1, n0 = positive.sum(), (~positive).sum()
    assert roc(positive, score).area == pytest.approx((ranks[positive].sum() - n1 * (n1 + 1) / 2) / (n1 * n0))
    # Average precision by hand: thresholds 0.9 (P 1, R 0.5), 0.8 (P 0.5), 0.7 (P 2/3, R 1), 0.1.
    assert precision_recall(np.array([1, 0, 1, 0]), np.array([0.9, 0.8, 0.7, 0.1])).area == pytest.approx(5 / 6)
    perfect = np.array([0.1, 0.2, 0.8, 0.9])
    assert roc(perfect > 0.5, perfect).area == 1.0 and precision_recall(perfect > 0.5, perfect).area == 1.0
    assert roc(perfect > 0.5, -perfect).area == 0.0
    assert roc(np.zeros(4, bool), perfect) is None and precision_recall(np.zeros(4, bool), perfect) is None
