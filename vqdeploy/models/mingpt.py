"""taming's minGPT (``taming/modules/transformer/mingpt.py``) with a KV-cache forward.

``forward`` is op-for-op upstream's full-sequence forward. ``forward_cached`` runs a prefill (empty
cache) or incremental steps on a fixed-capacity cache written in place (``models/kv_cache.py``);
its logits match full recomputation to float rounding. ``forward_at`` is the same computation at
a position given as a tensor, with the cache write left to the caller (the export's TensorScatter).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import cast

import torch
import torch.nn.functional as F
from torch import nn

from vqdeploy.models.kv_cache import (
    KV,
    KVCache,
    ValidLength,
    Writer,
    attend_projections,
    attention_mask,
    forward_cached,
)
from vqdeploy.models.precision import LayerNorm32


class CausalSelfAttention(nn.Module):
    def __init__(self, n_embd: int, n_head: int, block_size: int, n_unmasked: int = 0) -> None:
        super().__init__()
        assert n_embd % n_head == 0
        self.key = nn.Linear(n_embd, n_embd)
        self.query = nn.Linear(n_embd, n_embd)
        self.value = nn.Linear(n_embd, n_embd)
        self.attn_drop = nn.Dropout(0.0)
        self.resid_drop = nn.Dropout(0.0)
        self.proj = nn.Linear(n_embd, n_embd)
        mask = torch.tril(torch.ones(block_size, block_size))
        if n_unmasked:
            mask[:n_unmasked, :n_unmasked] = 1
        self.register_buffer("mask", mask.view(1, 1, block_size, block_size))
        self.n_head = n_head

    def _heads(self, t: torch.Tensor, b: int, n: int, c: int) -> torch.Tensor:
        return t.view(b, n, self.n_head, c // self.n_head).transpose(1, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, c = x.size()
        k = self._heads(self.key(x), b, t, c)
        q = self._heads(self.query(x), b, t, c)
        v = self._heads(self.value(x), b, t, c)
        att = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(k.size(-1)))
        att = att.masked_fill(self.mask[:, :, :t, :t] == 0, float("-inf"))
        att = self.attn_drop(F.softmax(att, dim=-1))
        y = (att @ v).transpose(1, 2).contiguous().view(b, t, c)
        return self.resid_drop(self.proj(y))

    def projections(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The query, key and value of x (B,T,C), each (B,T,C)."""
        return self.query(x), self.key(x), self.value(x)

    def forward_at(self, x: torch.Tensor, cache: KV, allowed: torch.Tensor,
                   write: Writer | ValidLength) -> tuple[torch.Tensor, KV]:
        """Write the keys/values of ``t`` new tokens into the cache, then attend where ``allowed``
        ((B, 1, t, capacity) bool, ``kv_cache.attention_mask``); returns the written cache."""
        q, k, v = self.projections(x)
        y, written = attend_projections(q, k, v, self.n_head, cache, allowed, write,
                                        1.0 / math.sqrt(x.size(-1) // self.n_head))
        return self.proj(y), written


class Block(nn.Module):
    def __init__(self, n_embd: int, n_head: int, block_size: int, n_unmasked: int = 0) -> None:
        super().__init__()
        self.ln1 = LayerNorm32(n_embd)
        self.ln2 = LayerNorm32(n_embd)
        self.attn = CausalSelfAttention(n_embd, n_head, block_size, n_unmasked)
        self.mlp = nn.Sequential(
            nn.Linear(n_embd, 4 * n_embd),
            nn.GELU(),
            nn.Linear(4 * n_embd, n_embd),
            nn.Dropout(0.0),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln1(x))
        return x + self.mlp(self.ln2(x))

    def forward_at(self, x: torch.Tensor, cache: KV, allowed: torch.Tensor,
                   write: Writer | ValidLength) -> tuple[torch.Tensor, KV]:
        attn, written = self.attn.forward_at(self.ln1(x), cache, allowed, write)
        x = x + attn
        return x + self.mlp(self.ln2(x)), written


class GPT(nn.Module):
    """The full GPT language model with a context of ``block_size`` tokens."""

    def __init__(
        self,
        vocab_size: int,
        block_size: int,
        n_layer: int = 12,
        n_head: int = 8,
        n_embd: int = 256,
        embd_pdrop: float = 0.0,
        resid_pdrop: float = 0.0,
        attn_pdrop: float = 0.0,
        n_unmasked: int = 0,
    ) -> None:
        super().__init__()
        self.vocab_size = vocab_size
        self.block_size = block_size
        self.n_layer = n_layer
        self.n_head = n_head
        self.n_embd = n_embd
        self.n_unmasked = n_unmasked
        self.tok_emb = nn.Embedding(vocab_size, n_embd)
        self.pos_emb = nn.Parameter(torch.zeros(1, block_size, n_embd))
        self.drop = nn.Dropout(embd_pdrop)
        self.blocks = nn.Sequential(*[Block(n_embd, n_head, block_size, n_unmasked) for _ in range(n_layer)])
        self.ln_f = LayerNorm32(n_embd)
        self.head = nn.Linear(n_embd, vocab_size, bias=False)
        self.apply(self._init_weights)

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        # upstream's init, so that training the demo model starts where taming's would
        if isinstance(module, (nn.Linear, nn.Embedding)):
            module.weight.data.normal_(mean=0.0, std=0.02)
            if isinstance(module, nn.Linear) and module.bias is not None:
                module.bias.data.zero_()
        elif isinstance(module, nn.LayerNorm):
            module.bias.data.zero_()
            module.weight.data.fill_(1.0)

    @property
    def head_dim(self) -> int:
        return self.n_embd // self.n_head

    def get_block_size(self) -> int:
        return self.block_size

    def forward(
        self, idx: torch.Tensor, embeddings: torch.Tensor | None = None, targets: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        token_embeddings = self.tok_emb(idx)
        if embeddings is not None:
            token_embeddings = torch.cat((embeddings, token_embeddings), dim=1)
        t = token_embeddings.shape[1]
        if t > self.block_size:
            raise ValueError(f"cannot forward {t} tokens, block size is {self.block_size}")
        x = self.drop(token_embeddings + self.pos_emb[:, :t, :])
        x = self.ln_f(self.blocks(x))
        logits = self.head(x)
        loss = None
        if targets is not None:
            loss = F.cross_entropy(logits.view(-1, logits.size(-1)), targets.view(-1))
        return logits, loss

    def new_cache(self, batch: int, capacity: int | None = None, dtype: torch.dtype | None = None,
                  device: torch.device | str | None = None) -> KVCache:
        """A zeroed cache of ``capacity`` positions (default: the block size) in the model's dtype."""
        capacity = self.block_size if capacity is None else capacity
        if not 1 <= capacity <= self.block_size:
            raise ValueError(f"cache capacity {capacity} is outside 1..{self.block_size}")
        w = self.tok_emb.weight
        return KVCache.allocate(self.n_layer, batch, self.n_head, capacity, self.head_dim,
                                dtype or w.dtype, device or w.device)

    def forward_at(self, idx: torch.Tensor, position: torch.Tensor, cache: Sequence[KV],
                   write: Writer | ValidLength) -> tuple[torch.Tensor, list[KV]]:
        """Logits of the (B,T) tokens of row b at ``position[b]`` .. position[b]+T-1 (``position``: (B,) int64),
        each layer's keys/values written into its cache with ``write``; returns the written caches."""
        b, t = idx.shape
        positions = position.reshape(b, 1) + torch.arange(t, device=idx.device)  # (B,T)
        x = self.tok_emb(idx) + self.pos_emb[0].index_select(0, positions.reshape(-1)).reshape(b, t, -1)
        # every layer's mask buffer is the same (block size, n_unmasked): one mask for all of them
        mask = cast(torch.Tensor, cast(Block, self.blocks[0]).attn.mask)
        allowed = attention_mask(mask, positions, cache[0][0].shape[2])
        written: list[KV] = []
        for layer, block in zip(cache, self.blocks):
            x, kv = block.forward_at(x, layer, allowed, write)
            written.append(kv)
        return self.head(self.ln_f(x)), written

    def forward_cached(self, idx: torch.Tensor, cache: KVCache | None = None) -> tuple[torch.Tensor, KVCache]:
        """Prefill (``cache=None``) or continue after ``cache`` (written in place): logits of every new token."""
        return forward_cached(self, idx, cache)
