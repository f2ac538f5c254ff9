"""The token loop: prefill the condition, then one cached step per image token.

The caller owns the loop state through a ``TransformerRunner`` (the KV cache) and gets tokens
back in sequence order. Larger-than-trained latent grids use taming's sliding-window sampling
(``scripts/sample_conditional.py``), batched across samples, reusing the cache while the window
stays put.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from vqdeploy.errors import InputError
from vqdeploy.runtime.backends.base import TransformerRunner
from vqdeploy.runtime.sampling import SamplingParams, next_tokens

Progress = Callable[[int], None]


def generate(
    runner: TransformerRunner,
    prompt: np.ndarray,
    steps: int,
    params: SamplingParams,
    noise: np.ndarray,
    progress: Progress | None = None,
    logits_out: list[np.ndarray] | None = None,
) -> np.ndarray:
    """(B,T0) prompt (cond tokens, optionally followed by image tokens) -> (B,steps) new tokens.

    ``logits_out`` collects the (B,V) logits each token was drawn from (for parity checks).
    """
    batch = prompt.shape[0]
    runner.reset(batch)
    logits = runner.forward(prompt)[:, -1]
    out = np.empty((batch, steps), dtype=np.int64)
    for k in range(steps):
        if logits_out is not None:
            logits_out.append(logits)
        out[:, k] = next_tokens(logits, noise[k], params)
        if progress is not None:
            progress(1)
        if k + 1 < steps:
            logits = runner.forward(out[:, k : k + 1])[:, -1]
    return out


def _local(i: int, size: int, window: int) -> int:
    """Position of row/column ``i`` inside its window (upstream's local_i / local_j rule)."""
    half = window // 2
    if i <= half:
        return i
    if size - i < half:
        return window - (size - i)
    return half


def generate_sliding(
    runner: TransformerRunner,
    cond: np.ndarray,
    grid: tuple[int, int],
    window: tuple[int, int],
    params: SamplingParams,
    noise: np.ndarray,
    progress: Progress | None = None,
) -> np.ndarray:
    """Sample a (B,h,w) raster grid larger than the trained ``window`` (wh,ww).

    ``cond`` is either a (B,h,w) grid of cond tokens aligned with the image grid (cropped with the
    window) or (B,Tc) tokens used for every window (SOS / class conditioning).
    """
    h, w = grid
    wh, ww = window
    if h < wh or w < ww:
        raise InputError(f"latent grid {h}x{w} is smaller than the trained window {wh}x{ww}")
    if cond.ndim == 3 and cond.shape[1:] != (h, w):
        raise InputError(f"the condition grid {cond.shape[1:]} does not match the image grid {(h, w)}")
    batch = cond.shape[0]
    idx = np.zeros((batch, h, w), dtype=np.int64)
    at: tuple[int, int, int] | None = None  # (i0, j0, next local position) the cache is ready for
    logits = np.empty(0)
    k = 0
    for i in range(h):
        i0 = i - _local(i, h, wh)
        for j in range(w):
            j0 = j - _local(j, w, ww)
            pos = (i - i0) * ww + (j - j0)
            if at == (i0, j0, pos):
                logits = runner.forward(idx[:, i, j - 1 : j] if j > 0 else idx[:, i - 1, -1:])[:, -1]
            else:
                c = cond[:, i0 : i0 + wh, j0 : j0 + ww].reshape(batch, -1) if cond.ndim == 3 else cond
                prefix = idx[:, i0 : i0 + wh, j0 : j0 + ww].reshape(batch, -1)[:, :pos]
                runner.reset(batch)
                logits = runner.forward(np.concatenate([c, prefix], axis=1))[:, -1]
            idx[:, i, j] = next_tokens(logits, noise[k], params)
            k += 1
            at = (i0, j0, pos + 1)
            if progress is not None:
                progress(1)
    return idx
