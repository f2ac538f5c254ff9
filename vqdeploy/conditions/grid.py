"""What the spatial kinds (images, coordinates) share: a condition on a latent grid that follows
the image, so a larger condition samples a larger image (sliding window)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from vqdeploy.conditions.base import Condition
from vqdeploy.images import to_uint8

if TYPE_CHECKING:
    from vqdeploy.artifacts.manifest import VQStage


class GridCondition(Condition):
    factor_key = "downsample_factor"  # the entry's pixels per condition cell

    def __init__(self, entry: Any) -> None:
        super().__init__(entry)
        self.resolution = int(entry["resolution"])
        self.factor = int(entry[self.factor_key])
        self.latent_grid = (int(entry["latent_grid"][0]), int(entry["latent_grid"][1]))

    @classmethod
    def from_manifest(cls, entry: Any, where: str) -> Condition:
        side = entry["resolution"] // entry[cls.factor_key]
        if list(entry["latent_grid"]) != [side, side]:
            cls.fail(f"{where}.latent_grid", f"{entry['latent_grid']} does not match resolution {entry['resolution']} "
                                             f"// {cls.factor_key} {entry[cls.factor_key]}")
        h, w = entry["latent_grid"]
        if entry["tokens"] != h * w:
            cls.fail(f"{where}.tokens", f"{entry['tokens']} is not {h}x{w}")
        return cls(entry)

    @property
    def fixed_grid(self) -> bool:
        """The condition is resized to a fixed size in the graph (``downsample_cond_size``)."""
        return False

    def image_grid(self, cond_grid: np.ndarray, first: VQStage) -> tuple[int, int] | None:
        if cond_grid.ndim != 3:
            return None
        if self.fixed_grid:
            return first.latent_grid
        scale = self.resolution / self.latent_grid[0] / first.downsample_factor  # cond pixels per image cell
        return round(cond_grid.shape[1] * scale), round(cond_grid.shape[2] * scale)

    def grid_picture(self, condition: np.ndarray | None) -> np.ndarray | None:
        """Label maps spread over grey levels; images (or [0,1] coordinates) as they are."""
        if condition is None:
            return None
        x = np.asarray(condition)
        if x.ndim == 3 and x.dtype.kind in "iu":
            labels = x[0].astype(np.float64)
            return (labels * (255.0 / max(float(labels.max()), 1.0))).astype(np.uint8)[..., None]
        if x.ndim == 4 and x.shape[1] in (1, 3):
            y = x[:1].astype(np.float32)
            if float(y.min()) >= 0.0:  # coordinates in [0, 1]
                y = y * 2.0 - 1.0
            return to_uint8(y.clip(-1, 1))[0]
        return None
