"""LlamaGen's exportable stage modules and their specs: the tokenizer's encoder (image -> indices) and decoder
(indices -> image), and the GPT with the in-place KV cache, each with the manifest's tensor contract (the same
names, dtypes and shapes as taming's graphs), so the runtimes, the TensorRT builder and a C++ app run them unchanged.

The codebook the graphs hold is the l2-normalised one, computed once here in fp32 with upstream's ``F.normalize``
(a constant of the graph); the encoder graph normalises the latents itself (channels-last, over C) and feeds both
to the ``vqdeploy::NearestCode`` node, whose squared-L2 argmin on unit vectors is the largest cosine similarity:
upstream's search. In fp16/bf16 graphs the quantizer's inputs are fp32 (the latent is upcast), images in and out
are fp32 and the logits fp32, as in taming's graphs.
"""

from __future__ import annotations

import torch
from torch import nn

from vqdeploy.artifacts.tensors import TensorSpec
from vqdeploy.families.graph_spec import (
    GraphSpec,
    batch_dim,
    cached_transformer_spec,
    grid_dims,
    one_profile,
)
from vqdeploy.families.llamagen.fused_gpt import fused_gpt
from vqdeploy.families.llamagen.gpt import Transformer
from vqdeploy.families.llamagen.vq import VQModel
from vqdeploy.models.kv_cache import CachedStepGraph
from vqdeploy.models.precision import upcast


class EncoderGraph(nn.Module):
    """image (B,3,H,W) in [-1,1] -> token ids (B,h,w)."""

    def __init__(self, vq: VQModel, dtype: torch.dtype) -> None:
        super().__init__()
        self.vq, self.dtype = vq, dtype
        self.register_buffer("codebook", vq.quantize.codebook().detach().float().clone(), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.vq.latent(x.to(self.dtype))
        return self.vq.quantize.indices(upcast(h), self.codebook)


class DecoderGraph(nn.Module):
    """token ids (B,h,w) -> image (B,3,H,W) fp32: the normalised codes -> post_quant_conv -> decoder."""

    def __init__(self, vq: VQModel, dtype: torch.dtype) -> None:
        super().__init__()
        self.vq, self.dtype = vq, dtype
        self.register_buffer("codebook", vq.quantize.codebook().detach().float().clone(), persistent=False)

    def forward(self, indices: torch.Tensor) -> torch.Tensor:
        b, h, w = indices.shape
        quant = self.codebook[indices.reshape(-1)].reshape(b, h, w, self.vq.embed_dim).permute(0, 3, 1, 2)
        return upcast(self.vq.decoder(self.vq.post_quant_conv(quant.to(self.dtype))))


class TransformerGraph(CachedStepGraph):
    """tokens (B,T) at position (B,) (one per row) + the KV cache per layer -> logits (B,T,V) fp32 + the cache
    with row b's new keys/values written at position[b]..position[b]+T-1 (TensorScatter: bind each ``cache_out``
    to its ``cache`` buffer). The token at position 0
    is a class id (the null class included), the others image token ids."""

    def __init__(self, gpt: Transformer) -> None:
        super().__init__(fused_gpt(gpt))  # the same function in fewer nodes


def encoder_spec(vq: VQModel, dtype: torch.dtype, max_batch: int, grid: int) -> GraphSpec:
    f = vq.downsample_factor
    spec = GraphSpec(
        name="encoder",
        module=EncoderGraph(vq, dtype).eval(),
        inputs=[TensorSpec("image", "float32", ("batch", vq.in_channels, f"latent_h*{f}", f"latent_w*{f}"))],
        outputs=[TensorSpec("indices", "int64", ("batch", "latent_h", "latent_w"))],
        dims={"batch": batch_dim(max_batch, 1), **grid_dims([grid, grid], f)},
        sample_dims={"batch": 2, "latent_h": grid, "latent_w": grid},
    )
    spec.profiles = one_profile(spec.dims)
    return spec


def decoder_spec(vq: VQModel, dtype: torch.dtype, max_batch: int, grid: int) -> GraphSpec:
    f = vq.upsample_factor
    dims = {"batch": batch_dim(max_batch, 4), **grid_dims([grid, grid], f)}
    spec = GraphSpec(
        name="decoder",
        module=DecoderGraph(vq, dtype).eval(),
        inputs=[TensorSpec("indices", "int64", ("batch", "latent_h", "latent_w"))],
        outputs=[TensorSpec("image", "float32", ("batch", vq.out_channels, f"latent_h*{f}", f"latent_w*{f}"))],
        dims=dims,
        sample_dims={"batch": 2, "latent_h": grid, "latent_w": grid},
    )
    spec.profiles = one_profile(dims)
    spec.id_ranges = {"indices": vq.n_embed}
    return spec


def transformer_spec(gpt: Transformer, dtype: torch.dtype, max_batch: int) -> GraphSpec:
    """``cached_transformer_spec`` as taming's: the prefill holds the class token; parity feeds token ids that are
    valid both as image tokens and as class rows."""
    return cached_transformer_spec(TransformerGraph(gpt), dtype, max_batch, n_layer=gpt.n_layer, n_head=gpt.n_head,
                                   head_dim=gpt.head_dim, block=gpt.block_size, vocab=gpt.vocab_size,
                                   prefill_tokens=gpt.cls_token_num,
                                   token_ids=min(gpt.vocab_size, gpt.class_rows))
