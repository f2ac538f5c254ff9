"""The interface every backend implements, so that the pipeline, the parity check and the
benchmark drive torch, onnxruntime and TensorRT with the same code."""

from __future__ import annotations

from typing import Protocol

import numpy as np

from vqdeploy.artifacts import Manifest
from vqdeploy.errors import InputError
from vqdeploy.runtime.sampling import SamplingParams


class TransformerRunner(Protocol):
    """The transformer with its KV cache: a small state object the caller drives token by token. Each row has
    its own length (rows of a batch may be at different positions: ``serve``'s continuous batching)."""

    lengths: np.ndarray  # (batch,) int64: tokens cached per row

    @property
    def length(self) -> int:
        """Tokens in the cache (rows at different positions: the longest)."""

    def reset(self, batch: int) -> None:
        """Empty the cache for a new batch."""

    def forward(self, tokens: np.ndarray, first: int = 0) -> np.ndarray:
        """Append (n,T) int64 tokens to rows ``first .. first + n - 1``, each at its own length; (n,T,V) fp32
        logits of the new positions."""

    def rewind(self, length: int, row: int | None = None) -> None:
        """Keep the first ``length`` cached positions of every row, or of ``row`` (later ones are masked, then
        overwritten)."""

    def move(self, src: int, dst: int) -> None:
        """Row ``src``'s cache and length into row ``dst``; ``src`` is left empty. ``serve``'s continuous
        batching packs its rows low with it, so that a step runs no free rows."""


class RowLengths:
    """What the transformer runners share about their per-row lengths: ``lengths`` (one per row of the current
    batch, empty before the first ``reset``), the longest, and rewinding rows that exist."""

    lengths: np.ndarray

    @property
    def length(self) -> int:
        """Tokens in the cache (rows at different positions: the longest)."""
        return int(self.lengths.max(initial=0))

    def rewind(self, length: int, row: int | None = None) -> None:
        """Keep the first ``length`` cached positions of every row (or of ``row`` only)."""
        kept = self.lengths[slice(None) if row is None else slice(row, row + 1)]
        if not kept.size or not 0 <= length <= int(kept.min()):
            raise InputError(f"transformer: cannot rewind {self.length} cached positions to {length}")
        kept[...] = length

    def _moved(self, src: int, dst: int) -> None:
        """The lengths' side of ``move``, after the runner has checked the rows and copied the cache."""
        self.lengths[dst] = self.lengths[src]
        self.lengths[src] = 0

    def _check_move(self, src: int, dst: int) -> None:
        if not (0 <= src < len(self.lengths) and 0 <= dst < len(self.lengths)) or src == dst:
            raise InputError(f"transformer: cannot move row {src} to row {dst} of a batch of {len(self.lengths)}")


class Decoding(Protocol):
    """One generation in progress (``runtime.generator`` drives it): B rows, the KV cache, the latest
    logits and the tokens drawn so far; the k-th draw uses noise row k. A prefill empties the cache
    but keeps the drawn tokens (the sliding window re-fills the cache from them)."""

    def prefill(self, prompt: np.ndarray) -> None:
        """Empty the cache and run the (B,T) prompt; its last logits are the next draw's."""

    def draw(self) -> None:
        """Draw the next token of every row from the latest logits."""

    def extend(self) -> None:
        """Append the last drawn token to the cache (one step): new latest logits."""

    def tokens(self) -> np.ndarray:
        """(B, drawn) int64 tokens so far, in draw order, on the host."""


class Backend(Protocol):
    """Everything the pipeline, ``parity`` and ``bench`` use of a backend (nothing else is reached)."""

    name: str
    device: str
    manifest: Manifest
    emulation: str | None  # what this backend computes differently from the graphs (None: nothing)

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

    def synchronize(self) -> None:
        """Wait for the device's queued work (timings)."""

    def has_graph(self, name: str) -> bool:
        """Whether ``run_graph(name)`` can run (graph backends: the artifacts hold it)."""

    def run_graph(self, name: str, arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """One call of an exported graph on host arrays (graph backends only)."""

    def device_decoding(self, groups: list[tuple[SamplingParams, np.ndarray]], noise: np.ndarray,
                        null_tokens: np.ndarray | None = None) -> Decoding | None:
        """A decoding that draws with the exported sampler graph on the backend's device (logits never
        leave it), each (params, contiguous rows) group with its own setting (a guided one with the guided
        sampler graph, its null rows conditioned on ``null_tokens``), or None where there is none (torch;
        artifacts without a sampler graph)."""
