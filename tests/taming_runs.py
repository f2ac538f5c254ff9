"""Build tiny upstream taming models and save them as real taming runs.

Every model here is built by upstream's own classes through upstream's ``instantiate_from_config``
(see ``upstream_shim``) and saved in the layout ``taming/main.py`` produces with PyTorch
Lightning 1.x::

    <run>/checkpoints/last.ckpt          Lightning dict: epoch, global_step, pytorch-lightning_version,
                                         callbacks {ModelCheckpoint: state}, optimizer_states,
                                         lr_schedulers, state_dict
    <run>/configs/<timestamp>-project.yaml   {model: {base_learning_rate, target, params}, data: ...}
    <run>/configs/<timestamp>-lightning.yaml {lightning: {trainer: ...}}  (must be ignored)

Weights are scrambled after construction so that the parity checks are not trivial: codebooks are
fitted to the encoder's latents (many distinct codes in use) and the GPT gets large weights so that
greedy sampling has clear margins (see ``greedy_margins``).
"""

from __future__ import annotations

import copy
import sys
import types
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from torch import nn
from upstream_shim import upstream

VQ = "taming.models.vqgan.VQModel"
VQ_SEG = "taming.models.vqgan.VQSegmentationModel"
VQ_NODISC = "taming.models.vqgan.VQNoDiscModel"
GUMBEL = "taming.models.vqgan.GumbelVQ"
NET2NET = "taming.models.cond_transformer.Net2NetTransformer"
GPT = "taming.modules.transformer.mingpt.GPT"
PERMUTER = "taming.modules.transformer.permuter."
DUMMY_LOSS = {"target": "taming.modules.losses.vqperceptual.DummyLoss"}

RES = 16  # image side; ch_mult (1, 1, 2) -> downsample factor 4 -> 4x4 = 16 image tokens


# --------------------------------------------------------------------------------------------
# Lightning 1.x pickle globals
# --------------------------------------------------------------------------------------------
def model_checkpoint_class() -> type:
    """``pytorch_lightning.callbacks.model_checkpoint.ModelCheckpoint`` as a picklable global.

    Taming-era Lightning (1.0.x) keyed ``checkpoint["callbacks"]`` by the callback *class*, so every
    real ``last.ckpt`` references this global. Lightning is not installed here: we register a
    stand-in module under the real name, so the pickle references exactly that global.
    """
    upstream()  # installs a stand-in ``pytorch_lightning`` when it is missing
    name = "pytorch_lightning.callbacks.model_checkpoint"
    mod = sys.modules.get(name)
    if mod is not None and hasattr(mod, "ModelCheckpoint"):
        return mod.ModelCheckpoint
    try:  # a real Lightning install
        from pytorch_lightning.callbacks.model_checkpoint import ModelCheckpoint  # type: ignore

        return ModelCheckpoint
    except ImportError:
        pass
    pl = sys.modules["pytorch_lightning"]
    callbacks = sys.modules.get("pytorch_lightning.callbacks") or types.ModuleType("pytorch_lightning.callbacks")
    mod = types.ModuleType(name)

    class ModelCheckpoint:
        pass

    ModelCheckpoint.__module__ = name
    ModelCheckpoint.__qualname__ = "ModelCheckpoint"
    mod.ModelCheckpoint = ModelCheckpoint  # type: ignore[attr-defined]
    callbacks.model_checkpoint = mod  # type: ignore[attr-defined]
    pl.callbacks = callbacks  # type: ignore[attr-defined]
    sys.modules["pytorch_lightning.callbacks"] = callbacks
    sys.modules[name] = mod
    return ModelCheckpoint


