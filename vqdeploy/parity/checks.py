"""Stage-by-stage comparison of a backend against the PyTorch reference.

Used at export time (ONNX Runtime CPU vs torch, stored in the manifest) and by ``vqdeploy
parity`` (every available backend). Every check has a tolerance, stated with its reason in
``TOLERANCES``; a check outside it fails the run.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from vqdeploy.artifacts import ModelInfo
from vqdeploy.artifacts.manifest_schema import VALID_LENGTH
from vqdeploy.parity.guidance import check_guided_greedy, check_guided_sampler
from vqdeploy.parity.inputs import parity_inputs
from vqdeploy.parity.quantized import check_quantized_transformer
from vqdeploy.parity.stage import StageReport, greedy_divergence
from vqdeploy.runtime.backends.base import Backend
from vqdeploy.runtime.backends.torch_backend import TorchBackend
from vqdeploy.runtime.decoding import sample_tokens
from vqdeploy.runtime.guidance import GUIDED_SAMPLER
from vqdeploy.runtime.sampling import SamplingParams, filtered_probs, next_tokens, sampler_inputs

# Tolerances and why (measured numbers in the README's parity section):
# - code_margin_rel: a token may differ from torch's only where the two nearest codes are a
#   near-tie: d(candidate) - d(reference) <= rel * max_k |d_k| at that position. fp32 rounding of a
#   C-long dot product in another summation order is ~sqrt(C) * 6e-8 relative; fp16 graphs
#   compute the latent itself in half precision (~1e-3 relative), bf16 ones with 8x fp16's rounding
#   error (bf16 measured: margins <= 5.4e-3, up to 2 of 32 tokens on the tiny test grids).
# - max_disagreement: at most this fraction of tokens may differ (each still a near-tie).
# - decoder_psnr_db: images in [-1,1] (peak-to-peak 2); bf16 measured 40.7-54.8 dB, fp16 67-75 dB.
# - logits_rel: max |logit difference| over every position, relative to max(1, max |logit|);
#   measured up to 1e-3 for fp16 and 1.9e-2 for bf16 (the S-FLCKR-sized model).
TOLERANCES: dict[str, dict[str, float]] = {
    "fp32": {"code_margin_rel": 1e-5, "max_disagreement": 0.01, "decoder_psnr_db": 60.0, "logits_rel": 1e-4},
    "fp16": {"code_margin_rel": 2e-2, "max_disagreement": 0.05, "decoder_psnr_db": 35.0, "logits_rel": 2e-2},
    "bf16": {"code_margin_rel": 5e-2, "max_disagreement": 0.15, "decoder_psnr_db": 30.0, "logits_rel": 1e-1},
}


def check_codes(stage: str, ref: np.ndarray, cand: np.ndarray, dist: torch.Tensor, gumbel: bool,
                tol: dict[str, float]) -> StageReport:
    differ = ref != cand
    n = int(differ.sum())
    frac = n / ref.size
    metrics: dict[str, Any] = {"agreement": 1.0 - frac, "differing": n}
    worst = 0.0
    if n:
        d = dist.numpy().astype(np.float64)
        vocab = d.shape[-1]
        r, c = ref[differ], np.minimum(cand[differ], vocab - 1)
        rows = d[differ]
        margin = rows[np.arange(n), c] - rows[np.arange(n), r]
        scale = np.abs(rows).max(axis=-1)  # the largest distance (|logit|) of that position
        rel = np.where(cand[differ] < vocab, margin / np.maximum(scale, 1e-30), np.inf)
        worst = float(rel.max())
        metrics["max_margin_rel"] = worst
    passed = frac <= tol["max_disagreement"] and worst <= tol["code_margin_rel"]
    return StageReport(stage, passed, metrics,
                       f"<= {tol['max_disagreement']:.0%} differ, each a near-tie (margin <= {tol['code_margin_rel']:g} rel)")


def check_images(stage: str, ref: np.ndarray, cand: np.ndarray, tol: dict[str, float]) -> StageReport:
    err = np.abs(ref.astype(np.float64) - cand.astype(np.float64))
    mse = float((err**2).mean())
    psnr = math.inf if mse == 0 else 10 * math.log10(4.0 / mse)
    passed = psnr >= tol["decoder_psnr_db"] and bool(np.isfinite(cand).all())
    return StageReport(stage, passed, {"max_abs": float(err.max()), "mean_abs": float(err.mean()), "psnr_db": psnr},
                       f"PSNR >= {tol['decoder_psnr_db']:g} dB")


def _logits_report(stage: str, err: float, scale: float, tol: dict[str, float]) -> StageReport:
    bound = tol["logits_rel"] * max(1.0, scale)
    return StageReport(stage, err <= bound, {"max_abs": err, "bound": bound},
                       f"max |dlogit| <= {tol['logits_rel']:g} * max(1, max|logit|)")


def check_backend(reference: TorchBackend, candidate: Backend, info: ModelInfo, precision: str,
                  seed: int = 0, greedy_steps: int | None = None, quantization: str | None = None) -> list[StageReport]:
    """Every stage of ``candidate`` against ``reference`` on the same seeded inputs; ``quantization``
    (the manifest's scheme): the transformer is checked by ``quantized_parity`` instead."""
    tol = TOLERANCES[precision]
    model, family = reference.model, reference.family
    inputs = parity_inputs(info, seed)
    reports = []

    ref_z = reference.encode(inputs["image"])
    dist, gumbel = family.code_distances(model, torch.from_numpy(inputs["image"]))
    reports.append(check_codes("encoder", ref_z, candidate.encode(inputs["image"]), dist, gumbel, tol))
    reports.append(check_images("decoder", reference.decode(ref_z), candidate.decode(ref_z), tol))
    if not info.samples:
        return reports

    cond_info, _ = info.sampling()
    if "cond_encoder" in cond_info.graphs:
        ref_c = reference.encode_cond(inputs["cond"])
        dist, gumbel = family.code_distances(model, torch.from_numpy(inputs["cond"]), reference.cond_graph)
        reports.append(check_codes("cond_encoder", ref_c, candidate.encode_cond(inputs["cond"]), dist, gumbel, tol))
    batch = ref_z.shape[0]
    cond = cond_info.condition_tokens(reference, cond_info.as_value(inputs.get("cond")), batch).reshape(batch, -1)
    order = info.order
    z = ref_z.reshape(batch, -1)
    z = z[:, list(order)] if order is not None else z
    seq = np.concatenate([cond, z], axis=1)

    _, transformer = info.sampling()
    vocab = transformer.vocab_size

    computed: dict[bytes, np.ndarray] = {}

    def forward(sequence: np.ndarray) -> np.ndarray:
        """The reference transformer over a whole sequence (what upstream's sampler recomputes per token); each
        sequence once (the valid-length twin's checks feed the same sequences as the portable graph's)."""
        key = sequence.shape[1].to_bytes(4, "little") + np.ascontiguousarray(sequence, dtype=np.int64).tobytes()
        if key not in computed:
            with torch.no_grad():
                x = torch.from_numpy(sequence).to(reference.torch_device)
                computed[key] = family.teacher_forced_logits(model, x).float().cpu().numpy()
        return computed[key]

    steps = z.shape[1] if greedy_steps is None else min(greedy_steps, z.shape[1])
    null = cond_info.null_tokens()
    # ONNX Runtime's valid-length twin of the transformer graph is checked as well as the portable graph
    variants: list[tuple[str, bool | None]] = [("", None)]
    if candidate.has_graph(VALID_LENGTH) and hasattr(candidate, "valid_length"):
        variants = [("", False), ("valid_length/", True)]
    for prefix, valid_length in variants:
        if valid_length is not None:
            candidate.valid_length = valid_length  # type: ignore[attr-defined]
        for r in _transformer_reports(forward, candidate, cond, seq, steps, null, quantization, tol):
            r.stage = prefix + r.stage
            reports.append(r)
    if valid_length is not None:
        candidate.valid_length = True  # type: ignore[attr-defined]
    if candidate.has_graph("sampler"):
        reports.append(check_sampler(candidate, vocab, seed))
    if candidate.has_graph(GUIDED_SAMPLER):
        reports.append(check_guided_sampler(candidate, vocab, seed))
    return reports


def _transformer_reports(forward: Callable[[np.ndarray], np.ndarray], candidate: Backend, cond: np.ndarray,
                         seq: np.ndarray, steps: int, null: np.ndarray | None, quantization: str | None,
                         tol: dict[str, float]) -> list[StageReport]:
    """The transformer's stages: teacher-forced logits, KV-cached steps and greedy tokens (and guided greedy
    tokens for a model with a null condition), or the quantized graph's quality checks."""
    if quantization is not None:  # weight-only int8/int4 graph: quality against fp32, not float rounding
        return check_quantized_transformer(forward, candidate, cond, seq, steps, quantization)
    reports = []
    batch, tc = cond.shape
    full = forward(seq[:, :-1])
    scale = float(np.abs(full).max())
    runner = candidate.transformer()
    runner.reset(batch)
    tf = runner.forward(seq[:, :-1])
    reports.append(_logits_report("transformer_teacher_forced", float(np.abs(tf - full).max()), scale, tol))

    # KV-cache steps and greedy tokens in one pass: the candidate decodes greedily step by step,
    # the reference recomputes the whole sequence once over the candidate's tokens (upstream's
    # sampler does exactly that per token). If the reference's argmax equals the candidate's token
    # at every step, the reference's own greedy decoding produces the same sequence (by induction).
    step_logits: list[np.ndarray] = []
    tokens = sample_tokens(runner, cond, steps, SamplingParams(top_k=1), np.zeros((steps, batch)), logits_out=step_logits)
    ref = forward(np.concatenate([cond, tokens[:, :-1]], axis=1))[:, tc - 1 :]  # (B, steps, V): each new token's logits
    cand = np.stack(step_logits, axis=1)
    step_err = float(np.abs(cand - ref).max())
    reports.append(_logits_report("transformer_kv_steps", step_err, scale, tol))
    divergence, gap = greedy_divergence(ref, tokens)
    metrics: dict[str, Any] = {"steps": steps, **divergence}
    passed = gap is None or gap <= 2 * step_err  # identical, or diverged at a near-tie of the reference itself
    reports.append(StageReport("greedy_tokens", passed, metrics,
                               "identical, or first divergence at a reference top-2 gap <= 2x the step logits error"))
    if null is not None:  # classifier-free guidance: a model with a null condition
        reports.append(check_guided_greedy(forward, candidate, cond, null, steps, step_err))
    return reports


# the sampler graph against the host sampler: temperature, top-k (with ties), top-p, greedy
SAMPLER_SETTINGS = (SamplingParams(1.0, 100, None), SamplingParams(0.7, None, 0.9), SamplingParams(1.3, 5, 0.5),
                    SamplingParams(1.0, 1, None), SamplingParams(0.0, None, None), SamplingParams(1.0, None, None))
# fp32 against the host's float64: a token may differ only where the host's draw lies this close
# (relative to the total mass) to a CDF step; the graph's running sums are split into an exact part
# and a small remainder (``graphs.split_cumsum``), measured 0 of 1080 draws differing at 8192 and 16384
SAMPLER_CDF_MARGIN = 1e-4


def check_sampler(candidate: Backend, vocab: int, seed: int, rounds: int = 8) -> StageReport:
    rng = np.random.default_rng([seed, 0x5A])
    batch = min(4, candidate.max_batch("sampler"))
    draws = differ = 0
    worst = 0.0
    for _ in range(rounds):
        # half-integer logits: many exact ties, at the k-th value and at the top
        logits = (np.round(rng.normal(size=(batch, 2, vocab)) * 6) / 2).astype(np.float32)
        u = rng.random(batch).astype(np.float32)
        for params in SAMPLER_SETTINGS:
            host = next_tokens(logits[:, -1], u, params)
            inputs = {"logits": logits, "uniform": u, **sampler_inputs(params, vocab)}
            graph = candidate.run_graph("sampler", inputs)["tokens"][:, 0]
            draws += batch
            bad = graph != host
            if bad.any():
                differ += int(bad.sum())
                if params.greedy:
                    worst = math.inf
                    continue
                cdf = np.cumsum(filtered_probs(logits[bad, -1], params), axis=-1)
                gap = np.abs(u[bad, None].astype(np.float64) * cdf[:, -1:] - cdf).min(axis=-1) / cdf[:, -1]
                worst = max(worst, float(gap.max()))
    metrics: dict[str, Any] = {"draws": draws, "differing": differ}
    if differ:
        metrics["max_cdf_gap"] = worst
    return StageReport("sampler_graph", worst <= SAMPLER_CDF_MARGIN, metrics,
                       f"tokens equal to the host sampler's, or its draw within {SAMPLER_CDF_MARGIN:g} of a CDF step")
