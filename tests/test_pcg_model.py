"""The heart-sound model: windows, labels and database splits from real PCG recordings, the
mel filterbank, the network inside the exported file, and one tiny training run."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from ecgmon.models.export import export_pt2, export_torchscript
from ecgmon.models.pcg_data import (
    HOP,
    WINDOW,
    PcgDataError,
    assert_disjoint,
    database_folders,
    leave_one_database_out,
    load_pcg,
    read_reference,
    window_starts,
    windows,
)
from ecgmon.models.pcg_network import F_MAX, F_MIN, N_FFT, PcgMelCNN, hz_to_mel, mel_filterbank, pcg_card_template
from ecgmon.monitor.model_loader import load_model
from pcg_model_helpers import make_database, tiny_pcg_model  # noqa: F401 (a fixture)

pytestmark = pytest.mark.filterwarnings(r"ignore:`torch\.jit\.\w+` is deprecated:DeprecationWarning")


# --------------------------------------------------------------------------- data


def test_windows_are_5_s_with_50_percent_overlap() -> None:
    assert list(window_starts(WINDOW - 1)) == []
    assert list(window_starts(WINDOW)) == [0]
    assert list(window_starts(WINDOW + HOP - 1)) == [0]
    assert list(window_starts(WINDOW + 2 * HOP)) == [0, HOP, 2 * HOP]
    audio = np.arange(WINDOW + HOP + 7, dtype=np.float32)
    w = windows(audio)
    assert w.shape == (2, WINDOW) and w.dtype == np.float32
    assert np.array_equal(w[1], audio[HOP : HOP + WINDOW])
    assert windows(audio[:100]).shape == (0, WINDOW)


def test_reference_labels_and_malformed_lines(tmp_path: Path) -> None:
    (tmp_path / "REFERENCE.csv").write_text("x1,1\nx2,-1\nx3,0\nx4\nx5,abnormal\nx1,-1\n\n")
    warnings: list[str] = []
    assert read_reference(tmp_path, warnings.append) == {"x1": 1, "x2": 0}
    assert len(warnings) == 4
    assert any("'0' for x3 is not 1 (abnormal) or -1 (normal)" in w for w in warnings)
    assert any("x1 listed twice" in w for w in warnings)
    assert all("\n" not in w for w in warnings)


def test_a_folder_without_reference_is_one_clear_error(tmp_path: Path) -> None:
    with pytest.raises(PcgDataError, match="no REFERENCE.csv") as exc:
        database_folders(tmp_path)
    assert "\n" not in str(exc.value)
    with pytest.raises(PcgDataError, match="not a folder"):
        database_folders(tmp_path / "missing")


def test_recordings_labels_and_leave_one_database_out(tmp_path: Path, data_dir: Path) -> None:
    pcg = data_dir / "pcg2016"
    make_database(tmp_path / "db-a", pcg / "training-a", 3)
    make_database(tmp_path / "db-b", pcg / "training-b", 3)
    make_database(tmp_path / "db-d", pcg / "training-d", 2)
    warnings: list[str] = []
    data = load_pcg(database_folders(tmp_path), warnings.append, progress=False, cache=False)
    assert warnings == []
    assert len(data) == 8
    # Labels as REFERENCE.csv says (1 abnormal -> class 1, -1 normal -> class 0).
    for folder in ("training-a", "training-b", "training-d"):
        reference = dict(line.split(",") for line in (pcg / folder / "REFERENCE.csv").read_text().split())
        for name, label in zip(data.names, data.labels):
            if name in reference:
                assert label == (1 if reference[name] == "1" else 0)
    import soundfile as sf

    first, _ = sf.read(str(tmp_path / "db-a" / f"{data.names[0]}.flac"), dtype="float32")
    assert np.array_equal(data.audio(0), first)  # int16 storage loses nothing of a 16-bit file
    folds = leave_one_database_out(data.databases.tolist())
    assert [held for _, held in folds] == ["db-a", "db-b", "db-d"]
    seen = set()
    for train_dbs, held in folds:
        train, val = data.of_databases(train_dbs), data.of_databases([held])
        assert_disjoint(train, val)
        assert len(train) + len(val) == len(data)
        assert set(val.databases) == {held} and held not in set(train.databases)
        seen |= {f"{d}/{n}" for d, n in zip(val.databases, val.names)}
        w, rows = val.windows()
        assert len(w) == sum(len(window_starts(n)) for n in val.lengths())
        assert np.array_equal(w[rows == 0][0], val.audio(0)[:WINDOW])
    assert len(seen) == len(data)  # every recording held out exactly once
    with pytest.raises(ValueError, match="both training and held-out"):
        assert_disjoint(data, data.of_databases(["db-b"]))


# --------------------------------------------------------------------------- network


def test_mel_filterbank() -> None:
    bank = mel_filterbank(128, N_FFT, 2000, F_MIN, F_MAX)
    freqs = np.arange(N_FFT // 2 + 1) * 2000 / N_FFT
    assert bank.shape == (128, N_FFT // 2 + 1)
    assert np.allclose(bank.sum(axis=1), 1.0, atol=1e-5)  # none empty, each a mean
    assert (bank >= 0).all()
    centres = (bank * freqs).sum(axis=1)
    assert (np.diff(centres) > 0).all()
    assert F_MIN - 10 < centres[0] < F_MIN + 10 and F_MAX - 20 < centres[-1] < F_MAX
    # Evenly spaced in mel: the last step in Hz is many times the first.
    steps = np.diff(hz_to_mel(centres))
    assert steps.std() / steps.mean() < 0.25
    assert not bank[:, freqs > F_MAX + 2 * 2000 / N_FFT].any()
    with pytest.raises(ValueError):
        mel_filterbank(128, N_FFT, 2000, 25, 1500)


def test_a_tone_lights_the_mel_bin_at_its_frequency() -> None:
    model = PcgMelCNN().eval()
    t = np.arange(WINDOW) / 2000
    for f in (40.0, 120.0, 300.0):
        mel = model.log_mel(torch.from_numpy(np.sin(2 * np.pi * f * t).astype(np.float32))[None])[0]
        peak = int(mel.mean(dim=1).argmax())
        centre = float((model.mel[peak] * torch.arange(N_FFT // 2 + 1) * 2000 / N_FFT).sum())
        assert abs(centre - f) < 0.05 * f + 8, (f, centre)


def test_model_ignores_gain_and_handles_silence() -> None:
    torch.manual_seed(0)
    model = PcgMelCNN().eval()
    x = torch.randn(2, WINDOW) * 0.05
    with torch.inference_mode():
        base = model(x)
        assert torch.allclose(model(x * 8.0), base, atol=1e-4)
        assert torch.isfinite(model(torch.zeros(2, WINDOW))).all()


def test_training_mode_masks_the_spectrogram_and_eval_does_not() -> None:
    torch.manual_seed(0)
    model = PcgMelCNN(time_masks=2, max_time_mask=30, freq_masks=2, max_freq_mask=20)
    z = torch.randn(16, 128, 126) + 5.0
    masked = model._spec_augment(z)
    assert ((masked == 0).float().mean() > 0.05) and (masked[masked != 0] == z[masked != 0]).all()


def test_exports_reproduce_the_eager_model(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = PcgMelCNN().eval()
    x = torch.randn(3, WINDOW) * 0.1
    with torch.inference_mode():
        eager = model(x)
    card = pcg_card_template(model, "pcg-test", "mean", 0.5)
    export_torchscript(model, tmp_path / "m.pt", card)
    export_pt2(model, [x], tmp_path / "n.pt2", card)
    for path in (tmp_path / "m.pt", tmp_path / "n.pt2"):
        loaded = load_model(path, device="cpu")
        assert loaded.kind == "pcg" and loaded.window == WINDOW and loaded.fs == 2000
        assert torch.allclose(loaded(x), eager, atol=1e-5)


# --------------------------------------------------------------------------- training


def test_one_tiny_training_run_exports_a_model_with_fold_figures(tiny_pcg_model: Path) -> None:
    card = json.loads(tiny_pcg_model.with_suffix(".json").read_text())
    assert card["kind"] == "pcg" and card["input"]["hop"] == HOP
    assert set(card["metrics"]["folds"]) == {"db-a", "db-b"}
    for held, fold in card["metrics"]["folds"].items():
        assert fold["train_databases"] == [d for d in ("db-a", "db-b") if d != held]
        # Every held-out recording is given a verdict or counted uncertain (by reason).
        assert fold["recordings"] == 4 == fold["n"] + sum(fold["uncertain"].values())
        assert sum(map(sum, fold["confusion"]["rows_reference_columns_predicted"])) == fold["n"]
        # Calibrated on the held-out database's own recordings, the raw rule's figures beside.
        assert fold["rule"]["calibration"]["recordings"] == 4 and "macc" in fold["rule"]["uncalibrated"]
    assert card["training"]["epochs"] == 1
    assert load_model(tiny_pcg_model, device="cpu").classes == ("normal", "abnormal")


def test_cli_train_pcg_refuses_unknown_databases_and_empty_folders(
    tmp_path: Path, data_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from ecgmon.cli import main

    make_database(tmp_path / "db-d", data_dir / "pcg2016" / "training-d", 2)
    out = str(tmp_path / "m.pt")
    assert main(["train", "pcg", "--data", str(tmp_path), "--databases", "db-x", "--out", out]) == 2
    err = capsys.readouterr().err
    assert "no database db-x" in err and "db-d" in err and err.count("\n") == 1
    # One database cannot be left out of itself.
    assert main(["train", "pcg", "--data", str(tmp_path), "--out", out]) == 2
    assert "at least two databases" in capsys.readouterr().err
    assert not (tmp_path / "m.pt").exists()
