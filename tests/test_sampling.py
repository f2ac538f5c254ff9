"""Sampling semantics (upstream's temperature / top-k / top-p) and deterministic seeding."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from vqdeploy.errors import InputError
from vqdeploy.models.net2net import Net2NetTransformer
from vqdeploy.runtime.sampling import (
    MAX_TEMPERATURE,
    MIN_TEMPERATURE,
    SamplingParams,
    next_tokens,
    sampler_inputs,
    uniform_noise,
)


def _reachable(logits: np.ndarray, params: SamplingParams, n: int = 4001) -> tuple[set[int], np.ndarray]:
    """Tokens an inverse-CDF draw can return, and their frequencies over a fine uniform grid."""
    u = (np.arange(n) + 0.5) / n
    toks = next_tokens(np.repeat(logits[None], n, axis=0), u, params)
    freq = np.bincount(toks, minlength=logits.shape[-1]) / n
    return set(toks.tolist()), freq


def _transformers_top_k_top_p(logits: torch.Tensor, top_k: int, top_p: float) -> torch.Tensor:
    """The filter taming's mingpt imports (transformers' top_k_top_p_filtering, min_tokens_to_keep=1)."""
    logits = logits.clone()
    if top_k > 0:
        remove = logits < torch.topk(logits, top_k)[0][..., -1, None]
        logits[remove] = -float("inf")
    if top_p < 1.0:
        sorted_logits, sorted_indices = torch.sort(logits, descending=True)
        cum = torch.cumsum(torch.softmax(sorted_logits, dim=-1), dim=-1)
        remove_sorted = cum > top_p
        remove_sorted[..., 1:] = remove_sorted[..., :-1].clone()
        remove_sorted[..., 0] = 0
        remove = remove_sorted.scatter(1, sorted_indices, remove_sorted)
        logits[remove] = -float("inf")
    return logits


def test_greedy_is_argmax_first_maximum() -> None:
    logits = np.array([[0.1, 3.0, 3.0, -1.0], [5.0, 0.0, 0.0, 0.0]], dtype=np.float32)
    for params in (SamplingParams(top_k=1), SamplingParams(temperature=0.0)):
        assert next_tokens(logits, np.array([0.99, 0.5]), params).tolist() == [1, 0]


def test_top_k_matches_upstream_mask_and_keeps_ties() -> None:
    rng = np.random.default_rng(0)
    logits = rng.normal(size=32).astype(np.float32)
    logits[[3, 7, 11]] = np.sort(logits)[-5]  # three-way tie at the 5th value
    for k in (1, 5, 6, 31):
        allowed = np.isfinite(Net2NetTransformer.top_k_logits(torch.from_numpy(logits[None]), k).numpy()[0])
        reach, freq = _reachable(logits, SamplingParams(top_k=k))
        assert reach == set(np.nonzero(allowed)[0].tolist())
        if k > 1:  # frequencies follow the renormalised softmax over the kept tokens
            p = np.where(allowed, np.exp(logits - logits.max()), 0)
            np.testing.assert_allclose(freq, p / p.sum(), atol=2e-3)


@pytest.mark.parametrize("top_p", [0.3, 0.8, 0.95, 1.0])
def test_top_p_matches_transformers_rule(top_p: float) -> None:
    logits = np.random.default_rng(1).normal(size=(64,)).astype(np.float32) * 2
    allowed = np.isfinite(_transformers_top_k_top_p(torch.from_numpy(logits[None]), 40, top_p).numpy()[0])
    reach, _ = _reachable(logits, SamplingParams(top_k=40, top_p=top_p), n=20001)
    assert reach == set(np.nonzero(allowed)[0].tolist())


def test_temperature_sharpens() -> None:
    logits = np.array([1.0, 0.0, -1.0])
    _, hot = _reachable(logits, SamplingParams(temperature=2.0, top_k=None))
    _, cold = _reachable(logits, SamplingParams(temperature=0.5, top_k=None))
    assert cold[0] > hot[0] and cold[2] < hot[2]


def test_noise_per_sample_independent_of_batch_size() -> None:
    a, b = uniform_noise(7, 3, 10), uniform_noise(7, 2, 10)
    np.testing.assert_array_equal(a[:, :2], b)
    assert not np.array_equal(a[:, 0], a[:, 1])
    assert not np.array_equal(uniform_noise(8, 1, 10), uniform_noise(7, 1, 10))


@pytest.mark.parametrize("kwargs", [{"temperature": -1}, {"top_k": 0}, {"top_p": 0.0}, {"top_p": 1.5},
                                    {"temperature": 1e-320}, {"temperature": 5e-5}, {"temperature": 1.0001e4},
                                    {"temperature": 1e300}])
def test_invalid_params(kwargs: dict) -> None:
    with pytest.raises(InputError):
        SamplingParams(**kwargs)


def test_no_numpy_warning_at_the_bounds() -> None:
    """Every accepted setting, at its extremes, on extreme logits: no warning (a warning would reach the user's
    terminal). Before the upper bound, a temperature of 1e300 overflowed the sampler graph's float32 input."""
    import warnings

    rng = np.random.default_rng(0)
    logits = (rng.normal(size=(4, 512)) * 30).astype(np.float32)
    logits[0] = 3.0e38
    logits[1, :5] = -3.0e38
    u = rng.random(4)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for t in (0.0, MIN_TEMPERATURE, 1.0, MAX_TEMPERATURE):
            for top_k in (None, 1, 100, 2**31 - 1):
                for top_p in (None, 5e-324, 1e-300, 0.5, 1.0):
                    p = SamplingParams(t, top_k, top_p)
                    assert next_tokens(logits, u, p).shape == (4,)
                    assert np.isfinite(sampler_inputs(p, 512)["temperature"]).all()
