"""Whole ``vqdeploy run`` (a fresh process: startup, model load, cond encoder, sampling, decoder, PNG)
against upstream taming's ``Net2NetTransformer.sample`` in a warm process (model loaded, warmed up;
only the token loop timed), alternating, on the same segmentation map and sampling settings.

    python tools/make_random_model.py --preset medium --out /tmp/medium
    vqdeploy export --ckpt /tmp/medium/checkpoints/last.ckpt --out /tmp/medium_art --no-parity
    python tools/run_vs_upstream.py --ckpt /tmp/medium/checkpoints/last.ckpt --artifacts /tmp/medium_art

Upstream is imported from ``taming-transformers-rom1504`` through the tests' import shims
(``tests/upstream_shim.py``); the model is built from the run's config and loads the same state_dict.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent


def upstream_model(ckpt: Path) -> torch.nn.Module:
    sys.path.insert(0, str(ROOT / "tests"))
    from upstream_shim import upstream  # type: ignore[import-not-found]

    from vqdeploy.loading.checkpoint import read_state_dict
    from vqdeploy.loading.load import load_model

    config = load_model(ckpt).source.config_data  # type: ignore[union-attr]
    model = upstream().instantiate_from_config(config).eval()
    model.load_state_dict(read_state_dict(ckpt), strict=True)
    return model


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ckpt", type=Path, required=True)
    ap.add_argument("--artifacts", type=Path, required=True)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--top-k", type=int, default=100)
    args = ap.parse_args()
    torch.set_grad_enabled(False)
    model = upstream_model(args.ckpt)
    classes = model.cond_stage_model.encoder.conv_in.in_channels
    res = 256
    rng = np.random.default_rng(0)
    labels = np.kron(rng.integers(0, classes, (8, 8)), np.ones((res // 8, res // 8))).astype(np.uint8)
    with tempfile.TemporaryDirectory() as tmp:
        label_png = Path(tmp) / "labels.png"
        Image.fromarray(labels).save(label_png)
        onehot = torch.nn.functional.one_hot(torch.from_numpy(labels).long(), classes).permute(2, 0, 1)[None].float()
        c = model.encode_to_c(onehot)[1].reshape(1, -1)  # upstream returns (B*h*w, 1) indices
        steps = (res // 16) ** 2
        x0 = torch.zeros((1, 0), dtype=torch.long)
        model.sample(x0, c, steps=4, sample=True, top_k=args.top_k)  # warm-up
        cmd = [sys.executable, "-m", "vqdeploy", "run", str(label_png), "--artifacts", str(args.artifacts),
               "--backend", "onnxruntime", "--top-k", str(args.top_k), "--out", str(Path(tmp) / "s.png")]
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        ours, theirs = [], []
        for r in range(args.rounds):
            t = time.perf_counter()
            proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
            ours.append(time.perf_counter() - t)
            if proc.returncode:
                sys.exit(f"vqdeploy run failed: {proc.stderr.strip()[-500:]}")
            t = time.perf_counter()
            model.sample(x0, c, steps=steps, sample=True, top_k=args.top_k)
            theirs.append(time.perf_counter() - t)
            print(f"round {r}: vqdeploy run {ours[-1]:.2f} s, upstream sample {theirs[-1]:.2f} s", flush=True)
    a, b = statistics.median(ours), statistics.median(theirs)
    print(f"\n{'':<48}{'median s':>10}")
    print(f"{'vqdeploy run --backend onnxruntime (whole process)':<48}{a:>10.2f}")
    print(f"{'upstream Net2NetTransformer.sample (warm process)':<48}{b:>10.2f}")
    print(f"speed-up {b / a:.1f}x ({steps} image tokens after {c.shape[1]} cond tokens, top-k {args.top_k}, "
          f"{args.rounds} alternating rounds, torch threads {torch.get_num_threads()})")


if __name__ == "__main__":
    main()
