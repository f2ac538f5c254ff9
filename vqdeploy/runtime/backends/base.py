"""The interface every backend implements, so that the pipeline, the parity check and the
benchmark drive torch, onnxruntime and TensorRT with the same code."""

from __future__ import annotations

from typing import Protocol

import numpy as np


class TransformerRunner(Protocol):
    """The transformer with its KV cache: a small state object the caller drives token by token."""

    @property
    def length(self) -> int:
        """Tokens in the cache."""

    def reset(self, batch: int) -> None:
        """Empty the cache for a new batch."""

    def forward(self, tokens: np.ndarray) -> np.ndarray:
        """Append (B,T) int64 tokens to the cache; (B,T,V) fp32 logits of the new positions."""


class Backend(Protocol):
    name: str
    device: str

    def encode(self, image: np.ndarray) -> np.ndarray:
        """First stage: (B,C,H,W) fp32 in [-1,1] -> (B,h,w) int64 token ids (raster order)."""

    def encode_cond(self, cond: np.ndarray) -> np.ndarray:
        """Cond stage (image conditions): preprocessed input -> (B,h,w) token ids."""

    def decode(self, indices: np.ndarray) -> np.ndarray:
        """(B,h,w) token ids (raster order) -> (B,C,H,W) fp32 image."""

    def transformer(self) -> TransformerRunner:
        """The (single, reused) KV-cached transformer runner."""

    def max_batch(self, graph: str) -> int:
        """Largest batch ``graph`` takes here; the pipeline runs larger requests in chunks of it."""
