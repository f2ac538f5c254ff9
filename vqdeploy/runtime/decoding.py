"""The token loop, once: prefill the condition, then one cached step per image token.

A generation in progress is a small state object (``Decoding``, as in onnxruntime-genai's
generator): the KV cache, the logits of the last position and the tokens drawn so far. How a token
is drawn is the decoding's strategy: ``HostDecoding`` brings the logits to numpy and draws there
(every backend); the graph backends' device decoding runs the exported sampler graph where the
logits are, so that they never leave the GPU. ``generate`` and ``generate_sliding`` (taming's
sliding window for grids larger than the trained one) drive either, so ``run``, ``parity``,
``bench`` and the tools share one loop.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from vqdeploy.errors import InputError
from vqdeploy.runtime.backends.base import Backend, Decoding, TransformerRunner
from vqdeploy.runtime.guidance import GUIDED_SAMPLER, RowPlan
from vqdeploy.runtime.sampling import SamplingParams, guide, next_tokens

Progress = Callable[[int], None]


ParamGroups = list[tuple[SamplingParams, np.ndarray]]  # sampling params -> the rows (indices) that use them


def param_groups(params: SamplingParams | ParamGroups, batch: int) -> ParamGroups:
    """One set of params for every row, or (params, rows) groups as they are."""
    if isinstance(params, SamplingParams):
        return [(params, np.arange(batch))]
    return params


class HostDecoding:
    """Logits to the host, numpy sampler: any ``TransformerRunner``. Rows may use different sampling
    params (``serve`` batches requests with different temperature / top-k / top-p): each group of rows is
    drawn with its own; ``next_tokens`` works row by row, so a row's tokens are those of a batch of its params
    alone. ``logits_out`` collects the (B,V) logits each token was drawn from (parity checks; guided rows: the
    guided logits). A guided group (``cfg_scale`` > 1) runs a null-condition row per sample beside its own
    (``guidance.RowPlan``; ``null_tokens``: the condition's null tokens) and draws from the guided logits."""

    def __init__(self, runner: TransformerRunner, params: SamplingParams | ParamGroups, noise: np.ndarray,
                 logits_out: list[np.ndarray] | None = None, null_tokens: np.ndarray | None = None) -> None:
        self.runner, self.noise, self.logits_out = runner, noise, logits_out
        self.groups = param_groups(params, noise.shape[1])
        self.plan = RowPlan.make(self.groups, noise.shape[1], null_tokens)
        self.out = np.zeros((noise.shape[1], noise.shape[0]), dtype=np.int64)
        self.drawn = 0
        self.logits = np.empty(0)

    def prefill(self, prompt: np.ndarray) -> None:
        rows = self.plan.prompt(prompt)
        self.runner.reset(rows.shape[0])
        self.logits = self.runner.forward(rows)[:, -1]

    def draw(self) -> None:
        k = self.drawn
        if self.plan.guided:
            self._draw_guided(k)
        else:
            if self.logits_out is not None:
                self.logits_out.append(self.logits)
            if len(self.groups) == 1:
                self.out[:, k] = next_tokens(self.logits, self.noise[k], self.groups[0][0])
            else:
                for params, rows in self.groups:
                    self.out[rows, k] = next_tokens(self.logits[rows], self.noise[k, rows], params)
        self.drawn = k + 1

    def _draw_guided(self, k: int) -> None:
        drawn = np.empty((self.plan.samples, self.logits.shape[-1]), dtype=np.float32)
        for g in self.plan.groups:
            logits = self.logits[g.cond]
            if g.null is not None and g.params.guided_at(k):
                logits = guide(logits, self.logits[g.null], g.params.cfg_scale)
            drawn[g.samples] = logits
            self.out[g.samples, k] = next_tokens(logits, self.noise[k, g.samples], g.params)
        if self.logits_out is not None:
            self.logits_out.append(drawn)

    def extend(self) -> None:
        self.logits = self.runner.forward(self.plan.feed(self.out[:, self.drawn - 1]))[:, -1]

    def tokens(self) -> np.ndarray:
        return self.out[:, : self.drawn].copy()


SAMPLERS = ("host", "graph")


def check_sampler(backend: Backend, sampler: str, guided: bool = False) -> None:
    """``sampler`` is a strategy ``backend`` can run (checked before any work); ``guided``: for guided params."""
    if sampler not in SAMPLERS:
        raise InputError(f"--sampler {sampler}: expected one of {', '.join(SAMPLERS)}")
    if sampler == "graph" and not backend.has_graph("sampler"):
        raise InputError(f"--sampler graph needs a graph backend (onnxruntime or tensorrt) and artifacts with a "
                         f"sampler graph; {backend.name} here has none")
    if sampler == "graph" and guided and not backend.has_graph(GUIDED_SAMPLER):
        raise InputError(f"--sampler graph with --cfg-scale needs a {GUIDED_SAMPLER} graph (exported for models that "
                         "can be guided, with --max-batch 2 or more); these artifacts have none: use --sampler host")


def start_decoding(backend: Backend, sampler: str, params: SamplingParams | ParamGroups, noise: np.ndarray,
                   logits_out: list[np.ndarray] | None = None, null_tokens: np.ndarray | None = None) -> Decoding:
    """A decoding on ``backend`` with the ``sampler`` strategy: "host" (numpy, every backend) or
    "graph" (the exported sampler graph on the backend's device); ``params`` for every row, or per group
    of rows (the graph sampler needs each group's rows contiguous). ``null_tokens``: the condition's null
    tokens, which guided params need (``guidance.RowPlan``)."""
    groups = param_groups(params, noise.shape[1])
    check_sampler(backend, sampler, any(p.guided for p, _ in groups))
    if sampler == "host":
        return HostDecoding(backend.transformer(), groups, noise, logits_out, null_tokens)
    device = backend.device_decoding(groups, noise, null_tokens)
    assert device is not None, "a backend with a sampler graph has a device decoding"
    return device


def generate(decoding: Decoding, prompt: np.ndarray, steps: int, progress: Progress | None = None) -> np.ndarray:
    """(B,T0) prompt (cond tokens, optionally followed by image tokens) -> (B,steps) new tokens."""
    decoding.prefill(prompt)
    for k in range(steps):
        decoding.draw()
        if progress is not None:
            progress(1)
        if k + 1 < steps:
            decoding.extend()
    return decoding.tokens()


def sample_tokens(runner: TransformerRunner, prompt: np.ndarray, steps: int, params: SamplingParams,
                  noise: np.ndarray, progress: Progress | None = None,
                  logits_out: list[np.ndarray] | None = None) -> np.ndarray:
    """``generate`` with the host sampler (the common case, and the reference for the others)."""
    return generate(HostDecoding(runner, params, noise, logits_out), prompt, steps, progress)


def _local(i: int, size: int, window: int) -> int:
    """Position of row/column ``i`` inside its window (upstream's local_i / local_j rule)."""
    half = window // 2
    if i <= half:
        return i
    if size - i < half:
        return window - (size - i)
    return half


def generate_sliding(
    decoding: Decoding,
    cond: np.ndarray,
    grid: tuple[int, int],
    window: tuple[int, int],
    progress: Progress | None = None,
) -> np.ndarray:
    """Sample a (B,h,w) raster grid larger than the trained ``window`` (wh,ww), reusing the cache
    while the window stays put (taming's ``scripts/sample_conditional.py``, batched across samples).

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
    at: tuple[int, int, int] | None = None  # (i0, j0, next local position) the cache is ready for
    for i in range(h):
        i0 = i - _local(i, h, wh)
        for j in range(w):
            j0 = j - _local(j, w, ww)
            pos = (i - i0) * ww + (j - j0)
            if at == (i0, j0, pos):
                decoding.extend()
            else:
                c = cond[:, i0 : i0 + wh, j0 : j0 + ww].reshape(batch, -1) if cond.ndim == 3 else cond
                done = decoding.tokens()  # raster order: the window's prefix is read from the grid so far
                idx = np.zeros((batch, h * w), dtype=np.int64)
                idx[:, : done.shape[1]] = done
                prefix = idx.reshape(batch, h, w)[:, i0 : i0 + wh, j0 : j0 + ww].reshape(batch, -1)[:, :pos]
                decoding.prefill(np.concatenate([c, prefix], axis=1))
            decoding.draw()
            at = (i0, j0, pos + 1)
            if progress is not None:
                progress(1)
    return decoding.tokens().reshape(batch, h, w)
