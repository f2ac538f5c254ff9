"""Next-token selection, on the host, identical for every backend.

Upstream semantics: logits / temperature, then top-k keeping every logit equal to the k-th
largest (``out[out < v[..., [-1]]] = -inf``), then top-p (nucleus), then a draw. Instead of
``torch.multinomial`` the draw is an inverse-CDF lookup with one uniform number per sample and
step from a seeded numpy generator, so the same seed gives the same tokens on every backend
(up to logits that differ across a CDF boundary, which parity reports).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from vqdeploy.errors import InputError
from vqdeploy.limits import MAX_TOP_K, check_finite, check_int, check_seed

# ``vqdeploy run``'s and ``vqdeploy serve``'s defaults (one place, so both give the same images)
DEFAULT_SEED = 0
DEFAULT_NUM_SAMPLES = 1
DEFAULT_TEMPERATURE = 1.0
DEFAULT_TOP_K = 100
# below this, logits / temperature overflows float64 for ordinary logits (a subnormal temperature gave neither
# greedy nor sampled tokens): 0 means greedy, anything in between is refused
MIN_TEMPERATURE = 1e-4
# above this every kept token is as likely as the others (a larger one changes nothing), and the sampler graph's
# float32 input holds it (beyond 3.4e38 numpy's cast overflowed with a warning)
MAX_TEMPERATURE = 1e4


def check_temperature(value: float, name: str) -> float:
    """0 (greedy), or MIN_TEMPERATURE..MAX_TEMPERATURE; ``name`` as the user typed it."""
    check_finite(value, name, low=0.0, high=MAX_TEMPERATURE)
    if 0 < value < MIN_TEMPERATURE:
        raise InputError(f"{name} must be 0 (greedy) or at least {MIN_TEMPERATURE:g}, got {value:g}")
    return float(value)


@dataclass(frozen=True)
class SamplingParams:
    temperature: float = DEFAULT_TEMPERATURE
    top_k: int | None = DEFAULT_TOP_K
    top_p: float | None = None

    def __post_init__(self) -> None:
        check_temperature(self.temperature, "temperature")
        if self.top_k is not None:
            check_int(self.top_k, "top_k", 1, MAX_TOP_K)
        if self.top_p is not None:
            check_finite(self.top_p, "top_p", low=0.0, high=1.0, low_open=True)

    @property
    def greedy(self) -> bool:
        return self.temperature == 0 or self.top_k == 1


def uniform_noise(seed: int, batch: int, steps: int, first_sample: int = 0) -> np.ndarray:
    """(steps, batch) uniforms; sample b's stream depends only on (seed, b), not on the batch size."""
    check_seed(seed)
    return np.stack([np.random.default_rng([seed, first_sample + b]).random(steps) for b in range(batch)], axis=1)


def sampler_inputs(params: SamplingParams, vocab: int) -> dict[str, np.ndarray]:
    """``params`` as the sampler graph's inputs: a filter that is off is top_k = vocab, top_p = 1."""
    return {"temperature": np.array([params.temperature], np.float32),
            "top_k": np.array([min(params.top_k or vocab, vocab)], np.int64),
            "top_p": np.array([params.top_p or 1.0], np.float32)}


def next_tokens(logits: np.ndarray, u: np.ndarray, params: SamplingParams) -> np.ndarray:
    """(B,V) logits and (B,) uniforms in [0,1) -> (B,) int64 token ids."""
    logits = np.asarray(logits, dtype=np.float64)
    if params.greedy:
        return np.argmax(logits, axis=-1).astype(np.int64)
    cdf = np.cumsum(filtered_probs(logits, params), axis=-1)
    target = np.asarray(u, dtype=np.float64)[:, None] * cdf[:, -1:]
    idx = (cdf <= target).sum(axis=-1)
    return np.minimum(idx, logits.shape[-1] - 1).astype(np.int64)


def filtered_probs(logits: np.ndarray, params: SamplingParams) -> np.ndarray:
    """(B,V) probabilities after temperature, top-k and top-p (float64; not greedy)."""
    x = np.asarray(logits, dtype=np.float64) / params.temperature
    vocab = x.shape[-1]
    if params.top_k is not None and params.top_k < vocab:
        kth = np.partition(x, vocab - params.top_k, axis=-1)[:, vocab - params.top_k : vocab - params.top_k + 1]
        x = np.where(x < kth, -np.inf, x)
    x = x - x.max(axis=-1, keepdims=True)
    p = np.exp(x)
    p /= p.sum(axis=-1, keepdims=True)
    if params.top_p is not None and params.top_p < 1.0:
        srt = -np.sort(-p, axis=-1)
        before = np.cumsum(srt, axis=-1) - srt  # mass of the strictly more likely tokens
        keep = before <= params.top_p  # upstream (transformers top_k_top_p_filtering) rule
        threshold = np.min(np.where(keep, srt, np.inf), axis=-1, keepdims=True)
        p = np.where(p >= threshold, p, 0.0)
    return p
