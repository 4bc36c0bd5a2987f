"""The ECG networks (beat CNN-BiLSTM, beat feature MLP and their ensemble, beat spectrogram
CNN, segment attention CNN).

Each normalises its own input and is ``torch.jit.script``-able, so an exported file needs
nothing from serving but the causally 0.5-40 Hz filtered ECG in mV at 360 Hz; Grad-CAM for
the spectrogram CNN is an eager-mode analysis tool beside them.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

FS = 360.0
BEAT_WINDOW = 252  # 0.25 s before and 0.45 s after the R peak at 360 Hz
BEAT_BEFORE = 90
SEGMENT_WINDOW = 3600  # 10 s
BEAT_CLASSES: tuple[str, ...] = ("N", "S", "V", "F", "Q")
SEGMENT_CLASSES: tuple[str, ...] = ("normal", "abnormal")
# The names ecgmon.monitor.dsp.beat_features gives its first four RR columns (seconds); a model built
# on more columns gets their names from training (card_template(rr_features=...)).
DEFAULT_RR_FEATURES: tuple[str, ...] = ("pre_rr", "post_rr", "local_rr", "avg_rr")
PREPROCESSING = "causal Butterworth bandpass 0.5-40 Hz order 2 (ecgmon.monitor.dsp.filters.ECGFilter)"


def stft(x: Tensor, n_fft: int, hop: int, win_length: int, window: Tensor) -> Tensor:
    """The complex one-sided STFT ``[B, n_fft // 2 + 1, frames]`` both spectrogram networks
    compute inside their files (centred frames, reflect padding)."""
    return torch.stft(
        x,
        n_fft=n_fft,
        hop_length=hop,
        win_length=win_length,
        window=window,
        center=True,
        pad_mode="reflect",
        normalized=False,
        onesided=True,
        return_complex=True,
    )


def _standardise(x: Tensor, eps: float = 1e-6) -> Tensor:
    """Per-window zero mean, unit standard deviation along the last axis.

    Per-window rather than dataset-wide: electrode gain and lead placement differ between
    patients much more than the beat shapes that tell the classes apart, and the models are
    judged on patients they never saw. ``eps`` (mV^2, far below any ECG) is added to the
    variance so that a flat window (a lead-off, the loader's dry run on zeros) gives zeros,
    not NaN.
    """
    mean = x.mean(dim=-1, keepdim=True)
    centred = x - mean
    var = (centred * centred).mean(dim=-1, keepdim=True)
    return centred / torch.sqrt(var + eps)


class _Standardiser(nn.Module):
    """Standardise the RR and patient inputs with fixed buffers.

    The buffers start as identity (mean 0, std 1); training sets them from the training
    records with :meth:`set_stats` so that the exported file carries them.
    """

    def __init__(self, rr_features: int) -> None:
        super().__init__()
        if rr_features < 1:
            raise ValueError(f"rr_features must be at least 1, got {rr_features}")
        self.rr_features = rr_features
        self.register_buffer("mean", torch.zeros(rr_features))
        self.register_buffer("std", torch.ones(rr_features))

    @torch.jit.ignore
    def set_stats(self, mean: Sequence[float] | np.ndarray, std: Sequence[float] | np.ndarray) -> None:
        mean_t = torch.as_tensor(np.asarray(mean, dtype=np.float32))
        std_t = torch.as_tensor(np.asarray(std, dtype=np.float32))
        if mean_t.shape != (self.rr_features,) or std_t.shape != (self.rr_features,):
            raise ValueError(f"RR statistics must have {self.rr_features} values each")
        # A constant feature (std 0) would divide by zero; leave it unscaled instead.
        std_t = torch.where(std_t > 1e-6, std_t, torch.ones_like(std_t))
        self.mean.copy_(mean_t)
        self.std.copy_(std_t)

    def forward(self, rr: Tensor) -> Tensor:
        return _standardise_rr(rr, self.mean, self.std)


def _standardise_rr(rr: Tensor, mean: Tensor, std: Tensor) -> Tensor:
    # A value that is not known (the first beats' RR intervals, a second lead the source
    # lacks) becomes the training average, 0 after standardisation, instead of a NaN class.
    return torch.nan_to_num((rr - mean) / std, nan=0.0, posinf=0.0, neginf=0.0)


class _RRBranch(_Standardiser):
    """The standardised RR inputs through a small MLP."""

    def __init__(self, rr_features: int, hidden: int = 16) -> None:
        super().__init__(rr_features)
        self.mlp = nn.Sequential(
            nn.Linear(rr_features, hidden),
            nn.ReLU(),
            nn.Linear(hidden, hidden),
            nn.ReLU(),
        )
        self.out_features = hidden

    def forward(self, rr: Tensor) -> Tensor:
        return self.mlp(_standardise_rr(rr, self.mean, self.std))


def _conv1d_block(c_in: int, c_out: int, kernel: int, pool: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv1d(c_in, c_out, kernel, padding=kernel // 2, bias=False),
        nn.BatchNorm1d(c_out),
        nn.ReLU(),
        nn.MaxPool1d(pool),
    )


class BeatCNNBiLSTM(nn.Module):
    """Beat classifier: 1-D CNN, bidirectional LSTM over the conv time axis, RR features.

    ``forward(window [B, 252], rr [B, k]) -> logits [B, n_classes]``.
    """

    kind = "beat"
    normalisation = (
        "window: per-window standardisation (zero mean, unit std) inside the model; "
        "rr: (rr - mean) / std with buffers fixed from the training records"
    )

    def __init__(
        self,
        rr_features: int = 4,
        n_classes: int = 5,
        window: int = BEAT_WINDOW,
        channels: tuple[int, int, int] = (16, 32, 48),
        lstm_hidden: int = 32,
        dropout: float = 0.3,
    ) -> None:
        super().__init__()
        self.window = window
        self.n_classes = n_classes
        c1, c2, c3 = channels
        # 252 -> 126 -> 63 -> 31 steps of ~22 ms: short enough for the LSTM, fine enough
        # to keep the QRS onset and the P wave apart.
        self.conv = nn.Sequential(
            _conv1d_block(1, c1, 7, 2),
            _conv1d_block(c1, c2, 5, 2),
            _conv1d_block(c2, c3, 3, 2),
        )
        self.lstm = nn.LSTM(c3, lstm_hidden, batch_first=True, bidirectional=True)
        self.rr = _RRBranch(rr_features)
        pooled = 4 * lstm_hidden  # mean and max over time of 2 * hidden
        self.head = nn.Sequential(
            nn.Dropout(dropout),
            nn.Linear(pooled + self.rr.out_features, 64),
            nn.ReLU(),
            nn.Dropout(dropout),
            nn.Linear(64, n_classes),
        )

    def forward(self, window: Tensor, rr: Tensor) -> Tensor:
        x = _standardise(window).unsqueeze(1)  # [B, 1, L]
        x = self.conv(x)  # [B, C, T]
        seq, _ = self.lstm(x.transpose(1, 2))  # [B, T, 2H]
        # Mean and max pooling: the mean sees the whole beat, the max a single sharp feature.
        pooled = torch.cat([seq.mean(dim=1), seq.amax(dim=1)], dim=1)
        return self.head(torch.cat([pooled, self.rr(rr)], dim=1))


class BeatFeatureMLP(nn.Module):
    """Beat classifier on the RR, patient-adaptive and second-lead inputs and the window's
    coarse shape: a plain MLP, which learns across patients differently from the CNN-BiLSTM
    (it sees the shape only at 60 Hz, after the per-window standardisation, beside the
    template comparisons), so the two err on different beats and their mean is better than
    either (see the README's table).

    ``forward(window [B, 252], rr [B, k]) -> logits [B, n_classes]``. Which inputs are
    missing (NaN: a one-lead source's second-lead inputs) is an input too.
    """

    kind = "beat"
    normalisation = (
        "window: every 6th sample (60 Hz), standardised per window inside the model; "
        "rr: (rr - mean) / std with buffers fixed from the training records, NaN as 0 and flagged"
    )

    def __init__(
        self,
        rr_features: int = 4,
        n_classes: int = 5,
        window: int = BEAT_WINDOW,
        step: int = 6,
        hidden: tuple[int, int] = (128, 64),
        dropout: float = 0.2,
    ) -> None:
        super().__init__()
        self.window = window
        self.n_classes = n_classes
        self.step = step
        self.rr = _Standardiser(rr_features)
        h1, h2 = hidden
        n_in = 2 * rr_features + len(range(0, window, step))
        self.head = nn.Sequential(
            nn.Linear(n_in, h1), nn.ReLU(), nn.Dropout(dropout),
            nn.Linear(h1, h2), nn.ReLU(), nn.Dropout(dropout),
            nn.Linear(h2, n_classes),
        )

    def forward(self, window: Tensor, rr: Tensor) -> Tensor:
        coarse = _standardise(window[:, :: self.step])
        missing = torch.isnan(rr).to(window.dtype)
        return self.head(torch.cat([self.rr(rr), missing, coarse], dim=1))


class BeatEnsemble(nn.Module):
    """Beat models on the same inputs, their class probabilities averaged.

    ``forward(window, rr) -> logits``: the log of the mean probability, so a softmax of the
    output is that mean, as for any single beat model.
    """

    kind = "beat"

    def __init__(self, members: Sequence[nn.Module]) -> None:
        super().__init__()
        if not members:
            raise ValueError("an ensemble needs at least one member")
        first = members[0]
        self.members = nn.ModuleList(members)
        self.window = first.window
        self.n_classes = first.n_classes
        self.rr_features = first.rr.rr_features
        if any(m.window != self.window or m.n_classes != self.n_classes or m.rr.rr_features != self.rr_features
               for m in members):
            raise ValueError("ensemble members must share their window, classes and RR inputs")
        self.normalisation = "mean of the members' probabilities; " + " | ".join(
            f"{type(m).__name__}: {m.normalisation}" for m in members)

    def forward(self, window: Tensor, rr: Tensor) -> Tensor:
        probabilities: list[Tensor] = []
        for member in self.members:
            probabilities.append(torch.softmax(member(window, rr), dim=1))
        mean = torch.stack(probabilities).mean(dim=0)
        return torch.log(mean.clamp_min(1e-12))


class BeatSpectrogramCNN(nn.Module):
    """Beat classifier on the log-magnitude STFT of the window (computed inside), plus RR.

    ``forward(window [B, 252], rr [B, k]) -> logits [B, n_classes]``. The STFT uses a
    64-sample (178 ms) Hann window every 8 samples (22 ms), zero-padded to 128 points, and
    keeps the bins up to ``fmax_hz`` (the filtered ECG has nothing above 40 Hz).
    """

    kind = "beat"
    normalisation = (
        "window: per-window standardisation inside the model, then log magnitude STFT "
        "normalised by fixed batch-norm statistics; rr: (rr - mean) / std with buffers "
        "fixed from the training records"
    )

    def __init__(
        self,
        n_classes: int = 5,
        rr_features: int = 4,
        window: int = BEAT_WINDOW,
        fs: float = FS,
        n_fft: int = 128,
        win_length: int = 64,
        hop: int = 8,
        fmax_hz: float = 50.0,
        channels: tuple[int, int, int] = (16, 32, 48),
        dropout: float = 0.3,
    ) -> None:
        super().__init__()
        self.window = window
        self.n_classes = n_classes
        self.fs = fs
        self.n_fft = n_fft
        self.win_length = win_length
        self.hop = hop
        self.n_freq = int(math.floor(fmax_hz * n_fft / fs)) + 1
        self.n_frames = 1 + window // hop  # torch.stft with center=True
        # clone(): hann_window returns a view of a longer tensor, which torch.export.save
        # would store whole and warn about.
        self.register_buffer("stft_window", torch.hann_window(win_length).clone())
        # Fixed (after training) mean and scale of the log spectrogram.
        self.spec_norm = nn.BatchNorm2d(1)
        c1, c2, c3 = channels
        self.conv = nn.Sequential(
            nn.Sequential(
                nn.Conv2d(1, c1, 3, padding=1, bias=False), nn.BatchNorm2d(c1), nn.ReLU(), nn.MaxPool2d(2)
            ),
            # Pool frequency only: keep the time resolution for Grad-CAM and for the
            # P-wave/QRS timing that separates S from N.
            nn.Sequential(
                nn.Conv2d(c1, c2, 3, padding=1, bias=False), nn.BatchNorm2d(c2), nn.ReLU(), nn.MaxPool2d((2, 1))
            ),
            nn.Sequential(nn.Conv2d(c2, c3, 3, padding=1, bias=False), nn.BatchNorm2d(c3), nn.ReLU()),
        )
        self.rr = _RRBranch(rr_features)
        self.head = nn.Sequential(
            nn.Dropout(dropout),
            nn.Linear(2 * c3 + self.rr.out_features, 64),
            nn.ReLU(),
            nn.Dropout(dropout),
            nn.Linear(64, n_classes),
        )

    def spectrogram(self, window: Tensor) -> Tensor:
        """Log-magnitude STFT ``[B, n_freq, n_frames]`` of the standardised window."""
        x = _standardise(window)
        spec = stft(x, self.n_fft, self.hop, self.win_length, self.stft_window)
        spec = spec[:, : self.n_freq, :]
        # |z| from real and imaginary parts, + eps inside the log: finite for a flat window.
        power = spec.real * spec.real + spec.imag * spec.imag
        return 0.5 * torch.log(power + 1e-6)

    @torch.jit.ignore
    def frequencies(self) -> np.ndarray:
        """Centre frequency (Hz) of each spectrogram row."""
        return np.arange(self.n_freq) * self.fs / self.n_fft

    @torch.jit.ignore
    def frame_centres(self) -> np.ndarray:
        """Sample index in the window at the centre of each spectrogram column."""
        return np.arange(self.n_frames) * self.hop

    def forward(self, window: Tensor, rr: Tensor) -> Tensor:
        x = self.spec_norm(self.spectrogram(window).unsqueeze(1))  # [B, 1, F, T]
        x = self.conv(x)
        pooled = torch.cat([x.mean(dim=(2, 3)), x.amax(dim=(2, 3))], dim=1)
        return self.head(torch.cat([pooled, self.rr(rr)], dim=1))


def grad_cam_frames(model: BeatSpectrogramCNN, windows: Any, rr: Any, target_classes: Any) -> np.ndarray:
    """Grad-CAM of a batch of beats, each for its own target class: ``[B, n_freq, n_frames]``,
    each map in [0, 1] on the model's spectrogram grid (rows ``model.frequencies()``, columns
    the frames centred at ``model.frame_centres()``).

    Computed in eager mode with hooks on the last conv block (after its ReLU), from the
    weights ``mean(d score / d activation)`` per channel (Selvaraju et al. 2017). In eval mode
    the items of a batch do not mix, so the gradient of the summed target scores is each
    item's own. A map that the ReLU leaves all zero is returned as zeros.
    """
    device = next(model.parameters()).device
    w = torch.as_tensor(np.asarray(windows, dtype=np.float32), device=device).reshape(-1, model.window)
    r = torch.as_tensor(np.asarray(rr, dtype=np.float32), device=device).reshape(w.shape[0], -1)
    targets = torch.as_tensor(np.asarray(target_classes, dtype=np.int64), device=device).reshape(-1)
    if targets.numel() != w.shape[0]:
        raise ValueError(f"{targets.numel()} target classes for {w.shape[0]} beats")
    if targets.numel() and not bool(((targets >= 0) & (targets < model.n_classes)).all()):
        raise ValueError(f"target_class must be in 0..{model.n_classes - 1}, got {targets.tolist()}")
    layer = model.conv[-1]
    store: dict[str, Tensor] = {}

    def hook(_module: nn.Module, _inputs: Any, output: Tensor) -> None:
        store["act"] = output

    was_training = model.training
    handle = layer.register_forward_hook(hook)
    try:
        model.eval()  # batch norm on its running statistics, no dropout: the served model
        with torch.enable_grad():
            logits = model(w, r)
            act = store["act"]
            (grad,) = torch.autograd.grad(logits.gather(1, targets[:, None]).sum(), act)
    finally:
        handle.remove()
        model.train(was_training)
    weights = grad.mean(dim=(2, 3), keepdim=True)  # [B, C, 1, 1]
    cam = torch.relu((weights * act).sum(dim=1, keepdim=True)).detach()  # [B, 1, f, t]
    cam = F.interpolate(cam, size=(model.n_freq, model.n_frames), mode="bilinear", align_corners=False)
    out = cam[:, 0].cpu().numpy().astype(np.float64)
    peak = out.max(axis=(1, 2), keepdims=True)
    ok = np.isfinite(peak) & (peak > 0)
    return np.where(ok, out / np.where(ok, peak, 1.0), 0.0)


def grad_cam(model: BeatSpectrogramCNN, window: Any, rr: Any, target_class: int) -> np.ndarray:
    """Grad-CAM of one beat for ``target_class``, as a ``[n_freq, window]`` map in [0, 1]
    (``grad_cam_frames`` interpolated along the samples of the beat window, so the map lies
    under a plot of the beat)."""
    if not 0 <= target_class < model.n_classes:
        raise ValueError(f"target_class must be in 0..{model.n_classes - 1}, got {target_class}")
    frames = grad_cam_frames(model, np.asarray(window).reshape(1, -1), np.asarray(rr).reshape(1, -1),
                             [target_class])[0]
    # Frame t is centred on sample t * hop (center=True): interpolate along the samples.
    samples = np.arange(model.window)
    out = np.stack([np.interp(samples, model.frame_centres(), row) for row in frames])
    peak = out.max()
    return out / peak if peak > 0 else out


class SegmentAttentionCNN(nn.Module):
    """Rhythm classifier over a 10-s segment: two conv blocks, 8-head self-attention.

    ``forward(segment [B, 3600]) -> (logits [B, n_classes], attention [B, T, T])`` with
    T = 150 steps (every 24 samples, 67 ms); the attention is averaged over the heads.
    """

    kind = "segment"
    normalisation = "segment: per-segment standardisation (zero mean, unit std) inside the model"

    def __init__(
        self,
        n_classes: int = 2,
        segment: int = SEGMENT_WINDOW,
        channels: tuple[int, int] = (32, 64),
        heads: int = 8,
        dropout: float = 0.2,
    ) -> None:
        super().__init__()
        c1, c2 = channels
        if c2 % heads:
            raise ValueError(f"embedding width {c2} must be divisible by {heads} heads")
        self.segment = segment
        self.n_classes = n_classes
        # 3600 -> 1800 (stride 2) -> 450 (pool 4) -> 150 (pool 3).
        self.block1 = nn.Sequential(
            nn.Conv1d(1, c1, 7, stride=2, padding=3, bias=False),
            nn.BatchNorm1d(c1),
            nn.ReLU(),
            nn.Conv1d(c1, c1, 7, padding=3, bias=False),
            nn.BatchNorm1d(c1),
            nn.ReLU(),
            nn.MaxPool1d(4),
        )
        self.block2 = nn.Sequential(
            nn.Conv1d(c1, c2, 5, padding=2, bias=False),
            nn.BatchNorm1d(c2),
            nn.ReLU(),
            nn.Conv1d(c2, c2, 5, padding=2, bias=False),
            nn.BatchNorm1d(c2),
            nn.ReLU(),
            nn.MaxPool1d(3),
        )
        self.steps = segment // 2 // 4 // 3
        # Sinusoidal positions: attention alone is blind to order, and a rhythm is an order.
        self.register_buffer("positions", _sinusoidal(self.steps, c2))
        self.attention = nn.MultiheadAttention(c2, heads, dropout=0.0, batch_first=True)
        self.norm = nn.LayerNorm(c2)
        self.head = nn.Sequential(
            nn.Dropout(dropout),
            nn.Linear(2 * c2, 32),
            nn.ReLU(),
            nn.Dropout(dropout),
            nn.Linear(32, n_classes),
        )

    def forward(self, segment: Tensor) -> tuple[Tensor, Tensor]:
        x = _standardise(segment).unsqueeze(1)
        x = self.block2(self.block1(x)).transpose(1, 2)  # [B, T, C]
        x = x + self.positions[: x.shape[1]]
        attended, weights = self.attention(x, x, x, need_weights=True, average_attn_weights=True)
        assert weights is not None  # need_weights=True; the assert types it for TorchScript
        x = self.norm(x + attended)
        pooled = torch.cat([x.mean(dim=1), x.amax(dim=1)], dim=1)
        return self.head(pooled), weights


def _sinusoidal(length: int, dim: int) -> Tensor:
    pos = torch.arange(length, dtype=torch.float32)[:, None]
    freq = torch.exp(torch.arange(0, dim, 2, dtype=torch.float32) * (-math.log(10000.0) / dim))
    table = torch.zeros(length, dim)
    table[:, 0::2] = torch.sin(pos * freq)
    table[:, 1::2] = torch.cos(pos * freq)
    return table


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def card_template(
    model: nn.Module,
    name: str,
    classes: Sequence[str] | None = None,
    rr_features: Sequence[str] | None = None,
) -> dict[str, Any]:
    """The model-card fields a network knows itself (kind, input, classes, outputs).

    Training adds ``training`` and ``metrics``; export adds ``format``, ``sha256`` and
    ``ecgmon_version`` (see ``ecgmon.models.export``).
    """
    if isinstance(model, SegmentAttentionCNN):
        names = list(classes or SEGMENT_CLASSES)
        inputs: dict[str, Any] = {"fs": FS, "window": model.segment}
        outputs = ["logits", "attention"]
    elif isinstance(model, (BeatCNNBiLSTM, BeatSpectrogramCNN, BeatFeatureMLP, BeatEnsemble)):
        names = list(classes or BEAT_CLASSES)
        rr_names = list(rr_features or DEFAULT_RR_FEATURES)
        n_rr = model.rr_features if isinstance(model, BeatEnsemble) else model.rr.rr_features
        if len(rr_names) != n_rr:
            raise ValueError(f"{len(rr_names)} RR feature names for a model with {n_rr} RR inputs")
        inputs = {"fs": FS, "window": model.window, "before": BEAT_BEFORE, "rr_features": rr_names}
        outputs = ["logits"]
    else:
        raise TypeError(f"not an ecgmon network: {type(model).__name__}")
    if len(names) != model.n_classes:
        raise ValueError(f"{len(names)} class names for a model with {model.n_classes} outputs")
    inputs["preprocessing"] = PREPROCESSING
    inputs["normalisation"] = model.normalisation
    return {"name": name, "kind": model.kind, "input": inputs, "classes": names, "outputs": outputs}
