"""Speculative Jacobi decoding (issue 24 item 4) samples the sequential sampler's distribution.

Proved three ways, each a test with a stated significance level (fixed seeds: the outcome is reproducible):
- the verification step alone: over random targets and proposals, the token it yields has the target's law;
- a tiny model end to end: the empirical joint law of the first three tokens, and the law of the fourth (which
  went through accepted drafts, residual resamples and refreshed drafts), against the exact law computed by
  enumerating every context the filtered sampler can reach;
- the trained demo: image- and token-level statistics of Jacobi samples against sequential samples.
Plus: the same seed gives the same tokens on torch and ONNX Runtime, and each call yields more than one token
on the trained demo."""

from __future__ import annotations

import math
from pathlib import Path
from statistics import NormalDist

import numpy as np
import pytest

from vqdeploy.artifacts import Artifacts
from vqdeploy.errors import InputError
from vqdeploy.runtime.backends.onnxruntime_backend import OnnxRuntimeBackend
from vqdeploy.runtime.jacobi import JacobiStats, distribution, generate_jacobi, row_generator, verify
from vqdeploy.runtime.pipeline import Pipeline
from vqdeploy.runtime.sampling import SamplingParams

ALPHA = 1e-3  # every goodness-of-fit test below rejects at this level (Bonferroni-corrected where several)
SKETCH = Path(__file__).resolve().parent.parent / "models" / "demo" / "sketches" / "07_house-square-circle_horizon.png"


def chi2_critical(df: int, alpha: float) -> float:
    """Wilson-Hilferty's approximation of the chi-square quantile (accurate to ~1% for df >= 3)."""
    z = NormalDist().inv_cdf(1 - alpha)
    return df * (1 - 2 / (9 * df) + z * math.sqrt(2 / (9 * df))) ** 3


def chi2_fit(counts: np.ndarray, probs: np.ndarray) -> tuple[float, int]:
    """Pearson's statistic of ``counts`` against ``probs``, cells with expectation < 5 pooled; (stat, df)."""
    n = counts.sum()
    expected = probs * n
    order = np.argsort(expected)
    stat, df, pooled_e, pooled_c = 0.0, 0, 0.0, 0.0
    for i in order:
        pooled_e += expected[i]
        pooled_c += counts[i]
        if pooled_e >= 5:
            stat += (pooled_c - pooled_e) ** 2 / pooled_e
            df += 1
            pooled_e = pooled_c = 0.0
    if pooled_e > 0:  # the remainder joins the last cell
        stat += (pooled_c - pooled_e) ** 2 / max(pooled_e, 1e-12)
    return stat, max(df - 1, 1)


def ks_two_sample(a: np.ndarray, b: np.ndarray) -> float:
    """The two-sample Kolmogorov-Smirnov p-value (asymptotic, Stephens' correction)."""
    a, b = np.sort(a), np.sort(b)
    grid = np.concatenate([a, b])
    d = float(np.abs(np.searchsorted(a, grid, "right") / len(a) - np.searchsorted(b, grid, "right") / len(b)).max())
    ne = len(a) * len(b) / (len(a) + len(b))
    lam = (math.sqrt(ne) + 0.12 + 0.11 / math.sqrt(ne)) * d
    return min(1.0, max(0.0, 2 * sum((-1) ** (k - 1) * math.exp(-2 * k * k * lam * lam) for k in range(1, 101))))


def test_the_verification_step_yields_the_targets_law() -> None:
    rng = np.random.default_rng(7)
    for case in range(4):
        vocab = 6
        p = rng.dirichlet(np.ones(vocab), 3)
        q = rng.dirichlet(np.ones(vocab) * (0.3 if case % 2 else 3.0), 3)
        if case == 3:
            p[0] = np.eye(vocab)[2]  # a greedy target
        counts = np.zeros(vocab)
        n = 20_000
        for _ in range(n):
            drafts = np.array([rng.choice(vocab, p=q[i]) for i in range(3)])
            k, resampled = verify(p, q, drafts, rng)
            counts[drafts[0] if k > 0 else resampled] += 1
        stat, df = chi2_fit(counts, p[0])
        assert stat <= chi2_critical(df, ALPHA / 4) or (case == 3 and counts[2] == n), (case, stat, df, counts)


@pytest.fixture(scope="module")
def tiny(exported):
    _, out, manifest = exported("sos_zcurve")  # an unconditional tiny model: 32 tokens, block 65
    return OnnxRuntimeBackend(Artifacts(out, manifest)).transformer(), manifest.model.condition.sos_token


def _law(runner, prefix: list[int], params: SamplingParams) -> np.ndarray:
    runner.reset(1)
    return distribution(runner.forward(np.array([prefix], np.int64))[0, -1], params)


@pytest.mark.parametrize("params", [SamplingParams(1.0, 4), SamplingParams(0.7, 5, 0.8)], ids=["top-k", "top-p"])
def test_a_tiny_model_gets_the_exact_law_of_its_first_four_tokens(tiny, params: SamplingParams) -> None:
    runner, sos = tiny
    exact3: dict[tuple[int, int, int], float] = {}
    exact4 = np.zeros(32)
    p1 = _law(runner, [sos], params)
    for a in np.nonzero(p1)[0]:
        p2 = _law(runner, [sos, a], params)
        for b in np.nonzero(p2)[0]:
            p3 = _law(runner, [sos, a, b], params)
            for c in np.nonzero(p3)[0]:
                exact3[a, b, c] = p1[a] * p2[b] * p3[c]
                exact4 += exact3[a, b, c] * _law(runner, [sos, a, b, c], params)
    n = 3000
    stats = JacobiStats()
    seqs = generate_jacobi(runner, np.full((n, 1), sos, np.int64), 4, [params] * n,
                           [row_generator(11, b) for b in range(n)], window=2, stats=stats)
    cells = list(exact3)
    counts3 = np.array([np.sum((seqs[:, 0] == a) & (seqs[:, 1] == b) & (seqs[:, 2] == c)) for a, b, c in cells])
    assert counts3.sum() == n  # nothing outside the filtered support
    stat, df = chi2_fit(counts3, np.array([exact3[c] for c in cells]))
    assert stat <= chi2_critical(df, ALPHA / 2), (stat, df)
    stat, df = chi2_fit(np.bincount(seqs[:, 3], minlength=32).astype(float), exact4)
    assert stat <= chi2_critical(df, ALPHA / 2), (stat, df)
    assert stats.tokens_per_call > 1.0  # the window did accept drafts


