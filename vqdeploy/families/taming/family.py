"""taming-transformers (CompVis): VQGANs and ``Net2NetTransformer``s from Lightning checkpoints + run configs."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from vqdeploy.errors import ConfigError
from vqdeploy.families.base import Family, TorchStages
from vqdeploy.families.graph_spec import (
    SAMPLER_MAX_VOCAB,
    VALID_LENGTH_DTYPES,
    GraphSpec,
    check_options,
    precision_copy,
    sampler_spec,
    valid_length_spec,
)
from vqdeploy.families.taming import conditions
from vqdeploy.families.taming.describe import describe
from vqdeploy.families.taming.graphs import DecoderGraph, EncoderGraph
from vqdeploy.families.taming.specs import decoder_spec, encoder_spec, transformer_spec
from vqdeploy.loading.load import load_model
from vqdeploy.models.nearest_code import nearest_code_distances
from vqdeploy.models.net2net import Net2NetTransformer
from vqdeploy.models.quantize import GumbelQuantize
from vqdeploy.models.vqgan import VQModel

if TYPE_CHECKING:
    from vqdeploy.artifacts import Manifest


def keep_quantizers_fp32(model: nn.Module) -> None:
    for vq in model.modules():
        if isinstance(vq, VQModel):
            vq.quantize.float()  # distances / argmin / Gumbel logits stay fp32


def _first_stage(model: nn.Module) -> VQModel:
    first = model.first_stage_model if isinstance(model, Net2NetTransformer) else model
    if not isinstance(first, VQModel):
        raise ConfigError(f"cannot deploy a {type(model).__name__}: expected a Net2NetTransformer or VQModel")
    return first


class Taming(Family):
    name = "taming"
    title = "taming-transformers"

    def claims(self, ckpt: Path, options: Mapping[str, Any]) -> bool:
        return True  # the default family: a Lightning checkpoint (or run directory) and its config

    def load(self, ckpt: str | Path, config: Any = None, **options: Any) -> nn.Module:
        return load_model(ckpt, config, **options)

    def reload_options(self, manifest: Manifest) -> dict[str, Any]:
        cond = manifest.model.condition
        return {} if cond is None else conditions.reload_options(cond)

    def describe(self, model: nn.Module) -> dict[str, Any]:
        return {**describe(model), "family": self.name}

    def graph_specs(self, model: nn.Module, precision: str = "fp32", max_batch: int = 8) -> list[GraphSpec]:
        dtype = check_options(precision, max_batch)
        info = describe(model)
        m = precision_copy(model, dtype, keep_quantizers_fp32)
        if isinstance(m, VQModel):
            return [encoder_spec("encoder", m, dtype, max_batch, 1), decoder_spec(m, dtype, max_batch)]
        assert isinstance(m, Net2NetTransformer)
        specs = [encoder_spec("encoder", m.first_stage_model, dtype, max_batch, 1)]
        specs += conditions.cond_encoder_spec(m, info["conditioning"], dtype, max_batch)
        specs.append(transformer_spec(m, dtype, max_batch, int(info["conditioning"]["tokens"])))
        gpt = m.transformer
        if gpt.n_unmasked == 0 and dtype in VALID_LENGTH_DTYPES:  # GroupQueryAttention is causal only
            specs.append(valid_length_spec(specs[-1]))
        if gpt.vocab_size <= SAMPLER_MAX_VOCAB:
            specs.append(sampler_spec(gpt.vocab_size, gpt.block_size, max_batch))
        specs.append(decoder_spec(m.first_stage_model, dtype, max_batch))
        return specs

    def quantizable(self, model: nn.Module) -> nn.Module | None:
        return model.transformer if isinstance(model, Net2NetTransformer) else None

    def torch_stages(self, model: nn.Module, manifest: Manifest) -> TorchStages:
        first = _first_stage(model)
        encoder = EncoderGraph(first, torch.float32)
        cond = manifest.model.condition
        cond_encoder = None
        if cond is not None and isinstance(model, Net2NetTransformer):
            cond_encoder = conditions.cond_encoder_module(model, cond, encoder)
        gpt = model.transformer if isinstance(model, Net2NetTransformer) else None
        return TorchStages(encoder, DecoderGraph(first, torch.float32), cond_encoder, gpt)

    def code_distances(self, model: nn.Module, image: torch.Tensor,
                       cond_encoder: nn.Module | None = None) -> tuple[torch.Tensor, bool]:
        vq, x = _first_stage(model), image
        if isinstance(cond_encoder, EncoderGraph):  # the condition's encoder: its one-hot and resize first
            vq = cond_encoder.vq
            if cond_encoder.onehot_classes is not None:
                x = (x[:, None] == cond_encoder.classes).to(torch.float32)
            if cond_encoder.resize_to > -1:
                x = torch.nn.functional.interpolate(x, size=(cond_encoder.resize_to,) * 2)
        with torch.no_grad():
            h = vq.quant_conv(vq.encoder(x.to(next(vq.parameters()).device)))
            if isinstance(vq.quantize, GumbelQuantize):
                return -vq.quantize.logits(h).permute(0, 2, 3, 1).cpu(), True
            return nearest_code_distances(h, vq.quantize.codebook()).cpu(), False

    def teacher_forced_logits(self, model: nn.Module, sequence: torch.Tensor) -> torch.Tensor:
        assert isinstance(model, Net2NetTransformer)
        return model.transformer(sequence)[0]

    def upstream_sampler(self, model: nn.Module) -> Callable[..., torch.Tensor] | None:
        if not isinstance(model, Net2NetTransformer):
            return None

        def sample(cond: torch.Tensor, steps: int, top_k: int) -> torch.Tensor:
            x = torch.zeros((cond.shape[0], 0), dtype=torch.long)
            return model.sample(x, cond, steps, temperature=1.0, sample=True, top_k=top_k)

        return sample
