"""LlamaGen at a real size: a random-weight pair, and sampling with classifier-free guidance on ONNX Runtime CPU next
to LlamaGen's own ``generate()`` in one run (docs/llamagen.md, "Measured").

    # 1. a GPT-XL-sized pair in LlamaGen's checkpoint layout ({"model": state_dict}); vqdeploy's modules, random weights
    python tools/llamagen_bench.py make --gpt-model GPT-XL --image-size 256 --out /tmp/lgxl
    # 2. export (time and peak RSS: /usr/bin/time -v)
    /usr/bin/time -v vqdeploy export --ckpt /tmp/lgxl/gpt.pt --vq-ckpt /tmp/lgxl/vq.pt --gpt-model GPT-XL \\
        --image-size 256 --max-batch 16 --out /tmp/lgxl/art
    # 3. sampling, batch 1 and 8 with guidance (2 and 16 transformer rows), against LlamaGen's generate() from a
    #    checkout of FoundationVision/LlamaGen (its autoregressive/, tokenizer/, utils/ folders; not part of vqdeploy)
    python tools/llamagen_bench.py sample --artifacts /tmp/lgxl/art --llamagen-src /tmp/llamagen_src --batch 1 8

``make`` builds the modules vqdeploy loads (key-for-key LlamaGen's), so the files are what LlamaGen's scripts write
and load. The VQ is LlamaGen's VQ-16 (ch 128, ch_mult 1,1,2,2,4, z 256, 16384 x 8 l2-normalised codes), the GPT one of
its presets with 1000 classes + the null class. Weights: normal(0, 0.02) as LlamaGen's ``initializer_range`` (its
zero-initialised head replaced by the same draw, so that the logits are not all equal).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from vqdeploy.families.llamagen.gpt import Transformer, precompute_freqs_cis_2d
from vqdeploy.families.llamagen.load import GPT_MODELS
from vqdeploy.families.llamagen.vq import VQModel


def find_multiple(n: int, k: int) -> int:
    return n if n % k == 0 else n + k - (n % k)


def make(args: argparse.Namespace) -> None:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    t = time.perf_counter()
    vq = VQModel(3, 128, [128 * m for m in (1, 1, 2, 2, 4)], [128 * m for m in (1, 1, 2, 2, 4)], 2, 256, 16384, 8)
    with torch.no_grad():
        for p in vq.parameters():
            if p.dim() > 1:
                p.normal_(0, 0.02)
        vq.quantize.embedding.weight.copy_(torch.nn.functional.normalize(vq.quantize.embedding.weight, dim=-1))
    torch.save({"model": vq.state_dict()}, out / "vq.pt")
    n_layer, n_head, dim = GPT_MODELS[args.gpt_model]
    hidden = find_multiple(int(2 * 4 * dim / 3), 256)  # LlamaGen's FeedForward width
    grid = args.image_size // 16
    with torch.device("meta"):
        gpt = Transformer(dim, n_layer, n_head, 16384, 1001, hidden, grid * grid)
    gpt = gpt.to_empty(device="cpu")
    gpt.freqs_cis = precompute_freqs_cis_2d(grid, dim // n_head, 10000, 1)
    with torch.no_grad():
        for name, p in gpt.named_parameters():
            if name.endswith("norm.weight"):
                p.fill_(1.0)
            else:
                p.normal_(0, 0.02)
    torch.save({"model": gpt.state_dict()}, out / "gpt.pt")
    params = sum(p.numel() for p in gpt.parameters())
    print(json.dumps({"gpt": str(out / "gpt.pt"), "vq": str(out / "vq.pt"), "gpt_parameters": params,
                      "vq_parameters": sum(p.numel() for p in vq.parameters()),
                      "seconds": round(time.perf_counter() - t, 1),
                      "gpt_bytes": (out / "gpt.pt").stat().st_size}, indent=1))


def llamagen_generate(src: str, gpt_path: Path, manifest: dict[str, Any], batch: int, cfg_scale: float, top_k: int,
                      log: Any) -> dict[str, Any]:
    """LlamaGen's own Transformer + generate() (sample_c2i.py's calls), timed after a short warm-up."""
    sys.path.insert(0, src)
    from autoregressive.models.generate import generate  # type: ignore[import-not-found]
    from autoregressive.models.gpt import GPT_models  # type: ignore[import-not-found]

    tr = manifest["model"]["transformer"]
    model = GPT_models[tr["gpt_model"]](vocab_size=tr["vocab_size"], block_size=tr["block_size"],
                                        num_classes=manifest["model"]["conditioning"]["n_classes"], cls_token_num=1,
                                        model_type="c2i")
    model.load_state_dict(torch.load(gpt_path, map_location="cpu", weights_only=True)["model"], strict=False)
    model.eval()
    labels = torch.tensor([207, 360, 387, 974, 88, 979, 417, 279][:batch] * (batch // 8 + 1))[:batch]
    steps = tr["block_size"]
    with torch.no_grad():
        generate(model, labels, 4, cfg_scale=cfg_scale, cfg_interval=-1, temperature=1.0, top_k=top_k, top_p=1.0)
        t = time.perf_counter()
        tokens = generate(model, labels, steps, cfg_scale=cfg_scale, cfg_interval=-1, temperature=1.0, top_k=top_k,
                          top_p=1.0, sample_logits=True)
        total = time.perf_counter() - t
    assert tokens.shape == (batch, steps)
    del model
    return {"total_s": total, "token_ms": 1e3 * total / steps, "tokens_per_s": batch * steps / total}


def ours(artifacts: Path, batch: int, sampler: str, cfg_scale: float, top_k: int) -> dict[str, Any]:
    from vqdeploy.artifacts import open_artifacts
    from vqdeploy.bench.benchmark import bench_backend
    from vqdeploy.conditions import ClassId
    from vqdeploy.runtime.backends.registry import open_backend
    from vqdeploy.runtime.sampling import SamplingParams

    opened = open_artifacts(artifacts)
    be = open_backend("onnxruntime", opened, "cpu")
    params = SamplingParams(1.0, top_k, None, cfg_scale=cfg_scale)
    r = bench_backend(be, ClassId(207), opened.manifest.model, batch, 1, sampler, params)
    return {"total_s": r["sampling"], "token_ms": 1e3 * r["step"], "prefill_ms": 1e3 * r["prefill"],
            "tokens_per_s": r["tokens_per_s"]}


def sample(args: argparse.Namespace) -> None:
    from vqdeploy.artifacts import open_artifacts
    from vqdeploy.bench.benchmark import memory_bandwidth

    if args.threads is not None:
        torch.set_num_threads(args.threads)
    art = Path(args.artifacts)
    manifest = dict(open_artifacts(art).manifest.raw)
    gpt_path = Path(manifest["source"]["checkpoint"])
    weights = manifest["model"]["transformer"]["parameters"] * 4
    bw = memory_bandwidth()
    floor_ms = 1e3 * weights / bw
    rows = []
    for batch in args.batch:
        for name in ("LlamaGen generate(), torch fp32", "vqdeploy onnxruntime-cpu fp32",
                     "vqdeploy onnxruntime-cpu fp32, sampler graph"):
            if name.endswith("sampler graph") and not args.graph_sampler:
                continue
            print(f"... batch {batch}: {name}", file=sys.stderr, flush=True)
            load = os.getloadavg()[0]  # the machine is shared: what else ran
            if name.startswith("LlamaGen"):
                r = llamagen_generate(args.llamagen_src, gpt_path, manifest, batch, args.cfg_scale, args.top_k, print)
            else:
                r = ours(art, batch, "graph" if name.endswith("graph") else "host", args.cfg_scale, args.top_k)
            rows.append({"batch": batch, "rows": 2 * batch, "backend": name, **r,
                         "token_floor": r["token_ms"] / floor_ms,
                         "load_average": [round(load, 2), round(os.getloadavg()[0], 2)]})
            print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    print(f"\n{platform.processor() or platform.machine()}, torch threads {torch.get_num_threads()}, "
          f"cfg_scale {args.cfg_scale}, top-k {args.top_k}, {manifest['model']['tokens']['image']} tokens; "
          f"host bandwidth {bw / 1e9:.1f} GB/s -> {weights / 1e9:.2f} GB of fp32 weights per step: "
          f"floor {floor_ms:.0f} ms")
    print(f"{'batch (rows)':<13}{'backend':<46}{'token ms':>10}{'tokens/s':>10}{'x LlamaGen':>11}{'token/floor':>12}"
          f"{'load avg':>14}")
    for r in rows:
        base = next(x for x in rows if x["batch"] == r["batch"] and x["backend"].startswith("LlamaGen"))
        load = "{:.1f} -> {:.1f}".format(*r["load_average"])
        print(f"{str(r['batch']) + ' (' + str(r['rows']) + ')':<13}{r['backend']:<46}"
              f"{r['token_ms']:>10.1f}{r['tokens_per_s']:>10.2f}{r['tokens_per_s'] / base['tokens_per_s']:>10.2f}x"
              f"{r['token_floor']:>12.2f}{load:>14}")
    if args.json:
        Path(args.json).write_text(json.dumps({"rows": rows, "bandwidth_GBps": bw / 1e9, "floor_ms": floor_ms},
                                              indent=1))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    m = sub.add_parser("make")
    m.add_argument("--gpt-model", default="GPT-XL", choices=list(GPT_MODELS))
    m.add_argument("--image-size", type=int, default=256)
    m.add_argument("--out", required=True)
    s = sub.add_parser("sample")
    s.add_argument("--artifacts", required=True)
    s.add_argument("--llamagen-src", required=True, help="a checkout of FoundationVision/LlamaGen")
    s.add_argument("--batch", type=int, nargs="+", default=[1, 8])
    s.add_argument("--cfg-scale", type=float, default=4.0)
    s.add_argument("--top-k", type=int, default=2000)
    s.add_argument("--graph-sampler", action="store_true", help="also the sampler graph on ONNX Runtime")
    s.add_argument("--json", default=None)
    s.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    args = p.parse_args()
    np.set_printoptions(precision=3)
    (make if args.cmd == "make" else sample)(args)


if __name__ == "__main__":
    main()
