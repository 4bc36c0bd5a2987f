"""Grad-CAM of the beat-spectrogram model, one code path for every front end that shows it:
``ecgmon evaluate model`` (gradcam.png) and the HTTP face's ``?explain=true``.

A model file is TorchScript or torch.export, whose layers cannot be hooked; Grad-CAM needs
gradients through eager modules. So the network is rebuilt eagerly from the file's weights and
card, and used only where it reproduces the file's own outputs.
"""

from __future__ import annotations

import numpy as np
import torch

from ecgmon.evaluate import plots
from ecgmon.models.networks import BeatSpectrogramCNN, grad_cam, grad_cam_frames
from ecgmon.monitor.model_loader import LoadedModel

# The eager rebuild must give the file's logits to this tolerance before its Grad-CAM may be
# shown as the file's.
REBUILD_ATOL = 1e-4


def _logits(out: object) -> torch.Tensor:
    return out[0] if isinstance(out, (tuple, list)) else out  # type: ignore[return-value]


def eager_spectrogram_model(model: LoadedModel) -> BeatSpectrogramCNN | None:
    """The eager network of a beat-spectrogram file, rebuilt from its weights and card; None if
    the file is another network. RuntimeError if its weights do not fit BeatSpectrogramCNN."""
    state = {k: v.detach().cpu() for k, v in model.module.state_dict().items()}
    if "stft_window" not in state:
        return None
    net = BeatSpectrogramCNN(n_classes=len(model.classes), rr_features=len(model.rr_features),
                             window=model.window, fs=model.fs)
    net.load_state_dict(state)
    return net.eval()


class SpectrogramGradCam:
    """A beat-spectrogram model file with its eager twin: its class and Grad-CAM per beat."""

    def __init__(self, model: LoadedModel, net: BeatSpectrogramCNN) -> None:
        self.model = model
        self.net = net

    @classmethod
    def of(cls, model: LoadedModel) -> SpectrogramGradCam | None:
        """The model with its eager twin; None if it is another network, RuntimeError if its
        weights do not fit BeatSpectrogramCNN."""
        net = eager_spectrogram_model(model)
        return None if net is None else cls(model, net)

    def reproduces(self, windows: np.ndarray, rr: np.ndarray) -> bool:
        """Whether the eager twin gives the file's logits for these beats."""
        with torch.inference_mode():
            eager = self.net(torch.from_numpy(np.asarray(windows, np.float32)),
                             torch.from_numpy(np.asarray(rr, np.float32)))
        served = _logits(self.model(windows, rr)).float().cpu()
        return bool(torch.allclose(eager, served, atol=REBUILD_ATOL))

    def probabilities(self, windows: np.ndarray, rr: np.ndarray) -> np.ndarray:
        """The file's softmax probabilities ``[B, classes]`` (the served model, not the twin)."""
        return torch.softmax(_logits(self.model(windows, rr)).float(), dim=-1).cpu().numpy().astype(np.float64)

    def explain(self, windows: np.ndarray, rr: np.ndarray, classes: np.ndarray) -> np.ndarray:
        """Grad-CAM ``[B, n_freq, n_frames]`` of each beat's class index in ``classes``."""
        return grad_cam_frames(self.net, windows, rr, classes)

    def panels(self, examples: list[plots.Example], windows: np.ndarray, rr: np.ndarray,
               classes: np.ndarray) -> list[plots.GradCamPanel]:
        """One gradcam.png row per beat: its spectrogram and the Grad-CAM of its class index in
        ``classes`` along the window's samples."""
        net = self.net
        with torch.inference_mode():
            spectrograms = net.spectrogram(torch.from_numpy(np.asarray(windows, np.float32))).numpy()
        return [plots.GradCamPanel(ex, spec, net.frame_centres(), grad_cam(net, w, r, int(c)), net.frequencies())
                for ex, spec, w, r, c in zip(examples, spectrograms, windows, rr, classes)]
