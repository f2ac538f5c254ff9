"""Train the bundled demo model (``models/demo``) from scratch on CPU, reproducibly.

Three stages on the procedural data of ``tools/demo_data.py`` (seeded):
  a. first stage: a VQGAN (f8, 64x64 RGB -> 8x8 tokens), VQ loss + L1/L2/gradient reconstruction;
  b. cond stage: a VQGAN for the 1-channel sketches, reconstruction weighted towards the strokes;
  c. a minGPT over [64 sketch tokens, 64 image tokens] with upstream Net2NetTransformer's loss.
No GAN, no LPIPS. The vqdeploy modules are trained directly (they are upstream's layers, key for key).
The result is an upstream-layout run directory (Lightning-style ``last.ckpt`` + ``*-project.yaml``).

    python tools/train_demo.py            # ~30 min on 2 cores; writes models/demo/
    python tools/train_demo.py --quick    # a smoke test (2% of the steps), writes /tmp/demo_quick/
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

# short OpenMP spin-waits: with the default, 2 threads slow down several-fold when other
# processes share the cores (no effect on the results)
os.environ.setdefault("GOMP_SPINCOUNT", "30000")

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
import demo_data

from vqdeploy.models.autoencoder import AttnBlock, ResnetBlock
from vqdeploy.models.mingpt import GPT
from vqdeploy.models.net2net import Net2NetTransformer
from vqdeploy.models.quantize import VectorQuantizer
from vqdeploy.models.vqgan import VQModel

ROOT = Path(__file__).resolve().parent.parent
SEED = 0
DATA: dict[str, int] = {"seed": SEED, "n_train": 4000, "n_val": 200, "n_renders": 4}
THREADS = 2
LOG_EVERY = 100
TIMESTAMP = "2025-01-01T00-00-00"  # fixed so that reruns write the same config file name


def _dd(channels: int, ch_mult: list[int], z_channels: int) -> dict[str, Any]:
    """The VQGAN ``ddconfig``: ch 32, one res block per level, no attention but the middle one."""
    return {"double_z": False, "z_channels": z_channels, "resolution": 64, "in_channels": channels,
            "out_ch": channels, "ch": 32, "ch_mult": ch_mult, "num_res_blocks": 1, "attn_resolutions": [],
            "dropout": 0.0}


FIRST: dict[str, Any] = {"embed_dim": 16, "n_embed": 256, "ddconfig": _dd(3, [1, 2, 2, 2], 64)}
# sane_index_shape: upstream's encode_to_c only flattens (B,h,w) indices; flat ones break its forward
COND: dict[str, Any] = {"embed_dim": 16, "n_embed": 256, "ddconfig": _dd(1, [1, 1, 1, 1], 32), "sane_index_shape": True}
GPT_CFG: dict[str, int] = {"vocab_size": 256, "block_size": 128, "n_layer": 4, "n_head": 8, "n_embd": 192}
# optimisation: steps, batch size, peak learning rate
SCHED: dict[str, dict[str, Any]] = {
    "first_stage": {"steps": 4800, "batch": 8, "lr": 1e-3},
    "cond_stage": {"steps": 1500, "batch": 8, "lr": 1e-3},
    "transformer": {"steps": 2600, "batch": 32, "lr": 2e-3},
}
BETA = 0.25  # commitment weight (upstream's VectorQuantizer2 default)


def log(msg: str) -> None:
    print(msg, flush=True)


def seed_all(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def generator(purpose: str) -> torch.Generator:
    """A torch generator of its own for each use (batch order, code restarts, initialisation)."""
    offset = ("first_stage", "cond_stage", "transformer", "positions").index(purpose) + 1
    return torch.Generator().manual_seed(1000 * SEED + offset)


def lr_at(step: int, steps: int, peak: float, warmup: int = 100) -> float:
    """Linear warm-up, then cosine decay to 5% of the peak."""
    if step < warmup:
        return peak * (step + 1) / warmup
    t = (step - warmup) / max(1, steps - warmup)
    return peak * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * t)))


def set_lr(opt: torch.optim.Optimizer, lr: float) -> None:
    for group in opt.param_groups:
        group["lr"] = lr


def to_unit(x: np.ndarray) -> torch.Tensor:
    """uint8 (N,H,W) or (N,H,W,C) -> float (N,C,H,W) in [-1, 1]."""
    t = torch.from_numpy(x).float() / 127.5 - 1.0
    return t[:, None] if t.ndim == 3 else t.permute(0, 3, 1, 2).contiguous()


def batches(n: int, batch: int, gen: torch.Generator) -> Iterator[torch.Tensor]:
    """Endless random index batches (reshuffled every epoch)."""
    while True:
        perm = torch.randperm(n, generator=gen)
        for i in range(0, n - batch + 1, batch):
            yield perm[i : i + batch]


def psnr(x: torch.Tensor, y: torch.Tensor) -> float:
    """PSNR in dB of images in [-1, 1], measured on the 8-bit scale [0, 1]."""
    mse = F.mse_loss((x.clamp(-1, 1) + 1) / 2, (y + 1) / 2).item()
    return 10 * math.log10(1.0 / max(mse, 1e-10))


# --- VQGAN training -----------------------------------------------------------------------------
def zero_init_residuals(model: nn.Module) -> None:
    """Zero the last layer of every residual branch: the network starts close to its skip
    paths, which trains the VQGAN several dB further in the same number of steps."""
    for m in model.modules():
        last = m.conv2 if isinstance(m, ResnetBlock) else m.proj_out if isinstance(m, AttnBlock) else None
        if isinstance(last, nn.Conv2d):
            nn.init.zeros_(last.weight)
            nn.init.zeros_(last.bias)  # type: ignore[arg-type]


def codebook_of(model: VQModel) -> VectorQuantizer:
    assert isinstance(model.quantize, VectorQuantizer)
    return model.quantize


def quantize_st(model: VQModel, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Straight-through quantisation: (z_q with the encoder's gradient, VQ loss, indices)."""
    quantize = codebook_of(model)
    with torch.no_grad():
        ind = quantize.indices(h)
    zq = quantize.embedding(ind).permute(0, 3, 1, 2)
    vq_loss = F.mse_loss(zq, h.detach()) + BETA * F.mse_loss(h, zq.detach())
    return h + (zq - h).detach(), vq_loss, ind


