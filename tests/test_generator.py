"""The token loop and sliding-window sampling, against naive re-computation with a fake causal model."""

from __future__ import annotations

import numpy as np

from vqdeploy.runtime.decoding import HostDecoding, _local, generate_sliding, sample_tokens
from vqdeploy.runtime.sampling import SamplingParams, next_tokens, uniform_noise

VOCAB = 11


def causal_logits(prefix: np.ndarray) -> np.ndarray:
    """Deterministic logits that depend on the whole prefix (per row)."""
    _b, t = prefix.shape
    weights = np.cos(np.arange(1, t + 1) * 0.7)
    h = prefix @ weights + t
    return np.sin(np.outer(h, np.arange(1, VOCAB + 1)) * 0.37) * 4


class FakeRunner:
    """A 'KV cache' that remembers the tokens: logits for a new position see the whole prefix."""

    def __init__(self, block: int) -> None:
        self.block, self.length, self.calls = block, 0, 0

    def reset(self, batch: int) -> None:
        self.seq = np.zeros((batch, 0), dtype=np.int64)
        self.length = 0

    def forward(self, tokens: np.ndarray) -> np.ndarray:
        assert self.length + tokens.shape[1] <= self.block
        self.calls += 1
        out = []
        for t in range(tokens.shape[1]):
            self.seq = np.concatenate([self.seq, tokens[:, t : t + 1]], axis=1)
            out.append(causal_logits(self.seq))
        self.length = self.seq.shape[1]
        return np.stack(out, axis=1)


PARAMS = SamplingParams(temperature=1.0, top_k=5)


def test_generate_equals_recomputation() -> None:
    cond = np.array([[1, 2, 3], [4, 5, 6]])
    noise = uniform_noise(3, 2, 9)
    got = sample_tokens(FakeRunner(64), cond, 9, PARAMS, noise)
    seq = cond.copy()
    for k in range(9):
        tok = next_tokens(causal_logits(seq), noise[k], PARAMS)
        seq = np.concatenate([seq, tok[:, None]], axis=1)
    np.testing.assert_array_equal(got, seq[:, 3:])


def upstream_sliding(cond: np.ndarray, grid: tuple[int, int], window: tuple[int, int], noise: np.ndarray) -> np.ndarray:
    """taming's scripts/sample_conditional.py loop: recompute the window for every position."""
    (h, w), (wh, ww) = grid, window
    idx = np.zeros((cond.shape[0], h, w), dtype=np.int64)
    k = 0
    for i in range(h):
        li = i if i <= wh // 2 else (wh - (h - i) if h - i < wh // 2 else wh // 2)
        for j in range(w):
            lj = j if j <= ww // 2 else (ww - (w - j) if w - j < ww // 2 else ww // 2)
            i0, j0 = i - li, j - lj
            patch = idx[:, i0 : i0 + wh, j0 : j0 + ww].reshape(len(idx), -1)
            cpatch = cond[:, i0 : i0 + wh, j0 : j0 + ww].reshape(len(idx), -1)
            prefix = np.concatenate([cpatch, patch[:, : li * ww + lj]], axis=1)
            idx[:, i, j] = next_tokens(causal_logits(prefix), noise[k], PARAMS)
            k += 1
    return idx


def test_local_index_rule_matches_upstream_16() -> None:
    # upstream: i <= 8 -> i; 32 - i < 8 -> 16 - (32 - i); else 8
    expect = [i if i <= 8 else (16 - (32 - i) if 32 - i < 8 else 8) for i in range(32)]
    assert [_local(i, 32, 16) for i in range(32)] == expect


def test_sliding_window_matches_upstream_loop_and_reuses_cache() -> None:
    grid, window = (7, 9), (4, 4)
    cond = np.random.default_rng(0).integers(0, VOCAB, size=(2, *grid))
    noise = uniform_noise(5, 2, grid[0] * grid[1])
    runner = FakeRunner(64)
    got = generate_sliding(HostDecoding(runner, PARAMS, noise), cond, grid, window)
    np.testing.assert_array_equal(got, upstream_sliding(cond, grid, window, noise))
    assert runner.calls < grid[0] * grid[1] + 10  # steps reuse the cache while the window stays
    # more than one prefill: the window really slides
    assert runner.calls > grid[0]


def test_sliding_window_on_the_trained_grid_is_plain_generation() -> None:
    cond = np.random.default_rng(1).integers(0, VOCAB, size=(1, 4, 4))
    noise = uniform_noise(2, 1, 16)
    sliding = generate_sliding(HostDecoding(FakeRunner(64), PARAMS, noise), cond, (4, 4), (4, 4))
    plain = sample_tokens(FakeRunner(64), cond.reshape(1, -1), 16, PARAMS, noise)
    np.testing.assert_array_equal(sliding.reshape(1, -1), plain)
