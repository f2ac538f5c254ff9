"""Measure the bundled demo model (``models/demo``) on held-out data of ``tools/demo_data.py``.

Writes ``metrics.json``, ``TRAINING.md`` and ``contact_sheet.png`` into the run directory:
  - first-stage reconstruction PSNR on all held-out renderings;
  - sketch following: the fraction of sketch stroke pixels that lie on an edge of the image
    (Sobel magnitude over RGB above a threshold, dilated by 1 px), for samples of the sketch
    (matched) and for samples of another sketch (mismatched), with the ground-truth renderings
    as the reference;
  - that upstream taming builds the same model from the config and loads the state_dict strictly,
    with the same outputs as vqdeploy (when taming is installed).

    python tools/eval_demo.py [--run models/demo]

``--artifacts A --rank-sketches S1.png S2.png ...`` ranks sketches by how well their samples follow them (how
the README's example sketch is chosen):

    python tools/eval_demo.py --artifacts artifacts/demo --rank-sketches models/demo/sketches/*.png

With ``--artifacts A [B ...]`` it measures exported graphs instead (nothing is written into the run):
the same sketches and samples, drawn by ONNX Runtime with the same seeds, sketch following for each, and
the PSNR of each one's samples against the first's (e.g. an fp32 export against ``--quantize int8/int4``):

    python tools/eval_demo.py --artifacts artifacts/demo artifacts/demo-int8 artifacts/demo-int4
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
import demo_data

import vqdeploy
from vqdeploy.models.net2net import Net2NetTransformer

ROOT = Path(__file__).resolve().parent.parent
N_SKETCHES = 50
N_SAMPLES = 4
TOP_K = 64
TEMPERATURE = 1.0
SAMPLE_SEED = 0
EDGE_THRESHOLD = 0.08  # Sobel magnitude (per pixel, [0,1] intensities) that counts as an edge
SHEET_ROWS = 8
SHEET_SCALE = 4


def to_unit(x: np.ndarray) -> torch.Tensor:
    t = torch.from_numpy(x).float() / 127.5 - 1.0
    return t[:, None] if t.ndim == 3 else t.permute(0, 3, 1, 2).contiguous()


def to_uint8(x: torch.Tensor) -> np.ndarray:
    """(N,C,H,W) in [-1,1] -> (N,H,W,C) uint8."""
    return ((x.clamp(-1, 1) + 1) * 127.5).round().byte().permute(0, 2, 3, 1).numpy()


# --- metrics ------------------------------------------------------------------------------------
def psnr_per_image(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    mse = ((a.astype(np.float64) - b.astype(np.float64)) ** 2).reshape(len(a), -1).mean(1)
    return 10 * np.log10(255.0**2 / np.maximum(mse, 1e-10))


def edge_map(images: np.ndarray) -> torch.Tensor:
    """(N,H,W,3) uint8 -> (N,H,W) bool: max over channels of the Sobel magnitude > threshold."""
    x = torch.from_numpy(images).float().permute(0, 3, 1, 2) / 255.0
    kx = torch.tensor([[-1.0, 0, 1], [-2, 0, 2], [-1, 0, 1]]) / 8.0
    k = torch.stack([kx, kx.t()])[:, None].repeat(3, 1, 1, 1)  # (6,1,3,3), per channel x/y
    g = F.conv2d(F.pad(x, (1, 1, 1, 1), mode="replicate"), k, groups=3)
    mag = (g[:, 0::2] ** 2 + g[:, 1::2] ** 2).sqrt().amax(1)
    return mag > EDGE_THRESHOLD


def dilate(mask: torch.Tensor) -> torch.Tensor:
    return F.max_pool2d(mask[:, None].float(), 3, stride=1, padding=1)[:, 0] > 0


def stroke_agreement(sketches: np.ndarray, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per pair: (fraction of stroke pixels on a dilated image edge, fraction of image edge
    pixels on a dilated stroke). sketches (N,64,64), images (N,64,64,3)."""
    strokes = torch.from_numpy(sketches < 128)
    edges = edge_map(images)
    recall = (strokes & dilate(edges)).sum((1, 2)) / strokes.sum((1, 2)).clamp(min=1)
    precision = (edges & dilate(strokes)).sum((1, 2)) / edges.sum((1, 2)).clamp(min=1)
    return recall.numpy(), precision.numpy()