def image_grad(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return x[..., :, 1:] - x[..., :, :-1], x[..., 1:, :] - x[..., :-1, :]


def rec_loss(xrec: torch.Tensor, x: torch.Tensor, weight: torch.Tensor | None) -> torch.Tensor:
    """Weighted L1 + L2 on pixels plus L1 on horizontal/vertical differences (sharp edges)."""
    w = torch.ones_like(x[:, :1]) if weight is None else weight
    err = (xrec - x).abs()
    loss = (w * (err + err**2)).mean() / w.mean()
    for gr, gx in zip(image_grad(xrec), image_grad(x)):
        loss = loss + 0.5 * (gr - gx).abs().mean()
    return loss


class CodeRestarter:
    """Replaces codes unused for ``every`` steps by random encoder outputs of the current batch."""

    def __init__(self, model: VQModel, opt: torch.optim.Optimizer, every: int, gen: torch.Generator) -> None:
        self.emb: torch.Tensor = codebook_of(model).embedding.weight
        self.opt, self.every, self.gen = opt, every, gen
        self.counts = torch.zeros(self.emb.shape[0])
        self.restarted = 0
        self.started = False  # the first update re-initialises every unused code from the data

    @torch.no_grad()
    def _set(self, rows: torch.Tensor, values: torch.Tensor) -> None:
        self.emb[rows] = values
        for v in self.opt.state.get(self.emb, {}).values():  # forget Adam's moments of those rows
            if isinstance(v, torch.Tensor) and v.shape == self.emb.shape:
                v[rows] = 0

    def reset(self, codebook: torch.Tensor) -> None:
        self._set(torch.arange(len(codebook)), codebook)
        self.counts.zero_()
        self.started = True

    def update(self, step: int, ind: torch.Tensor, h: torch.Tensor, active: bool) -> None:
        self.counts += torch.bincount(ind.reshape(-1), minlength=self.emb.shape[0]).float()
        if (step + 1) % self.every and self.started:
            return
        self.started = True
        dead = torch.nonzero(self.counts == 0).reshape(-1)
        if active and len(dead) > 0:
            z = h.detach().permute(0, 2, 3, 1).reshape(-1, h.shape[1])
            pick = torch.randint(0, z.shape[0], (len(dead),), generator=self.gen)
            self._set(dead, z[pick] + 0.01 * torch.randn(len(dead), z.shape[1], generator=self.gen))
            self.restarted += len(dead)
        self.counts.zero_()


@torch.no_grad()
def kmeans(z: torch.Tensor, k: int, gen: torch.Generator, iters: int = 10) -> torch.Tensor:
    """(N, D) vectors -> (k, D) centres (Lloyd's algorithm from random samples)."""
    centres = z[torch.randperm(len(z), generator=gen)[:k]].clone()
    for _ in range(iters):
        assign = torch.cdist(z, centres).argmin(1)
        sums = torch.zeros_like(centres).index_add_(0, assign, z)
        counts = torch.bincount(assign, minlength=k).float()[:, None]
        centres = torch.where(counts > 0, sums / counts.clamp(min=1), centres)
    return centres


def train_vq(
    model: VQModel, data: np.ndarray, name: str, steps: int, batch: int, lr: float,
    weight_fn: Callable[[torch.Tensor], torch.Tensor] | None = None, ae_warmup: int = 0,
) -> dict[str, float]:
    """Trains a VQModel on uint8 images; returns the final (last 100 steps mean) losses.

    The first ``ae_warmup`` steps train a plain autoencoder (no quantisation); the codebook
    then starts as k-means centres of the latents of the last warm-up batches.
    """
    gen = generator(name)
    zero_init_residuals(model)
    model.train()
    opt = torch.optim.Adam(model.parameters(), lr=lr, betas=(0.9, 0.99))
    restarter = CodeRestarter(model, opt, every=50, gen=gen)
    hist: dict[str, list[float]] = {"rec": [], "vq": [], "psnr": []}
    recent: list[torch.Tensor] = []
    t0 = time.time()
    for step, idx in zip(range(steps), batches(len(data), batch, gen)):
        set_lr(opt, lr_at(step, steps, lr))
        x = to_unit(data[idx.numpy()])
        h = model.quant_conv(model.encoder(x))
        if step < ae_warmup:
            zq, vq_loss, ind = h, torch.zeros(()), torch.zeros(1, dtype=torch.long)
            recent = (recent + [h.detach().permute(0, 2, 3, 1).reshape(-1, h.shape[1])])[-16:]
        else:
            if step == ae_warmup and ae_warmup > 0:
                restarter.reset(kmeans(torch.cat(recent), codebook_of(model).n_e, gen))
            zq, vq_loss, ind = quantize_st(model, h)
        xrec = model.decode(zq)
        rl = rec_loss(xrec, x, None if weight_fn is None else weight_fn(x))
        opt.zero_grad(set_to_none=True)
        (rl + vq_loss).backward()
        opt.step()
        if step >= ae_warmup:
            restarter.update(step, ind, h, active=step < 0.85 * steps)
        for k, v in (("rec", rl.item()), ("vq", vq_loss.item()), ("psnr", psnr(xrec.detach(), x))):
            hist[k].append(v)
        if (step + 1) % LOG_EVERY == 0 or step == 0:
            used = len(torch.unique(ind))
            log(f"[{name}] step {step + 1}/{steps}  rec {np.mean(hist['rec'][-100:]):.4f}  "
                f"vq {np.mean(hist['vq'][-100:]):.4f}  psnr {np.mean(hist['psnr'][-100:]):.2f} dB  "
                f"codes/batch {used}  restarted {restarter.restarted}  {time.time() - t0:.0f}s")
    model.eval()
    return {k: float(np.mean(v[-100:])) for k, v in hist.items()} | {"codes_restarted": restarter.restarted}


def stroke_weight(x: torch.Tensor) -> torch.Tensor:
    """Sketch pixels are mostly white: weight dark (stroke) pixels 10x."""
    return 1.0 + 9.0 * (x < 0).float()


@torch.no_grad()
def encode_tokens(model: VQModel, data: np.ndarray, batch: int = 256) -> torch.Tensor:
    """uint8 images -> (N, 64) token ids, with the inference path (``encode``, as upstream)."""
    out = []
    for i in range(0, len(data), batch):
        _, _, info = model.encode(to_unit(data[i : i + batch]))
        out.append(info[2].reshape(-1, 64))
    return torch.cat(out)


@torch.no_grad()
def code_usage(tokens: torch.Tensor, n: int) -> dict[str, float]:
    counts = torch.bincount(tokens.reshape(-1), minlength=n).float()
    p = counts / counts.sum()
    perplexity = torch.exp(-(p[p > 0] * p[p > 0].log()).sum()).item()
    return {"codes_used": int((counts > 0).sum()), "perplexity": perplexity}


# --- transformer training -----------------------------------------------------------------------
def sincos_2d(n_embd: int, side: int = 8) -> torch.Tensor:
    """(side*side, n_embd) 2-D sine/cosine features of the token grid (rows, then columns)."""
    quarter = n_embd // 4
    freqs = 1.0 / (100.0 ** (torch.arange(quarter) / quarter))
    pos = torch.arange(side * side)
    parts = []
    for coord in (pos // side, pos % side):
        a = coord[:, None].float() * freqs[None] * math.pi / 2
        parts += [torch.sin(a), torch.cos(a)]
    return torch.cat(parts, 1)


def init_aligned_positions(gpt: GPT, gen: torch.Generator, scale: float = 0.02) -> None:
    """Start the position embedding with the same grid features at a sketch token and at the
    position that predicts the image token of the same cell, plus a random vector per segment
    (sketch / image; the token embedding is shared). A hint only: all of it is trained.

    The input holds [c_0..c_63, z_0..z_62]; position 63+j predicts z_j.
    """
    grid = sincos_2d(gpt.n_embd) * scale
    seg = torch.randn(2, gpt.n_embd, generator=gen) * scale
    with torch.no_grad():
        gpt.pos_emb.zero_()
        gpt.pos_emb[0, :64] = grid + seg[0]
        gpt.pos_emb[0, 64:127] = grid[1:] + seg[1]


def transformer_loss(gpt: GPT, c_indices: torch.Tensor, z_indices: torch.Tensor) -> torch.Tensor:
    """Upstream ``Net2NetTransformer.forward`` + ``shared_step`` (pkeep = 1) on pre-encoded tokens."""
    cz_indices = torch.cat((c_indices, z_indices), dim=1)
    logits, _ = gpt(cz_indices[:, :-1])
    logits = logits[:, c_indices.shape[1] - 1 :]
    return F.cross_entropy(logits.reshape(-1, logits.size(-1)), z_indices.reshape(-1))


def train_transformer(
    gpt: GPT, c_tok: torch.Tensor, z_tok: torch.Tensor, val: tuple[torch.Tensor, torch.Tensor],
    steps: int, batch: int, lr: float,
) -> dict[str, float]:
    """c_tok (N, 64), z_tok (N, R, 64): each step pairs random sketches with one of their renders."""
    gen = generator("transformer")
    gpt.train()
    decay = [p for n, p in gpt.named_parameters() if p.ndim >= 2 and "emb" not in n]
    rest = [p for n, p in gpt.named_parameters() if not (p.ndim >= 2 and "emb" not in n)]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.01}, {"params": rest, "weight_decay": 0.0}],
                            lr=lr, betas=(0.9, 0.95))
    n, r = z_tok.shape[:2]
    hist: list[float] = []
    val_loss = float("nan")
    t0 = time.time()
    for step, idx in zip(range(steps), batches(n, batch, gen)):
        set_lr(opt, lr_at(step, steps, lr))
        pick = torch.randint(0, r, (len(idx),), generator=gen)
        loss = transformer_loss(gpt, c_tok[idx], z_tok[idx, pick])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(gpt.parameters(), 1.0)
        opt.step()
        hist.append(loss.item())
        if (step + 1) % 100 == 0 or step == 0:
            if (step + 1) % 500 == 0 or step + 1 == steps:
                val_loss = eval_transformer(gpt, *val)
            log(f"[transformer] step {step + 1}/{steps}  loss {np.mean(hist[-100:]):.4f}  "
                f"val {val_loss:.4f}  {time.time() - t0:.0f}s")
    gpt.eval()
    return {"loss": float(np.mean(hist[-100:])), "val_loss": val_loss}


