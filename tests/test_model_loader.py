"""The daemon's model loader: a good file loads and classifies; every bad one is one clear ModelError."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from ecgmon.models.export import export_torchscript
from ecgmon.models.networks import BeatCNNBiLSTM, SegmentAttentionCNN, card_template
from ecgmon.model_card import ModelError, card_path, check_card, file_sha256
from ecgmon.monitor.model_loader import LoadedModel, load_model, resolve_device

pytestmark = pytest.mark.filterwarnings(r"ignore:`torch\.jit\.\w+` is deprecated:DeprecationWarning")


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("models")
    beat, segment = BeatCNNBiLSTM().eval(), SegmentAttentionCNN().eval()
    export_torchscript(beat, folder / "beat.pt", card_template(beat, "beat-cnn-bilstm"))
    export_torchscript(segment, folder / "segment.pt", card_template(segment, "segment-attention"))
    return {"beat": folder / "beat.pt", "segment": folder / "segment.pt"}


def _copy(src: Path, dst_dir: Path, name: str = "model.pt") -> Path:
    dst = dst_dir / name
    shutil.copyfile(src, dst)
    shutil.copyfile(card_path(src), card_path(dst))
    return dst


def _card(path: Path) -> dict:
    return json.loads(card_path(path).read_text())


def _write_card(path: Path, card: dict, resign: bool = True) -> None:
    if resign:
        card["sha256"] = file_sha256(path)
    card_path(path).write_text(json.dumps(card))


def _one_line(exc: pytest.ExceptionInfo) -> str:
    text = str(exc.value)
    assert "\n" not in text, text
    return text


def test_good_model_loads_and_classifies(exported):
    torch.manual_seed(1)
    model = load_model(exported["beat"], device="auto")
    assert isinstance(model, LoadedModel)
    assert model.device == torch.device("cuda" if torch.cuda.is_available() else "cpu")
    assert model.kind == "beat" and model.classes == ("N", "S", "V", "F", "Q")
    assert (model.fs, model.window, model.before) == (360.0, 252, 90)
    assert len(model.rr_features) == 4 and model.name == "beat-cnn-bilstm"
    window, rr = 0.3 * torch.randn(6, 252), 0.8 + 0.1 * torch.rand(6, 4)
    logits = model(window, rr)
    assert logits.shape == (6, 5) and not logits.requires_grad
    index, prob = model.classify(window.numpy(), rr.numpy())  # numpy arrays are accepted too
    assert index.shape == prob.shape == (6,)
    assert ((index >= 0) & (index < 5)).all() and ((prob > 0.2) & (prob <= 1)).all()


def test_segment_model_returns_logits_and_attention(exported):
    model = load_model(exported["segment"], device="cpu")
    assert model.kind == "segment" and model.before is None and model.window == 3600
    logits, attention = model(torch.randn(2, 3600))
    assert logits.shape == (2, 2) and attention.shape == (2, 150, 150)


def test_missing_file(tmp_path):
    with pytest.raises(ModelError, match="model file not found") as exc:
        load_model(tmp_path / "nothing.pt")
    _one_line(exc)


def test_wrong_suffix(tmp_path, exported):
    path = tmp_path / "beat.onnx"
    shutil.copyfile(exported["beat"], path)
    with pytest.raises(ModelError, match=r"expected \.pt .* or \.pt2"):
        load_model(path)


def test_missing_card(tmp_path, exported):
    path = tmp_path / "beat.pt"
    shutil.copyfile(exported["beat"], path)
    with pytest.raises(ModelError, match="model card beat.json is missing") as exc:
        load_model(path)
    _one_line(exc)


def test_corrupt_card(tmp_path, exported):
    path = _copy(exported["beat"], tmp_path)
    card_path(path).write_text('{"name": "beat", "kind": ')
    with pytest.raises(ModelError, match="not a readable JSON model card") as exc:
        load_model(path)
    _one_line(exc)


def test_card_missing_fields(tmp_path, exported):
    path = _copy(exported["beat"], tmp_path)
    card = _card(path)
    del card["classes"], card["input"]["before"]
    _write_card(path, card)
    with pytest.raises(ModelError, match="lacks classes"):
        load_model(path)
    card["classes"] = ["N", "S", "V", "F", "Q"]
    _write_card(path, card)
    with pytest.raises(ModelError, match=r"lacks input\.before.*ecgmon train beat"):
        load_model(path)


def test_unknown_kind(tmp_path, exported):
    path = _copy(exported["beat"], tmp_path)
    card = _card(path)
    card["kind"] = "rhythm"
    _write_card(path, card)
    with pytest.raises(ModelError, match="unknown model kind 'rhythm'") as exc:
        load_model(path)
    _one_line(exc)


def test_random_bytes(tmp_path, exported):
    """Random bytes under a card that vouches for them: torch cannot read them."""
    path = _copy(exported["beat"], tmp_path)
    path.write_bytes(np.random.default_rng(0).bytes(50_000))
    _write_card(path, _card(path))
    expected = r"not a TorchScript \(\.pt\) model file: corrupt or truncated.*ecgmon train beat"
    with pytest.raises(ModelError, match=expected) as exc:
        load_model(path)
    _one_line(exc)


def test_truncated_file(tmp_path, exported):
    path = _copy(exported["beat"], tmp_path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    # With the card of the whole file: the sha256 catches it before torch reads anything.
    with pytest.raises(ModelError, match="does not match its card.*truncated") as exc:
        load_model(path)
    _one_line(exc)
    # Even if the card were re-signed, torch cannot read half a zip archive.
    _write_card(path, _card(path))
    with pytest.raises(ModelError, match="corrupt or truncated"):
        load_model(path)


def test_sha_mismatch(tmp_path, exported):
    """A different valid model under the first one's card."""
    path = _copy(exported["beat"], tmp_path)
    torch.manual_seed(5)
    other = tmp_path / "other.pt"
    model = BeatCNNBiLSTM().eval()
    export_torchscript(model, other, card_template(model, "other"))
    shutil.copyfile(other, path)
    with pytest.raises(ModelError, match=r"does not match its card \(sha256 [0-9a-f]{12}") as exc:
        load_model(path)
    _one_line(exc)


