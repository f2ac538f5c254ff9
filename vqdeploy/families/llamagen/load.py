"""Loading a LlamaGen pair: the GPT checkpoint and the VQ checkpoint, as LlamaGen's scripts write them
(``{"model": ...}``, ``{"module": ...}`` (DeepSpeed), ``{"state_dict": ...}`` or a plain state_dict (FSDP), or a
.safetensors file), read with the same safe reader as taming checkpoints (``loading.checkpoint``: no pickle code runs).

Everything the weights determine is read from them: the GPT's width, depth, vocabulary, feed-forward width and
class table; the tokenizer's widths per level, residual blocks, ``z_channels``, codebook size and dimension. What
they do not determine comes from LlamaGen's own flag names: the head count (``--gpt-model`` GPT-B ... GPT-3B, or
``--n-head``; a (width, depth) that matches one preset needs neither) and ``--image-size`` (the token grid and so
the 2-D rotary table). The modules are built on the meta device and the weights assigned (one copy in memory).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from vqdeploy.bounds import MAX_BLOCK, MAX_GRID
from vqdeploy.errors import CheckpointError, ConfigError
from vqdeploy.families.llamagen.gpt import Transformer, precompute_freqs_cis_2d
from vqdeploy.families.llamagen.vq import VQModel
from vqdeploy.loading.checkpoint import check_format, read_state_dict

# LlamaGen's presets (GPT_models in gpt.py): name -> (n_layer, n_head, dim)
GPT_MODELS: dict[str, tuple[int, int, int]] = {
    "GPT-B": (12, 12, 768), "GPT-L": (24, 16, 1024), "GPT-XL": (36, 20, 1280), "GPT-XXL": (48, 24, 1536),
    "GPT-XXXL": (48, 40, 2560), "GPT-1B": (22, 32, 2048), "GPT-3B": (24, 32, 3200), "GPT-7B": (32, 32, 4096),
}
CONTAINERS = ("model", "module", "state_dict")  # what sample_c2i.py accepts (DDP, DeepSpeed, Lightning-like)
# not weights: upstream's rotary table and KV-cache buffers, which older checkpoints may carry (sample_c2i.py
# loads with strict=False for them)
_NOT_WEIGHTS = re.compile(r"^(freqs_cis|causal_mask)$|\.kv_cache\.")
_T2I = ("cls_embedding.cap_proj.", "cls_embedding.uncond_embedding")
DEFAULT_IMAGE_SIZE = 256
MAX_IMAGE_SIZE = 4096


@dataclass(frozen=True)
class LlamaGenSource:
    """Where a loaded pair came from (the manifest's ``source``)."""

    checkpoint: str
    vq_checkpoint: str
    target: str = "autoregressive.models.gpt.Transformer"
    config: list[str] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)  # more ``source`` entries (the VQ checkpoint)


class LlamaGenModel(nn.Module):
    """A LlamaGen c2i pair: ``vq`` (the tokenizer) and ``gpt``; ``image_size`` pixels, a square token grid.
    ``num_classes`` real classes; ``null_class`` (= num_classes, the class table's last row) when the model was
    trained with label dropout and so can be guided, else None. ``gpt_model``: the preset its numbers match."""

    def __init__(self, vq: VQModel, gpt: Transformer, image_size: int, num_classes: int, null_class: int | None,
                 gpt_model: str | None = None) -> None:
        super().__init__()
        self.vq, self.gpt = vq, gpt
        self.image_size, self.num_classes, self.null_class = image_size, num_classes, null_class
        self.gpt_model = gpt_model

    @property
    def grid(self) -> int:
        return self.image_size // self.vq.downsample_factor


def _shape(sd: Mapping[str, torch.Tensor], key: str, where: str, rank: int) -> tuple[int, ...]:
    t = sd.get(key)
    if t is None:
        raise CheckpointError(f"{where}: not a LlamaGen checkpoint of this kind: no '{key}'")
    if t.dim() != rank:
        raise CheckpointError(f"{where}: '{key}' has shape {tuple(t.shape)}, expected {rank} dims")
    return tuple(int(s) for s in t.shape)


def _count(sd: Mapping[str, torch.Tensor], prefix: str) -> int:
    """How many consecutive ``prefix{i}.`` entries there are."""
    n = 0
    while any(k.startswith(f"{prefix}{n}.") for k in sd):
        n += 1
    return n


def _assign(model: nn.Module, sd: Mapping[str, torch.Tensor], where: str) -> None:
    expected = model.state_dict(keep_vars=True)
    missing = [k for k in expected if k not in sd]
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise CheckpointError(f"{where}: missing weight '{missing[0]}'{more}")
    unexpected = [k for k in sd if k not in expected]
    if unexpected:
        more = f" (and {len(unexpected) - 1} more)" if len(unexpected) > 1 else ""
        raise CheckpointError(f"{where}: unexpected weight '{unexpected[0]}'{more}")
    for k, ref in expected.items():
        got = sd[k]
        if tuple(got.shape) != tuple(ref.shape):
            raise CheckpointError(f"{where}: '{k}' has shape {tuple(got.shape)}, expected {tuple(ref.shape)}")
        if not got.dtype.is_floating_point:
            raise CheckpointError(f"{where}: '{k}' has dtype {got.dtype}, expected a float tensor")
    # upstream runs the weights in the precision it loads them (sample_c2i.py casts to bf16): we load fp32, the
    # export's --precision decides the graphs'
    model.load_state_dict({k: sd[k].float() for k in expected}, strict=True, assign=True)