@torch.no_grad()
def eval_transformer(gpt: GPT, c_tok: torch.Tensor, z_tok: torch.Tensor) -> float:
    was = gpt.training
    gpt.eval()
    c = c_tok[:, None].expand(-1, z_tok.shape[1], -1).reshape(-1, 64)
    losses = [transformer_loss(gpt, c[i : i + 200], z_tok.reshape(-1, 64)[i : i + 200]).item()
              for i in range(0, len(c), 200)]
    gpt.train(was)
    return float(np.mean(losses))


# --- the run directory --------------------------------------------------------------------------
def project_config() -> dict[str, Any]:
    """The upstream ``*-project.yaml`` of the model (taming targets)."""
    def vq_node(p: dict[str, Any], key: str) -> dict[str, Any]:
        return {"target": "taming.models.vqgan.VQModel",
                "params": {**p, "image_key": key, "lossconfig": {"target": "taming.modules.losses.DummyLoss"}}}

    return {"model": {
        "base_learning_rate": SCHED["transformer"]["lr"] / SCHED["transformer"]["batch"],
        "target": "taming.models.cond_transformer.Net2NetTransformer",
        "params": {
            "cond_stage_key": "sketch",
            "first_stage_key": "image",
            "transformer_config": {"target": "taming.modules.transformer.mingpt.GPT", "params": dict(GPT_CFG)},
            "first_stage_config": vq_node(FIRST, "image"),
            "cond_stage_config": vq_node(COND, "sketch"),
            "permuter_config": {"target": "taming.modules.transformer.permuter.Identity"},
        },
    }}


