"""One-token step time of the old concatenating transformer graph (``past.*`` in, ``present.*`` = past + the new
token out, before the in-place cache) against today's valid-length graph, at the same positions, side by side in
one run (issue 24 item 2: "early positions at least as fast as the old concatenating graph").

The old graph comes from the last commit before the in-place cache, exported with that commit's code:

    git worktree add /tmp/wt-old 730c262
    (cd /tmp && PYTHONPATH=/tmp/wt-old python -m vqdeploy export --ckpt CKPT --out /tmp/concat --no-parity)
    vqdeploy export --ckpt CKPT --out /tmp/now
    python tools/concat_vs_valid_length.py /tmp/concat/transformer.onnx /tmp/now/transformer_valid_length.onnx \\
        --positions 1,16,64,128,256,384,511

ONNX Runtime CPU with the runtime's session settings. The old graph's ``past`` inputs hold the position's length
and its ``present`` outputs are bound to preallocated buffers (as its runtime swapped them); today's graph has its
caches bound in place at full capacity, every row at the position. Alternating blocks of steps, medians.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("concatenating", type=Path, help="The old transformer.onnx (past/present).")
    ap.add_argument("valid_length", type=Path, help="Today's transformer_valid_length.onnx of the same model.")
    ap.add_argument("--positions", default="1,16,64,256,511")
    ap.add_argument("--batches", default="1,8")
    ap.add_argument("--blocks", type=int, default=8)
    ap.add_argument("--steps", type=int, default=8, help="Timed steps per block.")
    args = ap.parse_args()

    import onnxruntime as ort
    from step_bench import alternating_ms, cpu_session  # beside this file

    old, new = cpu_session(args.concatenating), cpu_session(args.valid_length)
    names = [i.name[len("past."):] for i in old.get_inputs() if i.name.startswith("past.")]
    _, nh, _, hd = old.get_inputs()[1].shape
    block = new.get_inputs()[2].shape[2]
    rng = np.random.default_rng(0)
    print("| batch | position | concatenating ms | valid-length ms | valid / concatenating |\n"
          "| --- | --- | --- | --- | --- |")
    for batch in (int(b) for b in args.batches.split(",")):
        cache = [ort.OrtValue.ortvalue_from_numpy(rng.standard_normal((batch, nh, block, hd), dtype=np.float32))
                 for _ in names]
        for p in (int(p) for p in args.positions.split(",")):
            io_new = new.io_binding()
            io_new.bind_cpu_input("tokens", np.zeros((batch, 1), np.int64))
            io_new.bind_cpu_input("position", np.full(batch, p, np.int64))
            for n, v in zip(names, cache):
                io_new.bind_ortvalue_input(f"cache.{n}", v)
                io_new.bind_ortvalue_output(f"cache_out.{n}", v)
            io_new.bind_output("logits")
            io_old = old.io_binding()
            io_old.bind_cpu_input("tokens", np.zeros((batch, 1), np.int64))
            for n in names:
                past = rng.standard_normal((batch, nh, p, hd), dtype=np.float32)
                io_old.bind_ortvalue_input(f"past.{n}", ort.OrtValue.ortvalue_from_numpy(past))
                io_old.bind_ortvalue_output(f"present.{n}", ort.OrtValue.ortvalue_from_numpy(
                    np.zeros((batch, nh, p + 1, hd), np.float32)))
            io_old.bind_output("logits")
            a, b = alternating_ms([(old, io_old), (new, io_new)], args.blocks, args.steps)
            print(f"| {batch} | {p} | {a:.2f} | {b:.2f} | {b / a:.2f} |", flush=True)


if __name__ == "__main__":
    main()
