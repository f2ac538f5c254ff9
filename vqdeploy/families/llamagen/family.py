"""LlamaGen (FoundationVision/LlamaGen): a VQ tokenizer + a Llama-style class-to-image GPT, from the GPT checkpoint
and ``--vq-ckpt``. Its manifest is the same format as taming's (kind ``net2net``: a first stage and a transformer
with the in-place KV cache), with ``family: llamagen``, the class condition's ``null_class`` (classifier-free
guidance) and the guided sampler graph, so every runtime runs it unchanged."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from vqdeploy.conditions.class_label import ClassLabel
from vqdeploy.errors import ConfigError
from vqdeploy.families.base import Family, TorchStages
from vqdeploy.families.graph_spec import (
    SAMPLER_MAX_VOCAB,
    VALID_LENGTH_DTYPES,
    GraphSpec,
    check_options,
    guided_sampler_spec,
    precision_copy,
    sampler_spec,
    valid_length_spec,
)
from vqdeploy.families.llamagen.graphs import DecoderGraph, EncoderGraph, decoder_spec, encoder_spec, transformer_spec
from vqdeploy.families.llamagen.load import DEFAULT_IMAGE_SIZE, LlamaGenModel, load_llamagen
from vqdeploy.families.llamagen.upstream import generate

if TYPE_CHECKING:
    from vqdeploy.artifacts import Manifest

# the options of ``load`` (the CLI's LlamaGen flags); a checkpoint with ``vq_ckpt`` is LlamaGen's
OPTIONS = ("vq_ckpt", "gpt_model", "n_head", "image_size", "num_classes")


def _model(model: nn.Module) -> LlamaGenModel:
    if not isinstance(model, LlamaGenModel):
        raise ConfigError(f"expected a LlamaGen model, got a {type(model).__name__}")
    return model


def describe(model: LlamaGenModel) -> dict[str, Any]:
    vq, gpt = model.vq, model.gpt
    f, grid = vq.downsample_factor, model.grid
    cond: dict[str, Any] = {"kind": ClassLabel.kind, "n_classes": model.num_classes, "tokens": gpt.cls_token_num}
    if model.null_class is not None:
        cond["null_class"] = model.null_class
    return {
        "target": getattr(getattr(model, "source", None), "target", "autoregressive.models.gpt.Transformer"),
        "kind": "net2net",  # a first stage + a transformer (the manifest's name for it; family says whose)
        "image_size": model.image_size,
        "first_stage": {
            "target": "tokenizer.tokenizer_image.vq_model.VQModel",
            "quantizer": "nearest_code", "metric": "cosine" if vq.quantize.l2_norm else "l2",
            "in_channels": vq.in_channels, "out_channels": vq.out_channels, "resolution": model.image_size,
            "downsample_factor": f, "latent_grid": [grid, grid], "embed_dim": vq.embed_dim,
            "codebook_size": vq.n_embed, "vocab_size": vq.n_embed, "remap": None, "ch": vq.ch,
            "encoder_ch_mult": [w // vq.ch for w in vq.encoder_widths],
            "decoder_ch_mult": [w // vq.ch for w in vq.decoder_widths], "z_channels": vq.z_channels,
        },
        "conditioning": cond,
        "transformer": {
            "vocab_size": gpt.vocab_size, "block_size": gpt.block_size, "n_layer": gpt.n_layer, "n_head": gpt.n_head,
            "n_embd": gpt.dim, "head_dim": gpt.head_dim, "n_unmasked": 0, "ffn_dim": gpt.hidden,
            "class_rows": gpt.class_rows, "cls_token_num": gpt.cls_token_num, "rope": "2d", "rope_base": gpt.rope_base,
            "norm_eps": gpt.norm_eps, "gpt_model": model.gpt_model,
            "parameters": sum(p.numel() for p in gpt.parameters()),
        },
        "permuter": {"name": "Identity", "order": None},
        "tokens": {"cond": gpt.cls_token_num, "image": grid * grid, "steps": grid * grid},
    }


def keep_quantizer_fp32(model: nn.Module) -> None:
    _model(model).vq.quantize.float()  # the normalisation and the search stay fp32


class LlamaGen(Family):
    name = "llamagen"
    title = "LlamaGen"
    upstream_label = "LlamaGen generate() loop, torch-cpu fp32"

    def claims(self, ckpt: Path, options: Mapping[str, Any]) -> bool:
        return options.get("vq_ckpt") is not None

    def load(self, ckpt: str | Path, config: Any = None, **options: Any) -> nn.Module:
        if config is not None:
            raise ConfigError("--config is for taming checkpoints; a LlamaGen GPT takes --vq-ckpt, --gpt-model or "
                              "--n-head, and --image-size")
        unknown = sorted(set(options) - set(OPTIONS))
        if unknown:
            raise ConfigError(f"--{unknown[0].replace('_', '-')} is not an option of LlamaGen checkpoints")
        return load_llamagen(ckpt, **options)

    def reload_options(self, manifest: Manifest) -> dict[str, Any]:
        raw, tr = manifest.raw, manifest.model.transformer
        cond = manifest.model.condition
        assert tr is not None and isinstance(cond, ClassLabel)
        return {"vq_ckpt": (raw.get("source") or {}).get("vq_checkpoint"), "n_head": tr.n_head,
                "image_size": int(raw["model"].get("image_size", DEFAULT_IMAGE_SIZE)), "num_classes": cond.n_classes}

    def describe(self, model: nn.Module) -> dict[str, Any]:
        return {**describe(_model(model)), "family": self.name}

    def graph_specs(self, model: nn.Module, precision: str = "fp32", max_batch: int = 8) -> list[GraphSpec]:
        dtype = check_options(precision, max_batch)
        base = _model(model)
        m = _model(precision_copy(base, dtype, keep_quantizer_fp32))
        gpt, grid = m.gpt, base.grid
        specs = [encoder_spec(m.vq, dtype, max_batch, grid), transformer_spec(gpt, dtype, max_batch)]
        if dtype in VALID_LENGTH_DTYPES:
            specs.append(valid_length_spec(specs[-1]))
        if gpt.vocab_size <= SAMPLER_MAX_VOCAB:
            specs.append(sampler_spec(gpt.vocab_size, gpt.block_size, max_batch))
            guided = guided_sampler_spec(gpt.vocab_size, gpt.block_size, max_batch) if base.null_class is not None \
                else None
            if guided is not None:
                specs.append(guided)
        specs.append(decoder_spec(m.vq, dtype, max_batch, grid))
        return specs

    def quantizable(self, model: nn.Module) -> nn.Module | None:
        return _model(model).gpt

    def torch_stages(self, model: nn.Module, manifest: Manifest) -> TorchStages:
        m = _model(model)
        return TorchStages(EncoderGraph(m.vq, torch.float32), DecoderGraph(m.vq, torch.float32), None, m.gpt)

    def code_distances(self, model: nn.Module, image: torch.Tensor,
                       cond_encoder: nn.Module | None = None) -> tuple[torch.Tensor, bool]:
        vq = _model(model).vq
        with torch.no_grad():
            h = vq.latent(image.to(next(vq.parameters()).device))
            return vq.quantize.distances(h).cpu(), False

    def teacher_forced_logits(self, model: nn.Module, sequence: torch.Tensor) -> torch.Tensor:
        return _model(model).gpt(sequence)

    def upstream_sampler(self, model: nn.Module) -> Callable[..., torch.Tensor] | None:
        m = _model(model)

        def sample(cond: torch.Tensor, steps: int, top_k: int, cfg_scale: float = 1.0) -> torch.Tensor:
            return generate(m.gpt, cond[:, 0], steps, m.null_class, cfg_scale=cfg_scale, top_k=top_k)

        return sample
