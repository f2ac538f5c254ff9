"""The fixed-capacity KV cache: buffers of (B, n_head, capacity, head_dim) per layer, written in place.

A step writes its T new keys/values at ``position .. position+T-1`` and attends over the whole
capacity with a mask (upstream's ``mask`` rows of those positions, and nothing at or beyond
``position+T``), so every step has the same shapes whatever the position; nothing is concatenated
or copied. Two writers express the write:

- ``write_in_place`` (eager, the torch backend): a slice copy into the buffer;
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


def write_at(position: torch.Tensor) -> Writer:
    """Eager in-place writer at a device-side (1,) int64 ``position``: no host value is baked in, so a
    step captured as a CUDA graph writes wherever the position tensor says at replay."""

    def write(cache: torch.Tensor, update: torch.Tensor) -> torch.Tensor:
        index = position.reshape(1) + torch.arange(update.shape[2], device=cache.device)
        return cache.index_copy_(2, index, update)

    return write


@torch.library.custom_op("vqdeploy::kv_write", mutates_args=())
def kv_write_op(cache: torch.Tensor, update: torch.Tensor, position: torch.Tensor) -> torch.Tensor:
    """Functional form (a new tensor) of the write; exported as ONNX TensorScatter."""
    out = cache.clone()
    start = int(position.reshape(-1)[0])
    out.narrow(2, start, update.shape[2]).copy_(update)
    return out


@kv_write_op.register_fake
def _kv_write_fake(cache: torch.Tensor, update: torch.Tensor, position: torch.Tensor) -> torch.Tensor:
    return torch.empty_like(cache)


def kv_write(position: torch.Tensor) -> Writer:
    """Export writer: the ``vqdeploy::kv_write`` op at the (1,) int64 ``position``."""
    return lambda cache, update: kv_write_op(cache, update, position)


def attention_mask(mask: torch.Tensor, positions: torch.Tensor, capacity: int) -> torch.Tensor:
    """(T, capacity) bool, True where query ``positions[i]`` may attend key ``j``: upstream's mask
    (causal, with the bidirectional ``n_unmasked`` block) and only keys written so far (j <= the
    last new position)."""
    rows = mask[0, 0].index_select(0, positions)[:, :capacity] != 0
    written = torch.arange(capacity, device=positions.device) <= positions[-1]
    return rows & written


class CachedGPT(Protocol):
    """What the cached loop and the transformer graph need of a GPT (taming's minGPT, LlamaGen's Transformer)."""

    n_layer: int

    def new_cache(self, batch: int) -> KVCache: ...

    def forward_at(self, idx: torch.Tensor, position: torch.Tensor, cache: list[KV],
                   write: Writer) -> tuple[torch.Tensor, list[KV]]: ...


def forward_cached(gpt: CachedGPT, idx: torch.Tensor, cache: KVCache | None = None) -> tuple[torch.Tensor, KVCache]:
    """Prefill (``cache=None``: a new cache of block-size capacity) or continue after ``cache``, which is written
    in place; returns logits for every new token and the cache."""
    if cache is None:
        cache = gpt.new_cache(idx.shape[0])
    start, t = cache.length, idx.shape[1]
    if start + t > cache.capacity:
        raise ValueError(f"cannot cache {start + t} tokens, the capacity is {cache.capacity}")
    position = torch.tensor([start], dtype=torch.int64, device=idx.device)
    logits, _ = gpt.forward_at(idx, position, cache.layers, write_in_place(start))
    cache.length = start + t
    return logits, cache


class CachedStepGraph(nn.Module):
    """tokens (B,T) at position (1,) + the KV cache per layer -> logits (B,T,V) fp32 + the cache written at
    position..position+T-1. One graph serves the prefill (position 0) and the one-token steps; the cache write is
    ONNX TensorScatter (``kv_write``, ``export/kv_cache_onnx.py``): bind each ``cache_out`` output to its ``cache``
    input's buffer and it is updated in place."""

    def __init__(self, gpt: nn.Module) -> None:
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
