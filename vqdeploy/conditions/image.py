"""Image conditions: a second VQModel encodes a segmentation, sketch, depth or RGB image
(``image``), or the first stage encodes the condition itself (``first_stage``, e.g. upsampling)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from vqdeploy.bounds import MAX_CHANNELS, MAX_RESOLUTION, TOKENS, VQ
from vqdeploy.conditions.base import ConditionInput, ImageInput, Reading, repeat_rows
from vqdeploy.conditions.grid import GridCondition
from vqdeploy.conditions.registry import register
from vqdeploy.conditions.synthetic import label_map, smooth_field
from vqdeploy.errors import InputError
from vqdeploy.images import as_condition, load_condition
from vqdeploy.limits import check_pixels
from vqdeploy.schema import integer, obj, string, tagged

PREPROCESSING = tagged("kind", {"onehot": obj({"num_classes": integer(1, MAX_CHANNELS)}), "grey": obj({}), "rgb": obj({})})


@register
class ImageCondition(GridCondition):
    kind = "image"
    schema = obj({**VQ, "tokens": TOKENS, "preprocessing": PREPROCESSING},
                 {"key": string(64), "downsample_cond_size": integer(-1, MAX_RESOLUTION)})
    what = "an image"
    value_type = ImageInput
    graphs = ("cond_encoder",)

    def __init__(self, entry: Any) -> None:
        super().__init__(entry)
        self.preprocessing: dict[str, Any] = dict(entry["preprocessing"])
        self.in_channels = int(entry["in_channels"])
        self.downsample_cond_size = int(entry.get("downsample_cond_size", -1))

    @classmethod
    def from_manifest(cls, entry: Any, where: str) -> ImageCondition:
        pre = entry["preprocessing"]
        if pre["kind"] == "onehot" and pre["num_classes"] != entry["in_channels"]:
            cls.fail(f"{where}.preprocessing.num_classes", "differs from model.conditioning.in_channels")
        return super().from_manifest(entry, where)  # type: ignore[return-value]

    @property
    def fixed_grid(self) -> bool:
        return self.downsample_cond_size > -1

    def _size(self, reading: Reading) -> tuple[int, int]:
        return reading.size or (self.resolution, self.resolution)

    # --- input -----------------------------------------------------------------------------------------
    def read_file(self, path: Path, reading: Reading) -> ConditionInput:
        return ImageInput(load_condition(path, self.preprocessing, self._size(reading), reading.budget, reading.log,
                                         remedy=reading.too_large()))

    def read_bytes(self, data: bytes, reading: Reading) -> ConditionInput:
        if not data:
            return self.read_nothing(reading)
        return ImageInput(load_condition(data, self.preprocessing, self._size(reading), reading.budget, reading.log,
                                         "condition", reading.too_large()))

    def read_nothing(self, reading: Reading) -> ConditionInput:
        what = {"cli": "pass INPUT (e.g. a sketch or label map PNG)",
                "library": "pass the condition (a path, a PIL image or an array)",
                "http": f"send the file part 'condition' ({self.preprocessing.get('input', 'an image')})"}[reading.via]
        raise InputError(f"this model is conditioned on an image: {what}")

    def read_value(self, value: Any, reading: Reading) -> ConditionInput:
        """A PIL image or a raw (H,W[,C]) array, resized to the size sampled; a preprocessed array (what
        ``load_condition`` returns: (1,C,H,W) float, or (1,H,W) class ids) is used as it is."""
        if isinstance(value, np.ndarray) and ((value.ndim == 4 and value.dtype.kind == "f") or (
                self.preprocessing["kind"] == "onehot" and value.ndim == 3 and value.dtype.kind in "iu")):
            check_pixels(value.shape[-2], value.shape[-1], reading.max_pixels, "the condition")
            return ImageInput(_checked(value))
        return ImageInput(as_condition(value, self.preprocessing, self._size(reading), reading.budget, reading.log,
                                       reading.too_large()))

    def size_multiple(self) -> int:
        return 1 if self.fixed_grid else self.factor

    # --- tokens and parity -------------------------------------------------------------------------------
    def condition_tokens(self, backend: Any, value: ConditionInput, batch: int) -> np.ndarray:
        assert isinstance(value, ImageInput)
        return repeat_rows(backend.encode_cond(value.array), batch)

    def parity_input(self, rng: np.random.Generator, batch: int, first: Any, image: np.ndarray) -> np.ndarray | None:
        size = self.resolution if self.downsample_cond_size < 0 else first.resolution
        if self.preprocessing["kind"] == "onehot":
            return label_map(rng, batch, self.preprocessing["num_classes"], size)
        return smooth_field(rng, batch, self.in_channels, size)

    def as_value(self, batch_input: np.ndarray | None) -> ConditionInput:
        assert batch_input is not None
        return ImageInput(batch_input)

    def picture(self, value: ConditionInput, size: tuple[int, int] = (256, 256)) -> np.ndarray | None:
        return self.grid_picture(value.array if isinstance(value, ImageInput) else None)


def _checked(x: np.ndarray) -> np.ndarray:
    """A preprocessed condition handed to the library: finite values."""
    if x.dtype.kind == "f" and not np.isfinite(x).all():
        raise InputError("the condition holds NaN or infinite values")
    return x


@register
class FirstStageCondition(ImageCondition):
    """The first stage's own encoder makes the condition tokens (taming's ``__is_first_stage__``)."""

    kind = "first_stage"
    graphs = ("encoder",)

    def size_multiple(self) -> int:
        return 1  # the first stage's factor applies anyway

    def parity_input(self, rng: np.random.Generator, batch: int, first: Any, image: np.ndarray) -> np.ndarray | None:
        return image
