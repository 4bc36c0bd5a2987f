"""Training-time augmentation of beat windows, for classifiers that must hold on patients
they never saw.

Windows arrive ``margin`` samples wider on each side than the model's input (``load_beats(...,
margin=...)``); every training batch is cut from them at a random R offset, so the model
learns beats whose R sits a few samples off, as the live detector puts it (1-3 samples after
the reference annotation). Evaluation cuts the centre (``centre_crop``), the reference R.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor


def centre_crop(windows: np.ndarray, margin: int) -> np.ndarray:
    """The model's windows (R at ``BEFORE``) out of windows ``margin`` samples wider per side."""
    return np.ascontiguousarray(windows[:, margin : windows.shape[1] - margin]) if margin else windows


@dataclass(frozen=True)
class BeatAugment:
    """Random R shift of up to ``margin`` samples each way, plus white noise of ``noise``
    times the window's own standard deviation.

    ``leads`` windows of equal width may lie side by side in a row (``[n, leads * wide]``):
    they share the beat's shift, and each lead's noise follows its own deviation.

    No amplitude scaling: the networks standardise every window, so a gain is invisible to them.
    """

    margin: int = 0
    noise: float = 0.0
    leads: int = 1

    def __call__(self, batch: list[Tensor], generator: torch.Generator) -> list[Tensor]:
        windows, *rest = batch
        n = windows.shape[0]
        windows = windows.reshape(n, self.leads, -1)
        width = windows.shape[2] - 2 * self.margin
        if self.margin:
            shift = torch.randint(0, 2 * self.margin + 1, (n, 1, 1), generator=generator)
            windows = torch.gather(windows, 2, (shift + torch.arange(width)).expand(n, self.leads, width))
        if self.noise:
            scale = self.noise * windows.std(dim=2, keepdim=True)
            windows = windows + scale * torch.randn(windows.shape, generator=generator)
        return [windows.reshape(n, -1), *rest]