def _read(path: Path, what: str) -> dict[str, torch.Tensor]:
    if not path.exists():
        raise CheckpointError(f"{what} not found: {path}")
    if not path.is_file():
        raise CheckpointError(f"{what} is not a file: {path}")
    check_format(path)
    return read_state_dict(path, skip=lambda k: bool(_NOT_WEIGHTS.search(k)), containers=CONTAINERS)


# --- the tokenizer ------------------------------------------------------------------------------------
def vq_config(sd: Mapping[str, torch.Tensor], where: str) -> dict[str, Any]:
    """The tokenizer's constructor numbers, read from its weights."""
    ch, in_channels = _shape(sd, "encoder.conv_in.weight", where, 4)[:2]
    levels = _count(sd, "encoder.conv_blocks.")
    dec_levels = _count(sd, "decoder.conv_blocks.")
    if levels < 1 or dec_levels < 1:
        raise CheckpointError(f"{where}: not a LlamaGen VQ checkpoint (no encoder/decoder conv_blocks)")
    enc = [_shape(sd, f"encoder.conv_blocks.{i}.res.0.conv1.weight", where, 4)[0] for i in range(levels)]
    # decoder.conv_blocks.j is level n-1-j (upstream builds them in reverse)
    dec = [_shape(sd, f"decoder.conv_blocks.{dec_levels - 1 - i}.res.0.conv1.weight", where, 4)[0]
           for i in range(dec_levels)]
    res = _count(sd, "encoder.conv_blocks.0.res.")
    if _count(sd, "decoder.conv_blocks.0.res.") != res + 1:
        raise CheckpointError(f"{where}: the decoder's residual blocks per level are not the encoder's + 1")
    if levels != dec_levels:
        raise CheckpointError(f"{where}: encoder and decoder downsample differently ({levels} and {dec_levels} levels)")
    for w in [ch, *enc, *dec]:
        if w % 32:
            raise CheckpointError(f"{where}: a width of {w} channels is not a multiple of GroupNorm's 32 groups")
    z_channels = _shape(sd, "encoder.conv_out.weight", where, 4)[0]
    codebook_size, embed_dim = _shape(sd, "quantize.embedding.weight", where, 2)
    out_channels = _shape(sd, "decoder.conv_out.weight", where, 4)[0]
    usage = sd.get("quantize.codebook_used")
    return {"in_channels": in_channels, "ch": ch, "encoder_widths": enc, "decoder_widths": dec, "num_res_blocks": res,
            "z_channels": z_channels, "codebook_size": codebook_size, "codebook_embed_dim": embed_dim,
            "out_channels": out_channels, "usage_buffer": None if usage is None else int(usage.numel())}


def load_vq(path: str | Path, l2_norm: bool = True) -> VQModel:
    path = Path(path)
    sd = _read(path, "VQ checkpoint")
    if "tok_embeddings.weight" in sd:
        raise CheckpointError(f"{path}: this is a LlamaGen GPT checkpoint; --vq-ckpt takes the VQ tokenizer's")
    cfg = vq_config(sd, str(path))
    with torch.device("meta"):
        vq = VQModel(**cfg, l2_norm=l2_norm)
    _assign(vq, sd, str(path))
    return vq


