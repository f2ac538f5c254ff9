"""Parity of a weight-only quantized transformer graph (``export --quantize``).

Rounding the weights to 8 or 4 bits changes the logits by far more than float rounding, so the fp32
checks (max |dlogit| within 1e-4, identical greedy tokens) would fail every quantized graph. What
matters instead is how far the distribution the sampler draws from moved, against the fp32 PyTorch
model on the same sequence:

- ``transformer_quantized``: teacher-forced logits over the whole sequence. Reported: max |dlogit|,
  the RMS error relative to the logits' spread (``nrmse``), top-1 agreement and the KL divergence
  KL(p_fp32 || p_quantized) at temperature 1 (mean and max over positions). The refusal threshold is
  on the mean KL (``QUANTIZED_TOLERANCES``): it is what sampling sees, and it stays meaningful for
  near-flat logits (random weights), where top-1 agreement is a coin toss between near-ties.
- ``transformer_kv_steps``: the graph's one-token steps against the same graph's teacher-forced
  logits over the same tokens: the KV cache must not add error of its own (quantization cancels).
  Not to float rounding, though: ONNX Runtime's CPU ``MatMulNBits`` takes other kernels for one row
  (steps) than for many (prefill), which round differently: demo 0.071 (int8) / 0.060 (int4), 0.5x /
  0.04x the graph's own error against fp32; S-FLCKR-sized (random weights, logits within +-2.1) 0.063
  against 0.096 for int8. So the bound is the larger of 2e-2 x max(1, max |logit|) and the graph's max
  error against fp32: the cache may not add more than quantization already did; a cache bug shows as
  errors of the logits' own size.
- ``greedy_tokens``: the graph decodes greedily; the fp32 model's argmax over the graph's own
  prefix is compared at every step (agreement, and the first step where they differ = where the two
  greedy decodings part). Reported, not thresholded: after one flip the sequences differ anyway.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from vqdeploy.artifacts.manifest import Manifest
from vqdeploy.parity.stage import StageReport
from vqdeploy.runtime.backends.base import Backend
from vqdeploy.runtime.decoding import sample_tokens
from vqdeploy.runtime.sampling import SamplingParams

# Mean KL(p_fp32 || p_quantized) per position at temperature 1, in nats: the export refuses above it.
# Measured on the demo (the only trained model here): int8 4.8e-4, int4 1.6e-2, where sketch following
# stays within 0.2 points of fp32 (tools/eval_demo.py --artifacts; README "Weight-only int8/int4"). The
# bounds are ~3x (int4) and ~20x (int8) those numbers: a model that quantizes clearly worse than the demo
# is refused, and a graph with wrong weights (every scale 1.5x) fails it (tests/test_quantize.py).
QUANTIZED_TOLERANCES: dict[str, dict[str, float]] = {
    "int8": {"kl_mean": 0.01},
    "int4": {"kl_mean": 0.05},
}
KV_STEPS_REL = 2e-2  # floor of the steps-vs-prefill bound, x max(1, max |logit|)


def _log_softmax(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float64)
    m = x.max(axis=-1, keepdims=True)
    return x - m - np.log(np.exp(x - m).sum(axis=-1, keepdims=True))


def logits_metrics(ref: np.ndarray, cand: np.ndarray) -> dict[str, float]:
    """Quantized-vs-fp32 logits (..., V): errors, top-1 agreement and KL(ref || cand) per position."""
    diff = cand.astype(np.float64) - ref.astype(np.float64)
    lp, lq = _log_softmax(ref), _log_softmax(cand)
    kl = (np.exp(lp) * (lp - lq)).sum(axis=-1)
    spread = float(ref.std()) or 1.0
    return {"max_abs": float(np.abs(diff).max()), "nrmse": float(np.sqrt((diff**2).mean()) / spread),
            "top1_agreement": float((ref.argmax(-1) == cand.argmax(-1)).mean()),
            "kl_mean": float(kl.mean()), "kl_max": float(kl.max())}


def check_quantized_transformer(forward: Callable[[np.ndarray], np.ndarray], candidate: Backend, cond: np.ndarray,
                                seq: np.ndarray, steps: int, scheme: str) -> list[StageReport]:
    """The three transformer stages of a quantized graph against the fp32 reference ``forward`` (logits of a
    whole sequence; see the module doc)."""
    tol = QUANTIZED_TOLERANCES[scheme]
    full = forward(seq[:, :-1])
    runner = candidate.transformer()
    runner.reset(seq.shape[0])
    tf = runner.forward(seq[:, :-1])
    m = logits_metrics(full, tf)
    reports = [StageReport("transformer_quantized", m["kl_mean"] <= tol["kl_mean"], m,
                           f"{scheme}: mean KL(fp32 || {scheme}) <= {tol['kl_mean']:g} nats")]

    step_logits: list[np.ndarray] = []
    tc = cond.shape[1]
    tokens = sample_tokens(runner, cond, steps, SamplingParams(top_k=1), np.zeros((steps, cond.shape[0])),
                           logits_out=step_logits)
    prefix = np.concatenate([cond, tokens[:, :-1]], axis=1)
    runner.reset(prefix.shape[0])
    own = runner.forward(prefix)[:, tc - 1 :]  # the graph's teacher-forced logits over its own tokens
    cand = np.stack(step_logits, axis=1)
    scale = float(np.abs(own).max())
    bound = max(KV_STEPS_REL * max(1.0, scale), m["max_abs"])
    err = float(np.abs(cand - own).max())
    reports.append(StageReport("transformer_kv_steps", err <= bound, {"max_abs": err, "bound": bound},
                               f"max |dlogit| vs the graph's prefill <= max({KV_STEPS_REL:g} * max(1, max|logit|), "
                               f"its max |dlogit| vs fp32)"))

    ref = forward(prefix)[:, tc - 1 :]
    same = ref.argmax(-1) == tokens
    metrics: dict[str, Any] = {"steps": steps, "agreement": float(same.mean()), "identical": bool(same.all())}
    if not same.all():
        metrics["first_divergence"] = int(np.argmax(~same.all(axis=0)))
    reports.append(StageReport("greedy_tokens", True, metrics,
                               "reported: fp32 argmax over the quantized graph's own greedy prefix"))
    return reports


def quantized_scheme(manifest: Manifest, backend: str) -> str | None:
    """The quantization a backend runs: the graphs' (ONNX Runtime, TensorRT); none for torch, which
    runs the checkpoint itself."""
    q = manifest.quantization
    return None if q is None or backend == "torch" else q.scheme