def test_card_with_wrong_class_count(tmp_path, exported):
    path = _copy(exported["beat"], tmp_path)
    card = _card(path)
    card["classes"] = ["N", "S", "V"]
    _write_card(path, card)
    with pytest.raises(ModelError, match="the card says 3 classes but the model outputs 5") as exc:
        load_model(path)
    _one_line(exc)


def test_beat_card_on_a_segment_model(tmp_path, exported):
    """The segment model's file under a beat card: it does not take (window, rr)."""
    path = _copy(exported["segment"], tmp_path)
    card = _card(exported["beat"])
    _write_card(path, card)
    expected = r"does not accept the inputs its card describes \(\[2, 252\], \[2, 4\]"
    with pytest.raises(ModelError, match=expected) as exc:
        load_model(path)
    _one_line(exc)


def test_segment_card_on_a_beat_model(tmp_path, exported):
    path = _copy(exported["beat"], tmp_path)
    _write_card(path, _card(exported["segment"]))
    with pytest.raises(ModelError, match="does not accept the inputs its card describes"):
        load_model(path)


def test_card_with_wrong_output_count(tmp_path, exported):
    path = _copy(exported["segment"], tmp_path)
    card = _card(path)
    card["outputs"] = ["logits"]
    _write_card(path, card)
    with pytest.raises(ModelError, match=r"names 1 output\(s\) \(logits\) but the model returns 2"):
        load_model(path)


def test_card_format_must_match_the_file_name(tmp_path, exported):
    path = _copy(exported["beat"], tmp_path, "model.pt2")
    with pytest.raises(ModelError, match="card says format 'torchscript' but the file name says 'torch.export'"):
        load_model(path)
    card = _card(path)
    card["format"] = "torch.export"
    _write_card(path, card)
    with pytest.raises(ModelError, match="a TorchScript file, not torch.export: name it .pt"):
        load_model(path)


def test_state_dict_is_not_a_model(tmp_path, exported):
    path = _copy(exported["beat"], tmp_path)
    torch.save(BeatCNNBiLSTM().state_dict(), path)
    _write_card(path, _card(path))
    with pytest.raises(ModelError, match="a torch.save checkpoint or state_dict, not a TorchScript") as exc:
        load_model(path)
    _one_line(exc)


def test_unreadable_window_size(tmp_path, exported):
    path = _copy(exported["beat"], tmp_path)
    card = _card(path)
    card["input"]["window"] = "252"
    _write_card(path, card)
    with pytest.raises(ModelError, match="input.window must be a positive number of samples"):
        load_model(path)


def test_check_card_rejects_non_objects():
    with pytest.raises(ModelError, match="must be a JSON object"):
        check_card([1, 2, 3])


def test_devices():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(ModelError, match="unknown device 'gpu0'"):
        resolve_device("gpu0")
    if not torch.cuda.is_available():
        with pytest.raises(ModelError, match="torch sees no GPU"):
            resolve_device("cuda")


def test_export_leaves_no_temporary_files(exported):
    names = sorted(os.listdir(exported["beat"].parent))
    assert names == ["beat.json", "beat.pt", "segment.json", "segment.pt"]
