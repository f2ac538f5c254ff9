"""Seeded, image-like inputs for parity checks: smooth random fields rather than white noise, so
that latents and codes look like those of real images."""

from __future__ import annotations

from typing import Any

import numpy as np

from vqdeploy.needs_torch import torch_installed


def smooth_field(rng: np.random.Generator, batch: int, channels: int, size: int, cells: int = 4) -> np.ndarray:
    """(B,C,size,size) in [-1,1]: bicubic upsampling of a coarse random grid, plus fine texture.
    Without PyTorch (``bench`` of a torch-free install) the upsampling is nearest: timing inputs only."""
    coarse = rng.uniform(-1, 1, (batch, channels, cells, cells)).astype(np.float32)
    noise = rng.standard_normal((batch, channels, size, size)).astype(np.float32)
    if torch_installed():
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


def parity_inputs(model_info: dict[str, Any], seed: int = 0, batch: int = 2) -> dict[str, np.ndarray]:
    """Images for the first stage and the preprocessed condition for the cond stage."""
    rng = np.random.default_rng(seed)
    first = model_info["first_stage"]
    out = {"image": smooth_field(rng, batch, first["in_channels"], first["resolution"])}
    cond = model_info.get("conditioning", {})
    if cond.get("kind") == "image":
        pre = cond["preprocessing"]
        size = cond["resolution"] if cond.get("downsample_cond_size", -1) < 0 else first["resolution"]
        if pre["kind"] == "onehot":
            out["cond"] = label_map(rng, batch, pre["num_classes"], size)
        else:
            out["cond"] = smooth_field(rng, batch, cond["in_channels"], size)
    elif cond.get("kind") == "first_stage":
        out["cond"] = out["image"]
    elif cond.get("kind") == "objects":
        from vqdeploy.conditions.objects import ObjectLayout

        out["cond"] = ObjectLayout.from_manifest(cond).parity_condition(rng, batch)
    return out


def sample_condition(info: dict[str, Any], seed: int = 0) -> np.ndarray | None:
    """One condition input (batch 1) for ``parity``/``bench`` pipelines; None for SOS / class."""
    cond = info.get("conditioning", {})
    if cond.get("kind") == "coord":
        from vqdeploy.runtime.conditions import coord_map

        return coord_map(cond["resolution"], cond["resolution"])
    x = parity_inputs(info, seed).get("cond")
    return None if x is None else x[:1]
