"""Would an fp16 KV cache speed up the fp32 valid-length step on ONNX Runtime CPU? (issue 24 item 2's option)

GroupQueryAttention takes one dtype for the query and the cache, so an fp16 cache means fp16 attention. This times a
graph of N GroupQueryAttention layers, each with its own cache of `capacity` positions (so the caches are cold, as
in a real step), one new token per row, every row at the same valid length, bound in place through I/O binding.
The cache dtype is fp32 in one row and fp16 in the other, side by side in one run. Prints median ms per call of
the N layers.

    python tools/gqa_cache_dtype_bench.py --heads 8 --layers 8      # the medium model's attention
    python tools/gqa_cache_dtype_bench.py --heads 16 --layers 24    # the S-FLCKR-sized model's
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import onnxruntime as ort
from onnx import TensorProto, helper


def layers_model(dtype: type, batch: int, heads: int, head_dim: int, capacity: int, layers: int) -> bytes:
    t = TensorProto.FLOAT if dtype == np.float32 else TensorProto.FLOAT16
    inputs = [helper.make_tensor_value_info("q", t, [batch, 1, heads * head_dim])]
    inputs += [helper.make_tensor_value_info(f"{n}{i}", t, [batch, heads, capacity, head_dim])
               for i in range(layers) for n in ("past_k", "past_v")]
    inputs += [helper.make_tensor_value_info("seqlens_k", TensorProto.INT32, [batch]),
               helper.make_tensor_value_info("total", TensorProto.INT32, [])]
    nodes, outputs, x = [], [], "q"
    for i in range(layers):  # each layer's output is the next one's query, key and value: the calls are serial
        ins = [x, x, x, f"past_k{i}", f"past_v{i}", "seqlens_k", "total"]
        nodes.append(helper.make_node("GroupQueryAttention", ins, [f"y{i}", f"k{i}", f"v{i}"], domain="com.microsoft",
                                      num_heads=heads, kv_num_heads=heads))
        outputs += [helper.make_tensor_value_info(n, t, None) for n in (f"k{i}", f"v{i}")]
        x = f"y{i}"
    outputs.append(helper.make_tensor_value_info(x, t, None))
    graph = helper.make_graph(nodes, "gqa_layers", inputs, outputs)
    opsets = [helper.make_opsetid("", 21), helper.make_opsetid("com.microsoft", 1)]
    return helper.make_model(graph, opset_imports=opsets).SerializeToString()


def time_layers(dtype: type, args: argparse.Namespace, valid: int) -> float:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = args.threads
    session = ort.InferenceSession(layers_model(dtype, args.batch, args.heads, 64, args.capacity, args.layers), opts,
                                   providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(0)
    values = {"q": rng.standard_normal((args.batch, 1, args.heads * 64)).astype(dtype),
              "seqlens_k": np.full(args.batch, valid, np.int32), "total": np.array(valid + 1, np.int32)}
    for i in range(args.layers):
        for n in ("past_k", "past_v"):
            values[f"{n}{i}"] = rng.standard_normal((args.batch, args.heads, args.capacity, 64)).astype(dtype)
    bound = {n: ort.OrtValue.ortvalue_from_numpy(a) for n, a in values.items()}
    io = session.io_binding()
    for n, v in bound.items():
        io.bind_ortvalue_input(n, v)
    for i in range(args.layers):  # present = past: written in place, as the runtime binds them
        io.bind_ortvalue_output(f"k{i}", bound[f"past_k{i}"])
        io.bind_ortvalue_output(f"v{i}", bound[f"past_v{i}"])
    io.bind_output(f"y{args.layers - 1}")
    for _ in range(5):
        session.run_with_iobinding(io)
    times = []
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        session.run_with_iobinding(io)
        times.append(time.perf_counter() - t0)
    return 1e3 * statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--heads", type=int, default=8)
    ap.add_argument("--layers", type=int, default=8)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--capacity", type=int, default=512)
    ap.add_argument("--valid", default="1,256,511", help="Valid lengths (positions) to time.")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=40)
    args = ap.parse_args()
    print(f"batch {args.batch}, {args.layers} layers x {args.heads} heads of 64, capacity {args.capacity}; "
          f"median ms per call of all layers")
    print(f"{'valid length':>12} {'fp32 cache':>11} {'fp16 cache':>11}")
    for valid in (int(v) for v in args.valid.split(",")):
        fp32, fp16 = (time_layers(dt, args, valid) for dt in (np.float32, np.float16))
        print(f"{valid:>12} {fp32:>11.2f} {fp16:>11.2f}")


if __name__ == "__main__":
    main()