def follow_scores(sketches: np.ndarray, images: np.ndarray) -> dict[str, float]:
    """sketches (S,64,64), images (S,K,64,64,3): matched pairs vs each sketch against the images
    of the next sketch (mismatched)."""
    k = images.shape[1]
    rep = np.repeat(sketches, k, axis=0)
    matched = stroke_agreement(rep, images.reshape(-1, 64, 64, 3))
    mismatched = stroke_agreement(rep, np.roll(images, -1, axis=0).reshape(-1, 64, 64, 3))
    return {"matched": float(matched[0].mean()), "mismatched": float(mismatched[0].mean()),
            "matched_precision": float(matched[1].mean()), "mismatched_precision": float(mismatched[1].mean())}


# --- model --------------------------------------------------------------------------------------
@torch.no_grad()
def reconstruct(model: Net2NetTransformer, images: np.ndarray, batch: int = 100) -> np.ndarray:
    first = model.first_stage_model
    out = [to_uint8(first(to_unit(images[i : i + batch]))[0]) for i in range(0, len(images), batch)]
    return np.concatenate(out)


@torch.no_grad()
def sample(model: Net2NetTransformer, sketches: np.ndarray, n: int) -> np.ndarray:
    """(S,64,64) sketches -> (S,n,64,64,3) samples (temperature 1, top-k): the runtime's token loop on the
    PyTorch model (KV cache, host sampler), sample i of every sketch drawing from ``default_rng([seed, i])``, as
    ``vqdeploy run`` draws sample i (so ``--artifacts`` of an fp32 export samples the same images up to rounding)."""
    from vqdeploy.runtime.backends.torch_backend import TorchTransformer
    from vqdeploy.runtime.decoding import sample_tokens
    from vqdeploy.runtime.sampling import uniform_noise

    c = to_unit(np.repeat(sketches, n, axis=0))
    _, c_idx = model.encode_to_c(c)
    runner = TorchTransformer(model.transformer, torch.device("cpu"))
    params = vqdeploy.SamplingParams(temperature=TEMPERATURE, top_k=TOP_K)
    idx = sample_tokens(runner, c_idx.numpy(), 64, params, np.tile(uniform_noise(SAMPLE_SEED, n, 64), (1, len(sketches))))
    embed_dim = model.first_stage_model.embed_dim
    imgs = model.decode_to_img(torch.from_numpy(idx), (len(c), embed_dim, 8, 8))
    return to_uint8(imgs).reshape(len(sketches), n, 64, 64, 3)


def sample_artifacts(artifacts: Path, sketches: np.ndarray, n: int) -> np.ndarray:
    """(S,64,64) sketches -> (S,n,64,64,3) samples of an exported model (ONNX Runtime, host sampler:
    sample i of seed s draws the same uniforms on every export, so the exports differ only by their logits)."""
    pipe = vqdeploy.Pipeline.from_artifacts(artifacts, backend="onnxruntime")
    params = vqdeploy.SamplingParams(temperature=TEMPERATURE, top_k=TOP_K)
    out = [to_uint8(torch.from_numpy(pipe(s, num_samples=n, seed=SAMPLE_SEED, params=params).images))
           for s in sketches]
    return np.stack(out)


def eval_artifacts(run: Path, dirs: list[Path]) -> dict[str, Any]:
    """Sketch following per export and sample PSNR against the first export (same seeds)."""
    train = json.loads((run / "training.json").read_text())
    d = train["data"]
    sketches = demo_data.make_split(demo_data.split_seed(d["seed"], "val"), d["n_val"], d["n_renders"])["sketch"][:N_SKETCHES]
    results: dict[str, Any] = {"n_sketches": N_SKETCHES, "n_samples": N_SAMPLES, "top_k": TOP_K,
                               "temperature": TEMPERATURE, "seed": SAMPLE_SEED, "exports": {}}
    first = None
    for a in dirs:
        samples = sample_artifacts(a, sketches, N_SAMPLES)
        row: dict[str, Any] = {"sketch_following": follow_scores(sketches, samples)}
        if first is None:
            first = samples
            # baseline: two samples of the same sketch with different seeds (what "different samples" scores)
            ps = psnr_per_image(samples[:, 0], samples[:, 1])
            row["psnr_between_samples"] = {"mean": float(ps.mean()), "median": float(np.median(ps))}
        else:
            ps = psnr_per_image(samples.reshape(-1, 64, 64, 3), first.reshape(-1, 64, 64, 3))
            row["psnr_vs_first"] = {"mean": float(np.mean(np.minimum(ps, 100))), "median": float(np.median(ps)),
                                    "identical_samples": int((ps >= 100).sum()), "n": len(ps)}
        results["exports"][str(a)] = row
    return results


