"""The fixed-capacity KV cache: buffers of (B, n_head, capacity, head_dim) per layer, written in place.

``position`` holds one value per row: row b writes its T new keys/values at ``position[b] ..
position[b]+T-1`` and attends over the whole capacity with a mask (upstream's ``mask`` rows of those
positions, and nothing at or beyond ``position[b]+T``), so every step has the same shapes whatever
the positions, and rows at different positions share a batch (``serve``'s continuous batching);
nothing is concatenated or copied. Two writers express the write:

- ``write_in_place`` (eager, the torch backend): a slice copy into the buffer where every row is at
  the same position, ``write_at`` (an indexed copy at device-side per-row positions) otherwise;
- ``kv_write`` (export): the custom op ``vqdeploy::kv_write``, which the exporter turns into ONNX
  ``TensorScatter`` (opset 24, ``export/kv_cache_onnx.py``). ONNX Runtime writes in place when the
  output is bound to the input's buffer; TensorRT(-RTX) maps it to its KVCacheUpdate layer, whose
  output aliases the cache input.

Positions the cache has not been written at are masked, but a masked score still multiplies its
value row by 0: buffers start zeroed (never uninitialised memory, which may hold NaN), and every
later write is finite.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import torch
import torch.nn.functional as F
from torch import nn

from vqdeploy.models.precision import upcast

KV = tuple[torch.Tensor, torch.Tensor]
# (cache (B,nh,C,hd), update (B,nh,T,hd)) -> the cache with the update written at the position
Writer = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass
class KVCache:
    """Per-layer (key, value) buffers and how many positions hold valid entries."""

    layers: list[KV]
    length: int = 0

    @property
    def capacity(self) -> int:
        return int(self.layers[0][0].shape[2])

    @property
    def batch(self) -> int:
        return int(self.layers[0][0].shape[0])

    @classmethod
    def allocate(cls, n_layer: int, batch: int, n_head: int, capacity: int, head_dim: int,
                 dtype: torch.dtype, device: torch.device | str) -> KVCache:
        shape = (batch, n_head, capacity, head_dim)
        return cls([(torch.zeros(shape, dtype=dtype, device=device), torch.zeros(shape, dtype=dtype, device=device))
                    for _ in range(n_layer)])


def write_in_place(start: int) -> Writer:
    """Eager writer: copy the update into the buffer at ``start`` and return the buffer itself."""

    def write(cache: torch.Tensor, update: torch.Tensor) -> torch.Tensor:
        cache.narrow(2, start, update.shape[2]).copy_(update)
        return cache

    return write


def row_indices(position: torch.Tensor, t: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(B,1) row and (B,T) cache indices of T new tokens at the (B,) per-row ``position``."""
    rows = torch.arange(position.shape[0], device=position.device)[:, None]
    return rows, position[:, None] + torch.arange(t, device=position.device)


def write_at(position: torch.Tensor) -> Writer:
    """Eager in-place writer at a device-side (B,) int64 per-row ``position``: no host value is baked in, so a
    step captured as a CUDA graph writes wherever the position tensor says at replay."""

    def write(cache: torch.Tensor, update: torch.Tensor) -> torch.Tensor:
        rows, cols = row_indices(position, update.shape[2])
        cache[rows, :, cols] = update.transpose(1, 2)  # (B,T,nh,hd): advanced indices first
        return cache

    return write


@torch.library.custom_op("vqdeploy::kv_write", mutates_args=())
def kv_write_op(cache: torch.Tensor, update: torch.Tensor, position: torch.Tensor) -> torch.Tensor:
    """Functional form (a new tensor) of the write at the (B,) per-row ``position``; exported as ONNX
    TensorScatter (whose write indices are exactly that)."""
    return write_at(position)(cache.clone(), update)


@kv_write_op.register_fake
def _kv_write_fake(cache: torch.Tensor, update: torch.Tensor, position: torch.Tensor) -> torch.Tensor:
    return torch.empty_like(cache)


def kv_write(position: torch.Tensor) -> Writer:
    """Export writer: the ``vqdeploy::kv_write`` op at the (B,) int64 per-row ``position``."""
    return lambda cache, update: kv_write_op(cache, update, position)


def attention_mask(mask: torch.Tensor, positions: torch.Tensor, capacity: int) -> torch.Tensor:
    """(B,1,T,capacity) bool, True where row b's query at ``positions[b, i]`` may attend key ``j``: upstream's
    mask (causal, with the bidirectional ``n_unmasked`` block) and only keys that row has written so far
    (j <= its last new position)."""
    b, t = positions.shape
    rows = mask[0, 0].index_select(0, positions.reshape(-1))[:, :capacity].reshape(b, 1, t, capacity) != 0
    written = torch.arange(capacity, device=positions.device) <= positions[:, -1:]  # (B, capacity)
    return rows & written[:, None, None, :]


def causal_mask(positions: torch.Tensor, capacity: int) -> torch.Tensor:
    """(B,1,T,capacity) bool: row b's query at ``positions[b, i]`` attends keys 0 .. positions[b, i]."""
    return (torch.arange(capacity, device=positions.device) <= positions[:, :, None])[:, None]


@dataclass(frozen=True)
class ValidLength:
    """Export-only strategy for ``attend``: write the new keys/values and attend over each row's valid prefix only,
    as one ``vqdeploy::cached_attention`` op (ONNX Runtime's GroupQueryAttention, ``export/attention_onnx.py``).
    Causal attention only: a model whose mask has an ``n_unmasked`` block cannot use it."""

    position: torch.Tensor  # (B,) int64 per-row positions