def lightning_checkpoint(state_dict: dict[str, torch.Tensor], **extra: Any) -> dict[str, Any]:
    """A checkpoint dict as Lightning 1.0.8 (taming's pin) writes it."""
    params = [v for k, v in state_dict.items() if v.is_floating_point()][:4]
    opt_state = {
        "state": {i: {"step": 10, "exp_avg": torch.zeros_like(p), "exp_avg_sq": torch.zeros_like(p)}
                  for i, p in enumerate(params)},
        "param_groups": [{"lr": 4.5e-6, "betas": (0.5, 0.9), "eps": 1e-8, "weight_decay": 0,
                          "amsgrad": False, "params": list(range(len(params)))}],
    }
    ckpt = {
        "epoch": 3,
        "global_step": 1234,
        "pytorch-lightning_version": "1.0.8",
        "callbacks": {model_checkpoint_class(): {"best_model_score": torch.tensor(0.5),
                                                  "best_model_path": "/logs/run/checkpoints/epoch=2.ckpt"}},
        "optimizer_states": [opt_state],
        "lr_schedulers": [],
        "state_dict": state_dict,
    }
    ckpt.update(extra)
    return ckpt


# --------------------------------------------------------------------------------------------
# configs (the ``model`` node of a *-project.yaml)
# --------------------------------------------------------------------------------------------
def ddconfig(in_channels: int = 3, out_ch: int | None = None, attn: tuple[int, ...] = (),
             resolution: int = RES) -> dict[str, Any]:
    return {"double_z": False, "z_channels": 8, "resolution": resolution, "in_channels": in_channels,
            "out_ch": in_channels if out_ch is None else out_ch, "ch": 32, "ch_mult": [1, 1, 2],
            "num_res_blocks": 1, "attn_resolutions": list(attn), "dropout": 0.0}


def vq_config(target: str = VQ, n_embed: int = 32, embed_dim: int = 8, in_channels: int = 3,
              attn: tuple[int, ...] = (), **params: Any) -> dict[str, Any]:
    p: dict[str, Any] = {"embed_dim": embed_dim, "n_embed": n_embed, "ddconfig": ddconfig(in_channels, attn=attn),
                         "lossconfig": DUMMY_LOSS}
    p.update(params)
    return {"target": target, "params": p}


def gumbel_config(n_embed: int = 32, **params: Any) -> dict[str, Any]:
    cfg = vq_config(GUMBEL, n_embed=n_embed, embed_dim=8, kl_weight=1e-8, **params)
    cfg["params"]["temperature_scheduler_config"] = {
        "target": "taming.lr_scheduler.LambdaWarmUpCosineScheduler",
        "params": {"warm_up_steps": 0, "max_decay_steps": 1000, "lr_start": 0.9, "lr_max": 0.9, "lr_min": 1e-6},
    }
    return cfg


def gpt_config(vocab_size: int, block_size: int, n_layer: int = 2, **params: Any) -> dict[str, Any]:
    p = {"vocab_size": vocab_size, "block_size": block_size, "n_layer": n_layer, "n_head": 2, "n_embd": 32}
    p.update(params)
    return {"target": GPT, "params": p}


