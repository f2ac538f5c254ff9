"""Coordinate conditioning: taming's ``CoordStage`` (a [0,1] raster-position map, area-downsampled
and quantised to ``n_embed`` levels), computed on the host exactly as upstream."""

from __future__ import annotations

from typing import Any

import numpy as np

from vqdeploy.conditions.base import repeat_rows, require_condition
from vqdeploy.conditions.grid import GridCondition
from vqdeploy.conditions.registry import register
from vqdeploy.export.manifest_schema import GRID, MAX_FACTOR, MAX_RESOLUTION, MAX_VOCAB, TOKENS
from vqdeploy.schema import integer, obj


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


@register
class Coordinates(GridCondition):
    kind = "coord"
    schema = obj({"n_embed": integer(1, MAX_VOCAB), "down_factor": integer(1, MAX_FACTOR),
                  "resolution": integer(1, MAX_RESOLUTION), "latent_grid": GRID, "tokens": TOKENS})
    what = "pixel coordinates"
    factor_key = "down_factor"

    def __init__(self, entry: Any) -> None:
        super().__init__(entry)
        self.n_embed = int(entry["n_embed"])

    @property
    def summary(self) -> str:
        return "coordinate-conditional"

    @classmethod
    def from_model(cls, model: Any) -> dict[str, Any] | None:
        from vqdeploy.models.conditioning import CoordStage

        cond = model.cond_stage_model
        if not isinstance(cond, CoordStage):
            return None
        res = int(model.first_stage_model.ddconfig["resolution"])
        grid = res // cond.down_factor
        return {"kind": cls.kind, "n_embed": cond.n_embed, "down_factor": cond.down_factor,
                "resolution": res, "latent_grid": [grid, grid], "tokens": grid * grid}

    def default_input(self, size: tuple[int, int] | None) -> np.ndarray | None:
        h, w = size or (self.resolution, self.resolution)
        return coord_map(h, w)

    def condition_tokens(self, backend: Any, batch: int, condition: np.ndarray | None,
                         class_id: int | None) -> np.ndarray:
        coords = require_condition(condition, "a coordinate map")
        return repeat_rows(coord_tokens(coords.astype(np.float32), self.n_embed, self.factor), batch)

    def parity_input(self, rng: np.random.Generator, batch: int, first: Any, image: np.ndarray) -> np.ndarray | None:
        return np.repeat(coord_map(self.resolution, self.resolution), batch, axis=0)

