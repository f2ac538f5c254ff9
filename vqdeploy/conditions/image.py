"""Image conditions: a second VQModel encodes a segmentation, sketch, depth or RGB image
(``image``), or the first stage encodes the condition itself (``first_stage``, e.g. upsampling)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from vqdeploy.conditions.base import Log, repeat_rows, require_condition
from vqdeploy.conditions.grid import GridCondition
from vqdeploy.conditions.registry import register
from vqdeploy.errors import ConfigError, InputError
from vqdeploy.export.manifest_schema import MAX_CHANNELS, MAX_RESOLUTION, TOKENS, VQ
from vqdeploy.schema import integer, obj, string, tagged

PREPROCESSING = tagged("kind", {"onehot": obj({"num_classes": integer(1, MAX_CHANNELS)}), "grey": obj({}), "rgb": obj({})})


def image_preprocessing(cond_key: str, in_channels: int) -> dict[str, Any]:
    """How a condition image becomes the cond encoder's input tensor (stored in the manifest)."""
    if cond_key == "segmentation" or (cond_key not in ("image", "depth", "sketch") and in_channels > 3):
        return {"kind": "onehot", "num_classes": in_channels, "input": "label map (PNG of class ids, or palette PNG)",
                "resize": "nearest"}
    if in_channels == 1 and cond_key == "sketch":
        return {"kind": "grey", "range": [-1.0, 1.0], "resize": "bicubic", "background": "light",
                "input": "greyscale sketch: dark strokes on a light (white) background, as in taming's sketch data"}
    if in_channels == 1:
        return {"kind": "grey", "range": [-1.0, 1.0], "input": "greyscale image (depth or sketch)", "resize": "bicubic"}
    if in_channels == 3:
        return {"kind": "rgb", "range": [-1.0, 1.0], "input": "RGB image", "resize": "bicubic"}
    raise ConfigError(f"unsupported image condition: key '{cond_key}' with {in_channels} channels")


@register
class ImageCondition(GridCondition):
    kind = "image"
    schema = obj({**VQ, "tokens": TOKENS, "preprocessing": PREPROCESSING},
                 {"key": string(64), "downsample_cond_size": integer(-1, MAX_RESOLUTION)})
    what = "an image"
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

    # --- export side ---------------------------------------------------------------------------------
    @classmethod
    def _claims_model(cls, model: Any) -> bool:
        from vqdeploy.models.vqgan import VQModel

        return isinstance(model.cond_stage_model, VQModel) and not model.cond_is_first_stage

    @classmethod
    def from_model(cls, model: Any) -> dict[str, Any] | None:
        if not cls._claims_model(model):
            return None
        from vqdeploy.describe import describe_vq

        info = describe_vq(model.cond_stage_model)
        res = model.downsample_cond_size if model.downsample_cond_size > -1 else info["resolution"]
        grid = res // info["downsample_factor"]
        info.update(kind=cls.kind, key=model.cond_stage_key, resolution=res, latent_grid=[grid, grid],
                    tokens=grid * grid, downsample_cond_size=model.downsample_cond_size,
                    preprocessing=image_preprocessing(model.cond_stage_key, info["in_channels"]))
        return info

    def export_graphs(self, model: Any, dtype: Any, max_batch: int) -> list[Any]:
        from vqdeploy.export.specs import encoder_spec

        return [encoder_spec("cond_encoder", model.cond_stage_model, dtype, max_batch, 1, self.preprocessing,
                             model.downsample_cond_size)]

    def torch_encoder(self, model: Any, first_stage_encoder: Any) -> Any:
        import torch

        from vqdeploy.export.graphs import EncoderGraph

        onehot = self.preprocessing["num_classes"] if self.preprocessing["kind"] == "onehot" else None
        return EncoderGraph(model.cond_stage_model, torch.float32, onehot, self.downsample_cond_size)

    # --- input -----------------------------------------------------------------------------------------
    def load_input(self, input: Path | None, size: tuple[int, int] | None, budget: int,
             log: Log | None = None) -> np.ndarray | None:
        from vqdeploy.runtime.images import load_condition

        if input is None:
            raise InputError("this model is conditioned on an image: pass INPUT (e.g. a sketch or label map PNG)")
        return load_condition(input, self.preprocessing, size or (self.resolution, self.resolution), budget, log)

    def as_condition(self, x: Any, size: tuple[int, int] | None, budget: int, log: Log | None = None) -> np.ndarray | None:
        """A path, PIL image or raw (H,W[,C]) array, resized to ``size`` or the trained size; a
        preprocessed array (what ``load_condition`` returns) is used as is."""
        from vqdeploy.runtime.images import as_condition

        if x is None:
            return None
        if isinstance(x, np.ndarray) and ((x.ndim == 4 and x.dtype.kind == "f") or (
                self.preprocessing["kind"] == "onehot" and x.ndim == 3 and x.dtype.kind in "iu")):
            return x
        return as_condition(x, self.preprocessing, size or (self.resolution, self.resolution), budget, log)

    def size_multiple(self) -> int:
        return 1 if self.fixed_grid else self.factor

    # --- tokens and parity -------------------------------------------------------------------------------
    def condition_tokens(self, backend: Any, batch: int, condition: np.ndarray | None,
                         class_id: int | None) -> np.ndarray:
        return repeat_rows(backend.encode_cond(require_condition(condition, self.preprocessing.get("input", "an image"))),
                           batch)

    def parity_input(self, rng: np.random.Generator, batch: int, first: Any, image: np.ndarray) -> np.ndarray | None:
        from vqdeploy.runtime.parity_inputs import label_map, smooth_field

        size = self.resolution if self.downsample_cond_size < 0 else first.resolution
        if self.preprocessing["kind"] == "onehot":
            return label_map(rng, batch, self.preprocessing["num_classes"], size)
        return smooth_field(rng, batch, self.in_channels, size)


@register
class FirstStageCondition(ImageCondition):
    """The first stage's own encoder makes the condition tokens (taming's ``__is_first_stage__``)."""

    kind = "first_stage"
    graphs = ("encoder",)

    @classmethod
    def _claims_model(cls, model: Any) -> bool:
        from vqdeploy.models.vqgan import VQModel

        return isinstance(model.cond_stage_model, VQModel) and bool(model.cond_is_first_stage)

    def export_graphs(self, model: Any, dtype: Any, max_batch: int) -> list[Any]:
        return []  # the first stage's encoder graph

    def torch_encoder(self, model: Any, first_stage_encoder: Any) -> Any:
        return first_stage_encoder

    def size_multiple(self) -> int:
        return 1  # the first stage's factor applies anyway

    def parity_input(self, rng: np.random.Generator, batch: int, first: Any, image: np.ndarray) -> np.ndarray | None:
        return image

