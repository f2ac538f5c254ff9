"""LlamaGen's class-conditional GPT (``autoregressive/models/gpt.py`` at ce98ec4, ``model_type="c2i"``),
key-for-key, in eval mode, on vqdeploy's fixed-capacity KV cache (``models/kv_cache.py``).

Llama blocks: RMSNorm (in fp32, cast back), fused ``wqkv`` without biases, 2-D rotary embeddings
(``precompute_freqs_cis_2d``: zeros at the class token, so its query and key are zero vectors), attention
with scale 1/sqrt(head_dim), SwiGLU ``w2(silu(w1 x) * w3 x)``, a final RMSNorm and the ``output`` head. Sequence
position 0 is the class token, embedded by ``cls_embedding.embedding_table`` (whose last row is the null class
of classifier-free guidance); positions 1.. are image tokens, embedded by ``tok_embeddings``. Position p uses
rotary row p, as upstream's ``freqs_cis[input_pos]``.

``forward_at`` is the computation of every graph and of the torch backend: the T new tokens at ``position``
.. position+T-1 write their keys/values with the caller's writer and attend to every written key at or before
their own position (upstream's causal mask). Upstream's teacher-forced forward and its KV-cached
``generate`` compute the same thing (``F.scaled_dot_product_attention``); they differ from ours by float
rounding only (measured in ``tests/test_llamagen.py``).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from vqdeploy.models.kv_cache import KV, KVCache, ValidLength, Writer, attend, causal_mask, forward_cached
from vqdeploy.models.precision import upcast


def precompute_freqs_cis_2d(grid_size: int, n_elem: int, base: float = 10000, cls_token_num: int = 1) -> torch.Tensor:
    """(cls_token_num + grid^2, n_elem // 2, 2) cos/sin table, upstream's arithmetic: half of each head for the
    row, half for the column, zeros for the class token(s)."""
    half_dim = n_elem // 2
    freqs = 1.0 / (base ** (torch.arange(0, half_dim, 2)[: (half_dim // 2)].float() / half_dim))
    t = torch.arange(grid_size, device=freqs.device)
    freqs = torch.outer(t, freqs)
    freqs_grid = torch.concat([freqs[:, None, :].expand(-1, grid_size, -1),
                               freqs[None, :, :].expand(grid_size, -1, -1)], dim=-1)
    cache = torch.stack([torch.cos(freqs_grid), torch.sin(freqs_grid)], dim=-1).flatten(0, 1)
    return torch.cat([torch.zeros(cls_token_num, n_elem // 2, 2), cache])


def apply_rotary_emb(x: torch.Tensor, freqs_cis: torch.Tensor) -> torch.Tensor:
    """x (B,T,heads,hd), freqs (B,T,hd/2,2) (each row's positions): each pair (x0, x1) rotated, in fp32, cast
    back (upstream's)."""
    xshaped = x.float().reshape(*x.shape[:-1], -1, 2)
    f = freqs_cis.view(xshaped.size(0), xshaped.size(1), 1, xshaped.size(3), 2)
    out = torch.stack([xshaped[..., 0] * f[..., 0] - xshaped[..., 1] * f[..., 1],
                       xshaped[..., 1] * f[..., 0] + xshaped[..., 0] * f[..., 1]], dim=-1)
    return out.flatten(3).type_as(x)


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xf = x.float()
        return (xf * torch.rsqrt(torch.mean(xf * xf, dim=-1, keepdim=True) + self.eps)).type_as(x) * self.weight


class FeedForward(nn.Module):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.w1 = nn.Linear(dim, hidden, bias=False)
        self.w3 = nn.Linear(dim, hidden, bias=False)
        self.w2 = nn.Linear(hidden, dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.w2(F.silu(self.w1(x)) * self.w3(x))


class Attention(nn.Module):
    def __init__(self, dim: int, n_head: int) -> None:
        super().__init__()
        self.dim, self.n_head, self.head_dim = dim, n_head, dim // n_head
        self.wqkv = nn.Linear(dim, 3 * dim, bias=False)
        self.wo = nn.Linear(dim, dim, bias=False)

    def forward_at(self, x: torch.Tensor, freqs: torch.Tensor, cache: KV, allowed: torch.Tensor,
                   write: Writer | ValidLength) -> tuple[torch.Tensor, KV]:
        b, t, _ = x.shape
        xq, xk, xv = self.wqkv(x).split([self.dim, self.dim, self.dim], dim=-1)
        xq = apply_rotary_emb(xq.view(b, t, self.n_head, self.head_dim), freqs).transpose(1, 2)
        xk = apply_rotary_emb(xk.view(b, t, self.n_head, self.head_dim), freqs).transpose(1, 2)
        xv = xv.view(b, t, self.n_head, self.head_dim).transpose(1, 2)
        y, written = attend(xq, xk, xv, cache, allowed, write, 1.0 / self.head_dim**0.5)
        return self.wo(y), written


class TransformerBlock(nn.Module):
    def __init__(self, dim: int, n_head: int, hidden: int, norm_eps: float) -> None:
        super().__init__()
        self.attention = Attention(dim, n_head)
        self.feed_forward = FeedForward(dim, hidden)
        self.attention_norm = RMSNorm(dim, norm_eps)
        self.ffn_norm = RMSNorm(dim, norm_eps)

    def forward_at(self, x: torch.Tensor, freqs: torch.Tensor, cache: KV, allowed: torch.Tensor,
                   write: Writer | ValidLength) -> tuple[torch.Tensor, KV]:
        a, kv = self.attention.forward_at(self.attention_norm(x), freqs, cache, allowed, write)
        h = x + a
        return h + self.feed_forward(self.ffn_norm(h)), kv


class LabelEmbedder(nn.Module):
    """``cls_embedding``: ``num_classes`` rows, plus the null class's row when trained with label dropout."""

    def __init__(self, rows: int, dim: int) -> None:
        super().__init__()
        self.embedding_table = nn.Embedding(rows, dim)


class Transformer(nn.Module):
    """The c2i GPT: ``block_size`` image tokens (a square grid) after ``cls_token_num`` (= 1) class token."""

    def __init__(self, dim: int, n_layer: int, n_head: int, vocab_size: int, class_rows: int, hidden: int,
                 block_size: int, rope_base: float = 10000, norm_eps: float = 1e-5) -> None:
        super().__init__()
        grid = round(block_size**0.5)
        if grid * grid != block_size:
            raise ValueError(f"block size {block_size} is not a square grid")
        self.dim, self.n_layer, self.n_head, self.vocab_size = dim, n_layer, n_head, vocab_size
        self.class_rows, self.hidden, self.rope_base, self.norm_eps = class_rows, hidden, rope_base, norm_eps
        self.block_size = block_size  # KV cache capacity: the class token + all image tokens but the last
        self.cls_token_num = 1
        self.cls_embedding = LabelEmbedder(class_rows, dim)
        self.tok_embeddings = nn.Embedding(vocab_size, dim)
        self.layers = nn.ModuleList(TransformerBlock(dim, n_head, hidden, norm_eps) for _ in range(n_layer))
        self.norm = RMSNorm(dim, norm_eps)
        self.output = nn.Linear(dim, vocab_size, bias=False)
        self.register_buffer("freqs_cis", precompute_freqs_cis_2d(grid, dim // n_head, rope_base, 1), persistent=False)

    @property
    def head_dim(self) -> int:
        return self.dim // self.n_head

    @property
    def n_embd(self) -> int:
        return self.dim

    def embed(self, idx: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """(B,T) ids at (B,T) ``positions`` -> (B,T,dim): class ids (the null class included) where the position is
        the class token's, image token ids elsewhere (each table indexed within its range)."""
        cls = self.cls_embedding.embedding_table(idx.clamp(0, self.class_rows - 1))
        tok = self.tok_embeddings(idx.clamp(0, self.vocab_size - 1))
        return torch.where((positions < self.cls_token_num)[:, :, None], cls, tok)

    def new_cache(self, batch: int, device: torch.device | str | None = None) -> KVCache:
        w = self.tok_embeddings.weight
        return KVCache.allocate(self.n_layer, batch, self.n_head, self.block_size, self.head_dim, w.dtype,
                                device or w.device)

    def forward_at(self, idx: torch.Tensor, position: torch.Tensor, cache: Sequence[KV],
                   write: Writer | ValidLength) -> tuple[torch.Tensor, list[KV]]:
        """Logits (B,T,V) of the (B,T) tokens of row b at ``position[b]`` .. position[b]+T-1 (``position``: (B,)
        int64); each layer's keys/values are written into its cache with ``write``; returns the written caches."""
        b, t = idx.shape
        positions = position.reshape(b, 1) + torch.arange(t, device=idx.device)  # (B,T)
        h = self.embed(idx, positions)
        freqs = self.rotary_at(positions)
        allowed = causal_mask(positions, cache[0][0].shape[2])  # (B,1,T,capacity)
        written: list[KV] = []
        for layer, block in zip(cache, self.layers):
            h, kv = block.forward_at(h, freqs, layer, allowed, write)
            written.append(kv)
        return upcast(self.output(self.norm(h))), written

    def rotary_at(self, positions: torch.Tensor) -> torch.Tensor:
        """What every layer's attention rotates its queries and keys of (B,T) ``positions`` by: their rows of
        ``freqs_cis``, (B,T,hd/2,2)."""
        b, t = positions.shape
        return self.freqs_cis.index_select(0, positions.reshape(-1)).reshape(b, t, *self.freqs_cis.shape[1:])

    def forward_cached(self, idx: torch.Tensor, cache: KVCache | None = None) -> tuple[torch.Tensor, KVCache]:
        """Prefill (``cache=None``) or continue after ``cache`` (written in place): logits of every new token."""
        return forward_cached(self, idx, cache)

    def forward(self, sequence: torch.Tensor) -> torch.Tensor:
        """Teacher-forced logits (B,T,V) of a whole (B,T) sequence (class id, then image tokens), one forward:
        position i predicts image token i (upstream's eval-mode ``forward(idx, cond_idx)``)."""
        return self.forward_cached(sequence)[0]
