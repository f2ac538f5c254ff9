"""What a loaded model is, as plain data: the single source for ``inspect`` and the export
manifest (conditioning, preprocessing, latent grids, vocabulary, permutation)."""

from __future__ import annotations

from typing import Any

from torch import nn

from vqdeploy.conditions import describe_condition
from vqdeploy.errors import ConfigError
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
