"""Where two backends (or devices) first draw a different token for the same seed, and why.

The sampler draws by inverse CDF with one uniform per token (``runtime/sampling.py``), so two backends whose
logits differ by float rounding draw different tokens only when the uniform falls within that rounding of a CDF
boundary, or when a token at the top-k threshold swaps with its neighbour. For each sample whose tokens differ,
this prints the first differing step and, at that step (both backends fed the same tokens up to it): the largest
logit difference, the uniform, how far it lies from the nearest CDF boundary under each backend's logits, and
whether the top-k sets differ. It also prints the largest logit difference over all steps before any sample
diverges, a parity figure for the whole loop on the device.

    python tools/divergence_check.py --artifacts A --condition sketch.png --a onnxruntime:cpu --b onnxruntime:cuda
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from vqdeploy.runtime.decoding import HostDecoding
from vqdeploy.runtime.generation import Request, Rows
from vqdeploy.runtime.pipeline import Pipeline
from vqdeploy.runtime.sampling import SamplingParams, filtered_probs, next_tokens, uniform_noise


def sample_with_logits(pipe: Pipeline, request: Request) -> tuple[np.ndarray, np.ndarray]:
    """(B,S) tokens in generation order and (S,B,V) logits each was drawn from."""
    seen: list[HostDecoding] = []

    def wrap(decoding):  # type: ignore[no-untyped-def]
        assert isinstance(decoding, HostDecoding), "the host sampler keeps the logits"
        decoding.logits_out = []
        seen.append(decoding)
        return decoding

    pipe.generator.run([Rows(request, 0, request.num_samples)], wrap=wrap)
    (dec,) = seen
    assert dec.logits_out is not None
    return dec.tokens(), np.stack([np.asarray(x, np.float64) for x in dec.logits_out])


def boundary_margin(logits: np.ndarray, u: float, params: SamplingParams) -> tuple[int, float, set[int]]:
    """(the sampler's draw, distance of u*total from the nearest CDF boundary, top-k set) for one row."""
    token = int(next_tokens(logits[None], np.array([u]), params)[0])
    p = filtered_probs(logits[None], params)[0]
    cdf = np.cumsum(p)
    return token, float(np.min(np.abs(cdf - u * cdf[-1]))), set(np.flatnonzero(p > 0).tolist())


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--artifacts", required=True)
    ap.add_argument("--condition", default=None, help="condition file (image/scene); none for unconditional")
    ap.add_argument("--a", default="onnxruntime:cpu", help="backend:device")
    ap.add_argument("--b", default="onnxruntime:cuda", help="backend:device")
    ap.add_argument("--num-samples", type=int, default=4)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--top-k", type=int, default=100)
    ap.add_argument("--json", default=None, help="write the findings here")
    args = ap.parse_args()

    params = SamplingParams(top_k=args.top_k)
    runs = {}
    for side in (args.a, args.b):
        backend, _, device = side.partition(":")
        pipe = Pipeline.from_artifacts(args.artifacts, backend=backend, device=device or None)
        request = Request(pipe.read(args.condition), args.num_samples, params, args.seed)
        runs[side] = sample_with_logits(pipe, request)
    (ta, la), (tb, lb) = runs[args.a], runs[args.b]
    steps = ta.shape[1]
    noise = uniform_noise(args.seed, args.num_samples, steps)
    differs = ta != tb
    first = [int(np.argmax(row)) if row.any() else None for row in differs]
    common = min([f for f in first if f is not None], default=steps)
    # float32 logit rounding between the two sides, over the steps where every row saw the same tokens
    shared_diff = float(np.max(np.abs(la[:common] - lb[:common]))) if common else 0.0
    findings = {"a": args.a, "b": args.b, "steps": steps, "steps_before_any_divergence": common,
                "max_abs_logit_diff_before_divergence": shared_diff, "samples": []}
    print(f"{args.a} vs {args.b}: {steps} steps, max |logit diff| {shared_diff:.3g} over the first {common} steps")
    for b, k in enumerate(first):
        if k is None:
            print(f"  sample {b}: identical tokens")
            findings["samples"].append({"sample": b, "identical": True})
            continue
        u = float(noise[k, b])
        tok_a, margin_a, set_a = boundary_margin(la[k, b], u, params)
        tok_b, margin_b, set_b = boundary_margin(lb[k, b], u, params)
        diff = float(np.max(np.abs(la[k, b] - lb[k, b])))
        row = {"sample": b, "identical": False, "first_step": k, "tokens": [int(ta[b, k]), int(tb[b, k])],
               "uniform": u, "max_abs_logit_diff": diff, "cdf_margin": [margin_a, margin_b],
               "topk_sets_differ": set_a != set_b, "redrawn_match": [tok_a == ta[b, k], tok_b == tb[b, k]]}
        findings["samples"].append(row)
        print(f"  sample {b}: first differs at step {k}: tokens {ta[b, k]} vs {tb[b, k]}, |logit diff| {diff:.3g}, "
              f"u {u:.6f} lies {margin_a:.3g} / {margin_b:.3g} from a CDF boundary, top-k sets "
              f"{'differ' if set_a != set_b else 'equal'}")
    if args.json:
        Path(args.json).write_text(json.dumps(findings, indent=1, default=bool))
    return 0


if __name__ == "__main__":
    sys.exit(main())
