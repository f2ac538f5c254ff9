"""taming's graphs: the first stage's encoder and decoder, a cond stage's encoder, the transformer with
its in-place KV cache (and the sampler graph every family shares)."""

from __future__ import annotations

from typing import Any

import torch

from vqdeploy.artifacts.tensors import Dim, TensorSpec
from vqdeploy.families.graph_spec import (
    GraphSpec,
    batch_dim,
    cached_transformer_spec,
    grid_dims,
    one_profile,
)
from vqdeploy.families.taming.graphs import DecoderGraph, EncoderGraph, TransformerGraph
from vqdeploy.models.net2net import Net2NetTransformer
from vqdeploy.models.vqgan import VQModel


def encoder_spec(name: str, vq: VQModel, dtype: torch.dtype, max_batch: int, batch_opt: int,
                 preprocessing: dict[str, Any] | None = None, resize_to: int = -1) -> GraphSpec:
    f = vq.downsample_factor
    res = int(vq.ddconfig["resolution"]) if resize_to < 0 else resize_to
    grid = [res // f, res // f]
    onehot = preprocessing is not None and preprocessing["kind"] == "onehot"
    if resize_to > -1:
        # the graph resizes any input to the cond size: input size is free, output grid is fixed
        in_dims = {"batch": batch_dim(max_batch, batch_opt), "height": Dim(1, res, 4 * res), "width": Dim(1, res, 4 * res)}
        hw: tuple[int | str, ...] = ("height", "width")
        out_hw: tuple[int | str, ...] = (grid[0], grid[1])
    else:
        in_dims = {"batch": batch_dim(max_batch, batch_opt), **grid_dims(grid, f)}
        hw = (f"latent_h*{f}", f"latent_w*{f}")
        out_hw = ("latent_h", "latent_w")
    if onehot:
        inp = TensorSpec("labels", "int64", ("batch", *hw))
    else:
        inp = TensorSpec("image", "float32", ("batch", vq.in_channels, *hw))
    spec = GraphSpec(
        name=name,
        module=EncoderGraph(vq, dtype, preprocessing["num_classes"] if onehot else None, resize_to).eval(),
        inputs=[inp],
        outputs=[TensorSpec("indices", "int64", ("batch", *out_hw))],
        dims=in_dims,
        sample_dims={"batch": 2, "latent_h": grid[0], "latent_w": grid[1], "height": res, "width": res},
    )
    spec.profiles = one_profile(spec.dims)
    spec.id_ranges = {"labels": vq.in_channels}
    return spec


def decoder_spec(vq: VQModel, dtype: torch.dtype, max_batch: int) -> GraphSpec:
    f = vq.downsample_factor
    res = int(vq.ddconfig["resolution"])
    dims = {"batch": batch_dim(max_batch, 4), **grid_dims([res // f, res // f], f)}
    spec = GraphSpec(
        name="decoder",
        module=DecoderGraph(vq, dtype).eval(),
        inputs=[TensorSpec("indices", "int64", ("batch", "latent_h", "latent_w"))],
        outputs=[TensorSpec("image", "float32", ("batch", vq.out_channels, f"latent_h*{f}", f"latent_w*{f}"))],
        dims=dims,
        sample_dims={"batch": 2, "latent_h": dims["latent_h"].opt, "latent_w": dims["latent_w"].opt},
    )
    spec.profiles = one_profile(dims)
    spec.id_ranges = {"indices": vq.vocab_size}
    return spec


def transformer_spec(model: Net2NetTransformer, dtype: torch.dtype, max_batch: int, cond_tokens: int) -> GraphSpec:
    """``cached_transformer_spec`` over minGPT; the prefill holds the condition tokens."""
    gpt = model.transformer
    return cached_transformer_spec(TransformerGraph(gpt), dtype, max_batch, n_layer=gpt.n_layer, n_head=gpt.n_head,
                                   head_dim=gpt.head_dim, block=gpt.block_size, vocab=gpt.vocab_size,
                                   prefill_tokens=cond_tokens, token_ids=gpt.vocab_size)
