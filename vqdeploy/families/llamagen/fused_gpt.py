"""LlamaGen's GPT as the transformer graph computes it: the same function in fewer nodes per layer (taming's
counterpart: ``families/taming/fused_gpt.py``, which says why nodes matter).

- RMSNorm written ``x / sqrt(mean(x^2) + eps) * weight``, the pattern ONNX Runtime fuses into one
  SimplifiedLayerNormalization (on the CPU in fp32; on CUDA with the fp16/bf16 casts too). Upstream's ``x *
  rsqrt(...)`` exports as seven nodes that nothing fuses.
- The rotary embedding as ``x * cos + (x @ turn) * sin``: ``cos`` and ``sin`` are the rows of the positions,
  looked up once per graph instead of once per layer, and ``turn`` is a constant (hd, hd) matrix that maps each
  pair (x0, x1) to (-x1, x0). Every product with it has one non-zero term, so it is exact, and the rotation is
  upstream's to the bit: x0 * c + (-x1) * s is x0 * c - x1 * s. Upstream's form (split the pairs, four
  products, stack them back) is about thirteen nodes for the queries and as many for the keys. ``turn`` is one
  initializer that every layer's two rotations share, so ``--quantize`` (which takes weights of one use only)
  leaves it exact: the reference pair's int8 export quantizes 9 layers, 4 per block and the head.
- SwiGLU's two input projections as one MatMul over both weights, split after.
- The valid-length op is fed the rotated projections as they are, without a split into heads and back.

The copy shares every weight with the loaded model except the packed SwiGLU input (2 x dim x hidden per layer).
Parity is checked against the loaded model's own forward, not against this copy.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, cast

import torch
import torch.nn.functional as F
from torch import nn

from vqdeploy.families.graph_spec import shallow_copy
from vqdeploy.families.llamagen.gpt import Attention, FeedForward, RMSNorm, Transformer, TransformerBlock
from vqdeploy.models.kv_cache import KV, ValidLength, Writer, attend_projections


class FusableRMSNorm(RMSNorm):
    """``RMSNorm`` (fp32 inside, cast back) in the node order ONNX Runtime fuses; its weight shared."""

    def __init__(self, norm: RMSNorm) -> None:
        nn.Module.__init__(self)  # not the parent's: the weight is ``norm``'s
        self.weight, self.eps = norm.weight, norm.eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xf = x.float()
        return (xf / torch.sqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)).type_as(x) * self.weight


class PackedFeedForward(FeedForward):
    """SwiGLU ``w2(silu(w1 x) * w3 x)`` with ``w1`` and ``w3`` as one ``w13`` Linear."""

    def __init__(self, ff: FeedForward) -> None:
        nn.Module.__init__(self)  # not the parent's: the layers come from ``ff``
        w1, w3 = ff.w1.weight, ff.w3.weight
        self.hidden = w1.shape[0]
        self.w13 = nn.Linear(w1.shape[1], 2 * self.hidden, bias=False, device=w1.device, dtype=w1.dtype)
        with torch.no_grad():
            self.w13.weight.copy_(torch.cat([w1, w3]))
        self.w2 = ff.w2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a, b = self.w13(x).split(self.hidden, dim=-1)
        return self.w2(F.silu(a) * b)


class TurnedAttention(Attention):
    """``Attention`` whose rotary embedding is ``x * cos + (x @ turn) * sin`` (``FusedTransformer.rotary_at``)."""

    def __init__(self, attn: Attention) -> None:
        nn.Module.__init__(self)  # not the parent's: its layers are ``attn``'s, not fresh weights
        self.dim, self.n_head, self.head_dim = attn.dim, attn.n_head, attn.head_dim
        self.wqkv, self.wo = attn.wqkv, attn.wo

    def forward_at(self, x: torch.Tensor, freqs: Any, cache: KV, allowed: torch.Tensor,
                   write: Writer | ValidLength) -> tuple[torch.Tensor, KV]:
        b, t, _ = x.shape
        cos, sin, turn = freqs
        xq, xk, xv = self.wqkv(x).split([self.dim, self.dim, self.dim], dim=-1)
        xq, xk = (rotate(z.view(b, t, self.n_head, self.head_dim), cos, sin, turn).reshape(b, t, self.dim)
                  for z in (xq, xk))
        y, written = attend_projections(xq, xk, xv, self.n_head, cache, allowed, write, 1.0 / self.head_dim**0.5)
        return self.wo(y), written


def rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, turn: torch.Tensor) -> torch.Tensor:
    """x (B,T,heads,hd) rotated in fp32 and cast back, as ``apply_rotary_emb``; cos, sin (B,T,1,hd)."""
    xf = x.float()
    return (xf * cos + (xf @ turn) * sin).type_as(x)


def turn_matrix(head_dim: int) -> torch.Tensor:
    """(hd, hd) fp32: ``x @ turn`` maps each pair (x[2i], x[2i+1]) to (-x[2i+1], x[2i])."""
    turn = torch.zeros(head_dim, head_dim)
    i = torch.arange(0, head_dim, 2)
    turn[i + 1, i] = -1.0
    turn[i, i + 1] = 1.0
    return turn


class FusedTransformer(Transformer):
    """``Transformer`` whose layers are the fused ones; its rotary tables expanded to whole heads."""

    def rotary_at(self, positions: torch.Tensor) -> Any:
        b, t = positions.shape
        rows = positions.reshape(-1)
        cos, sin = (cast(torch.Tensor, table).index_select(0, rows).reshape(b, t, 1, -1)
                    for table in (self.rotary_cos, self.rotary_sin))
        return cos, sin, self.rotary_turn


def fused_gpt(gpt: Transformer) -> FusedTransformer:
    """A shallow copy of ``gpt`` in the fused form."""
    out = shallow_copy(gpt, FusedTransformer)
    freqs = cast(torch.Tensor, gpt.freqs_cis).float()  # (positions, hd/2, 2): each pair's cos and sin
    out.register_buffer("rotary_cos", freqs[..., 0].repeat_interleave(2, dim=-1), persistent=False)
    out.register_buffer("rotary_sin", freqs[..., 1].repeat_interleave(2, dim=-1), persistent=False)
    out.register_buffer("rotary_turn", turn_matrix(gpt.head_dim).to(freqs.device), persistent=False)
    out.layers = nn.ModuleList(_fused_block(cast(TransformerBlock, b)) for b in cast(Sequence[nn.Module], gpt.layers))
    out.norm = FusableRMSNorm(cast(RMSNorm, gpt.norm))
    return out


def _fused_block(block: TransformerBlock) -> TransformerBlock:
    out = shallow_copy(block, TransformerBlock)
    out.attention = TurnedAttention(block.attention)
    out.feed_forward = PackedFeedForward(block.feed_forward)
    out.attention_norm = FusableRMSNorm(block.attention_norm)
    out.ffn_norm = FusableRMSNorm(block.ffn_norm)
    return out

