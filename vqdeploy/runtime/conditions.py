"""Condition tokens for every kind of cond stage, given the preprocessed condition.

Image conditions go through the backend's cond encoder; SOS, class and coordinate conditions
are computed here exactly as taming's SOSProvider, Labelator and CoordStage do.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from vqdeploy.errors import InputError
from vqdeploy.runtime.backends.base import Backend


def coord_map(height: int, width: int) -> np.ndarray:
    """(1,1,H,W) raster position / (H*W) in [0,1): taming's coordinate conditioning."""
    return (np.arange(height * width, dtype=np.float32) / (height * width)).reshape(1, 1, height, width)


def area_downsample(x: np.ndarray, factor: int) -> np.ndarray:
    """(B,C,H,W) -> (B,C,H//f,W//f) block means: torch's ``interpolate(mode="area")`` for an integer
    factor (trailing rows/columns that fill no block are dropped, as there)."""
    b, c, h, w = x.shape
    hh, ww = h // factor, w // factor
    blocks = x[:, :, : hh * factor, : ww * factor].reshape(b, c, hh, factor, ww, factor)
    return blocks.mean(axis=(3, 5), dtype=np.float32)


def coord_tokens(coords: np.ndarray, n_embed: int, down_factor: int) -> np.ndarray:
    """taming CoordStage.encode: area-downsample, clamp to [0,1], scale by n_embed, round (half to even,
    as torch.round)."""
    c = area_downsample(coords.astype(np.float32), down_factor)
    return np.round(n_embed * np.clip(c, 0.0, 1.0)).astype(np.int64)[:, 0]


def condition_grid(backend: Backend, cond_info: dict[str, Any], batch: int, cond: np.ndarray | None = None,
                   class_id: int | None = None) -> np.ndarray:
    """(B,h,w) cond tokens for image-like conditions, (B,1) for SOS / class."""
    kind = cond_info["kind"]
    if kind == "sos":
        return np.full((batch, 1), int(cond_info["sos_token"]), dtype=np.int64)
    if kind == "class":
        n = int(cond_info["n_classes"])
        if class_id is None:
            raise InputError(f"this model is class-conditional: pass --class ID (0..{n - 1})")
        if not 0 <= class_id < n:
            raise InputError(f"--class {class_id} is out of range (0..{n - 1})")
        return np.full((batch, 1), class_id, dtype=np.int64)
    if cond is None:
        raise InputError("this model needs a condition input")
    if kind == "objects":  # the tokens themselves (ObjectLayout built them on the host)
        grid = cond
    elif kind == "coord":
        grid = coord_tokens(cond.astype(np.float32), int(cond_info["n_embed"]), int(cond_info["down_factor"]))
    else:
        grid = backend.encode_cond(cond)
    if grid.shape[0] == 1 and batch > 1:
        grid = np.repeat(grid, batch, axis=0)
    return grid