def cond_vq(model: Net2NetTransformer) -> VQModel:
    assert isinstance(model.cond_stage_model, VQModel)
    return model.cond_stage_model


def build_model() -> Net2NetTransformer:
    first = VQModel(image_key="image", **FIRST)
    cond = VQModel(image_key="sketch", **COND)
    return Net2NetTransformer(GPT(**GPT_CFG), first, cond, first_stage_key="image", cond_stage_key="sketch")


def save_run(model: Net2NetTransformer, out: Path, step: int, epoch: int) -> Path:
    """``out/checkpoints/last.ckpt`` (Lightning layout, no optimizer state) and the config."""
    from omegaconf import OmegaConf

    (out / "checkpoints").mkdir(parents=True, exist_ok=True)
    (out / "configs").mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}
    ckpt = {
        "epoch": epoch,
        "global_step": step,
        "pytorch-lightning_version": "1.0.8",  # the version taming-transformers was trained with
        "state_dict": state,
        "callbacks": {},
        "optimizer_states": [],
        "lr_schedulers": [],
    }
    path = out / "checkpoints" / "last.ckpt"
    torch.save(ckpt, path)
    for old in (out / "configs").glob("*-project.yaml"):
        old.unlink()
    OmegaConf.save(OmegaConf.create(project_config()), out / "configs" / f"{TIMESTAMP}-project.yaml")
    return path


