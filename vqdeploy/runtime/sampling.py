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
from vqdeploy.limits import MAX_CFG_INTERVAL, MAX_CFG_SCALE, MAX_TOP_K, check_finite, check_int, check_seed

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
    """How tokens are drawn. ``cfg_scale`` > 1 guides (classifier-free guidance, LlamaGen's rule: each sample runs a
    conditional and a null-condition row, and draws from ``uncond + (cond - uncond) * cfg_scale``); 1 is off.
    ``cfg_interval`` >= 0 guides the first ``cfg_interval + 2`` tokens only (LlamaGen's count: the prefill's token,
    then steps 0..cfg_interval), -1 every token. Only models whose condition has a null condition can be guided."""

    temperature: float = DEFAULT_TEMPERATURE
    top_k: int | None = DEFAULT_TOP_K
    top_p: float | None = None
    cfg_scale: float = 1.0
    cfg_interval: int = -1

    def __post_init__(self) -> None:
        check_temperature(self.temperature, "temperature")
        if self.top_k is not None:
            check_int(self.top_k, "top_k", 1, MAX_TOP_K)
        if self.top_p is not None:
            check_finite(self.top_p, "top_p", low=0.0, high=1.0, low_open=True)
        check_finite(self.cfg_scale, "cfg_scale", low=1.0, high=MAX_CFG_SCALE)
        check_int(self.cfg_interval, "cfg_interval", -1, MAX_CFG_INTERVAL)

    @property
    def greedy(self) -> bool:
        return self.temperature == 0 or self.top_k == 1

    @property
    def guided(self) -> bool:
        """Classifier-free guidance (a null-condition row per sample)."""
        return self.cfg_scale > 1.0

    def guided_at(self, k: int) -> bool:
        """Whether token ``k`` (0: the prefill's) is drawn from guided logits: LlamaGen's ``decode_n_tokens`` turns
        guidance off for good at step i > cfg_interval, i.e. from token cfg_interval + 2 on."""
        return self.guided and (self.cfg_interval < 0 or k <= self.cfg_interval + 1)

    def unguided(self) -> SamplingParams:
        """The same filters without guidance."""
        return SamplingParams(self.temperature, self.top_k, self.top_p)


def uniform_noise(seed: int, batch: int, steps: int, first_sample: int = 0) -> np.ndarray:
    """(steps, batch) uniforms; sample b's stream depends only on (seed, b), not on the batch size."""
    check_seed(seed)
    return np.stack([np.random.default_rng([seed, first_sample + b]).random(steps) for b in range(batch)], axis=1)


def sampler_inputs(params: SamplingParams, vocab: int) -> dict[str, np.ndarray]:
    """``params`` as the sampler graph's inputs: a filter that is off is top_k = vocab, top_p = 1; a guided setting
    adds the guided sampler graph's ``cfg_scale``."""
    out: dict[str, np.ndarray] = {"temperature": np.array([params.temperature], np.float32),
                                  "top_k": np.array([min(params.top_k or vocab, vocab)], np.int64),
                                  "top_p": np.array([params.top_p or 1.0], np.float32)}
    if params.guided:
        out["cfg_scale"] = np.array([params.cfg_scale], np.float32)
    return out


def guide(cond: np.ndarray, uncond: np.ndarray, scale: float) -> np.ndarray:
    """Classifier-free guidance on fp32 logits, LlamaGen's expression in its order and precision:
    ``uncond + (cond - uncond) * scale`` (the guided sampler graph computes the same)."""
    c, u = np.asarray(cond, np.float32), np.asarray(uncond, np.float32)
    return u + (c - u) * np.float32(scale)


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
