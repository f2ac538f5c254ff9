"""Per-token step time of the transformer by position and batch, ONNX Runtime CPU: the portable graph (attention
over the whole cache capacity, what TensorRT runs) against its valid-length twin (GroupQueryAttention, each row
reads only its valid prefix), side by side in one run.

Exports just the two transformer graphs of a checkpoint (fp32, no parity: ``vqdeploy export`` checks parity) into
a temporary directory, then times one-token steps at the given positions with every row at that position (the
cache holds random values: the time does not depend on them), in alternating blocks of steps per graph; prints a
table of median milliseconds per step and per token. Also checks that both graphs give the same logits on one prefill and a few
steps with rows at different positions.

    python tools/attention_bench.py --ckpt /tmp/medium/checkpoints/last.ckpt --batches 1,8 --positions 1,256,384,511
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ckpt", required=True, help="A taming Net2NetTransformer checkpoint (n_unmasked 0).")
    ap.add_argument("--batches", default="1,8")
    ap.add_argument("--positions", default="", help="Comma list (default: 1, a quarter, half, and the last).")
    ap.add_argument("--repeats", type=int, default=15, help="Timed steps per cell (the median is shown).")
    ap.add_argument("--threads", type=int, default=0, help="ONNX Runtime intra-op threads (0: its default).")
    ap.add_argument("--out", type=Path, default=None, help="Write the results as JSON here.")
    args = ap.parse_args()

    import onnxruntime as ort
    import torch

    from vqdeploy import load_model
    from vqdeploy.export.onnx_export import export_graph
    from vqdeploy.families.graph_spec import valid_length_spec
    from vqdeploy.families.taming.specs import transformer_spec

    model = load_model(args.ckpt)
    gpt = model.transformer.eval()
    if gpt.n_unmasked:
        sys.exit("the valid-length graph is causal only: this model has an n_unmasked block")
    batches = [int(b) for b in args.batches.split(",")]
    block = gpt.block_size
    positions = [int(p) for p in args.positions.split(",")] if args.positions else \
        sorted({1, block // 4, block // 2, block - 1})
    portable = transformer_spec(model, torch.float32, max(batches), 1)
    specs = {"full capacity (portable)": portable, "valid length (GroupQueryAttention)": valid_length_spec(portable)}
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.intra_op_num_threads = args.threads
    sessions = {}
    with tempfile.TemporaryDirectory() as tmp:
        for label, spec in specs.items():
            t = time.perf_counter()
            export_graph(spec, Path(tmp) / spec.file)
            print(f"exported {spec.file} in {time.perf_counter() - t:.1f} s", file=sys.stderr)
            sessions[label] = ort.InferenceSession(str(Path(tmp) / spec.file), opts, providers=["CPUExecutionProvider"])
    shape = (gpt.n_head, block, gpt.head_dim)
    names = [(f"cache.{i}.{p}", f"cache_out.{i}.{p}") for i in range(gpt.n_layer) for p in ("key", "value")]

    def bind(session: ort.InferenceSession, tokens: np.ndarray, position: np.ndarray,
             caches: list[ort.OrtValue]) -> ort.IOBinding:
        io = session.io_binding()
        io.bind_cpu_input("tokens", tokens)
        io.bind_cpu_input("position", position)
        for (i, o), v in zip(names, caches):
            io.bind_ortvalue_input(i, v)
            io.bind_ortvalue_output(o, v)  # in place, as the runtime binds them
        io.bind_output("logits")
        return io

    # same logits: a prefill of 16 tokens for two rows, then steps with row 1 three tokens behind
    rng = np.random.default_rng(0)
    seq = rng.integers(0, gpt.vocab_size, (2, 24))
    logits = {}
    for label, s in sessions.items():
        caches = [ort.OrtValue.ortvalue_from_numpy(np.zeros((2, *shape), np.float32)) for _ in names]
        io = bind(s, seq[:, :16], np.zeros(2, np.int64), caches)
        s.run_with_iobinding(io)
        out = [io.copy_outputs_to_cpu()[-1][:, -1]]
        for k in range(5):
            pos = np.array([16 + k, 13 + k], np.int64)
            io = bind(s, np.stack([seq[0, 16 + k : 17 + k], seq[1, 13 + k : 14 + k]]), pos, caches)
            s.run_with_iobinding(io)
            out.append(io.copy_outputs_to_cpu()[-1][:, 0])
        logits[label] = np.stack(out)
    a, b = logits.values()
    err = float(np.abs(a - b).max())
    print(f"same logits: max |difference| {err:.2e} (largest logit {float(np.abs(a).max()):.2f})", file=sys.stderr)

    table: dict[str, dict[str, dict[str, float]]] = {}
    for batch in batches:
        caches = [ort.OrtValue.ortvalue_from_numpy(rng.standard_normal((batch, *shape), dtype=np.float32))
                  for _ in names]
        tokens = np.zeros((batch, 1), np.int64)
        for p in positions:
            ios = {label: bind(s, tokens, np.full(batch, p, np.int64), caches) for label, s in sessions.items()}
            times: dict[str, list[float]] = {label: [] for label in sessions}
            for label, s in sessions.items():  # warm-up
                for _ in range(2):
                    s.run_with_iobinding(ios[label])
            # blocks of steps, alternating, so that a busy moment hits both; a pause before each block lets the
            # other session's intra-op threads stop spinning (two sessions' spinning threads on 2 cores halve both)
            for block in range(3):
                for label, s in sessions.items():
                    time.sleep(0.1)
                    s.run_with_iobinding(ios[label])
                    for _ in range(max(1, args.repeats // 3)):
                        t = time.perf_counter()
                        s.run_with_iobinding(ios[label])
                        times[label].append(time.perf_counter() - t)
            for label in sessions:
                table.setdefault(label, {}).setdefault(str(batch), {})[str(p)] = 1e3 * statistics.median(times[label])
    print(f"| ms per step (per token) | {' | '.join(f'position {p}' for p in positions)} |")
    print("| --- |" + " --- |" * len(positions))
    for batch in batches:
        for label in sessions:
            cells = [table[label][str(batch)][str(p)] for p in positions]
            print(f"| batch {batch}, {label} | " + " | ".join(f"{c:.2f} ({c / batch:.2f})" for c in cells) + " |")
    if args.out:
        args.out.write_text(json.dumps({"ckpt": args.ckpt, "positions": positions, "logits_max_abs_diff": err,
                                        "ms_per_step": table}, indent=2))


if __name__ == "__main__":
    main()
