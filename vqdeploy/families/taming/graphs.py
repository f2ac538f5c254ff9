"""The exportable stage modules: thin ``nn.Module`` wrappers over the loaded model.

Each wrapper is exactly what one ONNX graph computes, so the same object serves the export
and the PyTorch side of the parity check. In fp16 and bf16 graphs the model runs in half
precision while the boundaries stay practical: images in and out are fp32, the quantizer
(distances, argmin, Gumbel logits) runs in fp32, logits are returned in fp32; the KV cache is in
the graph's precision.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from vqdeploy.families.taming.fused_gpt import fused_gpt
from vqdeploy.models.kv_cache import CachedStepGraph
from vqdeploy.models.mingpt import GPT
from vqdeploy.models.precision import upcast
from vqdeploy.models.vqgan import VQModel


class EncoderGraph(nn.Module):
    """image (B,C,H,W) in [-1,1] -> token ids (B,h,w); or class-id map (B,H,W) -> ids (one-hot inside)."""

    def __init__(self, vq: VQModel, dtype: torch.dtype, onehot_classes: int | None = None, resize_to: int = -1) -> None:
        super().__init__()
        self.vq = vq
        self.dtype = dtype
        self.onehot_classes = onehot_classes
        self.resize_to = resize_to
        if onehot_classes is not None:
            self.register_buffer("classes", torch.arange(onehot_classes).view(1, -1, 1, 1), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.onehot_classes is not None:
            x = (x[:, None] == self.classes).to(torch.float32)  # Equal+Cast: portable one-hot
        if self.resize_to > -1:
            x = F.interpolate(x, size=(self.resize_to, self.resize_to))  # upstream downsample_cond_size
        h = self.vq.quant_conv(self.vq.encoder(x.to(self.dtype)))
        return self.vq.quantize.indices(upcast(h))


class DecoderGraph(nn.Module):
    """token ids (B,h,w) -> image (B,C,H,W) fp32."""

    def __init__(self, vq: VQModel, dtype: torch.dtype) -> None:
        super().__init__()
        self.vq = vq
        self.dtype = dtype

    def forward(self, indices: torch.Tensor) -> torch.Tensor:
        b, h, w = indices.shape
        quant = self.vq.quantize.get_codebook_entry(indices.reshape(-1), (b, h, w, self.vq.embed_dim))
        return upcast(self.vq.decode(quant.to(self.dtype)))


class TransformerGraph(CachedStepGraph):
    """tokens (B,T) at position (B,) int64 (one per row) + the KV cache per layer (B,nh,block,hd) -> logits
    (B,T,V) fp32 + the cache with row b's new keys/values written at position[b]..position[b]+T-1.

    One graph serves the prefill (position 0) and the one-token steps; the cache write is ONNX
    TensorScatter (``models/kv_cache.py``, ``export/kv_cache_onnx.py``): bind each ``cache_out``
    output to its ``cache`` input's buffer and it is updated in place. The graph computes ``fused_gpt``'s form
    of the model: the same function in fewer nodes.
    """

    def __init__(self, gpt: GPT) -> None:
        super().__init__(fused_gpt(gpt))
