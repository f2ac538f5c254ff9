"""The export side of taming's cond stages: the cond encoder graph an image condition needs, the module the
torch backend runs for it, and what reloading the checkpoint needs (which module is which kind, its manifest
entry: ``describe``). The runtime side of each kind is in ``vqdeploy.conditions``."""

from __future__ import annotations

from typing import Any

import torch

from vqdeploy.conditions.image import FirstStageCondition, ImageCondition
from vqdeploy.conditions.objects import ObjectLayout
from vqdeploy.families.graph_spec import GraphSpec
from vqdeploy.families.taming.graphs import EncoderGraph
from vqdeploy.families.taming.specs import encoder_spec
from vqdeploy.models.net2net import Net2NetTransformer


def cond_encoder_spec(model: Net2NetTransformer, entry: dict[str, Any], dtype: torch.dtype,
                      max_batch: int) -> list[GraphSpec]:
    """The cond encoder graph of an image condition (a first-stage condition reuses the encoder graph)."""
    if entry["kind"] != ImageCondition.kind:
        return []
    return [encoder_spec("cond_encoder", model.cond_stage_model, dtype, max_batch, 1, entry["preprocessing"],
                         model.downsample_cond_size)]  # type: ignore[arg-type]


def cond_encoder_module(model: Net2NetTransformer, entry: Any, first_encoder: EncoderGraph) -> torch.nn.Module | None:
    """The torch backend's module for the condition's encoder graph (None: the kind has none)."""
    if isinstance(entry, FirstStageCondition):
        return first_encoder
    if isinstance(entry, ImageCondition):
        onehot = entry.preprocessing["num_classes"] if entry.preprocessing["kind"] == "onehot" else None
        return EncoderGraph(model.cond_stage_model, torch.float32, onehot, entry.downsample_cond_size)  # type: ignore[arg-type]
    return None


def reload_options(entry: Any) -> dict[str, Any]:
    """``load_model`` options the checkpoint alone does not fix (an object-layout model's categories)."""
    if isinstance(entry, ObjectLayout):
        return {"object_classes": entry.builder.no_object_classes}
    return {}
