"""Coordinate conditioning: taming's ``CoordStage`` (a [0,1] raster-position map, area-downsampled
and quantised to ``n_embed`` levels), computed on the host exactly as upstream."""

from __future__ import annotations

from typing import Any

import numpy as np

from vqdeploy.bounds import GRID, MAX_FACTOR, MAX_RESOLUTION, MAX_VOCAB, TOKENS
from vqdeploy.conditions.base import ConditionInput, CoordinateInput, Reading, repeat_rows
from vqdeploy.conditions.grid import GridCondition
from vqdeploy.conditions.registry import register
from vqdeploy.errors import InputError
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
    value_type = CoordinateInput
    factor_key = "down_factor"

    def __init__(self, entry: Any) -> None:
        super().__init__(entry)
        self.n_embed = int(entry["n_embed"])

    @property
    def summary(self) -> str:
        return "coordinate-conditional"

    def read_nothing(self, reading: Reading) -> ConditionInput:
        """The map of the size sampled (nothing else is a coordinate condition)."""
        h, w = reading.size or (self.resolution, self.resolution)
        return CoordinateInput(coord_map(h, w))

    def read_value(self, value: Any, reading: Reading) -> ConditionInput:
        if isinstance(value, np.ndarray) and value.ndim == 4 and value.shape[:2] == (1, 1) and value.dtype.kind == "f":
            if not np.isfinite(value).all():
                raise InputError("the coordinate map holds NaN or infinite values")
            return CoordinateInput(value.astype(np.float32))
        return super().read_value(value, reading)

    def condition_tokens(self, backend: Any, value: ConditionInput, batch: int) -> np.ndarray:
        assert isinstance(value, CoordinateInput)
        return repeat_rows(coord_tokens(value.array, self.n_embed, self.factor), batch)

    def parity_input(self, rng: np.random.Generator, batch: int, first: Any, image: np.ndarray) -> np.ndarray | None:
        return np.repeat(coord_map(self.resolution, self.resolution), batch, axis=0)

    def as_value(self, batch_input: np.ndarray | None) -> ConditionInput:
        assert batch_input is not None
        return CoordinateInput(batch_input)

    def picture(self, value: ConditionInput, size: tuple[int, int] = (256, 256)) -> np.ndarray | None:
        return self.grid_picture(value.array if isinstance(value, CoordinateInput) else None)
