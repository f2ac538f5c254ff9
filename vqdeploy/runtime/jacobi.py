"""Speculative Jacobi decoding (Teng et al. 2024, "Accelerating Auto-regressive Text-to-Image Generation with
Training-free Speculative Jacobi Decoding"): more than one token per weight read, the same distribution.

A row keeps a window of draft tokens, each drawn from a recorded proposal distribution q. One transformer call
runs [the last accepted token, the drafts] on the KV cache; its logits give the target distribution p of every
draft given everything before it. Drafts are then verified in order with speculative sampling's rule: draft x
is accepted with probability min(1, p(x) / q(x)); at the first rejection a token is drawn from the residual
max(0, p - q) (normalised) and verification stops. Every accepted or resampled token therefore has exactly the
distribution p of the sequential sampler (temperature, top-k and top-p applied to both p and q), and each call
yields at least one token. The rejected drafts are refreshed from this call's distributions (the Jacobi
iteration: a draft converges once what precedes it is fixed); the cache is rewound to the accepted length.

Rows run one at a time (rows accept different numbers of tokens per call, and a call of several tokens at rows'
own positions is one the valid-length graph takes for one row only); the host sampler only. Sample b of a request draws its proposals and coins from
``default_rng([seed, b, JACOBI_STREAM])``: the same seed gives the same tokens on every backend, not the tokens
of the sequential sampler (a different draw from the same distribution).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from vqdeploy.artifacts.manifest_schema import JACOBI_WINDOW
from vqdeploy.errors import InputError
from vqdeploy.limits import check_int
from vqdeploy.runtime.backends.base import TransformerRunner
from vqdeploy.runtime.sampling import SamplingParams, filtered_probs

JACOBI_STREAM = 0x1AC0B1  # the third entropy word of a row's generator: its own stream, apart from the uniforms'
DEFAULT_WINDOW = JACOBI_WINDOW
MAX_WINDOW = 256


@dataclass
class JacobiStats:
    """What verification did: transformer calls and tokens per row."""

    calls: list[int] = field(default_factory=list)
    tokens: list[int] = field(default_factory=list)

    @property
    def tokens_per_call(self) -> float:
        return sum(self.tokens) / max(1, sum(self.calls))


def distribution(logits: np.ndarray, params: SamplingParams) -> np.ndarray:
    """(..., V) logits -> the sampler's distribution (float64, sums to 1): filtered, or one-hot when greedy."""
    logits = np.asarray(logits, dtype=np.float64)
    if params.greedy:
        p = np.zeros_like(logits)
        np.put_along_axis(p, np.argmax(logits, axis=-1)[..., None], 1.0, axis=-1)
        return p
    p = filtered_probs(logits.reshape(-1, logits.shape[-1]), params).reshape(logits.shape)
    return p / p.sum(axis=-1, keepdims=True)


def _draw(p: np.ndarray, u: float) -> int:
    """Inverse CDF in token-id order (the host sampler's rule)."""
    cdf = np.cumsum(p)
    return int(min(np.searchsorted(cdf, u * cdf[-1], side="right"), p.shape[-1] - 1))


def verify(p: np.ndarray, q: np.ndarray, drafts: np.ndarray, rng: np.random.Generator) -> tuple[int, int | None]:
    """Speculative sampling over a window: (accepted drafts k, the token drawn at slot k from the residual, or
    None when every draft was accepted). ``p[i]`` is the target and ``q[i]`` the proposal of ``drafts[i]``."""
    for i, x in enumerate(drafts):
        if rng.random() * q[i, x] < p[i, x]:  # accept with probability min(1, p/q) (q[x] > 0: x was drawn from q)
            continue
        residual = np.maximum(p[i] - q[i], 0.0)
        mass = residual.sum()
        return i, _draw(residual / mass if mass > 0 else p[i], rng.random())
    return len(drafts), None


def check_window(window: int) -> int:
    return check_int(window, "--jacobi-window", 1, MAX_WINDOW)


def row_generator(seed: int, sample: int) -> np.random.Generator:
    """Sample ``sample`` of ``seed``'s proposals and coins."""
    return np.random.default_rng([seed, sample, JACOBI_STREAM])


def generate_jacobi(runner: TransformerRunner, prompt: np.ndarray, steps: int, params: list[SamplingParams],
                    rngs: list[np.random.Generator], window: int = DEFAULT_WINDOW,
                    progress: Callable[[int], None] | None = None,
                    stats: JacobiStats | None = None) -> np.ndarray:
    """(B,T0) prompts -> (B,steps) tokens, each row with speculative Jacobi decoding, its own sampling params
    and its own generator."""
    check_window(window)
    if not len(rngs) == len(params) == prompt.shape[0]:
        raise InputError("one generator and one set of sampling params per row")
    rows = [_row(runner, prompt[b : b + 1], steps, params[b], rngs[b], window, progress, stats)
            for b in range(prompt.shape[0])]
    return np.stack(rows)


def _row(runner: TransformerRunner, prompt: np.ndarray, steps: int, params: SamplingParams,
         rng: np.random.Generator, window: int, progress: Callable[[int], None] | None,
         stats: JacobiStats | None) -> np.ndarray:
    runner.reset(1)
    logits = runner.forward(prompt)[0, -1]
    vocab = logits.shape[-1]
    out = np.empty(steps, dtype=np.int64)
    out[0] = _draw(distribution(logits, params), rng.random())  # the first token: exact, as the sequential sampler
    done, calls = 1, 0
    if progress is not None:
        progress(1)
    uniform = np.full(vocab, 1.0 / vocab)
    drafts = np.empty(0, dtype=np.int64)
    proposals = np.empty((0, vocab))
    while done < steps:
        width = min(window, steps - done)  # drafts for the slots after the last accepted token
        while len(drafts) < width:  # new slots: uniform proposals (the iteration refines them)
            drafts = np.append(drafts, rng.integers(vocab))
            proposals = np.vstack([proposals, uniform])
        drafts, proposals = drafts[:width], proposals[:width]
        # a window that reaches the last slot leaves its last draft out: nothing follows it, and a model whose block
        # holds exactly the sequence the sequential loop feeds (LlamaGen) has no position for it
        last = width == steps - done
        fed = drafts[: width - 1] if last else drafts
        base = runner.length
        logits = runner.forward(np.concatenate([out[done - 1 : done], fed])[None])[0]  # (1 + len(fed), V)
        calls += 1
        p = distribution(logits, params)  # p[i]: the target of drafts[i]; p[width]: the slot after the window
        k, resampled = verify(p[:width], proposals, drafts, rng)
        if resampled is not None:
            new = list(drafts[:k]) + [resampled]
        elif last:  # every draft accepted, up to the last slot
            new = list(drafts)
        else:
            new = list(drafts) + [_draw(p[width], rng.random())]
        out[done : done + len(new)] = new
        done += len(new)
        if done < steps:  # the anchor and the accepted drafts stay in the cache with their true context
            runner.rewind(base + 1 + k)
        if progress is not None:
            progress(len(new))
        # Jacobi refresh: the drafts after the new token, from this call's (now approximate) distributions
        rest = p[k + 1 : width + 1] if resampled is not None else np.empty((0, vocab))
        drafts = np.array([_draw(r, rng.random()) for r in rest], dtype=np.int64)
        proposals = rest
    if stats is not None:
        stats.calls.append(calls)
        stats.tokens.append(steps - 1)
    return out
