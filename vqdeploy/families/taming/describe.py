"""What a loaded model is, as plain data: the single source for ``inspect`` and the export
manifest (conditioning, preprocessing, latent grids, vocabulary, permutation)."""

from __future__ import annotations

from typing import Any

from torch import nn

from vqdeploy.conditions.class_label import ClassLabel
from vqdeploy.conditions.coordinates import Coordinates
from vqdeploy.conditions.image import FirstStageCondition, ImageCondition
from vqdeploy.conditions.unconditional import Unconditional
from vqdeploy.errors import ConfigError
from vqdeploy.models.conditioning import CoordStage, DummyCondStage, Labelator, SOSProvider
from vqdeploy.models.net2net import Net2NetTransformer
from vqdeploy.models.permuter import Identity
from vqdeploy.models.quantize import GumbelQuantize
from vqdeploy.models.vqgan import VQModel


def describe_vq(vq: VQModel) -> dict[str, Any]:
    dd = vq.ddconfig
    q = vq.quantize
    f = vq.downsample_factor
    return {
        "quantizer": "gumbel" if isinstance(q, GumbelQuantize) else "nearest_code",
        "in_channels": vq.in_channels,
        "out_channels": vq.out_channels,
        "resolution": int(dd["resolution"]),
        "downsample_factor": f,
        "latent_grid": [int(dd["resolution"]) // f, int(dd["resolution"]) // f],
        "embed_dim": vq.embed_dim,
        "codebook_size": vq.n_embed,
        "vocab_size": vq.vocab_size,
        "remap": None if not q.remap else {"used": int(q.used.shape[0]), "unknown_index": q.unknown_index},
    }


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


def describe_condition(model: Net2NetTransformer) -> dict[str, Any]:
    """The manifest's ``model.conditioning`` entry of a loaded model's cond stage."""
    cond = model.cond_stage_model
    if isinstance(cond, VQModel):  # a second VQGAN, or the first stage itself (taming's __is_first_stage__)
        info = describe_vq(cond)
        res = model.downsample_cond_size if model.downsample_cond_size > -1 else info["resolution"]
        grid = res // info["downsample_factor"]
        kind = FirstStageCondition.kind if model.cond_is_first_stage else ImageCondition.kind
        info.update(kind=kind, key=model.cond_stage_key, resolution=res, latent_grid=[grid, grid],
                    tokens=grid * grid, downsample_cond_size=model.downsample_cond_size,
                    preprocessing=image_preprocessing(model.cond_stage_key, info["in_channels"]))
        return info
    if isinstance(cond, Labelator):
        return {"kind": ClassLabel.kind, "n_classes": cond.n_classes, "tokens": 1}
    if isinstance(cond, SOSProvider):
        return {"kind": Unconditional.kind, "sos_token": cond.sos_token, "tokens": 1}
    if isinstance(cond, CoordStage):
        res = int(model.first_stage_model.ddconfig["resolution"])
        grid = res // cond.down_factor
        return {"kind": Coordinates.kind, "n_embed": cond.n_embed, "down_factor": cond.down_factor,
                "resolution": res, "latent_grid": [grid, grid], "tokens": grid * grid}
    if isinstance(cond, DummyCondStage):
        cond.layout.check(model.transformer.vocab_size)
        return cond.layout.describe()
    raise ConfigError(f"unsupported cond stage {type(cond).__name__}")


def describe(model: nn.Module) -> dict[str, Any]:
    src = getattr(model, "source", None)
    out: dict[str, Any] = {"target": getattr(src, "target", type(model).__name__)}
    if isinstance(model, VQModel):
        out.update(kind="vqgan", first_stage=describe_vq(model))
        return out
    if not isinstance(model, Net2NetTransformer):
        raise ConfigError(f"cannot deploy a {type(model).__name__}: expected a Net2NetTransformer or VQModel")
    first = describe_vq(model.first_stage_model)
    cond = describe_condition(model)
    gpt = model.transformer
    h, w = first["latent_grid"]
    order = model.permuter.order()
    out.update(
        kind="net2net",
        first_stage=first,
        conditioning=cond,
        transformer={
            "vocab_size": gpt.vocab_size, "block_size": gpt.block_size, "n_layer": gpt.n_layer,
            "n_head": gpt.n_head, "n_embd": gpt.n_embd, "head_dim": gpt.head_dim, "n_unmasked": gpt.n_unmasked,
            "parameters": sum(p.numel() for p in gpt.parameters()),
        },
        permuter={"name": type(model.permuter).__name__,
                  "order": None if isinstance(model.permuter, Identity) or order is None else [int(i) for i in order]},
        tokens={"cond": cond["tokens"], "image": h * w, "steps": h * w},
    )
    return out
