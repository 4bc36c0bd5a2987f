"""Beat augmentation: shifted windows cut from wider ones, noise relative to the window."""

from __future__ import annotations

import numpy as np
import torch

from ecgmon.models.augment import BeatAugment, centre_crop


def _ramps(n: int, width: int) -> torch.Tensor:
    # Row i is i*1000 + 0..width-1: any cut reveals its start offset in its first value.
    return torch.arange(width, dtype=torch.float32) + 1000.0 * torch.arange(n, dtype=torch.float32)[:, None]


def test_centre_crop_is_the_unshifted_window() -> None:
    wide = _ramps(3, 20).numpy()
    assert np.array_equal(centre_crop(wide, 4), wide[:, 4:16])
    assert centre_crop(wide, 0) is wide


def test_shifts_cover_the_margin_both_ways_and_keep_the_window_whole() -> None:
    margin, width = 3, 10
    wide = _ramps(2000, width + 2 * margin)
    rr = torch.randn(2000, 4)
    windows, rr_out = BeatAugment(margin=margin)([wide, rr], torch.Generator().manual_seed(0))
    assert windows.shape == (2000, width) and torch.equal(rr_out, rr)
    offsets = windows[:, 0] - 1000.0 * torch.arange(2000)
    assert set(offsets.tolist()) == set(range(2 * margin + 1))  # R moved -margin..+margin
    assert torch.equal(windows - windows[:, :1], torch.arange(width, dtype=torch.float32).expand(2000, -1))


def test_noise_scales_with_each_window_and_is_seeded() -> None:
    wide = torch.randn(500, 252) * torch.linspace(0.1, 10.0, 500)[:, None]
    aug = BeatAugment(noise=0.1)
    out = aug([wide], torch.Generator().manual_seed(1))[0]
    ratio = (out - wide).std(dim=1) / wide.std(dim=1)
    assert torch.allclose(ratio, torch.full_like(ratio, 0.1), rtol=0.2)
    assert torch.equal(out, aug([wide], torch.Generator().manual_seed(1))[0])
