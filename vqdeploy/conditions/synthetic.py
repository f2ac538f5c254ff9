"""Seeded, image-like inputs (parity checks, benchmarks): smooth random fields rather than white noise, so
that latents and codes look like those of real images; blocky label maps like coarse segmentations."""

from __future__ import annotations

import numpy as np

from vqdeploy import machine


def smooth_field(rng: np.random.Generator, batch: int, channels: int, size: int, cells: int = 4) -> np.ndarray:
    """(B,C,size,size) in [-1,1]: bicubic upsampling of a coarse random grid, plus fine texture.
    Without PyTorch (``bench`` of a torch-free install) the upsampling is nearest: timing inputs only."""
    coarse = rng.uniform(-1, 1, (batch, channels, cells, cells)).astype(np.float32)
    noise = rng.standard_normal((batch, channels, size, size)).astype(np.float32)
    if machine.torch_installed():
        import torch
        import torch.nn.functional as F

        x = F.interpolate(torch.from_numpy(coarse), size=(size, size), mode="bicubic", align_corners=False)
        return (x + 0.1 * torch.from_numpy(noise)).clamp(-1, 1).numpy()
    return np.clip(_nearest(coarse, size) + 0.1 * noise, -1, 1)


def _nearest(x: np.ndarray, size: int) -> np.ndarray:
    """torch's ``interpolate(mode="nearest")`` to (size, size): source index floor(i * in / out)."""
    idx = np.arange(size) * x.shape[-1] // size
    return x[..., idx[:, None], idx[None, :]]


def label_map(rng: np.random.Generator, batch: int, classes: int, size: int, cells: int = 4) -> np.ndarray:
    """(B,size,size) int64 class ids in blocky regions, like a coarse segmentation."""
    coarse = rng.integers(0, classes, (batch, 1, cells, cells))
    return _nearest(coarse, size)[:, 0].astype(np.int64)