def rank_sketches(artifacts: Path, paths: list[Path], n: int, readme_samples: int = 4) -> dict[str, Any]:
    """Which sketch the README should lead with: each sketch's ``n`` samples (ONNX Runtime, ``vqdeploy run``'s
    defaults: temperature 1, top-k 100, seeds 0..n-1 as samples 0..n-1 of seed 0) scored by sketch following,
    against the samples of the other sketches (mismatched); and the score of the first ``readme_samples``
    (what the README's command shows). Sorted best first by the matched-minus-mismatched stroke recall."""
    pipe = vqdeploy.Pipeline.from_artifacts(artifacts, backend="onnxruntime")
    sketches = np.stack([np.asarray(Image.open(p).convert("L")) for p in paths])
    samples = np.stack([to_uint8(torch.from_numpy(pipe(str(p), num_samples=n, seed=0).images)) for p in paths])
    rows = []
    for i, path in enumerate(paths):
        rep = np.repeat(sketches[i : i + 1], n, axis=0)
        recall, precision = stroke_agreement(rep, samples[i])
        others = [stroke_agreement(rep, samples[j])[0].mean() for j in range(len(paths)) if j != i]
        first = stroke_agreement(rep[:readme_samples], samples[i, :readme_samples])
        rows.append({"sketch": path.name, "matched": float(recall.mean()), "mismatched": float(np.mean(others)),
                     "precision": float(precision.mean()), "readme_matched": float(first[0].mean()),
                     "readme_precision": float(first[1].mean())})
    rows.sort(key=lambda r: r["matched"] - r["mismatched"], reverse=True)
    return {"artifacts": str(artifacts), "samples_per_sketch": n, "temperature": 1.0, "top_k": 100, "seed": 0,
            "sketches": rows}


def upstream_check(model: Net2NetTransformer, ckpt: Path, sketches: np.ndarray, images: np.ndarray) -> str:
    """Builds upstream taming's model from the config, loads the state_dict strictly and compares
    the teacher-forced logits and the first-stage reconstructions with vqdeploy's."""
    try:
        sys.path.insert(0, str(ROOT / "tests"))
        from upstream_shim import upstream  # type: ignore[import-not-found]

        up = upstream()
    except ImportError as e:
        return f"skipped (taming not importable: {e})"
    from vqdeploy.loading.checkpoint import read_state_dict

    ref = up.instantiate_from_config(model.source.config_data).eval()  # type: ignore[union-attr]
    ref.load_state_dict(read_state_dict(ckpt), strict=True)
    x, c = to_unit(images[:8]), to_unit(sketches[:8])
    with torch.no_grad():
        lo_up, t_up = ref(x, c)
        lo_ours, t_ours = model(x, c)
        rec_up, rec_ours = ref.first_stage_model(x)[0], model.first_stage_model(x)[0]
    if not torch.equal(t_up, t_ours):
        return "FAILED: different image tokens"
    diff = max((lo_up - lo_ours).abs().max().item(), (rec_up - rec_ours).abs().max().item())
    if diff > 1e-4:
        return f"FAILED: outputs differ by {diff:.2e}"
    return f"passed (strict load; same tokens; logits/reconstructions within {diff:.1e})"


# --- outputs ------------------------------------------------------------------------------------
def contact_sheet(sketches: np.ndarray, recons: np.ndarray, samples: np.ndarray, path: Path) -> None:
    """Rows of: sketch | reconstruction of a target | samples, upscaled (nearest)."""
    gap = np.full((64, 2, 3), 255, np.uint8)
    rows = []
    for s, r, smp in zip(sketches, recons, samples):
        tiles = [np.repeat(s[..., None], 3, -1), r, *smp]
        rows.append(np.concatenate([t for tile in tiles for t in (tile, gap)][:-1], 1))
        rows.append(np.full((2, rows[-1].shape[1], 3), 255, np.uint8))
    sheet = np.concatenate(rows[:-1], 0)
    img = Image.fromarray(sheet)
    img.resize((img.width * SHEET_SCALE, img.height * SHEET_SCALE), Image.Resampling.NEAREST).save(path, optimize=True)


