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

from vqdeploy.models.kv_cache import kv_write
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


class TransformerGraph(nn.Module):
    """tokens (B,T) at position (1,) int64 + the KV cache per layer (B,nh,block,hd) -> logits (B,T,V)
    fp32 + the cache with the new keys/values written at position..position+T-1.

    One graph serves the prefill (position 0) and the one-token steps; the cache write is ONNX
    TensorScatter (``models/kv_cache.py``, ``export/kv_cache_onnx.py``): bind each ``cache_out``
    output to its ``cache`` input's buffer and it is updated in place.
    """

    def __init__(self, gpt: GPT) -> None:
        super().__init__()
        self.gpt = gpt

    def forward(self, tokens: torch.Tensor, *state: torch.Tensor) -> tuple[torch.Tensor, ...]:
        position, cache = state[0], state[1:]
        pairs = [(cache[2 * i], cache[2 * i + 1]) for i in range(self.gpt.n_layer)]
        logits, written = self.gpt.forward_at(tokens, position, pairs, kv_write(position))
        out = [upcast(logits)]
        for k, v in written:
            out += [k, v]
        return tuple(out)


class SamplerGraph(nn.Module):
    """logits (B,T,V) of the last position + one uniform per sample -> next token (B,1), in fp32.

    The host sampler's rules (``runtime/sampling.py``) as a graph, so that a C++ loop can chain
    transformer -> sampler -> transformer without post-processing logits, and the token can feed
    the next step's ``tokens`` input as is. Parameters are inputs, so one graph (and engine) serves
    every setting: temperature <= 0 or top_k == 1 is greedy (the first maximal logit), top_k >= V
    and top_p >= 1 switch those filters off.
    """

    def __init__(self, vocab_size: int) -> None:
        super().__init__()
        self.vocab_size = vocab_size

    def forward(self, logits: torch.Tensor, *params: torch.Tensor) -> torch.Tensor:
        uniform, temperature, top_k, top_p = params  # (B,), (1,), (1,) int64, (1,)
        v = self.vocab_size
        greedy = (temperature <= 0) | (top_k == 1)  # (1,)
        x = logits[:, -1, :].float() / torch.where(temperature > 0, temperature, torch.ones_like(temperature))
        k = torch.where(greedy, torch.ones_like(top_k), top_k.clamp(1, v))
        ranked = torch.sort(x, dim=-1, descending=True).values
        kth = ranked.index_select(1, k - 1)  # (B,1): top-k keeps every logit equal to the k-th
        x = torch.where(x < kth, torch.full_like(x, -torch.inf), x)
        p = torch.softmax(x, dim=-1)
        ranked_p = torch.sort(p, dim=-1, descending=True).values
        before = ranked_p.cumsum(-1) - ranked_p  # mass of the strictly more likely tokens
        keep = (before <= top_p) | (top_p >= 1)
        threshold = torch.where(keep, ranked_p, torch.full_like(ranked_p, torch.inf)).amin(-1, keepdim=True)
        p = torch.where(p >= threshold, p, torch.zeros_like(p))
        cdf = p.cumsum(-1)
        target = torch.where(greedy, torch.zeros_like(uniform), uniform)[:, None] * cdf[:, -1:]
        idx = (cdf <= target).to(torch.float32).sum(-1, keepdim=True)  # inverse CDF
        return idx.clamp(max=v - 1).to(torch.int64)