@torch.no_grad()
def verify_reload(model: Net2NetTransformer, path: Path, data: dict[str, np.ndarray]) -> None:
    """``vqdeploy.load_model`` must find the config and give this model's outputs exactly."""
    import vqdeploy

    loaded = vqdeploy.load_model(path)
    assert isinstance(loaded, Net2NetTransformer)
    x, c = to_unit(data["val_image"][:8, 0]), to_unit(data["val_sketch"][:8])
    for a, b in zip((*model(x, c), model.first_stage_model(x)[0], model.cond_stage_model(c)[0]),
                    (*loaded(x, c), loaded.first_stage_model(x)[0], loaded.cond_stage_model(c)[0])):
        if not torch.equal(a, b):
            raise RuntimeError(f"reloaded model differs from the trained one: {(a - b).abs().max().item():.2e}")
    log(f"verified: vqdeploy.load_model({path}) reproduces the trained model's outputs exactly")


def save_sketches(data: dict[str, np.ndarray], out: Path, n: int = 8) -> None:
    """A few held-out sketches, one per distinct scene description, as PNGs."""
    from PIL import Image

    d = out / "sketches"
    d.mkdir(parents=True, exist_ok=True)
    for old in d.glob("*.png"):
        old.unlink()
    seen: set[str] = set()
    for i, name in enumerate(data["val_name"]):
        if str(name) in seen:
            continue
        seen.add(str(name))
        Image.fromarray(data["val_sketch"][i]).save(d / f"{len(seen):02d}_{name}.png")
        if len(seen) == n:
            break