def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cache: KV, allowed: torch.Tensor,
           write: Writer | ValidLength, scale: float) -> tuple[torch.Tensor, KV]:
    """q, k, v: (B,nh,T,hd) of T new tokens. Writes k, v into the layer's cache with ``write``, then attends where
    ``allowed`` ((B,1,T,capacity) bool) over the whole capacity, scores and softmax in fp32 (the identity for fp32
    models); every row allows its own position, so no row is all -inf. Returns y (B,T,nh*hd) and the written
    cache. ``ValidLength``: the same computation as one op that reads only the valid prefix (export)."""
    b, nh, t, hd = q.shape
    if isinstance(write, ValidLength):
        flat = [x.transpose(1, 2).reshape(b, t, nh * hd) for x in (q, k, v)]
        return attend_projections(flat[0], flat[1], flat[2], nh, cache, allowed, write, scale)
    k = write(cache[0], k)
    v = write(cache[1], v)
    att = (upcast(q) @ upcast(k).transpose(-2, -1)) * scale
    att = F.softmax(att.masked_fill(~allowed, float("-inf")), dim=-1)
    return (att.to(v.dtype) @ v).transpose(1, 2).contiguous().view(b, t, nh * hd), (k, v)


def attend_projections(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, n_head: int, cache: KV,
                       allowed: torch.Tensor, write: Writer | ValidLength, scale: float) -> tuple[torch.Tensor, KV]:
    """``attend`` on the projections as they come, (B,T,nh*hd) each: the valid-length op takes them so, which keeps
    a split into heads and its undoing (four Reshapes per projection) out of that graph."""
    if isinstance(write, ValidLength):
        y, ck, cv = cached_attention_op(q, k, v, cache[0], cache[1], write.position, n_head, scale)
        return y, (ck, cv)
    b, t, c = q.shape
    heads = [x.view(b, t, n_head, c // n_head).transpose(1, 2) for x in (q, k, v)]
    return attend(heads[0], heads[1], heads[2], cache, allowed, write, scale)


@torch.library.custom_op("vqdeploy::cached_attention", mutates_args=())
def cached_attention_op(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cache_k: torch.Tensor,
                        cache_v: torch.Tensor, position: torch.Tensor, num_heads: int,
                        scale: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Functional form of ``attend`` with ``ValidLength``: q, k, v (B,T,nh*hd); the caches (B,nh,C,hd) with the new
    keys/values written at each row's ``position``; causal attention over keys 0 .. position[b] + i."""
    positions = position[:, None] + torch.arange(q.shape[1], device=q.device)
    allowed = causal_mask(positions, cache_k.shape[2])
    y, (ck, cv) = attend_projections(q, k, v, num_heads, (cache_k, cache_v), allowed, kv_write(position), scale)
    return y, ck, cv


@cached_attention_op.register_fake
def _cached_attention_fake(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cache_k: torch.Tensor,
                           cache_v: torch.Tensor, position: torch.Tensor, num_heads: int,
                           scale: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return torch.empty_like(q), torch.empty_like(cache_k), torch.empty_like(cache_v)


class CachedGPT(Protocol):
    """What the cached loop and the transformer graph need of a GPT (taming's minGPT, LlamaGen's Transformer)."""

    n_layer: int

    def new_cache(self, batch: int) -> KVCache: ...

    def forward_at(self, idx: torch.Tensor, position: torch.Tensor, cache: list[KV],
                   write: Writer) -> tuple[torch.Tensor, list[KV]]:
        """Logits of the (B,T) tokens of row b at ``position[b]`` .. +T-1 ((B,) int64), written with ``write``."""
        ...


def forward_cached(gpt: CachedGPT, idx: torch.Tensor, cache: KVCache | None = None) -> tuple[torch.Tensor, KVCache]:
    """Prefill (``cache=None``: a new cache of block-size capacity) or continue after ``cache``, which is written
    in place; returns logits for every new token and the cache."""
    if cache is None:
        cache = gpt.new_cache(idx.shape[0])
    start, t = cache.length, idx.shape[1]
    if start + t > cache.capacity:
        raise ValueError(f"cannot cache {start + t} tokens, the capacity is {cache.capacity}")
    position = torch.full((idx.shape[0],), start, dtype=torch.int64, device=idx.device)
    logits, _ = gpt.forward_at(idx, position, cache.layers, write_in_place(start))
    cache.length = start + t
    return logits, cache


class CachedStepGraph(nn.Module):
    """tokens (B,T) at position (B,) (one per row) + the KV cache per layer -> logits (B,T,V) fp32 + the cache
    written at position[b]..position[b]+T-1 in row b. One graph serves the prefill (position 0) and the one-token
    steps; the cache write is ONNX TensorScatter (``kv_write``, ``export/kv_cache_onnx.py``): bind each
    ``cache_out`` output to its ``cache`` input's buffer and it is updated in place. ``valid_length``: each layer's
    write-and-attend is one ``cached_attention`` op instead (ONNX Runtime's GroupQueryAttention, which reads only
    each row's valid prefix; same inputs and outputs)."""

    def __init__(self, gpt: nn.Module, valid_length: bool = False) -> None:
        super().__init__()
        self.gpt = gpt
        self.valid_length = valid_length

    def forward(self, tokens: torch.Tensor, *state: torch.Tensor) -> tuple[torch.Tensor, ...]:
        position, cache = state[0], state[1:]
        pairs = [(cache[2 * i], cache[2 * i + 1]) for i in range(self.gpt.n_layer)]
        write = ValidLength(position) if self.valid_length else kv_write(position)
        logits, written = self.gpt.forward_at(tokens, position, pairs, write)
        out = [upcast(logits)]
        for k, v in written:
            out += [k, v]
        return tuple(out)
