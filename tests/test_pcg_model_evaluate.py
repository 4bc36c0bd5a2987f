"""`ecgmon evaluate pcg` through the daemon's loader, malformed recordings, and the loader
accepting the shipped heart-sound model and refusing broken ones."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from ecgmon.cli import main
from ecgmon.models.pcg_data import PcgDataError
from ecgmon.evaluate.pcg import evaluate_pcg
from ecgmon.models.pcg_training import sampling_weights
from ecgmon.model_card import ModelError, card_path, file_sha256
from ecgmon.monitor.model_loader import load_model
from ecgmon.monitor.model_set import model_path
from pcg_model_helpers import make_database, tiny_pcg_model  # noqa: F401 (a fixture)

pytestmark = pytest.mark.filterwarnings(r"ignore:`torch\.jit\.\w+` is deprecated:DeprecationWarning")

SHIPPED = Path(__file__).resolve().parent.parent / "ecgmon" / "models" / "weights" / "pcg-mel-cnn.pt"


def _malformed_database(folder: Path, data_dir: Path) -> list[str]:
    """Two good recordings, and one of each way a recording can be wrong."""
    src = data_dir / "pcg2016" / "training-d"
    names = make_database(folder, src, 2)
    audio, fs = sf.read(str(src / f"{names[0]}.flac"), dtype="float32")
    sf.write(str(folder / "short.flac"), audio[: 3 * fs], fs)  # 3 s: less than a window
    (folder / "corrupt.flac").write_bytes(b"fLaC" + os.urandom(2000))
    stereo = np.stack([audio[: 8 * fs], audio[: 8 * fs]], axis=1)
    sf.write(str(folder / "stereo4k.wav"), np.repeat(stereo, 2, axis=0), 2 * fs)  # 4 kHz stereo
    sf.write(str(folder / "badlabel.flac"), audio[: 6 * fs], fs)
    sf.write(str(folder / "unlisted.flac"), audio[: 6 * fs], fs)
    with open(folder / "REFERENCE.csv", "a") as f:
        f.write("short,1\ncorrupt,-1\nstereo4k,-1\nbadlabel,0\nmissing,1\n")
    return names


def test_evaluate_scores_every_usable_recording_and_warns_about_the_rest(
    tmp_path: Path, data_dir: Path, tiny_pcg_model: Path
) -> None:
    root = tmp_path / "recordings"
    good = _malformed_database(root / "site-1", data_dir)
    make_database(root / "site-2", data_dir / "pcg2016" / "training-b", 2)
    warnings: list[str] = []
    result = evaluate_pcg(root, tiny_pcg_model, tmp_path / "out", warnings.append, device="cpu", progress=False)
    scored = {(r["database"], r["name"]) for r in result["recordings"]}
    assert scored == {("site-1", n) for n in good + ["stereo4k"]} | {
        ("site-2", r["name"]) for r in result["recordings"] if r["database"] == "site-2"
    }
    assert len(scored) == 5
    text = "\n".join(warnings)
    for expected in ("short.flac: 3.0 s, shorter than", "corrupt.flac: not a readable audio file",
                     "label '0' for badlabel", "missing is in REFERENCE.csv but has no",
                     "unlisted.flac has no label", "stereo4k.wav: 2 channels averaged",
                     "stereo4k.wav: resampled from 4000 Hz"):
        assert expected in text, expected
    assert all("\n" not in w for w in warnings)
    # The numbers are consistent with the per-recording verdicts: Se/Sp on those given one.
    recs = result["recordings"]
    labels = np.array([r["label"] for r in recs])
    verdict = np.array([r["verdict"] for r in recs])
    assert set(verdict) <= {"normal", "abnormal", "uncertain"}
    called = verdict == "abnormal"
    given = verdict != "uncertain"
    overall = result["overall"]
    assert overall["confusion"]["rows_reference_columns_predicted"] == [
        [int(np.sum((labels == 0) & given & ~called)), int(np.sum((labels == 0) & called))],
        [int(np.sum((labels == 1) & given & ~called)), int(np.sum((labels == 1) & called))],
    ]
    assert overall["coverage"] == pytest.approx(given.mean(), abs=1e-4)
    assert overall["recordings"] == 5 and sum(overall["uncertain"].values()) == int((~given).sum())
    if overall["se"] is not None and overall["sp"] is not None:
        assert overall["macc"] == pytest.approx((overall["se"] + overall["sp"]) / 2, abs=1e-4)
    # A verdict is the mean of the good windows against the threshold, outside the margin.
    d = result["decision"]
    for r in recs:
        if r["verdict"] != "uncertain":
            assert (r["verdict"] == "abnormal") == (r["p_abnormal"] >= d["threshold"])
            assert abs(r["p_abnormal"] - d["threshold"]) >= d["margin"] - 1e-4
        elif r["reason"] == "near threshold":
            assert abs(r["p_abnormal"] - d["threshold"]) < d["margin"] + 1e-4
        elif r["reason"] == "quality":
            assert r["good_windows"] == 0 and r["p_abnormal"] is None
    assert set(result["databases"]) == {"site-1", "site-2"}
    assert result["trained_on"] == []  # the tiny model trained on db-a and db-b
    assert sum(d["recordings"] for d in result["databases"].values()) == overall["recordings"] == 5
    written = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert written["overall"] == overall
    assert (tmp_path / "out" / "roc.png").read_bytes()[:4] == b"\x89PNG"
    assert (tmp_path / "out" / "confusion.png").is_file()


def test_evaluate_without_reference_or_recordings_is_one_clear_error(
    tmp_path: Path, tiny_pcg_model: Path
) -> None:
    with pytest.raises(PcgDataError, match="no REFERENCE.csv"):
        evaluate_pcg(tmp_path, tiny_pcg_model, tmp_path / "out", print, device="cpu", progress=False)
    (tmp_path / "REFERENCE.csv").write_text("a1,1\n")
    with pytest.raises(PcgDataError, match="no recording could be scored"):
        evaluate_pcg(tmp_path, tiny_pcg_model, tmp_path / "out", lambda _: None, device="cpu", progress=False)


def test_cli_evaluate_pcg(tmp_path: Path, data_dir: Path, tiny_pcg_model: Path,
                          capsys: pytest.CaptureFixture[str]) -> None:
    make_database(tmp_path / "db", data_dir / "pcg2016" / "training-d", 2)
    assert main(["evaluate", "pcg", str(tmp_path / "db"), "--model", str(tiny_pcg_model),
                 "--out", str(tmp_path / "out"), "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    assert "MAcc" in out and "confusion" in out and "coverage" in out and "uncertain (no verdict)" in out
    assert "flatter" not in out
    make_database(tmp_path / "db-a", data_dir / "pcg2016" / "training-d", 2)  # a name it trained on
    assert main(["evaluate", "pcg", str(tmp_path / "db-a"), "--model", str(tiny_pcg_model),
                 "--out", str(tmp_path / "out2"), "--device", "cpu"]) == 0
    assert "the model trained on db-a" in capsys.readouterr().out
    assert main(["evaluate", "pcg", str(tmp_path / "nowhere"), "--model", str(tiny_pcg_model)]) == 2
    err = capsys.readouterr().err
    assert "not a folder of recordings" in err and err.count("\n") == 1


def test_evaluate_refuses_a_model_that_is_not_a_heart_sound_model(tmp_path: Path) -> None:
    beat = model_path("beat-cnn-bilstm.pt")
    (tmp_path / "REFERENCE.csv").write_text("a1,1\n")
    with pytest.raises(PcgDataError, match="not a heart-sound"):
        evaluate_pcg(tmp_path, beat, tmp_path / "out", print, device="cpu", progress=False)


def test_sampling_weights_make_every_database_and_class_equally_likely() -> None:
    dbs = np.array(["e"] * 90 + ["e"] * 10 + ["a"] * 5 + ["a"] * 15)
    labels = np.array([0] * 90 + [1] * 10 + [0] * 5 + [1] * 15)
    w = sampling_weights(dbs, labels)
    assert w.sum() == pytest.approx(1.0)
    for db in ("a", "e"):
        for c in (0, 1):
            assert w[(dbs == db) & (labels == c)].sum() == pytest.approx(0.25)


# --------------------------------------------------------------------------- the shipped file


def test_the_loader_accepts_the_shipped_pcg_model() -> None:
    model = load_model(SHIPPED, device="cpu")
    assert model.kind == "pcg" and model.classes == ("normal", "abnormal")
    assert model.fs == 2000 and model.window == 10000 and model.card["input"]["hop"] == 5000
    assert 0 <= model.card["decision"]["threshold"] <= 1
    assert SHIPPED.stat().st_size < 5_000_000
    folds = model.card["metrics"]["folds"]
    assert set(folds) == {"training-a", "training-b", "training-d", "training-e"}
    assert model.card["metrics"]["mean"]["macc"] == pytest.approx(
        np.mean([f["macc"] for f in folds.values()]), abs=1e-3)


def test_the_loader_rejects_a_corrupt_or_mislabelled_pcg_model(tmp_path: Path) -> None:
    broken = tmp_path / "pcg.pt"
    data = SHIPPED.read_bytes()
    broken.write_bytes(data[: len(data) // 2])
    card = json.loads(card_path(SHIPPED).read_text())
    card["sha256"] = file_sha256(broken)
    card_path(broken).write_text(json.dumps(card))
    with pytest.raises(ModelError, match="corrupt or truncated") as exc:
        load_model(broken, device="cpu")
    assert "\n" not in str(exc.value) and "ecgmon train pcg" in str(exc.value)
    shutil.copyfile(SHIPPED, broken)
    for change, match in ((lambda c: c.pop("decision"), "decision.threshold"),
                          (lambda c: c["input"].update(hop=0), "input.hop")):
        bad = json.loads(card_path(SHIPPED).read_text())
        change(bad)
        card_path(broken).write_text(json.dumps(bad))
        with pytest.raises(ModelError, match=match):
            load_model(broken, device="cpu")