def dir_size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def training_md(train: dict[str, Any], metrics: dict[str, Any]) -> str:
    w = train["wall_s"]
    fs, cs, tr = train["first_stage"], train["cond_stage"], train["transformer"]
    fol, ref = metrics["sketch_following"], metrics["sketch_following_ground_truth"]
    rec = metrics["sketch_following_reconstructions"]
    p = train["params"]
    return f"""# Demo model: training record

A sketch -> image `Net2NetTransformer` trained from scratch by `tools/train_demo.py` on the procedural
data of `tools/demo_data.py` (line sketches of 1-3 circles / squares / triangles / houses / trees, with or
without a horizon; {train['data']['n_renders']} coloured, textured renderings per sketch).

## Reproduce

```bash
python tools/train_demo.py   # data seed {train['data']['seed']}, torch seed {train['seed']}, {train['threads']} threads
python tools/eval_demo.py    # writes metrics.json, contact_sheet.png and this file
```

Data: seed {train['data']['seed']}, {train['data']['n_train']} training and {train['data']['n_val']} held-out sketches,
{train['data']['n_renders']} renderings each (64x64). Reruns with the same thread count on the same machine give
bit-identical weights; another CPU may differ by float rounding.

## Model

| part | config | parameters |
|---|---|---|
| first stage | VQModel f8, ch 32, ch_mult {train['first']['ddconfig']['ch_mult']}, 1 res block, z {train['first']['ddconfig']['z_channels']}, {train['first']['n_embed']} codes x {train['first']['embed_dim']} | {p['first_stage_model'] / 1e6:.2f} M |
| cond stage | VQModel f8 (1 channel), ch 32, ch_mult {train['cond']['ddconfig']['ch_mult']}, z {train['cond']['ddconfig']['z_channels']}, {train['cond']['n_embed']} codes x {train['cond']['embed_dim']} | {p['cond_stage_model'] / 1e6:.2f} M |
| transformer | minGPT, {train['gpt']['n_layer']} layers x {train['gpt']['n_embd']}, {train['gpt']['n_head']} heads, block 128, vocab {train['gpt']['vocab_size']} | {p['transformer'] / 1e6:.2f} M |

## Training (measured wall time, {train['threads']} CPU threads)

| stage | steps x batch | wall time | final losses (mean of last 100 steps) |
|---|---|---|---|
| data generation | - | {w['data']:.0f} s | - |
| first stage | {train['sched']['first_stage']['steps']} x {train['sched']['first_stage']['batch']} | {w['first_stage'] / 60:.1f} min | rec {fs['rec']:.4f}, vq {fs['vq']:.4f}, train PSNR {fs['psnr']:.1f} dB; {fs['codes_used']} codes used (perplexity {fs['perplexity']:.0f}) |
| cond stage | {train['sched']['cond_stage']['steps']} x {train['sched']['cond_stage']['batch']} | {w['cond_stage'] / 60:.1f} min | rec {cs['rec']:.4f}, vq {cs['vq']:.4f}; {cs['codes_used']} codes used (perplexity {cs['perplexity']:.0f}) |
| token encoding | - | {w['encode']:.0f} s | - |
| transformer | {train['sched']['transformer']['steps']} x {train['sched']['transformer']['batch']} | {w['transformer'] / 60:.1f} min | cross-entropy {tr['loss']:.3f} (held-out {tr['val_loss']:.3f}) |
| **total** | | **{w['total'] / 60:.1f} min** | |

Measured on a 2-core AMD EPYC VM (AVX-512) that other jobs shared at times: wall times are noisy.

Recipe notes: no GAN or LPIPS; each VQGAN trains as a plain autoencoder for its first sixth of the steps,
then its codebook starts as k-means centres of the latents (VQ loss with beta 0.25, straight-through
gradients, unused codes restarted from encoder outputs every 50 steps until 85% of training). The last
layer of every residual branch starts at zero (several dB better PSNR for the same steps). The transformer
is trained with upstream's loss on pre-encoded tokens; its position embedding starts with the same 2-D
grid features at a sketch token and at the position predicting the image token of the same cell.

## Quality (held-out, `tools/eval_demo.py`)

- First-stage reconstruction PSNR: **{metrics['psnr_first_stage']['mean']:.2f} dB** (mean over {metrics['psnr_first_stage']['n']}
  images; median {metrics['psnr_first_stage']['median']:.2f}, 10th percentile {metrics['psnr_first_stage']['p10']:.2f}).
- Sketch following, {metrics['n_sketches']} sketches x {metrics['n_samples']} samples (temperature {TEMPERATURE}, top-k {TOP_K},
  seed {SAMPLE_SEED}): fraction of stroke pixels on an edge of the sample (Sobel > {EDGE_THRESHOLD}, dilated 1 px)

| images | matched sketch | mismatched sketch |
|---|---|---|
| samples | **{fol['matched']:.3f}** | {fol['mismatched']:.3f} |
| ground-truth renderings | {ref['matched']:.3f} | {ref['mismatched']:.3f} |
| first-stage reconstructions of them | {rec['matched']:.3f} | {rec['mismatched']:.3f} |

  Edge precision (fraction of sample edge pixels within 1 px of a stroke): {fol['matched_precision']:.3f} matched,
  {fol['mismatched_precision']:.3f} mismatched (ground truth {ref['matched_precision']:.3f} / {ref['mismatched_precision']:.3f}).
- Upstream taming check: {metrics['upstream_check']}.
- `contact_sheet.png`: rows of sketch | first-stage reconstruction of a held-out rendering | {metrics['n_samples']} samples.
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", type=Path, default=ROOT / "models" / "demo")
    ap.add_argument("--artifacts", type=Path, nargs="+", help="exports of the run to compare (first = reference)")
    ap.add_argument("--rank-sketches", type=Path, nargs="+", metavar="PNG",
                    help="with --artifacts A: rank these sketches by how well their samples follow them (the README's "
                         "example is picked this way)")
    ap.add_argument("--samples", type=int, default=16, help="--rank-sketches: samples per sketch")
    args = ap.parse_args()
    torch.set_num_threads(2)
    if args.rank_sketches:
        if not args.artifacts:
            ap.error("--rank-sketches needs --artifacts")
        print(json.dumps(rank_sketches(args.artifacts[0], args.rank_sketches, args.samples), indent=2))
        return
    if args.artifacts:
        print(json.dumps(eval_artifacts(args.run, args.artifacts), indent=2))
        return
    train = json.loads((args.run / "training.json").read_text())
    ckpt = args.run / "checkpoints" / "last.ckpt"
    model = vqdeploy.load_model(ckpt)  # config found in <run>/configs/
    assert isinstance(model, Net2NetTransformer)

    d = train["data"]
    val = demo_data.make_split(demo_data.split_seed(d["seed"], "val"), d["n_val"], d["n_renders"])
    images = val["image"].reshape(-1, 64, 64, 3)
    recons = reconstruct(model, images)
    ps = psnr_per_image(recons, images)

    sketches = val["sketch"][:N_SKETCHES]
    samples = sample(model, sketches, N_SAMPLES)
    metrics: dict[str, Any] = {
        "psnr_first_stage": {"mean": float(ps.mean()), "median": float(np.median(ps)),
                             "p10": float(np.percentile(ps, 10)), "n": len(ps)},
        "n_sketches": N_SKETCHES, "n_samples": N_SAMPLES, "top_k": TOP_K, "temperature": TEMPERATURE,
        "sample_seed": SAMPLE_SEED, "edge_threshold": EDGE_THRESHOLD,
        "sketch_following": follow_scores(sketches, samples),
        "sketch_following_ground_truth": follow_scores(sketches, val["image"][:N_SKETCHES]),
        "sketch_following_reconstructions": follow_scores(
            sketches, recons.reshape(val["image"].shape)[:N_SKETCHES]),
        "upstream_check": upstream_check(model, ckpt, val["sketch"], images[:: d["n_renders"]]),
    }
    n_rec = d["n_renders"]
    contact_sheet(sketches[:SHEET_ROWS], recons[: SHEET_ROWS * n_rec : n_rec], samples[:SHEET_ROWS],
                  args.run / "contact_sheet.png")
    (args.run / "TRAINING.md").write_text(training_md(train, metrics))
    metrics["run_dir_bytes"] = dir_size(args.run)
    (args.run / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    print(json.dumps(metrics, indent=2))
    if not math.isfinite(metrics["psnr_first_stage"]["mean"]):
        raise SystemExit("non-finite PSNR")


if __name__ == "__main__":
    main()
