"""The three ECG networks: shapes, TorchScript and torch.export round trips, sizes, Grad-CAM, attention.

Fast: untrained networks, tiny batches; "real" inputs are beats and a segment of MIT-BIH
record 119 (frequent PVCs) through the daemon's own filter.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import wfdb

from ecgmon.models.export import export_pt2, export_torchscript
from ecgmon.models.networks import (
    BEAT_BEFORE,
    BEAT_CLASSES,
    BEAT_WINDOW,
    SEGMENT_WINDOW,
    BeatCNNBiLSTM,
    BeatSpectrogramCNN,
    SegmentAttentionCNN,
    card_template,
    count_parameters,
    grad_cam,
)
from ecgmon.monitor.dsp.filters import ECGFilter
from ecgmon.monitor.model_loader import load_model

MAX_BYTES = 5 * 1024 * 1024
# The tests call torch.jit directly too; torch 2.9+ warns that it is deprecated.
pytestmark = pytest.mark.filterwarnings(r"ignore:`torch\.jit\.\w+` is deprecated:DeprecationWarning")


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)
    np.random.seed(0)


@pytest.fixture(scope="module")
def real(data_dir: Path) -> dict[str, torch.Tensor]:
    """Eight filtered beat windows (N and V), their RR features, and two 10-s segments."""
    base = str(data_dir / "mitdb" / "119")
    n = 8 * 3600
    x = wfdb.rdrecord(base, channels=[0], sampto=n).p_signal[:, 0]
    y = ECGFilter(360.0)(x)
    ann = wfdb.rdann(base, "atr", sampto=n)
    beats = np.array([s for s, sym in zip(ann.sample, ann.symbol) if sym in "NV"])
    rr = np.diff(beats) / 360.0
    picked = [i for i in range(1, len(beats) - 1) if beats[i] - BEAT_BEFORE >= 0][:8]
    windows = np.stack([y[beats[i] - BEAT_BEFORE : beats[i] - BEAT_BEFORE + BEAT_WINDOW] for i in picked])
    feats = np.stack([[rr[i - 1], rr[i], rr[max(0, i - 5) : i + 1].mean(), rr.mean()] for i in picked])
    segments = np.stack([y[3600:7200], y[18000:21600]])
    return {
        "window": torch.tensor(windows, dtype=torch.float32),
        "rr": torch.tensor(feats, dtype=torch.float32),
        "segment": torch.tensor(segments, dtype=torch.float32),
    }


def _inputs(kind: str, batch: int, real: dict[str, torch.Tensor] | None = None) -> tuple[torch.Tensor, ...]:
    if real is not None:
        return (real["segment"],) if kind == "segment" else (real["window"], real["rr"])
    if kind == "segment":
        return (0.5 * torch.randn(batch, SEGMENT_WINDOW),)
    return (0.5 * torch.randn(batch, BEAT_WINDOW), 0.6 + 0.4 * torch.rand(batch, 4))


NETWORKS = {
    "cnn_bilstm": (BeatCNNBiLSTM, "beat"),
    "spectrogram": (BeatSpectrogramCNN, "beat"),
    "attention": (SegmentAttentionCNN, "segment"),
}


def _make(name: str) -> tuple[torch.nn.Module, str]:
    cls, kind = NETWORKS[name]
    model = cls()
    # Give batch norm non-trivial running statistics, as training would, so that a round
    # trip that silently ran in training mode (batch statistics) would show.
    model.train()
    with torch.no_grad():
        for _ in range(3):
            model(*_inputs(kind, 16))
    return model.eval(), kind


def _as_tuple(out):
    return out if isinstance(out, tuple) else (out,)


def test_forward_shapes():
    m = BeatCNNBiLSTM().eval()
    assert m(torch.randn(3, BEAT_WINDOW), torch.rand(3, 4)).shape == (3, 5)
    m = BeatCNNBiLSTM(rr_features=7, n_classes=5).eval()
    assert m(torch.randn(2, BEAT_WINDOW), torch.rand(2, 7)).shape == (2, 5)
    m = BeatSpectrogramCNN(n_classes=5, rr_features=6).eval()
    assert m(torch.randn(1, BEAT_WINDOW), torch.rand(1, 6)).shape == (1, 5)
    assert m.spectrogram(torch.randn(2, BEAT_WINDOW)).shape == (2, m.n_freq, m.n_frames)
    # Rows cover the band the 0.5-40 Hz filter leaves, at least.
    assert m.frequencies()[-1] >= 40.0
    logits, attn = SegmentAttentionCNN().eval()(torch.randn(2, SEGMENT_WINDOW))
    assert logits.shape == (2, 2)
    assert attn.shape == (2, 150, 150)


@pytest.mark.parametrize("name", list(NETWORKS))
def test_flat_input_gives_finite_output(name):
    """A lead-off (flat) window must not divide by zero in the in-model standardisation."""
    model, kind = _make(name)
    inputs = tuple(torch.zeros_like(t) for t in _inputs(kind, 2))
    for out in _as_tuple(model(*inputs)):
        assert torch.isfinite(out).all()


@pytest.mark.parametrize("name", ["cnn_bilstm", "spectrogram"])
def test_unknown_rr_intervals_give_finite_output(name, tmp_path):
    """The first beats of a stream have no previous RR yet (NaN): still a class, not NaN."""
    model, kind = _make(name)
    window, rr = _inputs(kind, 3)
    rr[0, :] = float("nan")
    rr[1, 0] = float("inf")
    export_torchscript(model, tmp_path / "m.pt", card_template(model, name))
    scripted = torch.jit.load(str(tmp_path / "m.pt"))
    with torch.no_grad():
        for m in (model, scripted):
            assert torch.isfinite(m(window, rr)).all()


@pytest.mark.parametrize("name", list(NETWORKS))
def test_torchscript_round_trip(name, tmp_path, real):
    model, kind = _make(name)
    path = tmp_path / f"{name}.pt"
    card = export_torchscript(model, path, card_template(model, name))
    assert path.stat().st_size < MAX_BYTES
    assert card["format"] == "torchscript" and len(card["sha256"]) == 64
    loaded = torch.jit.load(str(path))
    for inputs in (_inputs(kind, 5), _inputs(kind, 1), _inputs(kind, 0, real)):
        with torch.no_grad():
            eager = _as_tuple(model(*inputs))
            scripted = _as_tuple(loaded(*inputs))
        assert len(eager) == len(scripted)
        for a, b in zip(eager, scripted):
            torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", list(NETWORKS))
def test_pt2_round_trip(name, tmp_path, real):
    """All three networks export with torch.export on torch 2.x, batch axis dynamic."""
    model, kind = _make(name)
    path = tmp_path / f"{name}.pt2"
    card = export_pt2(model, _inputs(kind, 4), path, card_template(model, name))
    assert path.stat().st_size < MAX_BYTES
    assert card["format"] == "torch.export"
    served = load_model(path, device="cpu")
    for inputs in (_inputs(kind, 3), _inputs(kind, 1), _inputs(kind, 0, real)):
        with torch.no_grad():
            eager = _as_tuple(model(*inputs))
        exported = _as_tuple(served(*inputs))
        for a, b in zip(eager, exported):
            torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-5)


def test_pt_and_pt2_of_one_name_would_share_a_card(tmp_path):
    model = BeatCNNBiLSTM().eval()
    export_torchscript(model, tmp_path / "beat.pt", card_template(model, "beat"))
    with pytest.raises(ValueError, match="would share the card beat.json"):
        export_pt2(model, _inputs("beat", 2), tmp_path / "beat.pt2", card_template(model, "beat"))


def test_models_are_small():
    sizes = {name: count_parameters(cls()) for name, (cls, _) in NETWORKS.items()}
    # Well under 5 MB: float32 weights of < 250k parameters are under 1 MB.
    assert all(n < 250_000 for n in sizes.values()), sizes


def test_rr_statistics_travel_with_the_export(tmp_path):
    model = BeatCNNBiLSTM().eval()
    model.rr.set_stats([0.8, 0.8, 0.8, 0.8], [0.2, 0.3, 0.15, 0.1])
    path = tmp_path / "beat.pt"
    export_torchscript(model, path, card_template(model, "beat"))
    loaded = torch.jit.load(str(path))
    torch.testing.assert_close(loaded.rr.std, torch.tensor([0.2, 0.3, 0.15, 0.1]))
    with pytest.raises(ValueError):
        model.rr.set_stats([0.8] * 3, [0.2] * 3)


def test_grad_cam(real):
    model, _ = _make("spectrogram")
    window, rr = real["window"][0], real["rr"][0]
    maps = [grad_cam(model, window, rr, c) for c in range(len(BEAT_CLASSES))]
    for cam in maps:
        assert cam.shape == (model.n_freq, BEAT_WINDOW)
        assert np.isfinite(cam).all()
        assert cam.min() >= 0.0 and cam.max() <= 1.0 + 1e-9
    nonzero = [cam for cam in maps if cam.max() > 0]
    assert len(nonzero) >= 2, "Grad-CAM is all zero for most classes"
    assert any(not np.allclose(nonzero[0], other) for other in nonzero[1:])
    # The analysis leaves the model as it found it: eval mode, no hooks, still scriptable.
    assert not model.training
    assert not model.conv[-1]._forward_hooks
    torch.jit.script(model)
    with pytest.raises(ValueError):
        grad_cam(model, window, rr, 5)


def test_grad_cam_restores_training_mode(real):
    model = BeatSpectrogramCNN().train()
    grad_cam(model, real["window"][1].numpy(), real["rr"][1].numpy(), 0)
    assert model.training


def test_attention_rows_sum_to_one(real):
    model, _ = _make("attention")
    with torch.no_grad():
        for segment in (real["segment"], torch.randn(3, SEGMENT_WINDOW)):
            _, attn = model(segment)
            assert (attn >= 0).all()
            torch.testing.assert_close(attn.sum(dim=-1), torch.ones(attn.shape[:2]), rtol=1e-5, atol=1e-5)


def test_card_template_matches_the_model():
    card = card_template(BeatCNNBiLSTM(rr_features=6), "beat", rr_features=[f"f{i}" for i in range(6)])
    assert card["kind"] == "beat" and card["input"]["window"] == BEAT_WINDOW
    assert card["input"]["before"] == BEAT_BEFORE and card["classes"] == list(BEAT_CLASSES)
    assert "ECGFilter" in card["input"]["preprocessing"]
    with pytest.raises(ValueError, match="RR feature names"):
        card_template(BeatCNNBiLSTM(rr_features=6), "beat")
    seg = card_template(SegmentAttentionCNN(), "segment")
    assert seg["outputs"] == ["logits", "attention"] and seg["input"]["window"] == SEGMENT_WINDOW