class ExactBlock:
    """A runner whose cache holds exactly what the sequential loop feeds (the prompt and every token but the last),
    as LlamaGen's block does: a window reaching past the last slot would not fit."""

    def __init__(self, runner, block: int) -> None:
        self.runner, self.block = runner, block

    @property
    def length(self) -> int:
        return self.runner.length

    def reset(self, batch: int) -> None:
        self.runner.reset(batch)

    def rewind(self, length: int) -> None:
        self.runner.rewind(length)

    def forward(self, tokens: np.ndarray) -> np.ndarray:
        assert self.runner.length + tokens.shape[1] <= self.block, (self.runner.length, tokens.shape)
        return self.runner.forward(tokens)


@pytest.mark.parametrize("params", [SamplingParams(0.0, 1), SamplingParams(1.0, 4)], ids=["greedy", "top-k"])
def test_the_last_window_fits_a_block_of_exactly_the_sequence(tiny, params: SamplingParams) -> None:
    """The whole image (16 tokens) in windows of 8: never more than 1 + 15 positions, and greedy decoding gives the
    sequential loop's tokens."""
    runner, sos = tiny
    steps, n = 16, 4
    prompt = np.full((n, 1), sos, np.int64)
    seqs = generate_jacobi(ExactBlock(runner, 1 + steps - 1), prompt, steps, [params] * n,
                           [row_generator(3, b) for b in range(n)], window=8)
    assert seqs.shape == (n, steps)
    if params.greedy:
        runner.reset(1)
        want, fed = [], sos
        for _ in range(steps):
            want.append(int(np.argmax(runner.forward(np.array([[fed]], np.int64))[0, -1])))
            fed = want[-1]
        assert (seqs == np.array(want)).all()


def test_on_the_trained_demo_jacobi_samples_like_the_sequential_sampler(demo_export: Path) -> None:
    """48 samples each; image level (mean and spread of the pixels) and token level (distinct tokens per sample,
    the first token): two-sample KS tests at ALPHA / 4 each. The same seed gives the same Jacobi tokens on torch
    and ONNX Runtime, and Jacobi yields more than one token per call here."""
    n = 48
    seq = Pipeline.from_artifacts(demo_export, "onnxruntime")(SKETCH, num_samples=n, seed=100)
    jac_pipe = Pipeline.from_artifacts(demo_export, "onnxruntime", decoding="jacobi", jacobi_window=16)
    jac = jac_pipe(SKETCH, num_samples=n, seed=200)
    for stat in (lambda r: r.images.mean(axis=(1, 2, 3)), lambda r: r.images.std(axis=(1, 2, 3)),
                 lambda r: np.array([len(np.unique(t)) for t in r.tokens]),
                 lambda r: r.tokens.reshape(n, -1)[:, 1].astype(float)):
        assert ks_two_sample(stat(seq), stat(jac)) > ALPHA / 4
    assert jac_pipe.generator.jacobi_stats.tokens_per_call > 1.5, jac_pipe.generator.jacobi_stats.tokens_per_call
    torch_pipe = Pipeline.from_artifacts(demo_export, "torch", decoding="jacobi", jacobi_window=16)
    assert np.array_equal(torch_pipe(SKETCH, num_samples=2, seed=200).tokens, jac.tokens[:2])


def test_jacobi_refuses_what_it_does_not_do(demo_export: Path) -> None:
    with pytest.raises(InputError, match="--decoding jacobi draws on the host"):
        Pipeline.from_artifacts(demo_export, "onnxruntime", sampler="graph", decoding="jacobi")
    with pytest.raises(InputError, match="no sliding window"):
        Pipeline.from_artifacts(demo_export, "onnxruntime", decoding="jacobi")(SKETCH, size="96x64")
    with pytest.raises(InputError, match="--jacobi-window must be in 1..256"):
        Pipeline.from_artifacts(demo_export, "onnxruntime", decoding="jacobi", jacobi_window=0)


def test_bench_times_jacobi_beside_the_sequential_rows(exported, tmp_path: Path) -> None:
    """bench --decoding jacobi printed its table only with a row it could not read (no per-run token times: a
    KeyError, first seen on the GPU machine); its row now carries them like every other row."""
    from vqdeploy.bench.benchmark import run_bench

    _, out, _ = exported("sos_zcurve")
    logged: list[str] = []
    result = run_bench(out, "onnxruntime", "cpu", 1, 2, False, tmp_path / "bench.json", None, log=logged.append,
                       decoding="jacobi", jacobi_window=4)
    row = result["backends"]["onnxruntime-cpu fp32, Jacobi (window 4)"]
    assert len(row["runs"]["step"]) == 2 and min(row["runs"]["step"]) <= row["step"] <= max(row["runs"]["step"])
    assert row["jacobi_tokens_per_call"] >= 1
    table = next(line for line in logged if line.startswith("onnxruntime-cpu fp32, Jacobi (window 4)"))
    assert f"{row['step'] * 1e3:.2f}" in table
