"""Write a random-weight taming run (Lightning last.ckpt + configs/*-project.yaml) at a real size.

Used to measure export time, memory and sampling speed at production scale without a
download; ``--preset sflckr`` matches taming's S-FLCKR segmentation -> image model
(f16 VQGAN with 1024 codes, 182-class segmentation cond stage, GPT 24 layers x 16 heads x 1024
wide, block 512); ``--preset medium`` is the same layout with a GPT of 8 layers x 512 and
64-channel VQGANs (256 cond + 256 image tokens), the size issue 12's end-to-end comparison uses;
``--preset cin`` matches taming's ImageNet class-conditional model (``cin_transformer``: f16
VQGAN with 16384 codes, ``Labelator`` over 1000 classes, GPT 48 layers x 24 heads x 1536 wide,
block 512; 1 class token + 256 image tokens, about 1.4 B transformer parameters, a 5.9 GB
checkpoint), the size issue 13 measures a > 2 GB (external-data) export with.

    python tools/make_random_model.py --preset sflckr --out /tmp/sflckr_random
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

import torch
from omegaconf import OmegaConf


def vq_config(in_channels: int, image_key: str, ch: int, ch_mult: list[int], n_embed: int, embed_dim: int,
              resolution: int, attn: list[int]) -> dict[str, Any]:
    return {"target": "taming.models.vqgan.VQModel", "params": {
        "embed_dim": embed_dim, "n_embed": n_embed, "image_key": image_key,
        "ddconfig": {"double_z": False, "z_channels": embed_dim, "resolution": resolution, "in_channels": in_channels,
                     "out_ch": in_channels, "ch": ch, "ch_mult": ch_mult, "num_res_blocks": 2,
                     "attn_resolutions": attn, "dropout": 0.0},
        "lossconfig": {"target": "taming.modules.losses.DummyLoss"}}}


PRESETS: dict[str, dict[str, Any]] = {
    "sflckr": {"target": "taming.models.cond_transformer.Net2NetTransformer", "params": {
        "cond_stage_key": "segmentation",
        "transformer_config": {"target": "taming.modules.transformer.mingpt.GPT", "params": {
            "vocab_size": 1024, "block_size": 512, "n_layer": 24, "n_head": 16, "n_embd": 1024}},
        "first_stage_config": vq_config(3, "image", 128, [1, 1, 2, 2, 4], 1024, 256, 256, [16]),
        "cond_stage_config": vq_config(182, "segmentation", 128, [1, 1, 2, 2, 4], 1024, 256, 256, [16]),
    }},
    "medium": {"target": "taming.models.cond_transformer.Net2NetTransformer", "params": {
        "cond_stage_key": "segmentation",
        "transformer_config": {"target": "taming.modules.transformer.mingpt.GPT", "params": {
            "vocab_size": 1024, "block_size": 512, "n_layer": 8, "n_head": 8, "n_embd": 512}},
        "first_stage_config": vq_config(3, "image", 64, [1, 1, 2, 2, 4], 1024, 256, 256, [16]),
        "cond_stage_config": vq_config(182, "segmentation", 64, [1, 1, 2, 2, 4], 1024, 256, 256, [16]),
    }},
    "cin": {"target": "taming.models.cond_transformer.Net2NetTransformer", "params": {
        "cond_stage_key": "class_label",
        "transformer_config": {"target": "taming.modules.transformer.mingpt.GPT", "params": {
            "vocab_size": 16384, "block_size": 512, "n_layer": 48, "n_head": 24, "n_embd": 1536}},
        "first_stage_config": vq_config(3, "image", 128, [1, 1, 2, 2, 4], 16384, 256, 256, [16]),
        "cond_stage_config": {"target": "taming.modules.util.Labelator", "params": {"n_classes": 1000}},
    }},
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", choices=sorted(PRESETS), default="sflckr")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    from vqdeploy.loading.targets import BuildContext, build_module

    torch.manual_seed(args.seed)
    node = PRESETS[args.preset]
    t = time.perf_counter()
    model = build_module(node, BuildContext({}))
    n = sum(p.numel() for p in model.parameters())
    (args.out / "checkpoints").mkdir(parents=True, exist_ok=True)
    (args.out / "configs").mkdir(parents=True, exist_ok=True)
    OmegaConf.save(OmegaConf.create({"model": node}), args.out / "configs" / "2020-11-09T13-31-51-project.yaml")
    ckpt = {"epoch": 0, "global_step": 0, "pytorch-lightning_version": "1.0.8", "state_dict": model.state_dict(),
            "callbacks": {}, "optimizer_states": [], "lr_schedulers": []}
    torch.save(ckpt, args.out / "checkpoints" / "last.ckpt")
    print(f"{args.preset}: {n / 1e6:.1f} M parameters, written to {args.out} in {time.perf_counter() - t:.1f} s")


if __name__ == "__main__":
    main()
