"""Parity of classifier-free guidance, for models with a null condition (LlamaGen):

- ``guided_greedy_tokens``: the candidate decodes greedily with guidance through the one token loop (conditional and
  null rows in one batch, ``guidance.RowPlan``); the reference recomputes the conditional and the null sequence over
  the candidate's tokens, guides, and its argmax must be the candidate's token at every step (then the reference's
  own guided greedy decoding gives the same sequence, by induction), or part at a near-tie of the guided logits;
- ``guided_sampler_graph``: the guided sampler graph against the host's guidance + sampler on random logits with
  many exact ties, every setting, with and without guidance (scale 1: the conditional logits exactly).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np

from vqdeploy.parity.stage import StageReport, greedy_divergence
from vqdeploy.runtime.backends.base import Backend
from vqdeploy.runtime.decoding import HostDecoding, generate
from vqdeploy.runtime.guidance import GUIDED_SAMPLER
from vqdeploy.runtime.sampling import SamplingParams, filtered_probs, guide, next_tokens, sampler_inputs

GUIDANCE_SCALE = 2.0  # the scale of the greedy check (the shared LlamaGen reference run's)
GUIDED_SETTINGS = (SamplingParams(1.0, 100, None, 4.0), SamplingParams(0.7, None, 0.9, 1.5),
                   SamplingParams(1.0, 1, None, 2.0), SamplingParams(1.0, 50, None, 1.0))
SAMPLER_CDF_MARGIN = 1e-4  # as ``checks.SAMPLER_CDF_MARGIN``


def check_guided_greedy(forward: Callable[[np.ndarray], np.ndarray], candidate: Backend, cond: np.ndarray,
                        null: np.ndarray, steps: int, step_err: float) -> StageReport:
    """``forward``: the reference's logits over whole sequences; ``cond`` (B,Tc) condition tokens, ``null`` (1,Tc)
    the null condition; ``step_err``: the candidate's measured logits error (the near-tie allowance)."""
    batch, tc = cond.shape
    params = SamplingParams(top_k=1, cfg_scale=GUIDANCE_SCALE)
    decoding = HostDecoding(candidate.transformer(), params, np.zeros((steps, batch)), null_tokens=null)
    tokens = generate(decoding, cond, steps)
    prefix = tokens[:, :-1]
    c = forward(np.concatenate([cond, prefix], axis=1))[:, tc - 1:]
    u = forward(np.concatenate([np.repeat(null, batch, axis=0), prefix], axis=1))[:, tc - 1:]
    ref = guide(c, u, GUIDANCE_SCALE)
    divergence, gap = greedy_divergence(ref, tokens)
    metrics: dict[str, Any] = {"steps": steps, "cfg_scale": GUIDANCE_SCALE, **divergence}
    # u + (c - u) * s = s c - (s - 1) u: a guided logit's error is at most (2s - 1) x the logits' error, and two of
    # them moving apart by twice that flip a top-2 gap up to this size
    passed = gap is None or gap <= 2 * (2 * GUIDANCE_SCALE - 1) * step_err
    return StageReport("guided_greedy_tokens", passed, metrics,
                       "identical, or first divergence at a guided top-2 gap <= 2 (2 cfg_scale - 1) x the step "
                       "logits error")


def check_guided_sampler(candidate: Backend, vocab: int, seed: int, rounds: int = 6) -> StageReport:
    rng = np.random.default_rng([seed, 0xC6])
    batch = min(3, candidate.max_batch(GUIDED_SAMPLER))
    draws = differ = 0
    worst = 0.0
    for _ in range(rounds):
        logits = (np.round(rng.normal(size=(2 * batch, 2, vocab)) * 6) / 2).astype(np.float32)
        u = rng.random(batch).astype(np.float32)
        for params in GUIDED_SETTINGS:
            guided = params.guided
            last = guide(logits[:batch, -1], logits[batch:, -1], params.cfg_scale) if guided else logits[:batch, -1]
            host = next_tokens(last, u, params)
            inputs = {"logits": logits, "uniform": u, **sampler_inputs(params, vocab)}
            inputs.setdefault("cfg_scale", np.array([1.0], np.float32))
            out = candidate.run_graph(GUIDED_SAMPLER, inputs)["tokens"][:, 0]
            graph = out[:batch]
            draws += batch
            bad = (graph != host) | (out[batch:] != graph)
            if bad.any():
                differ += int(bad.sum())
                if params.greedy or (out[batch:] != graph).any():
                    worst = math.inf
                    continue
                cdf = np.cumsum(filtered_probs(last[bad], params), axis=-1)
                gap = np.abs(u[bad, None].astype(np.float64) * cdf[:, -1:] - cdf).min(axis=-1) / cdf[:, -1]
                worst = max(worst, float(gap.max()))
    metrics: dict[str, Any] = {"draws": draws, "differing": differ}
    if differ:
        metrics["max_cdf_gap"] = worst
    return StageReport("guided_sampler_graph", worst <= SAMPLER_CDF_MARGIN, metrics,
                       f"tokens equal to host guidance + sampler's (both rows), or its draw within "
                       f"{SAMPLER_CDF_MARGIN:g} of a CDF step")