# --- the GPT --------------------------------------------------------------------------------------------
def head_count(dim: int, n_layer: int, gpt_model: str | None, n_head: int | None, where: str) -> tuple[int, str | None]:
    """The head count (the weights do not hold it) and the preset it comes from."""
    if gpt_model is not None and n_head is not None:
        raise ConfigError("pass --gpt-model or --n-head, not both")
    if gpt_model is not None:
        if gpt_model not in GPT_MODELS:
            raise ConfigError(f"--gpt-model {gpt_model!r}: expected one of {', '.join(GPT_MODELS)}")
        layers, heads, width = GPT_MODELS[gpt_model]
        if (layers, width) != (n_layer, dim):
            raise ConfigError(f"--gpt-model {gpt_model} is {layers} layers of width {width}; {where} has {n_layer} "
                              f"layers of width {dim}")
        return heads, gpt_model
    if n_head is not None:
        if not 1 <= n_head <= dim or dim % n_head or (dim // n_head) % 4:
            raise ConfigError(f"--n-head {n_head}: the width {dim} must split into heads of a multiple of 4 "
                              "channels (2-D rotary embeddings)")
        preset = next((k for k, v in GPT_MODELS.items() if v == (n_layer, n_head, dim)), None)
        return n_head, preset
    preset = next((k for k, (layers, _, width) in GPT_MODELS.items() if (layers, width) == (n_layer, dim)), None)
    if preset is None:
        raise ConfigError(f"{where}: {n_layer} layers of width {dim} match no LlamaGen preset; pass --n-head N "
                          "(or --gpt-model NAME)")
    return GPT_MODELS[preset][1], preset


def gpt_config(sd: Mapping[str, torch.Tensor], where: str, gpt_model: str | None, n_head: int | None,
               num_classes: int | None) -> dict[str, Any]:
    """The GPT's constructor numbers (and its classes), from its weights and the head count."""
    if any(k.startswith(_T2I) for k in sd):
        raise ConfigError(f"{where}: a text-to-image LlamaGen GPT (T5 caption features) is out of scope: vqdeploy "
                          "deploys the class-to-image (c2i) models")
    vocab, dim = _shape(sd, "tok_embeddings.weight", where, 2)
    rows, cls_dim = _shape(sd, "cls_embedding.embedding_table.weight", where, 2)
    n_layer = _count(sd, "layers.")
    if n_layer < 1 or cls_dim != dim:
        raise CheckpointError(f"{where}: not a LlamaGen c2i GPT checkpoint (layers or class table missing)")
    qkv = _shape(sd, "layers.0.attention.wqkv.weight", where, 2)
    heads, preset = head_count(dim, n_layer, gpt_model, n_head, where)
    if qkv != (3 * dim, dim):
        raise ConfigError(f"{where}: grouped-query attention (n_kv_head != n_head: wqkv is {qkv}) is not supported; "
                          "LlamaGen's presets have none")
    hidden = _shape(sd, "layers.0.feed_forward.w1.weight", where, 2)[0]
    if num_classes is None:
        num_classes, null = rows - 1, rows - 1  # LlamaGen's c2i models train with label dropout: the last row is null
        if num_classes < 1:
            raise CheckpointError(f"{where}: a class table of {rows} row(s) has no class besides the null class")
    elif rows == num_classes + 1:
        null = num_classes
    elif rows == num_classes:
        null = None  # trained without label dropout (class_dropout_prob 0): no null class, no guidance
    else:
        raise ConfigError(f"--num-classes {num_classes}: {where}'s class table has {rows} rows (classes, + 1 for the "
                          "null class of classifier-free guidance)")
    return {"dim": dim, "n_layer": n_layer, "n_head": heads, "vocab_size": vocab, "class_rows": rows,
            "hidden": hidden, "num_classes": num_classes, "null_class": null, "gpt_model": preset}


def load_llamagen(ckpt: str | Path, vq_ckpt: str | Path | None = None, gpt_model: str | None = None,
                  n_head: int | None = None, image_size: int | None = None, num_classes: int | None = None,
                  codebook_l2_norm: bool = True) -> LlamaGenModel:
    """A LlamaGen c2i pair in eval mode (fp32), its weights read safely; carries ``model.source``."""
    if vq_ckpt is None:
        raise ConfigError(f"{ckpt}: a LlamaGen GPT needs its VQ tokenizer: pass --vq-ckpt VQ.pt")
    size = DEFAULT_IMAGE_SIZE if image_size is None else image_size
    if isinstance(size, bool) or not isinstance(size, int) or not 1 <= size <= MAX_IMAGE_SIZE:
        raise ConfigError(f"--image-size {size}: expected 1..{MAX_IMAGE_SIZE} pixels")
    gpt_path, vq_path = Path(ckpt), Path(vq_ckpt)
    gpt_sd = _read(gpt_path, "checkpoint")
    cfg = gpt_config(gpt_sd, str(gpt_path), gpt_model, n_head, num_classes)
    vq = load_vq(vq_path, codebook_l2_norm)
    f = vq.downsample_factor
    if vq.upsample_factor != f:
        raise CheckpointError(f"{vq_path}: the decoder upsamples {vq.upsample_factor}x, the encoder downsamples {f}x")
    grid = size // f
    if size % f or not 1 <= grid <= MAX_GRID or grid * grid > MAX_BLOCK:
        raise ConfigError(f"--image-size {size}: must be a multiple of the tokenizer's {f}-pixel cells "
                          f"(grid at most {MAX_GRID} cells a side)")
    if vq.n_embed != cfg["vocab_size"]:
        raise CheckpointError(f"{gpt_path} predicts {cfg['vocab_size']} tokens, {vq_path}'s codebook has {vq.n_embed} "
                              "codes: not a pair")
    with torch.device("meta"):
        gpt = Transformer(cfg["dim"], cfg["n_layer"], cfg["n_head"], cfg["vocab_size"], cfg["class_rows"],
                          cfg["hidden"], grid * grid)
    _assign(gpt, gpt_sd, str(gpt_path))
    # the rotary table is not a weight: computed on the CPU (the meta build left it without data)
    gpt.freqs_cis = precompute_freqs_cis_2d(grid, gpt.head_dim, gpt.rope_base, gpt.cls_token_num)
    model = LlamaGenModel(vq, gpt, size, cfg["num_classes"], cfg["null_class"], cfg["gpt_model"])
    model.eval().requires_grad_(False)
    named, vq_named = gpt_path.absolute(), vq_path.absolute()
    source = LlamaGenSource(str(named), str(vq_named), extra={"vq_checkpoint": str(vq_named)})
    model.source = source  # type: ignore[assignment]
    return model