def net2net_config(first: dict[str, Any], cond: Any, gpt: dict[str, Any], permuter: str | None = None,
                   grid: int = RES // 4, **params: Any) -> dict[str, Any]:
    p: dict[str, Any] = {"first_stage_config": first, "cond_stage_config": cond, "transformer_config": gpt}
    if permuter is not None:
        p["permuter_config"] = {"target": PERMUTER + permuter,
                                "params": {} if permuter == "Identity" else {"H": grid, "W": grid}}
    p.update(params)
    return {"target": NET2NET, "params": p}


# --------------------------------------------------------------------------------------------
# building and scrambling upstream models
# --------------------------------------------------------------------------------------------
def build_upstream(cfg: dict[str, Any], seed: int) -> nn.Module:
    torch.manual_seed(seed)
    model = upstream().instantiate_from_config(copy.deepcopy(cfg))
    return model.eval()


def images(n: int, seed: int, channels: int = 3, res: int = RES) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    # smooth-ish random images in [-1, 1]: low-res noise upsampled plus fine noise
    base = torch.rand(n, channels, res // 4, res // 4, generator=g)
    x = nn.functional.interpolate(base, size=(res, res), mode="bilinear", align_corners=False)
    x = 0.8 * x + 0.2 * torch.rand(n, channels, res, res, generator=g)
    return x * 2 - 1


def segmentation(n: int, seed: int, n_labels: int, res: int = RES) -> torch.Tensor:
    """One-hot (B, n_labels, H, W) label maps with blocky regions."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, n_labels, (n, 1, res // 4, res // 4), generator=g)
    labels = nn.functional.interpolate(labels.float(), size=(res, res), mode="nearest").long()[:, 0]
    return nn.functional.one_hot(labels, n_labels).permute(0, 3, 1, 2).float()


@torch.no_grad()
def scramble_norms(model: nn.Module, g: torch.Generator) -> None:
    for m in model.modules():
        if isinstance(m, (nn.GroupNorm, nn.LayerNorm)):
            m.weight.copy_(1 + 0.2 * torch.randn(m.weight.shape, generator=g))
            m.bias.copy_(0.2 * torch.randn(m.bias.shape, generator=g))
        elif isinstance(m, nn.Conv2d) and m.bias is not None:
            m.bias.add_(0.05 * torch.randn(m.bias.shape, generator=g))


@torch.no_grad()
def fit_codebook(vq: nn.Module, x: torch.Tensor, seed: int) -> None:
    """Codebook = latents of ``x`` (plus noise): many codes in use, no exact ties."""
    g = torch.Generator().manual_seed(seed)
    h = vq.quant_conv(vq.encoder(x))
    vecs = h.permute(0, 2, 3, 1).reshape(-1, h.shape[1])
    emb = vq.quantize.embedding.weight
    pick = torch.randint(0, vecs.shape[0], (emb.shape[0],), generator=g)
    emb.copy_(vecs[pick] + 0.3 * vecs.std() * torch.randn(emb.shape, generator=g))


@torch.no_grad()
def scramble_gpt(gpt: nn.Module, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    scramble_norms(gpt, g)
    gpt.tok_emb.weight.copy_(torch.randn(gpt.tok_emb.weight.shape, generator=g))
    gpt.pos_emb.copy_(0.5 * torch.randn(gpt.pos_emb.shape, generator=g))
    for m in gpt.modules():
        if isinstance(m, nn.Linear):
            m.weight.copy_(torch.randn(m.weight.shape, generator=g) / m.in_features**0.5)
            if m.bias is not None:
                m.bias.copy_(0.1 * torch.randn(m.bias.shape, generator=g))
    gpt.head.weight.mul_(3.0)  # logits of a few units: clear greedy margins


def prepare_vq(vq: nn.Module, x: torch.Tensor, seed: int) -> None:
    scramble_norms(vq, torch.Generator().manual_seed(seed))
    if hasattr(vq.quantize, "embedding"):
        fit_codebook(vq, x, seed)


# --------------------------------------------------------------------------------------------
# saving runs
# --------------------------------------------------------------------------------------------
FAKE_LOSS_KEYS = ("loss.discriminator.main.0.weight", "loss.discriminator.main.0.bias",
                  "loss.perceptual_loss.net.slice1.0.weight", "loss.logvar")


def with_loss_keys(state_dict: dict[str, torch.Tensor], prefixes: tuple[str, ...] = ("",)) -> dict[str, torch.Tensor]:
    """Add the training-only ``loss.*`` weights that real taming checkpoints carry."""
    sd = dict(state_dict)
    for p in prefixes:
        sd[p + FAKE_LOSS_KEYS[0]] = torch.randn(8, 3, 4, 4)
        sd[p + FAKE_LOSS_KEYS[1]] = torch.randn(8)
        sd[p + FAKE_LOSS_KEYS[2]] = torch.randn(4, 3, 3, 3)
        sd[p + FAKE_LOSS_KEYS[3]] = torch.zeros(())
    return sd


def write_config(run: Path, model_cfg: dict[str, Any], stamp: str = "2021-01-01T00-00-00") -> Path:
    (run / "configs").mkdir(parents=True, exist_ok=True)
    path = run / "configs" / f"{stamp}-project.yaml"
    node = {"base_learning_rate": 4.5e-6, **copy.deepcopy(model_cfg)}
    doc = {"model": node, "data": {"target": "main.DataModuleFromConfig", "params": {"batch_size": 2}}}
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    (run / "configs" / f"{stamp}-lightning.yaml").write_text(
        yaml.safe_dump({"lightning": {"trainer": {"gpus": "0,", "max_epochs": 3}}}))
    return path


def save_run(run: Path, model_cfg: dict[str, Any], state_dict: dict[str, torch.Tensor], **extra: Any) -> Path:
    """Write ``<run>/checkpoints/last.ckpt`` and ``<run>/configs/...``; returns the checkpoint path."""
    (run / "checkpoints").mkdir(parents=True, exist_ok=True)
    write_config(run, model_cfg)
    ckpt = run / "checkpoints" / "last.ckpt"
    torch.save(lightning_checkpoint(state_dict, **extra), ckpt)
    return ckpt


# --------------------------------------------------------------------------------------------
# variants
# --------------------------------------------------------------------------------------------
@dataclass
class Run:
    name: str
    cfg: dict[str, Any]
    model: nn.Module  # the upstream model (eval mode)
    run_dir: Path
    ckpt: Path
    x: torch.Tensor  # first-stage input
    c: torch.Tensor | None = None  # cond input (Net2Net)
    extra: dict[str, Any] = field(default_factory=dict)


def build_vq_variant(name: str, root: Path) -> Run:
    seed = sum(map(ord, name))
    x = images(3, seed)
    extra: dict[str, Any] = {}
    if name == "vq_noattn":
        cfg = vq_config()
    elif name == "vq_attn":  # attention at the 8x8 and 4x4 levels (plus the mid blocks)
        cfg = vq_config(attn=(8, 4))
    elif name == "vq_nodisc_colorize":
        cfg = vq_config(VQ_NODISC, colorize_nlabels=5)
    elif name == "gumbel":
        cfg = gumbel_config()
    elif name in ("vq_remap", "gumbel_remap"):
        used = np.array([30, 2, 7, 11, 19, 23, 5, 28, 14, 3], dtype=np.int64)  # unsorted on purpose
        used_path = root / f"{name}_used.npy"
        np.save(used_path, used)
        cfg = gumbel_config(remap=str(used_path)) if name == "gumbel_remap" else vq_config(remap=str(used_path))
        extra["used"] = used
        extra["used_path"] = used_path
    else:
        raise KeyError(name)
    model = build_upstream(cfg, seed)
    prepare_vq(model, images(16, seed + 1), seed)
    run_dir = root / name
    ckpt = save_run(run_dir, cfg, with_loss_keys(model.state_dict()))
    return Run(name, cfg, model, run_dir, ckpt, x, extra=extra)


N_LABELS = 5
N_CLASSES = 10
COORD_LEVELS = 8


def build_net2net_variant(name: str, root: Path) -> Run:
    seed = sum(map(ord, name))
    first = vq_config(n_embed=32)
    x = images(2, seed)
    hw = (RES // 4) ** 2
    params: dict[str, Any] = {"first_stage_key": "image"}
    permuter = None
    if name == "seg":
        # sflckr-like: a segmentation VQ cond stage; upstream needs sane_index_shape to encode_to_c.
        # The cond image is 2x the size and brought down by downsample_cond_size, and the cond
        # tokens attend to each other (n_unmasked), as in taming's configs.
        cond: Any = vq_config(VQ_SEG, n_embed=24, in_channels=N_LABELS, n_labels=N_LABELS,
                              image_key="segmentation", sane_index_shape=True, attn=(8,))
        c = segmentation(2, seed, N_LABELS, res=2 * RES)
        n_cond = hw
        params.update(cond_stage_key="segmentation", downsample_cond_size=RES)
        gpt = gpt_config(32, n_cond + hw, n_unmasked=n_cond)
    elif name == "first_stage":
        first = vq_config(n_embed=32, sane_index_shape=True)  # upstream encode_to_c needs it
        cond = "__is_first_stage__"
        c = images(2, seed + 7)
        n_cond = hw
        params.update(cond_stage_key="image")
        gpt = gpt_config(32, n_cond + hw)
    elif name == "sos_zcurve":
        cond = "__is_unconditional__"
        c = x
        n_cond = 1
        permuter = "ZCurve"
        params.update(sos_token=5)
        gpt = gpt_config(32, n_cond + hw)
    elif name == "class_subsample":
        cond = {"target": "taming.modules.util.Labelator", "params": {"n_classes": N_CLASSES}}
        c = torch.tensor([3, 7])
        n_cond = 1
        permuter = "Subsample"
        params.update(cond_stage_key="class_label")
        gpt = gpt_config(32, n_cond + hw, n_layer=1)
    elif name == "coord_identity":
        cond = {"target": "taming.modules.misc.coord.CoordStage",
                "params": {"n_embed": COORD_LEVELS, "down_factor": 4}}
        g = torch.Generator().manual_seed(seed)
        c = torch.rand(2, 1, RES, RES, generator=g)
        n_cond = hw
        permuter = "Identity"
        params.update(cond_stage_key="coord")
        gpt = gpt_config(32, n_cond + hw)
    else:
        raise KeyError(name)
    cfg = net2net_config(first, cond, gpt, permuter=permuter, **params)
    model = build_upstream(cfg, seed)
    prepare_vq(model.first_stage_model, images(16, seed + 1), seed)
    prefixes = ("first_stage_model.",)
    if name == "seg":
        prepare_vq(model.cond_stage_model, segmentation(16, seed + 2, N_LABELS), seed + 3)
        prefixes += ("cond_stage_model.",)
    scramble_gpt(model.transformer, seed + 4)
    run_dir = root / name
    ckpt = save_run(run_dir, cfg, with_loss_keys(model.state_dict(), prefixes))
    return Run(name, cfg, model, run_dir, ckpt, x, c, extra={"n_cond": n_cond, "hw": hw})


VQ_VARIANTS = ("vq_noattn", "vq_attn", "vq_nodisc_colorize", "gumbel", "vq_remap", "gumbel_remap")
NET2NET_VARIANTS = ("seg", "first_stage", "sos_zcurve", "class_subsample", "coord_identity")


def build_variant(name: str, root: Path) -> Run:
    if name in VQ_VARIANTS:
        return build_vq_variant(name, root)
    return build_net2net_variant(name, root)


# --------------------------------------------------------------------------------------------
# measurements
# --------------------------------------------------------------------------------------------
# measured errors, printed at the end of the session by conftest ("report max abs error")
MEASURED: dict[str, float] = {}


def record(name: str, value: float) -> float:
    MEASURED[name] = max(MEASURED.get(name, 0.0), value)
    return value


MINIMA: dict[str, float] = {}


def record_min(name: str, value: float) -> float:
    MINIMA[name] = min(MINIMA.get(name, float("inf")), value)
    return value


def max_abs(a: torch.Tensor, b: torch.Tensor) -> float:
    assert a.shape == b.shape, (a.shape, b.shape)
    return float((a.double() - b.double()).abs().max())


def greedy_margins(logits: torch.Tensor) -> torch.Tensor:
    """top-1 minus top-2 logit at every position."""
    top = torch.topk(logits, 2, dim=-1).values
    return top[..., 0] - top[..., 1]
