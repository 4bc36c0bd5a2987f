"""The heart-sound classifier: raw 5-s audio at 2 kHz in, normal/abnormal logits out.

Everything between the microphone samples and the CNN lives inside the model, so the
exported file needs nothing from serving but full-scale audio at 2 kHz: gain
normalisation, STFT, a 128-bin log-mel spectrogram limited to the heart-sound band (the
band-limiting), and a per-window robust normalisation. That last step is what the model is
judged on: each PhysioNet 2016 database was recorded with another stethoscope, and a fixed
frequency response is a constant offset per mel bin of a log spectrogram, so subtracting
each bin's median over the window removes the device (and the gain) and leaves the
heart sounds' time-frequency pattern.

The mel filterbank is built with numpy at construction and stored as a buffer
(torchaudio is not a dependency). SpecAugment-style time and frequency masks are applied
in training mode only; ``torch.jit.script`` keeps the branch but an exported model runs in
eval mode and never takes it.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from ecgmon.models.networks import stft
from ecgmon.models.pcg_data import CLASSES, FS, HOP, WINDOW

N_MELS = 128
N_FFT = 512
WIN_LENGTH = 200  # 100 ms: ~10 Hz resolution, short against the ~300 ms S1-S2 interval
STFT_HOP = 80  # 40 ms between frames: 126 frames per window
F_MIN = 25.0  # below: handling noise and the stethoscope's own rumble
# Above: little heart-sound or murmur energy, but each site's own noise (speech, friction,
# the stethoscope's hiss); the daemon's heart-sound DSP keeps the same 25-400 Hz band.
F_MAX = 400.0
GROUPS = 4  # channel groups of the group norms
PREPROCESSING = "none: raw full-scale audio at 2 kHz (mono, resampled by the source if needed)"


def hz_to_mel(f: np.ndarray | float) -> np.ndarray:
    """HTK mel scale."""
    return 2595.0 * np.log10(1.0 + np.asarray(f, dtype=np.float64) / 700.0)


def mel_to_hz(m: np.ndarray | float) -> np.ndarray:
    return 700.0 * (10.0 ** (np.asarray(m, dtype=np.float64) / 2595.0) - 1.0)


def mel_filterbank(n_mels: int, n_fft: int, fs: float, f_min: float, f_max: float) -> np.ndarray:
    """``[n_mels, n_fft // 2 + 1]`` triangular filters, centres evenly spaced in mel.

    Each triangle's half-width is the spacing of the centres but never less than one FFT
    bin: at the low end 128 mel bands are narrower than the FFT's bins, and a plain
    triangle there would fall between bins and stay empty. Each filter is scaled to unit
    sum, so a band's value is a mean power whatever its width.
    """
    if not 0 <= f_min < f_max <= fs / 2:
        raise ValueError(f"mel range {f_min}-{f_max} Hz must lie within 0-{fs / 2} Hz")
    freqs = np.arange(n_fft // 2 + 1) * fs / n_fft
    edges = mel_to_hz(np.linspace(hz_to_mel(f_min), hz_to_mel(f_max), n_mels + 2))
    bin_hz = fs / n_fft
    bank = np.zeros((n_mels, len(freqs)))
    for m in range(n_mels):
        lo, centre, hi = edges[m : m + 3]
        left = max(centre - lo, bin_hz)
        right = max(hi - centre, bin_hz)
        rising = 1.0 - (centre - freqs) / left
        falling = 1.0 - (freqs - centre) / right
        bank[m] = np.clip(np.where(freqs <= centre, rising, falling), 0.0, None)
    return (bank / bank.sum(axis=1, keepdims=True)).astype(np.float32)


def _block(c_in: int, c_out: int, kernel: int = 3, stride: int = 1, pool: int = 2) -> nn.Sequential:
    layers: list[nn.Module] = [
        nn.Conv2d(c_in, c_out, kernel, stride=stride, padding=kernel // 2, bias=False),
        # Group norm, not batch norm: statistics of each window, the same in training and
        # serving. Batch norm's running statistics are those of the training databases' last
        # batches; on a new stethoscope they are off and shift every output at once.
        nn.GroupNorm(min(GROUPS, c_out), c_out),
        nn.ReLU(),
    ]
    if pool > 1:
        layers.append(nn.MaxPool2d(pool))
    return nn.Sequential(*layers)


class PcgMelCNN(nn.Module):
    """``forward(audio [B, 10000]) -> logits [B, 2]`` (normal, abnormal).

    ``time_masks``/``freq_masks`` masks of up to ``max_time_mask`` frames and
    ``max_freq_mask`` mel bins are set to 0 (a bin's median) on every training window.
    """

    kind = "pcg"
    normalisation = (
        "audio: DC removed and divided by its RMS; log-mel: each mel bin minus its median over "
        "the window (removes the stethoscope's frequency response and the gain), then divided "
        "by the window's median absolute value"
    )

    def __init__(
        self,
        n_classes: int = len(CLASSES),
        window: int = WINDOW,
        fs: float = FS,
        n_mels: int = N_MELS,
        channels: tuple[int, int, int, int] = (8, 16, 32, 64),
        dropout: float = 0.3,
        time_masks: int = 2,
        max_time_mask: int = 20,
        freq_masks: int = 2,
        max_freq_mask: int = 16,
    ) -> None:
        super().__init__()
        self.window = window
        self.fs = fs
        self.n_classes = n_classes
        self.n_mels = n_mels
        self.n_fft = N_FFT
        self.hop = STFT_HOP
        self.win_length = WIN_LENGTH
        self.time_masks = time_masks
        self.max_time_mask = max_time_mask
        self.freq_masks = freq_masks
        self.max_freq_mask = max_freq_mask
        # clone(): hann_window may be a view that torch.export.save would store whole.
        self.register_buffer("stft_window", torch.hann_window(WIN_LENGTH).clone())
        self.register_buffer("mel", torch.from_numpy(mel_filterbank(n_mels, N_FFT, fs, F_MIN, F_MAX)))
        c1, c2, c3, c4 = channels
        # A strided 5x5 first layer halves both axes at once: full-resolution feature maps cost
        # more than half of a training step and add nothing the next layers need.
        self.conv = nn.Sequential(
            _block(1, c1, kernel=5, stride=2, pool=1), _block(c1, c2), _block(c2, c3), _block(c3, c4)
        )
        self.head = nn.Sequential(nn.Dropout(dropout), nn.Linear(2 * c4, n_classes))

    def log_mel(self, audio: Tensor) -> Tensor:
        """``[B, n_mels, frames]`` log-mel power of the gain-normalised window."""
        x = audio - audio.mean(dim=-1, keepdim=True)
        # The RMS floor (far below 16-bit quantisation) keeps silence finite: zeros stay zeros.
        x = x / torch.sqrt((x * x).mean(dim=-1, keepdim=True) + 1e-10)
        spec = stft(x, self.n_fft, self.hop, self.win_length, self.stft_window)
        power = spec.real * spec.real + spec.imag * spec.imag  # [B, F, T]
        return torch.log(torch.matmul(self.mel, power) + 1e-6)

    def normalised(self, audio: Tensor) -> Tensor:
        """The log-mel after the per-window robust normalisation (what the CNN sees)."""
        z = self.log_mel(audio)
        z = z - z.median(dim=2, keepdim=True).values
        scale = z.flatten(1).abs().median(dim=1).values
        return z / (scale[:, None, None] + 1e-3)

    def _spec_augment(self, z: Tensor) -> Tensor:
        b, f, t = z.shape
        keep = torch.ones_like(z)
        frames = torch.arange(t, device=z.device)[None, :]
        bins = torch.arange(f, device=z.device)[None, :]
        for _ in range(self.time_masks):
            width = torch.randint(0, self.max_time_mask + 1, (b, 1), device=z.device)
            start = (torch.rand(b, 1, device=z.device) * (t - width)).long()
            keep = keep * (~((frames >= start) & (frames < start + width))).float()[:, None, :]
        for _ in range(self.freq_masks):
            width = torch.randint(0, self.max_freq_mask + 1, (b, 1), device=z.device)
            start = (torch.rand(b, 1, device=z.device) * (f - width)).long()
            keep = keep * (~((bins >= start) & (bins < start + width))).float()[:, :, None]
        return z * keep

    def embed(self, audio: Tensor) -> Tensor:
        """``[B, 2 * channels[-1]]``: the pooled features the head classifies (training's
        database adversary reads them too)."""
        z = self.normalised(audio)
        if self.training:
            z = self._spec_augment(z)
        x = self.conv(z.unsqueeze(1))
        return torch.cat([x.mean(dim=(2, 3)), x.amax(dim=(2, 3))], dim=1)

    def forward(self, audio: Tensor) -> Tensor:
        return self.head(self.embed(audio))


def pcg_card_template(model: PcgMelCNN, name: str, aggregation: str, threshold: float) -> dict[str, Any]:
    """The card fields the network knows (see ``ecgmon.models.export``), plus the PCG
    recording-level decision rule the daemon and ``ecgmon evaluate pcg`` apply."""
    return {
        "name": name,
        "kind": model.kind,
        "input": {
            "fs": float(model.fs),
            "window": model.window,
            "hop": HOP,
            "preprocessing": PREPROCESSING,
            "normalisation": model.normalisation,
            "features": (
                f"STFT n_fft {model.n_fft}, Hann {model.win_length}, hop {model.hop}; "
                f"{model.n_mels} mel bins {F_MIN:g}-{F_MAX:g} Hz (HTK scale), log power"
            ),
        },
        "classes": list(CLASSES),
        "outputs": ["logits"],
        "decision": {
            "aggregation": aggregation,
            "threshold": threshold,
            "positive_class": "abnormal",
        },
    }
