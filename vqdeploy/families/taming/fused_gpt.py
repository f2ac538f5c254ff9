"""minGPT as the transformer graph computes it: the same function in fewer nodes per layer.

A step of a small model is mostly per-node overhead (the demo's 4 layers: 0.38 ms a step on 2 CPU cores, of
which the weights' read is a small part), and on a GPU every node is a kernel launch. Two rewrites, each exact
up to float rounding, and each a pattern every runtime reads as plain ONNX:

- the query, key and value projections as one MatMul over the three weights side by side (and one bias Add),
  split after: two MatMuls and two Adds fewer per layer, and one weight read of 3C columns instead of three;
- GELU written ``x * (1 + erf(x / sqrt 2)) * 0.5``, the node order ONNX Runtime's GeluFusion matches (it then
  folds the bias Add before it into BiasGelu): one node instead of six. torch's exporter writes ``nn.GELU`` as
  ``x * (0.5 * (1 + erf(...)))``, which it does not match.

Measured with the valid-length graph, ONNX Runtime CPU, 2 cores (docs/performance.md, "Fewer nodes per layer").
The copy shares every weight with the loaded model except the packed projections (3 C^2 + 3 C per layer, a
quarter of a block's weights, for as long as the export holds the graph module). Parity is still checked against
the loaded model's own full-sequence forward, not against this copy.
"""

from __future__ import annotations

import math
from typing import cast

import torch
from torch import nn

from vqdeploy.families.graph_spec import shallow_copy
from vqdeploy.models.mingpt import GPT, Block, CausalSelfAttention


class PackedSelfAttention(CausalSelfAttention):
    """``CausalSelfAttention`` whose three projections are one ``qkv`` Linear (query, key, value rows in turn)."""

    def __init__(self, attn: CausalSelfAttention) -> None:
        nn.Module.__init__(self)  # not the parent's: its layers come from ``attn``, not from fresh weights
        q, k, v = attn.query, attn.key, attn.value
        self.qkv = nn.Linear(q.in_features, 3 * q.out_features, device=q.weight.device, dtype=q.weight.dtype)
        with torch.no_grad():
            self.qkv.weight.copy_(torch.cat([q.weight, k.weight, v.weight]))
            self.qkv.bias.copy_(torch.cat([q.bias, k.bias, v.bias]))
        self.attn_drop, self.resid_drop, self.proj = attn.attn_drop, attn.resid_drop, attn.proj
        self.register_buffer("mask", cast(torch.Tensor, attn.mask))
        self.n_head = attn.n_head

    def projections(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        q, k, v = self.qkv(x).split(x.shape[-1], dim=-1)
        return q, k, v

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError("the graph form runs forward_at only")


class FusableGelu(nn.Module):
    """GELU (erf form) in the node order ONNX Runtime fuses."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * (1.0 + torch.erf(x / math.sqrt(2.0))) * 0.5


def fused_gpt(gpt: GPT) -> GPT:
    """A shallow copy of ``gpt`` with packed projections and the fusable GELU in every block."""
    out = shallow_copy(gpt, GPT)
    out.blocks = nn.Sequential(*(_fused_block(cast(Block, b)) for b in gpt.blocks))
    return out


def _fused_block(block: Block) -> Block:
    out = shallow_copy(block, Block)
    out.attn = PackedSelfAttention(block.attn)
    linear_in, gelu, *rest = block.mlp
    assert isinstance(gelu, nn.GELU) and gelu.approximate == "none", gelu
    out.mlp = nn.Sequential(linear_in, FusableGelu(), *rest)
    return out