# --- main ---------------------------------------------------------------------------------------
def train_stages(model: Net2NetTransformer, data: dict[str, np.ndarray], steps: dict[str, int],
                 stats: dict[str, Any], cache: Path | None) -> None:
    """Stages a and b; their weights are kept in ``cache`` so that ``--reuse-stages`` can skip them."""
    for name, module, images, weight_fn in (
        ("first_stage", model.first_stage_model, data["train_image"].reshape(-1, 64, 64, 3), None),
        ("cond_stage", cond_vq(model), data["train_sketch"], stroke_weight),
    ):
        t = time.time()
        s = SCHED[name]
        stats[name] = train_vq(module, images, name, steps[name], s["batch"], s["lr"], weight_fn=weight_fn,
                               ae_warmup=steps[name] // 6)
        stats["wall_s"][name] = time.time() - t
        if cache is not None:
            cache.mkdir(parents=True, exist_ok=True)
            torch.save({"state_dict": module.state_dict(), "stats": stats[name], "wall_s": stats["wall_s"][name]},
                       cache / f"{name}.pt")


def load_stages(model: Net2NetTransformer, stats: dict[str, Any], cache: Path) -> None:
    for name, module in (("first_stage", model.first_stage_model), ("cond_stage", model.cond_stage_model)):
        saved = torch.load(cache / f"{name}.pt", weights_only=True)
        module.load_state_dict(saved["state_dict"])
        stats[name], stats["wall_s"][name] = saved["stats"], saved["wall_s"]
        log(f"{name}: reused {cache / f'{name}.pt'}")


def tokenize(model: Net2NetTransformer, data: dict[str, np.ndarray], stats: dict[str, Any]
             ) -> tuple[torch.Tensor, torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
    """Sketch tokens (N, 64) and image tokens (N, R, 64) of the train split, and the held-out ones."""
    t = time.time()
    model.eval()

    def encode(split: str) -> tuple[torch.Tensor, torch.Tensor]:
        c = encode_tokens(cond_vq(model), data[f"{split}_sketch"])
        z = encode_tokens(model.first_stage_model, data[f"{split}_image"].reshape(-1, 64, 64, 3))
        return c, z.reshape(len(c), -1, 64)

    c_tok, z_tok = encode("train")
    val = encode("val")
    stats["first_stage"] |= code_usage(z_tok, FIRST["n_embed"])
    stats["cond_stage"] |= code_usage(c_tok, COND["n_embed"])
    stats["wall_s"]["encode"] = time.time() - t
    log(f"tokens: image codes {stats['first_stage']['codes_used']} used (perplexity "
        f"{stats['first_stage']['perplexity']:.0f}), sketch codes {stats['cond_stage']['codes_used']} used "
        f"(perplexity {stats['cond_stage']['perplexity']:.0f}) ({stats['wall_s']['encode']:.0f}s)")
    return c_tok, z_tok, val


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=ROOT / "models" / "demo")
    ap.add_argument("--data", type=Path, default=ROOT / "tools" / "_data" / "demo.npz")
    ap.add_argument("--stages", type=Path, default=ROOT / "tools" / "_data" / "stages",
                    help="where the weights of stages a and b are kept")
    ap.add_argument("--reuse-stages", action="store_true", help="train only the transformer (for experiments)")
    ap.add_argument("--quick", action="store_true", help="2%% of the steps, 200 sketches, into /tmp/demo_quick (smoke test)")
    args = ap.parse_args()
    scale = 0.02 if args.quick else 1.0
    out = Path("/tmp/demo_quick") if args.quick else args.out
    torch.set_num_threads(THREADS)
    seed_all(SEED)
    stats: dict[str, Any] = {"seed": SEED, "data": DATA, "threads": THREADS, "sched": SCHED,
                             "first": FIRST, "cond": COND, "gpt": GPT_CFG, "wall_s": {}}
    t_all = time.time()

    t = time.time()
    data = demo_data.load_or_make(args.data, **DATA)
    stats["wall_s"]["data"] = time.time() - t
    log(f"data: {len(data['train_sketch'])} train sketches x {data['train_image'].shape[1]} renders, "
        f"{len(data['val_sketch'])} held-out ({stats['wall_s']['data']:.0f}s)")
    if args.quick:
        data = {k: v[:200] if k.startswith("train") else v for k, v in data.items()}

    model = build_model()
    steps = {k: max(2, int(v["steps"] * scale)) for k, v in SCHED.items()}
    if args.reuse_stages:
        load_stages(model, stats, args.stages)
    else:
        train_stages(model, data, steps, stats, None if args.quick else args.stages)
    c_tok, z_tok, val = tokenize(model, data, stats)

    t = time.time()
    s = SCHED["transformer"]
    init_aligned_positions(model.transformer, generator("positions"))
    stats["transformer"] = train_transformer(model.transformer, c_tok, z_tok, val, steps["transformer"],
                                             s["batch"], s["lr"])
    stats["wall_s"]["transformer"] = time.time() - t

    model.eval().requires_grad_(False)
    epoch = steps["transformer"] * s["batch"] // z_tok.reshape(-1, 64).shape[0]
    path = save_run(model, out, steps["transformer"], epoch)
    verify_reload(model, path, data)
    save_sketches(data, out)
    stats["wall_s"]["total"] = time.time() - t_all
    if args.reuse_stages:  # this run did not train stages a and b: count their recorded time
        stats["wall_s"]["total"] += stats["wall_s"]["first_stage"] + stats["wall_s"]["cond_stage"]
    stats["params"] = {k: sum(p.numel() for p in getattr(model, k).parameters())
                       for k in ("first_stage_model", "cond_stage_model", "transformer")}
    (out / "training.json").write_text(json.dumps(stats, indent=2) + "\n")
    log(f"wrote {path} ({path.stat().st_size / 1e6:.1f} MB); wall {stats['wall_s']}")


if __name__ == "__main__":
    main()
