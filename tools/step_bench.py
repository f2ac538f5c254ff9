"""One-token step time of the transformer graphs of two exports of the same model, side by side in one run: the
way to see what an exporter change (or a precision, or a quantization) does to the token loop's graph alone,
without the host sampler and the rest of ``bench`` around it.

For each graph both exports have (``transformer``, ``transformer_valid_length``), ONNX Runtime CPU with the
runtime's session settings, the caches bound in place as the runtime binds them and filled with random values,
every row at the position: alternating blocks of steps between the two exports (a short pause before each block),
medians. Prints a table of milliseconds per step and the ratio B/A.

    python tools/step_bench.py /tmp/demo-before /tmp/demo-after --positions 1,64,127 --batches 1,8
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np


def cpu_session(path: Path) -> Any:
    """An ONNX Runtime CPU session with the runtime's settings (all optimizations, workers that stop spinning)."""
    import onnxruntime as ort

    from vqdeploy.runtime.backends.onnxruntime_backend import FORCE_SPINNING_STOP

    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.add_session_config_entry(FORCE_SPINNING_STOP, "1")
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def alternating_ms(runs: list[tuple[Any, Any]], blocks: int, steps: int) -> list[float]:
    """Median ms per call of each (session, IO binding), after 3 warm-up calls each, timed in ``blocks`` alternating
    blocks of ``steps`` calls (a short pause before each block), so that a busy moment of the machine hits all."""
    for session, io in runs:
        for _ in range(3):
            session.run_with_iobinding(io)
    times: list[list[float]] = [[] for _ in runs]
    for _ in range(blocks):
        for (session, io), spent in zip(runs, times):
            time.sleep(0.02)
            for _ in range(steps):
                t0 = time.perf_counter()
                session.run_with_iobinding(io)
                spent.append(time.perf_counter() - t0)
    return [1e3 * statistics.median(t) for t in times]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("a", type=Path, help="Artifacts directory A (vqdeploy export --out).")
    ap.add_argument("b", type=Path, help="Artifacts directory B, an export of the same model.")
    ap.add_argument("--batches", default="1,8")
    ap.add_argument("--positions", default="", help="Comma list (default: 1, half the block, the last).")
    ap.add_argument("--blocks", type=int, default=10, help="Alternating blocks per cell.")
    ap.add_argument("--steps", type=int, default=10, help="Timed steps per block.")
    ap.add_argument("--out", type=Path, default=None, help="Write the results as JSON here.")
    args = ap.parse_args()

    import onnxruntime as ort

    from vqdeploy.artifacts.manifest import read_manifest

    manifests = [read_manifest(d) for d in (args.a, args.b)]
    if manifests[0].raw["model_fingerprint"] != manifests[1].raw["model_fingerprint"]:
        sys.exit("step_bench: the two directories hold exports of different models")
    graphs = [g for g in ("transformer", "transformer_valid_length")
              if all(g in m.raw["graphs"] for m in manifests)]
    if not graphs:
        sys.exit("step_bench: no transformer graph in both directories")
    spec = manifests[0].raw["graphs"]["transformer"]
    caches = [t for t in spec["inputs"] if t["name"].startswith("cache.")]
    dtypes = {"float32": np.float32, "float16": np.float16}
    if caches[0]["dtype"] not in dtypes or any(m.raw["graphs"]["transformer"]["inputs"][2]["dtype"] != caches[0]["dtype"]
                                               for m in manifests):
        sys.exit("step_bench: both exports need the same fp32 or fp16 cache")
    dtype = dtypes[caches[0]["dtype"]]
    block = int(caches[0]["shape"][2])
    positions = [int(p) for p in args.positions.split(",")] if args.positions else sorted({1, block // 2, block - 1})
    batches = [int(b) for b in args.batches.split(",")]
    max_batch = int(manifests[0].raw["max_batch"])
    if max(batches) > max_batch or max(positions) >= block:
        sys.exit(f"step_bench: batches up to {max_batch}, positions below {block}")

    rng = np.random.default_rng(0)
    results: dict[str, dict[str, dict[str, list[float]]]] = {}
    print("| graph | batch | position | A ms | B ms | B/A |\n| --- | --- | --- | --- | --- | --- |")
    for graph in graphs:
        sessions = [cpu_session(d / f"{graph}.onnx") for d in (args.a, args.b)]
        for batch in batches:
            buffers = [ort.OrtValue.ortvalue_from_numpy(
                rng.standard_normal((batch, *t["shape"][1:]), dtype=np.float32).astype(dtype)) for t in caches]
            for p in positions:
                bindings = []
                for s in sessions:
                    io = s.io_binding()
                    io.bind_cpu_input("tokens", np.zeros((batch, 1), np.int64))
                    io.bind_cpu_input("position", np.full(batch, p, np.int64))
                    for t, v in zip(caches, buffers):  # in place, as the runtime binds them
                        io.bind_ortvalue_input(t["name"], v)
                        io.bind_ortvalue_output("cache_out" + t["name"][len("cache"):], v)
                    io.bind_output("logits")
                    bindings.append(io)
                a, b = alternating_ms(list(zip(sessions, bindings)), args.blocks, args.steps)
                results.setdefault(graph, {}).setdefault(str(batch), {})[str(p)] = [a, b]
                print(f"| {graph} | {batch} | {p} | {a:.3f} | {b:.3f} | {b / a:.3f} |", flush=True)
    if args.out:
        args.out.write_text(json.dumps({"a": str(args.a), "b": str(args.b), "ms_per_step": results}, indent=2))


if __name__ == "__main__":
    main()
